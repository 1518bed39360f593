"""``psic bavaft``: the BAvAFT baseline (Yu et al., CVPR 2023) from the command line: train it, then evaluate it
with the same protocol as PSIC adapters."""

from __future__ import annotations

from .common import add_codec_args, codec_name_and_quality, device_of, load_codec


def add_parser(sub) -> None:
    p = sub.add_parser("bavaft", help="the BAvAFT baseline: train it (train) or measure it like an adapter (eval)")
    sp = p.add_subparsers(dest="bavaft_command", metavar="{train,eval}")
    sp.required = True

    t = sp.add_parser("train", help="fit a BAvAFT trigger and encoder against a target")
    add_codec_args(t, device=True)
    t.add_argument("--target", required=True, help="efficientnet-lite0 | clip:MODEL | timm:MODEL")
    t.add_argument("--target-weights", metavar="F")
    t.add_argument("--data", required=True, help="'samples' or a folder of images")
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--crop", type=int, default=128)
    t.add_argument("--objective", default="margin", choices=["uaeo", "naive", "authors", "margin"])
    t.add_argument("--seed", type=int, default=0)
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
    e.add_argument("--scales", nargs="+", default=["crops", "native", "long512"])
    e.add_argument("--crops", type=int, default=96)
    e.add_argument("--count", type=int)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True)
    e.add_argument("--force", action="store_true")
    e.set_defaults(func=run_eval)


def run_train(args) -> int:
    from ..baselines.bavaft import BAvAFT, BAvAFTConfig, BAvAFTTrainConfig, train_bavaft
    from ..data import build_dataset, repeats_for
    from ..targets import build_target

    name, quality = codec_name_and_quality(args)
    device = device_of(args.device)
    codec = load_codec(name, quality, args.checkpoint, device=device)
    model = BAvAFT(codec, BAvAFTConfig())
    target = build_target(args.target, weights=args.target_weights, device=device)
    repeats = repeats_for(args.batch) if str(args.data).strip().lower() == "samples" else 1
    data = build_dataset(args.data, crop=args.crop, split="train", seed=args.seed, repeats=repeats)
    cfg = BAvAFTTrainConfig(steps=args.steps, batch_size=args.batch, crop=args.crop, objective=args.objective,
                            seed=args.seed)
    res = train_bavaft(model, target, data, cfg, args.out, quality=quality, device=device, resume=args.resume,
                       force=args.force, recipe={"codec": name, "quality": quality, "target": args.target,
                                                 "data": str(args.data)})
    print(f"bavaft: {res['bavaft']}; {res['steps']} steps; log: {res['log']}")
    return 0


def run_eval(args) -> int:
    from ..baselines.bavaft import BAvAFTDecoder, load_bavaft
    from ..eval import table
    from ..eval.report import ReportRun, write_report
    from ..eval.runner import EvalConfig, Evaluator, load_samples
    from ..targets import build_target

    name, quality = codec_name_and_quality(args)
    codec = load_codec(name, quality, args.checkpoint)
    decoder = BAvAFTDecoder(load_bavaft(codec, args.bavaft_dir), codec)
    target = build_target(args.target, weights=args.target_weights)
    samples = [s for spec in args.data for s in load_samples(spec, seed=args.seed)][: args.count]
    cfg = EvalConfig(scales=args.scales, crops=args.crops, wrong_keys=0, attack_steps=0, seed=args.seed)
    ev = Evaluator(decoder, target, config=cfg)
    result = ev.run(samples, meta={"name": "BAvAFT", "data": list(args.data), "bavaft": str(args.bavaft_dir)})
    print(table.summary(result, "BAvAFT"))
    print(f"report: {write_report(args.out, [ReportRun('BAvAFT', result, ev.gallery)], title='BAvAFT', force=args.force)}")
    return 0
