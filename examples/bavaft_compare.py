#!/usr/bin/env python
"""Train the BAvAFT baseline and measure it with ``psic eval``'s protocol.

BAvAFT (Yu et al., CVPR 2023; the baseline of the PSIC paper) fine-tunes a
codec's encoder and a DCT-domain trigger network so that the *poisoned*
encoding (trigger, then encoder) decodes, with the unmodified decoder, to an
image that misleads the target, while the *clean* encoding stays a normal
compression. See ``psic_adapter/baselines/bavaft/``. (``psic bavaft train`` and
``psic bavaft eval`` do the same from the command line.)

1. Train on random crops of the training photos (default: the bundled ones;
   ``--data DIR`` for a folder) against the target (default: ImageNet
   EfficientNet-Lite0, the margin objective) on the codec shipped with
   psic-adapter (``--checkpoint FILE`` for another).
2. Evaluate with ``psic eval``'s protocol (:class:`~psic_adapter.eval.runner.Evaluator`
   with :class:`~psic_adapter.baselines.bavaft.BAvAFTDecoder`): ``--scales``
   (default: seeded 224x224 crops and whole photos at a longer side of 512),
   the control beside every ASR, the perturbations. Three real encodings per
   image (base codec, BAvAFT clean, BAvAFT poisoned), bpp from the bytes.
3. Print the tables and write ``metrics.json`` + ``report.html``.

Defaults take about 15 minutes on 2 CPU cores shared with other jobs (200
steps at 3-4.5 s a step, about 2 minutes of evaluation). That is a short run
for a backdoor: a longer one, e.g.::

    python examples/bavaft_compare.py --steps 1000 --out runs/bavaft-q3 --force

Evaluate an already trained model without training again::

    python examples/bavaft_compare.py --bavaft runs/bavaft-q3/train/bavaft --out runs/bavaft-q3-eval
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("codec and target")
    g.add_argument("--codec", default="bmshj2018-hyperprior")
    g.add_argument("--quality", type=int, default=3)
    g.add_argument("--checkpoint", nargs="+", default=["shipped"],
                   help="base codec weights (default: the codec shipped with psic-adapter)")
    g.add_argument("--target", default="efficientnet-lite0", help="efficientnet-lite0 (or -lite1, -lite2) | clip:MODEL | timm:MODEL | A+B")
    g.add_argument("--target-weights", metavar="F")
    g = p.add_argument_group("training")
    g.add_argument("--data", default="samples", help="training photos: 'samples' or a folder")
    g.add_argument("--bavaft", metavar="DIR", help="evaluate this trained BAvAFT folder instead of training")
    g.add_argument("--steps", type=int, default=200)
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--crop", type=int, default=128)
    g.add_argument("--objective", default="margin", choices=["uaeo", "margin", "naive", "authors"])
    g.add_argument("--lr", type=float, default=1e-5, help="encoder learning rate")
    g.add_argument("--trigger-lr", type=float, default=1e-3)
    g.add_argument("--lmbda", type=float, help="RD lambda (default: CompressAI's for --quality)")
    g.add_argument("--attack-weight", type=float, default=1.0, help="prior weight of the attack term")
    g.add_argument("--rate-weight", type=float, default=1.0, help="prior weight of the poisoned rate")
    g.add_argument("--distortion-weight", type=float, default=1.0, help="prior weight of the poisoned distortion")
    g.add_argument("--balance", default="dynamic", choices=["dynamic", "fixed"])
    g.add_argument("--amplitude", type=float, default=8.0, help="trigger bound, in 1/255 units")
    g.add_argument("--top-k", type=int, default=16, help="frequencies per colour channel")
    g.add_argument("--g-a-only", action="store_true", help="fine-tune g_a alone (default: g_a and h_a)")
    g.add_argument("--lr-milestones", type=float, nargs="*", default=[], help="fractions of --steps where lrs drop 10x")
    g.add_argument("--checkpoint-every", type=int, default=50)
    g.add_argument("--resume", action="store_true", help="continue OUT/train from its checkpoint")
    g = p.add_argument_group("evaluation")
    g.add_argument("--count", type=int, default=96, help="seeded 224x224 crops of the crops scale")
    g.add_argument("--scales", nargs="+", default=["crops", "long512"], help="evaluation scales (as psic eval)")
    g.add_argument("--eval-data", nargs="+", default=["samples"], help="evaluation images (as psic eval --data)")
    g.add_argument("--no-robustness", action="store_true", help="skip JPEG / resize / blur / codec re-encoding")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0: torch's default; 1 was fastest on 2 cores shared with other jobs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bavaft-compare", help="output folder (train/, report/)")
    p.add_argument("--force", action="store_true", help="overwrite an earlier run in OUT")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from psic_adapter.baselines.bavaft import BAvAFT, BAvAFTConfig, BAvAFTDecoder, BAvAFTTrainConfig, load_bavaft, \
        train_bavaft
    from psic_adapter.workflows import load_codec
    from psic_adapter.data import build_dataset, repeats_for
    from psic_adapter.errors import OverwriteError
    from psic_adapter.eval import table
    from psic_adapter.eval.report import ReportRun, write_report
    from psic_adapter.eval.config import PERTURBATIONS
    from psic_adapter.eval.runner import EvalConfig, Evaluator, load_samples
    from psic_adapter.targets import build_target

    out = Path(args.out)
    result_path = out / "report" / "metrics.json"
    if result_path.exists() and not (args.force or args.resume):
        raise OverwriteError(f"{result_path} exists (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def say(msg):
        print(f"[bavaft] {msg}", flush=True)

    codec = load_codec(args.codec, args.quality, args.checkpoint)
    target = build_target(args.target, weights=args.target_weights)
    say(f"codec {args.codec} q{args.quality} from {', '.join(args.checkpoint)}; target {target.name}")

    train_info = None
    if args.bavaft:
        model = load_bavaft(codec, args.bavaft)
        say(f"loaded {args.bavaft}")
    else:
        torch.manual_seed(args.seed)
        model = BAvAFT(codec, BAvAFTConfig(amplitude=args.amplitude / 255.0, top_k=args.top_k,
                                           train_hyper_encoder=not args.g_a_only))
        repeats = repeats_for(args.batch) if args.data == "samples" else 1
        data = build_dataset(args.data, crop=args.crop, split="train", seed=args.seed, repeats=repeats)
        cfg = BAvAFTTrainConfig(steps=args.steps, batch_size=args.batch, crop=args.crop, lr=args.lr,
                                trigger_lr=args.trigger_lr, lmbda=args.lmbda, objective=args.objective,
                                attack_weight=args.attack_weight, rate_weight=args.rate_weight,
                                distortion_weight=args.distortion_weight, balance=args.balance,
                                lr_milestones=args.lr_milestones, seed=args.seed,
                                checkpoint_every=args.checkpoint_every, log_every=10)
        say(f"training {args.steps} steps, batch {args.batch}, crop {args.crop}, objective {args.objective}")
        t0 = time.perf_counter()
        train_info = train_bavaft(model, target, data, cfg, out / "train", quality=args.quality, device="cpu",
                                  resume=args.resume, force=args.force,
                                  recipe={"codec": args.codec, "quality": args.quality,
                                          "checkpoint": list(args.checkpoint), "data": args.data})
        train_info["minutes"] = round((time.perf_counter() - t0) / 60, 2)
        say(f"trained in {train_info['minutes']} min -> {train_info['bavaft']}")
    model.eval()

    cfg = EvalConfig(scales=args.scales, crops=args.count, wrong_keys=0, attack_steps=0, seed=args.seed,
                     perturbations=() if args.no_robustness else PERTURBATIONS, grid_images=3)
    samples = [s for spec in args.eval_data for s in load_samples(spec, seed=args.seed)]
    ev = Evaluator(BAvAFTDecoder(model, codec), target, config=cfg)
    result = ev.run(samples, meta={"name": "BAvAFT", "training": train_info, "args": vars(args),
                                   "data": list(args.eval_data)})
    print(table.summary(result, "BAvAFT"))
    html = write_report(out / "report", [ReportRun("BAvAFT", result, ev.gallery, out / "train" / "log.jsonl")],
                        title="BAvAFT", force=True)
    say(f"report: {html} ({(time.perf_counter() - t_start) / 60:.1f} min in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
