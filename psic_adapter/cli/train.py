"""``psic train``: fit an adapter (stage 2) or train codec + adapter (stage 1).

The training flags are generated from :class:`~psic_adapter.training.TrainConfig`'s
fields (their help is in the field metadata), so a default lives in one place;
``--recipe`` picks a named set of defaults that explicit flags override.
"""

from __future__ import annotations

from .common import add_codec_args, add_key_args, read_key

#: the command's line in `psic --help`, which lists it without building its options (they load torch)
HELP = "fit an adapter (stage 2) or train codec + adapter (stage 1)"


def add_parser(sub) -> None:
    from ..options import add_config_flags
    from ..training import RECIPES, TrainConfig
    from ..workflows import MEASURED_ROUNDS, ROUND_CHECKPOINT_EVERY

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
    p.add_argument("--spatial-rank", type=int, metavar="N",
                   help="hidden channels of a new adapter's spatial branch (default: the recipe's, 8 for robust; "
                        "32 where a recipe names none)")
    p.add_argument("--spatial-context", type=int, metavar="K",
                   help="give a new adapter's spatial branches a global context: an MLP of K hidden units from the "
                        "image's per-channel means and spreads (default: none)")
    p.add_argument("--public", action="store_true", help="the paper's public mode bit instead of a key (not access-controlled)")
    p.add_argument("--target", required=True, help="efficientnet-lite0 (or -lite1, -lite2) | clip:MODEL | timm:MODEL | A+B (ensemble)")
    p.add_argument("--target-weights", metavar="F", help="target weights: a local file, a tag (CLIP: openai), or 'random'")
    p.add_argument("--data", required=True, help="'samples' (bundled photos), a folder of images (flat or nested), "
                   "a caption folder, an ImageFolder tree, or a CSV")
    add_config_flags(p.add_argument_group("training (defaults: the recipe's, then TrainConfig's)"), TrainConfig,
                     recipes={name: r["train"] for name, r in RECIPES.items()})
    add_key_args(p)
    p.add_argument("--out", required=True, help="output folder (adapter/, log.jsonl, checkpoint.safetensors)")
    p.add_argument("--rounds", type=int, nargs="+", metavar="STEPS",
                   help="fit in rounds of these steps (instead of --steps), each calibrated as psic calibrate does by "
                        "default and the next fitted from it: OUT/round-K/adapter-cal is round K's adapter, the last "
                        f"one the run's; a checkpoint every {ROUND_CHECKPOINT_EVERY} steps unless --checkpoint-every gives "
                        f"another (not 0). The measured recipe: --rounds {' '.join(map(str, MEASURED_ROUNDS))} "
                        "(docs/results.md, IS1y)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors (same settings); "
                   "with --rounds, from the first round not finished")
    p.add_argument("--force", action="store_true", help="overwrite an earlier run in OUT")
    p.set_defaults(func=run)


def recipe_of(args):
    """The :class:`~psic_adapter.workflows.Recipe` the flags ask for."""
    from ..options import given
    from ..training import TrainConfig
    from ..workflows import Recipe

    return Recipe.named(args.recipe, preset=args.preset, modulation=args.modulation, spatial_rank=args.spatial_rank,
                        spatial_context=args.spatial_context, **given(args, TrainConfig))


def run(args) -> int:
    from ..workflows import train

    key = read_key(args)
    if args.rounds:
        return run_rounds(args, key)
    result = train(recipe_of(args), target=args.target, target_weights=args.target_weights, data=args.data,
                   out=args.out, codec=args.codec, quality=args.quality, checkpoint=args.checkpoint,
                   from_scratch=args.from_scratch, adapter=args.adapter, key=key, public=args.public,
                   device=args.device, resume=args.resume, force=args.force)
    if result["is_main"]:
        last = result["last"]
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("psnr_full", "psnr_encrypted", "encryption", "bpp") if k in last)
        print(f"recipe: {result['recipe']}; adapter: {result['adapter']}"
              + (f"\ncodec: {result['codec']}" if "codec" in result else ""))
        print(f"{result['steps']} steps; last step: {shown}; log: {result['log']}")
    return 0


def run_rounds(args, key) -> int:
    """``psic train --rounds``: :func:`~psic_adapter.workflows.train_rounds`, saying each round."""
    from ..errors import ConfigError
    from ..workflows import train_rounds

    if args.steps is not None:
        raise ConfigError("--rounds gives each round's steps: leave out --steps")
    result = train_rounds(recipe_of(args), args.rounds, target=args.target, target_weights=args.target_weights,
                          data=args.data, out=args.out, codec=args.codec, quality=args.quality,
                          checkpoint=args.checkpoint, from_scratch=args.from_scratch, adapter=args.adapter, key=key,
                          public=args.public, device=args.device, resume=args.resume, force=args.force, log=print)
    print(f"{len(args.rounds)} rounds ({sum(args.rounds)} steps); adapter: {result['adapter']}")
    return 0
