"""Where one step of the robust recipe's time goes (issue 15, part 1).

Builds the default adapter-only fit (``psic train --stage 2 --adapter-only``: the robust recipe,
scale views decoded with their 32 px context, EOT "real", the dual budget controller, bf16 where
the CPU has bf16 units) on the shipped codec and EfficientNet-Lite0, then times each part of
``Trainer.step`` by wrapping the methods it calls (no change to the library):

* data: cutting the step's latent windows (``LatentViews.batch``) and moving them;
* target on the originals: the labels the margin is taken against (no grad);
* reference decode: the base decoder on the same windows (no grad; the budget needs it);
* encrypted decode, forward: the decoder with the adapter's hooks, autograd on;
* EOT: the step's served transformation (nothing / thumbnail / JPEG / blur / the codec again /
  thumbnail + JPEG, one per step), timed apart;
* target on the encrypted decode, forward, and the loss;
* budget term: the PSNR drop and the dual multiplier;
* backward, split where the gradient reaches the decode's output (a tensor hook): the target's
  part (and EOT's, the loss's) before it, the decoder's after;
* optimiser: gradient clipping, Adam, the scheduler.

Seeded views and EOT draws: the same steps in every run. The first ``--warmup`` steps are not
counted (oneDNN's first calls). Shares are of the mean step; "rest" is what no wrapper saw.

    python benchmarks/robust_step.py                                   # 20 steps on the bundled photos
    python benchmarks/robust_step.py --data ../shared/data/photos/train --steps 30 --json out.json
    python benchmarks/robust_step.py --steps 2 --warmup 1 --batch 2 --images 2  # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import torch

warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse  # noqa: E402
KEY = "benchmark owner key"

PARTS = [
    ("data", "data: cut the latent windows, move them"),
    ("clean", "target on the originals (labels, no grad)"),
    ("reference", "reference (base) decode, no grad"),
    ("decode", "encrypted decode, forward (adapter on)"),
    ("eot", "EOT: the served transformation"),
    ("target", "target on the encrypted decode + loss, forward"),
    ("budget", "budget term (PSNR drop, dual multiplier)"),
    ("backward_target", "backward: loss, target, EOT"),
    ("backward_decoder", "backward: decoder and adapter"),
    ("optimiser", "clip, Adam, scheduler"),
]


class Clock:
    """Accumulates wall time per part for the current step."""

    def __init__(self):
        self.step: Dict[str, float] = defaultdict(float)
        self.steps: List[Dict[str, float]] = []
        self.eot_kinds: List[str] = []

    @contextlib.contextmanager
    def part(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.step[name] += time.perf_counter() - t0

    def wrap(self, obj, attr: str, name: str, exclude: Optional[List[str]] = None):
        """Time ``obj.attr`` as ``name`` (parts listed in ``exclude`` that run inside it are subtracted)."""
        fn = getattr(obj, attr)
        depth = [0]  # a method that calls itself (the reference decode of windows) is timed once

        def timed(*a, **k):
            if depth[0]:
                return fn(*a, **k)
            inner = {e: self.step[e] for e in exclude or []}
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                out = fn(*a, **k)
            finally:
                depth[0] -= 1
            spent = time.perf_counter() - t0 - sum(self.step[e] - inner[e] for e in inner)
            self.step[name] += spent
            return out

        setattr(obj, attr, timed)

    def close_step(self, total: float) -> None:
        row = dict(self.step)
        row["total"] = total
        self.steps.append(row)
        self.step = defaultdict(float)


def build(args):
    from psic_adapter import workflows
    from psic_adapter.adapter import wrap_model
    from psic_adapter.codec import load_codec
    from psic_adapter.targets import build_target
    from psic_adapter.training import Trainer, TrainConfig

    torch.manual_seed(args.seed)
    codec = load_codec("bmshj2018-hyperprior", quality=3, checkpoint="shipped")
    recipe = workflows.Recipe.named("robust", seed=args.seed, batch_size=args.batch, steps=10**6,
                                    checkpoint_every=10**6)
    cfg: TrainConfig = recipe.train
    model = wrap_model(codec, recipe.adapter_config(False), key=KEY, quality=3)
    target = build_target("efficientnet-lite0")
    data = workflows.training_data(args.data, cfg)
    if args.images and args.images < len(data):
        data = torch.utils.data.Subset(data, list(range(args.images)))
    trainer = Trainer(model, target, data, cfg, tempfile.mkdtemp(prefix="psic-profile-"), quality=3,
                      device="cpu", progress=False)
    return trainer


def instrument(trainer, clock: Clock) -> None:
    from psic_adapter.training import eot, objectives, views

    it = trainer._batches()
    next_batch = lambda: next(it)  # noqa: E731  (builds LatentViews on the first call: untimed, see main)
    trainer._next = next_batch
    clock.wrap(views.Windows, "to", "data")
    clock.wrap(trainer.objective, "clean_view", "clean")
    clock.wrap(trainer, "_reference_decode", "reference")

    step_forward = trainer.step_module.forward

    def decode(*a, **k):
        with clock.part("decode"):
            x_hat, lik = step_forward(*a, **k)
        if x_hat.requires_grad:  # the backward reaches the decoder here
            x_hat.register_hook(lambda g: clock.step.__setitem__("_bw_mark", time.perf_counter()) or None)
        return x_hat, lik

    trainer.step_module.forward = decode

    served = eot.served_transform

    def timed_served(x, generator, codec=None):
        state = generator.get_state()
        u = torch.rand(3, generator=generator).tolist()
        generator.set_state(state)
        kinds = 6 if codec is not None else 5
        clock.eot_kinds.append(["none", "thumbnail", "jpeg", "blur", "codec", "thumbnail+jpeg"]
                               [min(int(u[0] * kinds), kinds - 1)])
        with clock.part("eot"):
            return served(x, generator, codec=codec)

    objectives.served_transform = timed_served
    clock.wrap(trainer.objective, "encryption_loss", "target", exclude=["eot"])
    clock.wrap(trainer, "_budget_terms", "budget")

    backward = torch.Tensor.backward

    def timed_backward(self, *a, **k):
        clock.step.pop("_bw_mark", None)
        t0 = time.perf_counter()
        backward(self, *a, **k)
        t1 = time.perf_counter()
        mark = clock.step.pop("_bw_mark", t0)
        clock.step["backward_target"] += mark - t0
        clock.step["backward_decoder"] += t1 - mark
        clock.step["_backward"] = t1 - t0

    torch.Tensor.backward = timed_backward
    optimise = trainer._optimise

    def timed_optimise(loss, terms):
        t0 = time.perf_counter()
        optimise(loss, terms)
        clock.step["optimiser"] += time.perf_counter() - t0 - clock.step.pop("_backward", 0.0)

    trainer._optimise = timed_optimise


def run(trainer, clock: Clock, steps: int, warmup: int) -> None:
    for k in range(warmup + steps):
        t0 = time.perf_counter()
        with clock.part("data"):
            batch = trainer._next()
        trainer.step(batch)
        total = time.perf_counter() - t0
        if k < warmup:
            clock.step = defaultdict(float)
            del clock.eot_kinds[-1:]
        else:
            clock.close_step(total)


def summarise(clock: Clock) -> Dict:
    n = len(clock.steps)
    mean_total = sum(s["total"] for s in clock.steps) / n
    rows = []
    seen = 0.0
    for key, label in PARTS:
        values = [s.get(key, 0.0) for s in clock.steps]
        m = sum(values) / n
        seen += m
        rows.append({"part": key, "what": label, "mean_ms": 1000 * m, "share": m / mean_total,
                     "max_ms": 1000 * max(values)})
    rows.append({"part": "rest", "what": "rest (loss sums, logging, bookkeeping)", "mean_ms": 1000 * (mean_total - seen),
                 "share": (mean_total - seen) / mean_total, "max_ms": None})
    totals = [s["total"] for s in clock.steps]
    by_kind: Dict[str, List[float]] = defaultdict(list)
    for s, kind in zip(clock.steps, clock.eot_kinds):
        by_kind[kind].append(s["total"])
    return {"steps": n, "mean_step_s": mean_total, "median_step_s": statistics.median(totals),
            "min_step_s": min(totals), "max_step_s": max(totals), "parts": rows,
            "step_s_by_eot": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
            "eot_counts": {k: len(v) for k, v in sorted(by_kind.items())}}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="samples", help="training photos (default: the bundled ones)")
    p.add_argument("--images", type=int, default=None, help="use only the first N photos (encodes faster)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    args = parse(p, argv)  # + --threads, --seed, --json

    trainer = build(args)
    clock = Clock()
    instrument(trainer, clock)
    t0 = time.perf_counter()
    first = trainer._next()  # encodes every training photo once (LatentViews): before any step, not timed
    encode_s = time.perf_counter() - t0
    trainer.step(first)
    clock.step = defaultdict(float)
    clock.eot_kinds.clear()
    run(trainer, clock, args.steps, max(0, args.warmup - 1))
    res = summarise(clock)
    res["encode_once_s"] = encode_s
    print(f"robust step, batch {args.batch}, {res['steps']} timed steps, {torch.get_num_threads()} threads, "
          f"bf16 {'on' if trainer.amp else 'off'}, channels_last {'on' if trainer.channels_last else 'off'}; "
          f"mean {res['mean_step_s']:.2f} s (median {res['median_step_s']:.2f}, {res['min_step_s']:.2f}-"
          f"{res['max_step_s']:.2f}); latents encoded once in {encode_s:.0f} s")
    print(f"{'part':48s} {'mean ms':>9s} {'share':>7s} {'max ms':>9s}")
    for r in res["parts"]:
        mx = "" if r["max_ms"] is None else f"{r['max_ms']:9.0f}"
        print(f"{r['what']:48s} {r['mean_ms']:9.0f} {100 * r['share']:6.1f}% {mx}")
    print("mean step by EOT draw: " + ", ".join(f"{k} {v:.2f} s ({res['eot_counts'][k]})"
                                                 for k, v in res["step_s_by_eot"].items()))
    if args.json:
        meta = {"torch": torch.__version__, "platform": platform.platform(), "threads": torch.get_num_threads(),
                "args": vars(args)}
        Path(args.json).write_text(json.dumps({"meta": meta, "result": res}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
