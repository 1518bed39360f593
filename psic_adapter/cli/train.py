"""``psic train``: fit an adapter (stage 2) or train codec + adapter (stage 1).

The training flags are generated from :class:`~psic_adapter.training.TrainConfig`'s
fields (their help is in the field metadata), so a default lives in one place;
``--recipe`` picks a named set of defaults that explicit flags override.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing

from .common import adapter_codec, add_codec_args, add_key_args, codec_name_and_quality, device_of, load_codec, read_key


def _arg_type(tp):
    """(argparse type, nargs) of a TrainConfig field's annotation."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _arg_type(inner[0])
    if origin in (tuple, list):
        return (args[0] if args else float), "+"
    return tp, None


#: the command's line in `psic --help`, which lists it without building its options (they load torch)
HELP = "fit an adapter (stage 2) or train codec + adapter (stage 1)"


def add_train_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field with help; every default None (the recipe and the dataclass decide)."""
    from ..training import TrainConfig
    from ..training.config import RECIPES

    hints = typing.get_type_hints(TrainConfig)
    g = p.add_argument_group("training (defaults: the recipe's, then TrainConfig's)")
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta.get("help") or not meta.get("cli", True):
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        tp, nargs = _arg_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = default if default not in (None, ()) else "see help"
        by_recipe = "".join(f"; {name} recipe: {r['train'][f.name]}" for name, r in RECIPES.items()
                            if f.name in r["train"] and r["train"][f.name] != default)
        help_text = f"{meta['help']} (default: {shown}{by_recipe})"
        if tp is bool:
            g.add_argument(flag, dest=f.name, action="store_true", default=None, help=meta["help"])
            continue
        kw = dict(dest=f.name, type=tp, default=None, help=help_text)
        if nargs:
            kw["nargs"] = nargs
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        g.add_argument(flag, **kw)


def train_config_overrides(args) -> dict:
    from ..training import TrainConfig

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if f.metadata.get("help") and getattr(args, f.name, None) is not None}


def add_parser(sub) -> None:
    from ..training import RECIPES

    p = sub.add_parser("train", help=HELP)
    add_codec_args(p, device=True)
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="named defaults: robust (holds at the scale of use; the default of --stage 2 --adapter-only) "
                        "or paper (the paper's settings; the default otherwise)")
    p.add_argument("--from-scratch", action="store_true", help="random codec weights (stage 1 from scratch)")
    p.add_argument("--adapter", metavar="DIR", help="continue training this adapter (needs its key)")
    p.add_argument("--preset", choices=["paper", "official"], help="CLTG preset of a new adapter (default: the recipe's)")
    p.add_argument("--modulation", choices=["bias", "film", "spatial"],
                   help="CLTG fusion of a new adapter: bias (the paper), film (gain and bias), spatial (film and a "
                        "gated conv branch) (default: the recipe's)")
    p.add_argument("--public", action="store_true", help="the paper's public mode bit instead of a key (not access-controlled)")
    p.add_argument("--target", required=True, help="efficientnet-lite0 | clip:MODEL | timm:MODEL | A+B (ensemble)")
    p.add_argument("--target-weights", metavar="F", help="target weights: a local file, a tag (CLIP: openai), or 'random'")
    p.add_argument("--data", required=True, help="'samples' (bundled photos), a folder of images (flat or nested), "
                   "a caption folder, an ImageFolder tree, or a CSV")
    add_train_config_flags(p)
    add_key_args(p)
    p.add_argument("--out", required=True, help="output folder (adapter/, log.jsonl, checkpoint.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors (same settings)")
    p.add_argument("--force", action="store_true", help="overwrite an earlier run in OUT")
    p.set_defaults(func=run)


def _codec(args, device: str, name: str, quality):
    """The codec to train on: a checkpoint, random weights (--from-scratch), or the zoo's."""
    from ..codec import build_codec, prepare_for_coding
    from ..errors import ConfigError

    if args.from_scratch:
        if args.checkpoint:
            raise ConfigError("--from-scratch and --checkpoint exclude each other")
        return prepare_for_coding(build_codec(name, quality)).to(device)
    return load_codec(name, quality, args.checkpoint, device=device)


