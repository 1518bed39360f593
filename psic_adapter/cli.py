"""``psic``: the command line. Thin: parse, call the library, print.

User errors (bad files, wrong adapters, missing images) print one line,
``psic: error: ...``, and exit with status 1; usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional


def _codec_args(p: argparse.ArgumentParser, required: bool, device: bool = False) -> None:
    g = p.add_argument_group("base codec")
    g.add_argument("--codec", required=required, help="CompressAI registry name, e.g. bmshj2018-hyperprior")
    g.add_argument("--quality", type=int, help="zoo quality level (sets N/M)")
    g.add_argument("--checkpoint", nargs="+", metavar="FILE",
                   help="codec weights: safetensors shard(s), a folder of shards, or a .pth; "
                        "without it the CompressAI zoo weights are downloaded")
    if device:  # compress/decompress stay on the CPU: CompressAI's entropy coder is not reproducible on GPUs
        g.add_argument("--device", default="auto", help="device for the networks: auto (CUDA when present), cpu, cuda")


def _key_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--key-file", metavar="F", help="file holding the owner's key (see `psic keygen`)")
    g.add_argument("--key-env", metavar="VAR", help="environment variable holding the owner's key")


def _read_key(args) -> Optional[bytes]:
    from .condition import read_key_env, read_key_file

    if getattr(args, "key_file", None):
        return read_key_file(args.key_file)
    if getattr(args, "key_env", None):
        return read_key_env(args.key_env)
    return None


def _load_codec(name: str, quality, checkpoint, device: str = "cpu"):
    """Entropy coding is CPU-only here (CompressAI's coder is not reproducible on GPUs)."""
    from .codecs import load_codec

    return load_codec(name, quality=quality, checkpoint=checkpoint, pretrained=checkpoint is None, device=device)


def _with_adapter(codec, adapter: Optional[str], key=None, trainable: bool = False):
    if not adapter:
        return codec
    from .adapter import load_adapter

    return load_adapter(codec, adapter, key=key, is_trainable=trainable)


# ---------------------------------------------------------------- commands
def cmd_compress(args) -> int:
    from .coding import encode_file

    codec = _load_codec(args.codec, args.quality, args.checkpoint)
    model = _with_adapter(codec, args.adapter)
    res = encode_file(args.input, args.output, model, codec_name=args.codec, quality=args.quality, force=args.force)
    print(f"{res.path}: {res.width}x{res.height}, {res.file_bytes} bytes, {res.bpp:.4f} bpp (bitstream), "
          f"{res.file_bpp:.4f} bpp (file)")
    return 0


def cmd_decompress(args) -> int:
    from . import container
    from .coding import decode_file

    _, header, _ = container.read(args.input)
    codec = _load_codec(header.codec, header.quality, args.checkpoint)
    model = _with_adapter(codec, args.adapter)
    key = _read_key(args)
    res = decode_file(args.input, args.output, model, key=key, plain=args.plain, force=args.force)
    print(f"{res['path']}: {res['version']} version, {header.width}x{header.height}")
    return 0


def cmd_keygen(args) -> int:
    from .condition import write_key_file

    path = write_key_file(args.output, force=args.force)
    print(f"{path}: a new 256-bit key (readable by you only). Keep it: without it the full version is lost.")
    return 0


def cmd_info(args) -> int:
    import json

    from . import container
    from .coding import count_bytes

    enc, header, alpha = container.read(args.input)
    d = {k: v for k, v in header.__dict__.items() if k not in ("layout", "version")}
    d["container_format"] = header.version
    d["bitstream_bytes"] = count_bytes(enc["strings"])
    d["bpp"] = round(8 * d["bitstream_bytes"] / (header.height * header.width), 5)
    print(json.dumps(d, indent=2))
    return 0


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _train_codec(args, device: str):
    """The codec to train on: a checkpoint, random weights (--from-scratch), or the zoo's."""
    from .codecs import build_codec, prepare_for_coding

    if args.from_scratch:
        if args.checkpoint:
            from .errors import ConfigError

            raise ConfigError("--from-scratch and --checkpoint exclude each other")
        return prepare_for_coding(build_codec(args.codec, args.quality)).to(device)
    return _load_codec(args.codec, args.quality, args.checkpoint, device=device)


def cmd_train(args) -> int:
    import math

    from .adapter import load_adapter, wrap_model
    from .config import PSICConfig
    from .data import build_dataset
    from .errors import ConfigError
    from .targets import build_target
    from .train import TrainConfig, Trainer, checkpoint_adapter_config, init_distributed_from_env

    device = _device(args.device)
    if init_distributed_from_env(device) and device.startswith("cuda"):
        import torch

        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    key = _read_key(args)
    if key is None and not args.public:
        raise ConfigError("training needs the owner's key: --key-file F (make one with `psic keygen F`) or --key-env VAR")
    codec = _train_codec(args, device)
    resume_config = checkpoint_adapter_config(args.out) if args.resume and not args.adapter else None
    if args.adapter:
        model = load_adapter(codec, args.adapter, key=key, is_trainable=True)
    elif resume_config is not None:  # the checkpoint's adapter (its salt), not a new one
        from .adapter import PSICModel

        model = PSICModel(codec).add_adapter("default", resume_config, key=key)
    else:
        config = PSICConfig(preset=args.preset, modulation=args.modulation,
                            condition="public" if args.public else "key")
        model = wrap_model(codec, config, key=key, quality=args.quality)
    target = build_target(args.target, weights=args.target_weights, device=device)
    repeats = 1
    if str(args.data).strip().lower() == "samples":
        repeats = max(1, math.ceil(8 * args.batch / 6))
    if args.views == "scale":  # whole images, encoded once at each training size
        dataset = build_dataset(args.data, crop=None, split="all", seed=args.seed)
    else:
        dataset = build_dataset(args.data, crop=args.crop, split="train", seed=args.seed, repeats=repeats)
    cfg = TrainConfig(
        stage=args.stage, adapter_only=args.adapter_only, steps=args.steps, batch_size=args.batch, crop=args.crop,
        lr=args.lr, adapter_lr=args.adapter_lr, lmbda=args.lmbda, objective=args.objective,
        encryption_weight=args.encryption_weight, encrypted_distortion=args.encrypted_distortion,
        guard_weight=args.guard_weight, schedule=args.schedule, compile=args.compile,
        budget_db=args.budget_db, eot=args.eot, margin=args.margin, views=args.views,
        view_sizes=tuple(args.view_sizes), train_sizes=tuple(args.train_sizes),
        num_workers=args.workers, seed=args.seed, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
    )
    recipe = {"codec": args.codec, "quality": args.quality, "target": args.target, "data": str(args.data),
              "from_scratch": bool(args.from_scratch)}
    trainer = Trainer(model, target, dataset, cfg, args.out, quality=args.quality, device=device, recipe=recipe)
    result = trainer.train(resume=args.resume, force=args.force)
    if trainer.is_main:
        last = result["last"]
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("psnr_full", "psnr_encrypted", "encryption", "bpp") if k in last)
        print(f"adapter: {result['adapter']}" + (f"\ncodec: {result['codec']}" if "codec" in result else ""))
        print(f"{result['steps']} steps; last step: {shown}; log: {result['log']}")
    return 0


