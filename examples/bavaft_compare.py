#!/usr/bin/env python
"""Train the BAvAFT baseline and measure it with ``psic eval``'s protocol.

BAvAFT (Yu et al., CVPR 2023; the baseline of the PSIC paper) fine-tunes a
codec's encoder and a DCT-domain trigger network so that the *poisoned*
encoding (trigger, then encoder) decodes, with the unmodified decoder, to an
image that misleads the target, while the *clean* encoding stays a normal
compression. See ``psic_adapter/baselines/bavaft.py``.

1. Train on random crops of the bundled training photos against the target
   (default: ImageNet EfficientNet-Lite0, the margin objective as ``psic demo``)
   on the shared codec ``../shared/codecs/bmshj2018-hyperprior-q3``.
2. Evaluate on the bundled test photos (never trained on), as ``psic eval``:
   whole photos at native resolution, and ``--count`` seeded 224x224 crops
   (``load_samples("samples", crop=224, count=N)``). Three real encodings per
   image (base codec, BAvAFT clean, BAvAFT poisoned), bpp from the bytes.
3. Print bpp / PSNR of base, clean and poisoned, the ASR of the poisoned mode
   (and of the clean one) against the base codec, and write a JSON.

Defaults take about 15 minutes on 2 CPU cores shared with other jobs (200
steps at 3-4.5 s a step, about 2 minutes of evaluation). That is a short run
for a backdoor: a longer one, e.g.::

    python examples/bavaft_compare.py --steps 1000 --out runs/bavaft-q3 --force

Evaluate an already trained model without training again::

    python examples/bavaft_compare.py --bavaft runs/bavaft-q3/train/bavaft --out runs/bavaft-q3-eval
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "codecs" / "bmshj2018-hyperprior-q3"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("codec and target")
    g.add_argument("--codec", default="bmshj2018-hyperprior")
    g.add_argument("--quality", type=int, default=3)
    g.add_argument("--checkpoint", nargs="+", default=[str(DEFAULT_CHECKPOINT)],
                   help=f"base codec weights (default: {DEFAULT_CHECKPOINT})")
    g.add_argument("--target", default="efficientnet-lite0", help="efficientnet-lite0 | clip:MODEL | timm:MODEL | A+B")
    g.add_argument("--target-weights", metavar="F")
    g = p.add_argument_group("training")
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
    g.add_argument("--count", type=int, default=48, help="seeded 224x224 crops of the test photos (0: none)")
    g.add_argument("--eval-crop", type=int, default=224)
    g.add_argument("--no-whole", action="store_true", help="skip the whole test photos")
    g.add_argument("--no-robustness", action="store_true", help="skip JPEG / resize / blur / codec re-encoding")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (0: torch's default; 1 was fastest on 2 cores shared with other jobs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bavaft-compare", help="output folder (train/, bavaft_compare.json)")
    p.add_argument("--force", action="store_true", help="overwrite an earlier run in OUT")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from psic_adapter.baselines.bavaft import (
        BAvAFT,
        BAvAFTConfig,
        BAvAFTEvaluator,
        BAvAFTTrainConfig,
        bavaft_headline,
        load_bavaft,
        train_bavaft,
    )
    from psic_adapter.codecs import load_codec
    from psic_adapter.data import build_dataset
    from psic_adapter.errors import OverwriteError
    from psic_adapter.eval.report import to_jsonable
    from psic_adapter.eval.runner import EvalConfig, load_samples
    from psic_adapter.targets import build_target

    out = Path(args.out)
    result_path = out / "bavaft_compare.json"
    if result_path.exists() and not (args.force or args.resume):
        raise OverwriteError(f"{result_path} exists (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def say(msg):
        print(f"[bavaft] {msg}", flush=True)

    codec = load_codec(args.codec, args.quality, checkpoint=args.checkpoint)
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
        repeats = max(1, math.ceil(8 * args.batch / 6))  # as `psic demo`: several crops of each photo an epoch
        data = build_dataset("samples", crop=args.crop, split="train", seed=args.seed, repeats=repeats)
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
                                          "checkpoint": list(args.checkpoint), "data": "samples (train split)"})
        train_info["minutes"] = round((time.perf_counter() - t0) / 60, 2)
        say(f"trained in {train_info['minutes']} min -> {train_info['bavaft']}")
    model.eval()

    perts = () if args.no_robustness else EvalConfig.perturbations
    evaluator = BAvAFTEvaluator(model, target, base_codec=codec,
                                config=EvalConfig(perturbations=perts, seed=args.seed, grid_images=0))
    sets = {}
    if not args.no_whole:
        sets["whole photos"] = load_samples("samples", seed=args.seed)
    if args.count:
        sets[f"{args.count} crops {args.eval_crop}"] = load_samples("samples", crop=args.eval_crop, count=args.count,
                                                                    seed=args.seed)
    runs, summary = {}, {}
    for name, samples in sets.items():
        t0 = time.perf_counter()
        res = evaluator.run(samples)
        runs[name] = {k: v for k, v in res.items() if not k.startswith("_")}
        h = summary[name] = bavaft_headline(res)
        say(f"{name} ({len(samples)} images, {time.perf_counter() - t0:.0f} s):")
        say(f"  base     {h['bpp_base']:.4f} bpp  PSNR {h['psnr_base']:.2f} dB")
        say(f"  clean    {h['bpp_clean']:.4f} bpp  PSNR {h['psnr_clean']:.2f} dB  ASR {100 * h['asr_clean']:.1f} %  "
            f"(agrees with base {100 * h['clean_agreement_with_base']:.1f} %)")
        say(f"  poisoned {h['bpp_poisoned']:.4f} bpp  PSNR {h['psnr_poisoned']:.2f} dB  ASR {100 * h['asr_poisoned']:.1f} %  "
            f"({h['n_base_right']} right for the base)")
        rob = {k[len('asr_poisoned_'):]: v for k, v in h.items() if k.startswith("asr_poisoned_")}
        if rob:
            say("  poisoned ASR after " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in rob.items()))

    meta = {
        "method": "BAvAFT (Yu et al., CVPR 2023), psic_adapter.baselines.bavaft",
        "codec": args.codec, "quality": args.quality, "checkpoint": list(args.checkpoint),
        "target": target.name, "args": vars(args), "training": train_info,
        "bavaft": args.bavaft or (train_info or {}).get("bavaft"),
        "protocol": "psic eval: whole test photos + seeded crops of the test photos; real entropy coding; "
                    "ASR = share of images the base decode gets right that the poisoned decode gets wrong",
        "minutes": round((time.perf_counter() - t_start) / 60, 2),
    }
    result_path.write_text(json.dumps(to_jsonable({"summary": summary, "runs": runs, "meta": meta}), indent=2,
                                      allow_nan=False) + "\n")
    say(f"wrote {result_path} ({meta['minutes']} min in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
