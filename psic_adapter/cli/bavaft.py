"""``psic bavaft``: the BAvAFT baseline (Yu et al., CVPR 2023) from the command line: train it, then evaluate it
with the same protocol as PSIC adapters. The training flags are made from
:class:`~psic_adapter.baselines.bavaft.BAvAFTTrainConfig` and the evaluation's from
:class:`~psic_adapter.eval.config.EvalConfig`, so the command line and the API share their defaults."""

from __future__ import annotations

from .common import add_codec_args

#: the command's line in `psic --help`, which lists it without building its options (they load torch)
HELP = "the BAvAFT baseline: train it (train) or measure it like an adapter (eval)"
#: the evaluation flags of `psic bavaft eval` (it has no key: no wrong keys, no white-box attack)
EVAL_FLAGS = ("scales", "crops", "seed")


def add_parser(sub) -> None:
    from ..baselines.bavaft import BAvAFTTrainConfig
    from ..eval.config import EvalConfig
    from ..options import add_config_flags, flag_fields

    p = sub.add_parser("bavaft", help=HELP)
    sp = p.add_subparsers(dest="bavaft_command", metavar="{train,eval}")
    sp.required = True

    t = sp.add_parser("train", help="fit a BAvAFT trigger and encoder against a target")
    add_codec_args(t, device=True)
    t.add_argument("--target", required=True, help="efficientnet-lite0 (or -lite1, -lite2) | clip:MODEL | timm:MODEL")
    t.add_argument("--target-weights", metavar="F")
    t.add_argument("--data", required=True, help="'samples' or a folder of images")
    add_config_flags(t.add_argument_group("training (defaults: BAvAFTTrainConfig's)"), BAvAFTTrainConfig)
    t.add_argument("--out", required=True, help="output folder (bavaft/, log.jsonl, checkpoint)")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--force", action="store_true")
    t.set_defaults(func=run_train)

    e = sp.add_parser("eval", help="measure a trained BAvAFT with psic eval's protocol (scales, control, robustness)")
    add_codec_args(e)
    e.add_argument("bavaft_dir", metavar="DIR", help="the bavaft/ folder that `psic bavaft train` wrote")
    e.add_argument("--target", required=True)
    e.add_argument("--target-weights", metavar="F")
    e.add_argument("--data", nargs="+", default=["samples"])
    add_config_flags(e.add_argument_group("evaluation (defaults: EvalConfig's)"), EvalConfig,
                     skip=[f.name for f in flag_fields(EvalConfig) if f.name not in EVAL_FLAGS])
    e.add_argument("--count", type=int)
    e.add_argument("--out", required=True)
    e.add_argument("--force", action="store_true")
    e.set_defaults(func=run_eval)


def train_config(args):
    from ..baselines.bavaft import BAvAFTTrainConfig
    from ..options import given

    return BAvAFTTrainConfig(**given(args, BAvAFTTrainConfig))


def eval_config(args):
    from ..eval.config import EvalConfig
    from ..options import given

    return EvalConfig(**given(args, EvalConfig), wrong_keys=0, attack_steps=0)


def run_train(args) -> int:
    from ..workflows import train_bavaft

    res = train_bavaft(train_config(args), target=args.target, target_weights=args.target_weights, data=args.data,
                       out=args.out, codec=args.codec, quality=args.quality, checkpoint=args.checkpoint,
                       device=args.device, resume=args.resume, force=args.force)
    print(f"bavaft: {res['bavaft']}; {res['steps']} steps; log: {res['log']}")
    return 0


def run_eval(args) -> int:
    from ..workflows import evaluate_bavaft

    html = evaluate_bavaft(args.bavaft_dir, eval_config(args), target=args.target, target_weights=args.target_weights,
                           data=args.data, count=args.count, out=args.out, codec=args.codec, quality=args.quality,
                           checkpoint=args.checkpoint, force=args.force, say=print)
    print(f"report: {html}")
    return 0
