"""``psic demo``: the whole job offline: a codec, the shipped adapter, your own adapter, a report."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the whole job offline: codec, key, adapter, bitstream, report (minutes: "
                                    "it says how long before each part)")
    p.add_argument("--out", default="psic-demo", help="output folder (default: psic-demo)")
    p.add_argument("--codec", default="bmshj2018-hyperprior",
                   help="the codec's registry name, or 'zoo' to download CompressAI's bmshj2018-hyperprior "
                        "(default: the codec shipped with psic-adapter)")
    p.add_argument("--quality", type=int, default=3)
    p.add_argument("--checkpoint", nargs="+", metavar="FILE", help="use these codec weights instead of the shipped ones")
    p.add_argument("--steps", type=int,
                   help="steps of your own adapter's fit (default 100: minutes; the shipped adapter took 1500)")
    p.add_argument("--no-fit", action="store_true", help="show the shipped adapter only (no fit)")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (meaningless numbers)")
    p.add_argument("--force", action="store_true", help="reuse a non-empty output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import DemoConfig, run_demo

    zoo = args.codec == "zoo"
    cfg = DemoConfig(codec="bmshj2018-hyperprior" if zoo else args.codec, quality=args.quality,
                     checkpoint=args.checkpoint, zoo=zoo, fit=not args.no_fit)
    if args.steps is not None:
        cfg.steps = args.steps
    if args.quick:  # a smoke run: minutes -> seconds, numbers meaningless
        cfg.steps, cfg.batch, cfg.crops, cfg.wrong_keys = 2, 2, 2, 1
        cfg.scales, cfg.perturbations = ("crops",), ()
        cfg.extra = {"view_sizes": (224, 224), "train_sizes": (256,)}
    run_demo(args.out, cfg, force=args.force)
    return 0