def cmd_eval(args) -> int:
    from .adapter import codec_for_adapter, load_adapter
    from .eval import table
    from .eval.runner import DEFAULT_SCALES, EvalConfig, Evaluator, load_samples
    from .eval.report import write_results
    from .targets import build_target

    if args.task != "classify":
        return _eval_task(args)
    if not args.target:
        args.parser.error("the following arguments are required: --target")
    device = _device(args.device)
    key = _read_key(args)
    target = build_target(args.target, weights=args.target_weights, device=device)
    scales = args.scales or (["crops"] if args.crop else list(DEFAULT_SCALES))
    samples = [s for spec in args.data for s in load_samples(spec, seed=args.seed)]
    if args.count and not (args.crop and not args.scales):
        samples = samples[: args.count]
    cfg = EvalConfig(scales=scales, primary=args.primary, crop=args.crop or 224,
                     crops=args.crops or (args.count if args.crop and args.count else 96),
                     wrong_keys=args.wrong_keys, attack_steps=args.attack_steps, attack_images=args.attack_images,
                     perturbations=() if args.no_robustness else EvalConfig.perturbations,
                     robustness_scales=args.robustness_scales, seed=args.seed)
    results = []
    for adapter in args.adapter:
        codec = codec_for_adapter(adapter, args.checkpoint)  # entropy coding on the CPU
        model = load_adapter(codec, adapter)
        name = Path(adapter).resolve().parent.name if Path(adapter).name == "adapter" else Path(adapter).name
        meta = {"name": name, "adapter": str(adapter), "data": [str(d) for d in args.data], "key_given": key is not None,
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}}
        result = Evaluator(model, target, key=key, config=cfg).run(samples, meta=meta)
        results.append(result)
        print(table.summary(result, name))
    out = write_results(args.out, results, force=args.force)
    print(f"metrics: {out}")
    return 0


