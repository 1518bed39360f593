"""``psic demo``: the whole job offline: a codec, the shipped adapter, your own adapter, a report. Its flags are
made from :class:`~psic_adapter.demo.DemoConfig`, so the command and the API share their defaults."""

from __future__ import annotations

#: the command's line in `psic --help`
HELP = "the whole job offline: codec, key, adapter, bitstream, report (minutes: it says how long before each part)"


def add_parser(sub) -> None:
    from ..demo import DemoConfig
    from ..options import add_config_flags

    p = sub.add_parser("demo", help=HELP)
    p.add_argument("--out", default="psic-demo", help="output folder (default: psic-demo)")
    add_config_flags(p, DemoConfig)
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run (meaningless numbers)")
    p.add_argument("--force", action="store_true", help="reuse a non-empty output folder")
    p.set_defaults(func=run)


def demo_config(args):
    """The :class:`DemoConfig` the flags ask for (``--codec zoo``: CompressAI's codec, downloaded)."""
    from ..demo import DemoConfig
    from ..options import given

    settings = given(args, DemoConfig)
    if settings.get("codec") == "zoo":
        settings.update(codec=DemoConfig.codec, zoo=True)
    cfg = DemoConfig(**settings)
    if args.quick:  # a smoke run: minutes -> seconds, numbers meaningless
        cfg.steps, cfg.batch, cfg.crops, cfg.wrong_keys, cfg.shift_steps = 2, 2, 2, 1, 1
        cfg.scales, cfg.perturbations = ("crops",), ()
        cfg.extra = {"view_sizes": (224, 224), "train_sizes": (256,)}
    return cfg


def run(args) -> int:
    from ..demo import run_demo

    run_demo(args.out, demo_config(args), force=args.force)
    return 0