def run(args) -> int:
    from ..adapter import PSICConfig, PSICModel, load_adapter, wrap_model
    from ..data import SamplePhotos, build_dataset, repeats_for
    from ..errors import ConfigError
    from ..targets import build_target
    from ..training import TrainConfig, Trainer, checkpoint_adapter_config, default_recipe, init_distributed_from_env
    from ..training.config import recipe_settings

    device = device_of(args.device)
    if init_distributed_from_env(device) and device.startswith("cuda"):
        import torch

        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    key = read_key(args)
    if key is None and not args.public:
        raise ConfigError("training needs the owner's key: --key-file F (make one with `psic keygen F`) or --key-env VAR")
    overrides = train_config_overrides(args)
    recipe = args.recipe or default_recipe(overrides.get("stage", 2), bool(overrides.get("adapter_only")))
    cfg = TrainConfig.from_recipe(recipe, **overrides)
    adapter_defaults = recipe_settings(recipe)["adapter"]
    if args.adapter and not args.codec and not args.from_scratch:  # go on fitting an adapter: the codec it fits
        codec, name, quality = adapter_codec(args.adapter, args.checkpoint, device=device)
    else:
        name, quality = codec_name_and_quality(args)
        codec = _codec(args, device, name, quality)
    resume_config = checkpoint_adapter_config(args.out) if args.resume and not args.adapter else None
    if args.adapter:
        model = load_adapter(codec, args.adapter, key=key, is_trainable=True)
    elif resume_config is not None:  # the checkpoint's adapter (its salt), not a new one
        model = PSICModel(codec).add_adapter("default", resume_config, key=key)
    else:
        config = PSICConfig(preset=args.preset or adapter_defaults.get("preset", "paper"),
                            modulation=args.modulation or adapter_defaults.get("modulation", "bias"),
                            condition="public" if args.public else "key")
        model = wrap_model(codec, config, key=key, quality=quality)
    target = build_target(args.target, weights=args.target_weights, device=device)
    samples = str(args.data).strip().lower() == "samples"
    if cfg.views == "scale":  # whole images, encoded once at each training size (no random transform)
        if samples:  # the training photos only: the test ones are psic eval's
            dataset = SamplePhotos("train", seed=cfg.seed)
        else:
            dataset = build_dataset(args.data, crop=None, split="all", seed=cfg.seed)
    else:
        repeats = repeats_for(cfg.batch_size) if samples else 1
        dataset = build_dataset(args.data, crop=cfg.crop, split="train", seed=cfg.seed, repeats=repeats)
    info = {"recipe": recipe, "codec": name, "quality": quality, "target": args.target, "data": str(args.data),
            "from_scratch": bool(args.from_scratch),
            "codec_weights": "shipped" if args.checkpoint and args.checkpoint[0] == "shipped" else args.checkpoint}
    val_dataset = None
    if cfg.val_every and cfg.val_data:  # held-out photos, whole ("samples": the test photos, never trained on)
        val_dataset = build_dataset(cfg.val_data, crop=None, split="test", seed=cfg.seed)
    trainer = Trainer(model, target, dataset, cfg, args.out, quality=quality, device=device, recipe=info,
                      val_dataset=val_dataset)
    result = trainer.train(resume=args.resume, force=args.force)
    if trainer.is_main:
        last = result["last"]
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("psnr_full", "psnr_encrypted", "encryption", "bpp") if k in last)
        print(f"recipe: {recipe}; adapter: {result['adapter']}" + (f"\ncodec: {result['codec']}" if "codec" in result else ""))
        print(f"{result['steps']} steps; last step: {shown}; log: {result['log']}")
    return 0