def _eval_task(args) -> int:
    """``psic eval --task imagenet | celeba | caption`` (psic_adapter.eval.tasks)."""
    from .adapter import codec_for_adapter, load_adapter
    from .errors import ConfigError
    from .eval import tasks
    from .eval.runner import EvalConfig, headline, write_eval_report
    from .targets import build_target

    task = args.task
    if len(args.data) != 1:
        raise ConfigError(f"--task {task} takes one --data folder")
    args.data = args.data[0]
    if str(args.data).strip().lower() == "samples":
        raise ConfigError(f"--task {task} needs --data DIR (" + {
            "imagenet": "an ImageFolder of ImageNet synset folders, or of any classes",
            "celeba": "CelebA's folder: list_attr_celeba.txt + img_align_celeba/",
            "caption": "the folder of the images to caption"}[task] + ")")
    if args.crop:
        raise ConfigError("--crop applies to --task classify only (the other tasks take whole images)")
    if task == "caption" and not args.captioner:
        raise ConfigError("--task caption needs --captioner NAME_OR_PATH (e.g. Salesforce/blip-image-captioning-base)")
    if task != "caption" and not args.target:
        args.parser.error(f"--task {task} needs --target (e.g. clip:ViT-B-32)")
    device = _device(args.device)
    key = _read_key(args)
    target = build_target(args.target, weights=args.target_weights, device=device) if task != "caption" else None
    cfg = EvalConfig(wrong_keys=0, attack_steps=0, perturbations=(), seed=args.seed)
    captioner = None
    if task == "caption":
        captioner = tasks.HFCaptioner(args.captioner, device=device, max_new_tokens=args.max_new_tokens)
    runs = {}
    for adapter in args.adapter:
        codec = codec_for_adapter(adapter, args.checkpoint)  # entropy coding on the CPU
        model = load_adapter(codec, adapter)
        name = Path(adapter).resolve().parent.name if Path(adapter).name == "adapter" else Path(adapter).name
        if task == "imagenet":
            result = tasks.imagenet_zero_shot(model, target, args.data, key=key, limit=args.count, config=cfg, progress=True)
        elif task == "celeba":
            result = tasks.celeba_attributes(model, target, args.data, key=key, limit=args.count,
                                             split=args.split or "test", config=cfg, progress=True)
        else:
            result = tasks.captioning(model, None, captioner, args.data, args.captions, key=key, limit=args.count,
                                      max_new_tokens=args.max_new_tokens, device=device, split=args.split,
                                      seed=args.seed, progress=True)
        runs[name] = tasks.report_run(result)
        h = {**headline(runs[name]), **runs[name]["task_headline"]}
        print(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in h.items()))
    meta = {"task": task, "target": args.target, "data": str(args.data), "count": args.count, "split": args.split,
            "adapters": list(args.adapter), "key_given": key is not None, "seed": args.seed}
    if task == "caption":
        meta.update(captioner=str(args.captioner), captions=args.captions, max_new_tokens=args.max_new_tokens)
    if len(runs) == 1:
        meta["task_headline"] = next(iter(runs.values()))["task_headline"]
    html = write_eval_report(args.out, runs, meta, force=args.force)
    print(f"report: {html}")
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(codec=args.codec, quality=args.quality, checkpoint=args.checkpoint)
    if args.steps is not None:
        cfg.adapter_steps = args.steps
    if args.scratch_steps is not None:
        cfg.scratch_steps = args.scratch_steps
    if args.quick:  # a smoke run: minutes -> seconds, numbers meaningless
        cfg.scratch_steps, cfg.adapter_steps, cfg.batch, cfg.crop = 4, 4, 2, 64
        cfg.eval_crops, cfg.eval_crop, cfg.wrong_keys, cfg.attack_steps = 4, 64, 2, 1
    run_demo(args.out, cfg, force=args.force)
    return 0


def cmd_push(args) -> int:
    from .errors import PSICError
    from .hub import push_to_hub

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            raise PSICError(f"the environment variable {args.token_env} holding the hub token is not set or empty")
    info = push_to_hub(args.adapter_dir, args.repo_id, private=args.private, token=token, revision=args.revision,
                       commit_message=args.commit_message, create_pr=args.create_pr, card_metrics=args.metrics)
    url = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info
    print(f"{args.repo_id}: pushed adapter_config.json, adapter_model.safetensors, README.md ({url})")
    return 0


# ------------------------------------------------------------------ parser
def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="fit an adapter (stage 2) or train codec + adapter (stage 1)")
    _codec_args(p, required=True, device=True)
    p.add_argument("--from-scratch", action="store_true", help="random codec weights (stage 1 from scratch)")
    p.add_argument("--adapter", metavar="DIR", help="continue training this adapter (needs its key)")
    p.add_argument("--preset", default="paper", choices=["paper", "official"], help="CLTG preset of a new adapter")
    p.add_argument("--modulation", default="bias", choices=["bias", "film", "spatial"],
                   help="CLTG fusion of a new adapter: the paper's bias, or a bias and a gain (FiLM)")
    p.add_argument("--public", action="store_true", help="the paper's public mode bit instead of a key (not access-controlled)")
    p.add_argument("--target", required=True,
                   help="efficientnet-lite0 | clip:MODEL | timm:MODEL | A+B (ensemble)")
    p.add_argument("--target-weights", metavar="F", help="target weights: a local file, a tag (CLIP: openai), or 'random'")
    p.add_argument("--data", required=True, help="'samples' (bundled photos), a caption folder, an ImageFolder tree, or a CSV")
    p.add_argument("--stage", type=int, default=2, choices=[1, 2])
    p.add_argument("--adapter-only", action="store_true", help="stage 2: train the CLTG parameters alone")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--lr", type=float, help="codec learning rate (paper: 1e-4 stage 1, 1e-5 stage 2)")
    p.add_argument("--adapter-lr", type=float, help="CLTG learning rate (default: lr in stage 1, 1e-3 in stage 2)")
    p.add_argument("--lmbda", type=float, help="rate-distortion lambda (default: CompressAI's for --quality)")
    p.add_argument("--objective", default="uaeo", choices=["uaeo", "naive", "authors", "margin"])
    p.add_argument("--encryption-weight", type=float, default=1.0)
    p.add_argument("--encrypted-distortion", type=float, help="encrypted distortion weight (default 1 stage 1, 0.3 stage 2)")
    p.add_argument("--guard-weight", type=float,
                   help="semantic guard on the full version (0: the paper; default 1, or 0 with --adapter-only)")
    p.add_argument("--budget-db", type=float,
                   help="stage 2: a per-image PSNR budget of the encrypted version under the base decode (a hard hinge)")
    p.add_argument("--eot", nargs="?", const="basic", default="none", choices=["none", "basic", "real"],
                   help="show the target the encrypted decode through random processing: basic (resizes, blurs, "
                        "noise) or real (thumbnails, JPEG, blur, the base codec again)")
    p.add_argument("--views", default="crops", choices=["crops", "scale"],
                   help="crops: random --crop crops; scale (stage 2): images encoded once at --train-sizes, "
                        "square windows of --view-sizes cut from the latents")
    p.add_argument("--view-sizes", type=int, nargs=2, default=[224, 512], metavar=("MIN", "MAX"))
    p.add_argument("--train-sizes", type=int, nargs="+", default=[384, 512, 768], metavar="PX",
                   help="longer sides at which the training images are encoded (--views scale)")
    p.add_argument("--margin", type=float, default=5.0, help="margin of the margin objective, in logits")
    p.add_argument("--schedule", default="alternate", choices=["alternate", "joint"])
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder and the target")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0, help="save a resumable checkpoint every N steps")
    p.add_argument("--log-every", type=int, default=10)
    _key_args(p)
    p.add_argument("--out", required=True, help="output folder (adapter/, log.jsonl, checkpoint.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors (same settings)")
    p.add_argument("--force", action="store_true", help="overwrite an earlier run in OUT")
    p.set_defaults(func=cmd_train)


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="measure adapters: bpp, PSNR, ASR, robustness, wrong keys, white-box attack")
    p.add_argument("--adapter", nargs="+", required=True, metavar="DIR", help="adapter folder(s) or hub id(s)")
    p.add_argument("--checkpoint", nargs="+", metavar="FILE", help="base codec weights (default: codec.safetensors beside the adapter, else the zoo)")
    _key_args(p)
    p.add_argument("--task", default="classify", choices=["classify", "imagenet", "celeba", "caption"],
                   help="classify (default): the checks below on --data; imagenet: zero-shot top-1 on an ImageFolder of "
                        "synsets; celeba: 40 facial attributes; caption: BLEU/CIDEr of --captioner's captions")
    p.add_argument("--target", help="efficientnet-lite0 | clip:MODEL | timm:MODEL | A+B (required, except for --task caption)")
    p.add_argument("--target-weights", metavar="F")
    p.add_argument("--data", nargs="+", default=["samples"],
                   help="'samples' (the bundled test photos), a folder of images, a caption folder, an ImageFolder "
                        "tree or a CSV; several are evaluated together")
    p.add_argument("--captions", metavar="FILE", help="caption task: reference captions (Flickr8k.token.txt, a COCO or "
                   "Karpathy JSON, a CSV; default: a .txt caption beside each image)")
    p.add_argument("--captioner", metavar="NAME_OR_PATH", help="caption task: a Hugging Face image-to-text model, hub id "
                   "or folder (the paper: Salesforce/blip2-opt-2.7b)")
    p.add_argument("--max-new-tokens", type=int, default=30, help="caption task: caption length limit")
    p.add_argument("--split", help="celeba: train | val | test (default) | all; caption: a file of image names "
                   "(Flickr_8k.devImages.txt) or a Karpathy JSON split")
    p.add_argument("--scales", nargs="+", metavar="SCALE",
                   help="native (whole images at their size), crops (random --crop crops), or a longer side in px "
                        "(512, 1024: whole images resized first); default: crops native 512 1024")
    p.add_argument("--robustness-scales", nargs="+", metavar="SCALE",
                   help="scales that get the perturbations (default: every scale)")
    p.add_argument("--primary", metavar="SCALE", help="scale of the headline, wrong keys and attack (default: the first)")
    p.add_argument("--crop", type=int, help="crop size of the crops scale (default 224); alone, the crops scale only")
    p.add_argument("--crops", type=int, help="number of crops of the crops scale (default 96)")
    p.add_argument("--count", type=int, help="use the first COUNT images (with --crop alone: number of crops)")
    p.add_argument("--wrong-keys", type=int, default=100)
    p.add_argument("--attack-steps", type=int, default=50, help="white-box attacker's steps (0: skip)")
    p.add_argument("--attack-images", type=int, default=16)
    p.add_argument("--no-robustness", action="store_true", help="skip JPEG / resize / blur / codec re-encoding")
    p.add_argument("--device", default="cpu", help="device for the target model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="report folder (metrics.json, report.html, PNGs)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report")
    p.set_defaults(func=cmd_eval, parser=p)


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the whole job offline: codec, key, adapter, bitstream, report")
    p.add_argument("--out", default="psic-demo", help="output folder (default: psic-demo)")
    p.add_argument("--codec", default="bmshj2018-hyperprior")
    p.add_argument("--quality", type=int, default=3)
    p.add_argument("--checkpoint", nargs="+", metavar="FILE", help="use these codec weights (else zoo, else train from scratch)")
    p.add_argument("--steps", type=int, help="adapter training steps")
    p.add_argument("--scratch-steps", type=int, help="stage-1 steps when a codec is trained from scratch")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (meaningless numbers)")
    p.add_argument("--force", action="store_true", help="reuse a non-empty output folder")
    p.set_defaults(func=cmd_demo)


def _push_parser(sub) -> None:
    p = sub.add_parser("push", help="upload an adapter with a model card to the Hugging Face Hub (never the key)")
    p.add_argument("adapter_dir", metavar="ADAPTER_DIR", help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("repo_id", metavar="REPO_ID", help="hub id, org/name (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", metavar="R", help="branch to push to (created when missing; default main)")
    p.add_argument("--metrics", metavar="F", help="metrics.json of `psic eval` (or its report folder): a table in the card")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding the hub token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--commit-message", metavar="M", help="commit message (default: 'Upload PSIC adapter')")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.set_defaults(func=cmd_push)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="psic", description="Privacy-Shielded Image Compression adapters for CompressAI codecs.")
    parser.add_argument("--version", action="version", version=f"psic-adapter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("compress", help="image -> .psic (the base codec's bitstream)")
    p.add_argument("input", help="PNG (8/16-bit, grey, RGB, RGBA) or JPEG")
    p.add_argument("output", help=".psic file to write")
    _codec_args(p, required=True)
    p.add_argument("--adapter", metavar="DIR", help="adapter the file is meant for (recorded; bitstream unchanged)")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help=".psic -> image (encrypted by default, full with the owner's key)")
    p.add_argument("input")
    p.add_argument("output", help="image file to write (.png keeps 16-bit and alpha)")
    p.add_argument("--checkpoint", nargs="+", metavar="FILE", help="the base codec's weights (as for compress)")
    p.add_argument("--adapter", metavar="DIR", help="adapter folder or hub id")
    _key_args(p)
    p.add_argument("--plain", action="store_true", help="decode with the base codec alone, no adapter")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("keygen", help="write a new random key file (mode 600)")
    p.add_argument("output")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("info", help="print a .psic file's header")
    p.add_argument("input")
    p.set_defaults(func=cmd_info)

    _train_parser(sub)
    _eval_parser(sub)
    _demo_parser(sub)
    _push_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .errors import PSICError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PSICError as exc:
        print(f"psic: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("psic: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
