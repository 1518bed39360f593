"""Where an adapter's PSNR budget goes, and what the budget could buy (issue 15, E0-E2).

For an adapter and a set of photos coded at a longer side of ``--size`` px
(the scale of use), with the codec that the adapter fits and a classifier:

* **E0, what reaches the target.** The change ``d = encrypted - base`` (8-bit
  decodes, 0-255 scale): its L2 over the photo, the share of its energy inside
  the region the target keeps (its centre crop), the L2 that arrives at the
  target's 224 x 224 input after its antialiased resize, and how the change's
  energy splits over frequency relative to what that resize keeps (below half
  the target's Nyquist, up to it, above it: removed).
* **E1, the same change at other costs.** ``d`` rescaled per image so that the
  encrypted PSNR is exactly 0.5 / 1 / 1.5 / 2 dB under the base (an oracle: it
  uses the original), ASR among photos the target gets right on the base
  decode, beside a control of Gaussian noise of the same energy.
* **E2, the ceiling.** Per-image PGD on a pixel change at exactly ``--ceiling-db``
  under the base (the same pipeline: base decode + change, 8 bits, the target's
  own preprocessing): what any decoder-side change could reach at this cost.
* **E3, the ceiling of a global context** (``--context-steps``, a "spatial"
  adapter). A global context (``spatial_context``) can only add one shift per
  hidden unit of each branch, the same all over the photo. Here that shift is
  chosen per photo by Adam on the target's own margin, the best any context
  could learn, with the change rescaled to the adapter's own cost (its dB under
  the base on that photo): if even this flips few more photos than the
  adapter, a context is not where the missing photos are. It also counts, among
  the photos still right after JPEG-75 / a 0.5x resize / a blur of the base
  decode, how many the adapter's and the chosen change flip after the same.

Run (the shipped demo adapter on photos/val + the three test photos):

    python tools/where_the_budget_goes.py --adapter demo --data ../shared/data/photos/val samples \
        --size 512 --json budget.json

``--adapter demo`` is the adapter that ships with the package; any adapter
folder works (the encrypted version needs no key).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Dict, List

import torch

from psic_adapter.training.shift_search import margin
from psic_adapter.adapter.strength import oracle_strength
from psic_adapter.perturbations import PERTURBATIONS
from psic_adapter.training.validation import served


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean())


def band_energy(d: torch.Tensor, scale: float) -> Dict[str, float]:
    """Share of ``d``'s energy below half / up to / above the Nyquist of a ``scale``x downscale."""
    spec = torch.fft.fft2(d.double()).abs().pow(2).sum(dim=0)  # [C, H, W] -> [H, W]
    h, w = spec.shape
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    r = torch.sqrt(fy**2 + fx**2)
    nyq = 0.5 / max(scale, 1.0)
    total = float(spec.sum()) or 1.0
    return {"low": float(spec[r < nyq / 2].sum()) / total,
            "mid": float(spec[(r >= nyq / 2) & (r < nyq)].sum()) / total,
            "removed": float(spec[r >= nyq].sum()) / total}


def crop_box(h: int, w: int, short: int, size: int):
    """The region of an ``h x w`` image that a shorter-side-``short`` resize + centre ``size`` crop keeps."""
    s = min(h, w) / short
    ch, cw = round(size * s), round(size * s)
    top, left = (h - ch) // 2, (w - cw) // 2
    return top, left, ch, cw


def preprocess(target, x: torch.Tensor) -> torch.Tensor:
    """The target's resize and centre crop, in [0, 1] (its normalisation left out)."""
    from psic_adapter.targets.base import resize_center_crop

    return resize_center_crop(x, target.image_size, target.resize_size, target.resize_mode, target.interpolation)


def pgd_ceiling(target, base: torch.Tensor, x: torch.Tensor, label: int, drop_db: float, steps: int) -> torch.Tensor:
    """A pixel change at ``drop_db`` under the base decode that minimises the target's margin on ``label``."""
    e = base - x
    budget = float(e.pow(2).sum()) * 10 ** (drop_db / 10)
    radius = math.sqrt(max(budget - float(e.pow(2).sum()), 1e-12))
    delta = torch.zeros_like(base, requires_grad=True)
    step = 2.5 * radius / steps
    for _ in range(steps):
        loss = margin(target.logits((base + delta).clamp(0, 1)), label).sum()
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= step * g / g.norm().clamp_min(1e-12)
            total = e + delta
            n = float(total.pow(2).sum())
            if n > budget:  # project onto the budget's sphere around the original
                delta.copy_(total * math.sqrt(budget / n) - e)
    return served(base + delta.detach())


def spatial_branches(model) -> list:
    from psic_adapter.adapter.cltg import SpatialBranch

    return [b for b in model.psic_adapters[model.resolve_adapter_name()].modules() if isinstance(b, SpatialBranch)]


def context_ceiling(model, target, x: torch.Tensor, base: torch.Tensor, y_hat: torch.Tensor, hw, drop_db: float,
                    label: int, steps: int, lr: float, start=None, found=None) -> torch.Tensor:
    """The encrypted decode with one shift per hidden unit of each spatial branch (on top of the branch's own
    context, if it has one) chosen to minimise the target's margin on ``label``: an oracle per photo. While it
    searches, the change keeps the energy of the adapter's own change (the rescaling is part of what it
    differentiates); the result is rescaled to exactly ``drop_db`` under the base, the adapter's own cost.
    ``start``: the shifts to start from (zeros); ``steps=0`` decodes with them. ``found``: a list that receives
    the shifts."""
    from psic_adapter.bitstream.images import crop_to

    branches = spatial_branches(model)
    shifts = [(torch.zeros(b.reduce.out_channels) if start is None else start[k].detach().clone()).requires_grad_()
              for k, b in enumerate(branches)]
    with torch.no_grad():
        raw = crop_to(model.synthesize(y_hat, None), hw)  # the change is against the unrounded base decode
        energy = (crop_to(model.synthesize(y_hat, model.encrypted_condition()), hw) - raw).pow(2).sum()  # the adapter's

    def change():
        return crop_to(model.synthesize(y_hat, model.encrypted_condition()), hw) - raw

    try:
        for b, s in zip(branches, shifts):  # the instance attribute wins over SpatialBranch.hidden
            b.hidden = lambda f, shift=None, b=b, s=s: torch.relu(b.pre_activation(f) + s[None, :, None, None])
        opt = torch.optim.Adam(shifts, lr=lr)
        for _ in range(steps):
            d = change()
            loss = margin(target.logits((base + d * (energy / d.pow(2).sum().clamp_min(1e-20)).sqrt()).clamp(0, 1)),
                          label).sum()
            if float(loss.detach()) < -1.0:  # flipped with room for the 8-bit rounding
                break
            grads = torch.autograd.grad(loss, shifts)  # not into the codec's or the target's weights
            for s, g in zip(shifts, grads):
                s.grad = g
            opt.step()
        with torch.no_grad():
            d = change()
            if found is not None:
                found.extend(s.detach().clone() for s in shifts)
            return served(base + oracle_strength(base, d, x, drop_db) * d)
    finally:
        for b in branches:
            vars(b).pop("hidden", None)


def branch_summaries(model, y_hat) -> List[torch.Tensor]:
    """What a global context would read on this photo: each spatial branch's :meth:`summary` of its input, on the
    adapter's own encrypted decode."""
    seen = []
    branches = spatial_branches(model)
    try:
        for b in branches:
            b.hidden = lambda f, shift=None, b=b: (seen.append(b.summary(f)[0]), type(b).hidden(b, f, shift))[1]
        with torch.no_grad():
            model.synthesize(y_hat, model.encrypted_condition())
    finally:
        for b in branches:
            vars(b).pop("hidden", None)
    return seen


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", default="demo", help="adapter folder, or 'demo' (the shipped one)")
    p.add_argument("--data", nargs="+", default=["samples"], help="folders of photos and/or 'samples' (test photos)")
    p.add_argument("--size", type=int, default=512, help="longer side the photos are coded at, px")
    p.add_argument("--target", default="efficientnet-lite0", help="the target spec (psic train --target): efficientnet-lite0 (or -lite1, -lite2), clip:MODEL, timm:MODEL, A+B")
    p.add_argument("--drops", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0], help="E1's costs, dB")
    p.add_argument("--ceiling-db", type=float, default=1.0, help="E2's cost, dB")
    p.add_argument("--pgd-steps", type=int, default=50, help="E2's steps (0: skip E2)")
    p.add_argument("--context-steps", type=int, default=0, help="E3's Adam steps per photo (0: skip E3)")
    p.add_argument("--context-lr", type=float, default=0.05, help="E3's Adam learning rate")
    p.add_argument("--limit", type=int, default=0, help="at most this many photos (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)

    from psic_adapter.adapter import load_adapter
    from psic_adapter.bitstream.images import crop_to, pad_to_multiple, resize_longer_side
    from psic_adapter.codec import load_codec
    from psic_adapter.data import build_dataset
    from psic_adapter.targets import build_target

    torch.manual_seed(args.seed)
    codec = load_codec("bmshj2018-hyperprior", 3, ["shipped"], device="cpu")
    if args.adapter == "demo":
        from psic_adapter.adapter.pretrained import DEMO_ADAPTER

        adapter = DEMO_ADAPTER
    else:
        adapter = args.adapter
    model = load_adapter(codec, adapter).eval()
    if args.context_steps and model.config.modulation != "spatial":
        print(f"where_the_budget_goes: --context-steps needs a 'spatial' adapter; {args.adapter} is "
              f"{model.config.modulation!r}", file=sys.stderr)
        return 2
    target = build_target(args.target, device="cpu").eval()
    photos = []
    for spec in args.data:
        ds = build_dataset(spec, crop=None, split="test")
        photos += [ds[i]["image"] for i in range(len(ds))]
    if args.limit:
        photos = photos[: args.limit]
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    t0 = time.time()
    for k, img in enumerate(photos):
        x = served(resize_longer_side(img[None].float(), args.size))
        h, w = x.shape[-2:]
        with torch.no_grad():
            xp, hw = pad_to_multiple(x, 64)
            y_hat = model.analyze(xp)["y_hat"]
            base = served(crop_to(model.synthesize(y_hat, None), hw))
            enc = served(crop_to(model.synthesize(y_hat, model.encrypted_condition()), hw))
            label = int(target.predict(x))
            right = int(target.predict(base)) == label
        d = enc - base
        short = target.resize_size or target.image_size
        top, left, ch, cw = crop_box(h, w, short, target.image_size)
        dp = preprocess(target, enc) - preprocess(target, base)
        row = {"photo": k, "h": h, "w": w, "right": right,
               "drop_db": 10 * math.log10(mse(enc, x) / max(mse(base, x), 1e-12)),
               "l2_photo": float(d.norm()) * 255, "l2_in_crop": float(d[..., top:top + ch, left:left + cw].norm()) * 255,
               "l2_at_target": float(dp.norm()) * 255, "downscale": min(h, w) / short,
               **{f"band_{b}": v for b, v in band_energy(d[0], min(h, w) / short).items()}}
        if right:
            for t in args.drops:
                a = oracle_strength(base, d, x, t)
                xe = served(base + a * d)
                noise = torch.randn(base.shape, generator=gen) * float((a * d).pow(2).mean().sqrt())
                xc = served(base + noise)
                with torch.no_grad():
                    row[f"e1_{t}_flip"] = int(target.predict(xe)) != label
                    row[f"e1_{t}_control"] = int(target.predict(xc)) != label
                row[f"e1_{t}_db"] = 10 * math.log10(mse(xe, x) / mse(base, x))
            if args.pgd_steps:
                xa = pgd_ceiling(target, base, x, label, args.ceiling_db, args.pgd_steps)
                with torch.no_grad():
                    row["e2_flip"] = int(target.predict(xa)) != label
                row["e2_db"] = 10 * math.log10(mse(xa, x) / mse(base, x))
            if args.context_steps:
                with torch.no_grad():
                    row["e3_adapter_flip"] = int(target.predict(enc)) != label
                xs = context_ceiling(model, target, x, base, y_hat, hw, row["drop_db"], label,
                                     args.context_steps, args.context_lr)
                with torch.no_grad():
                    row["e3_flip"] = int(target.predict(xs)) != label
                    for name, perturb in PERTURBATIONS.items():  # does the chosen shift survive what a photo goes through?
                        if int(target.predict(perturb(base))) == label:  # among photos still right after it
                            row[f"e3_{name}_adapter_flip"] = int(target.predict(perturb(enc))) != label
                            row[f"e3_{name}_flip"] = int(target.predict(perturb(xs))) != label
                row["e3_db"] = 10 * math.log10(mse(xs, x) / mse(base, x))
        rows.append(row)
        print(f"[{k + 1}/{len(photos)} {time.time() - t0:.0f}s] right={right} drop={row['drop_db']:.2f} dB "
              f"L2 photo/crop/target {row['l2_photo']:.0f}/{row['l2_in_crop']:.0f}/{row['l2_at_target']:.0f}",
              file=sys.stderr, flush=True)

    n = len(rows)
    right = [r for r in rows if r["right"]]
    mean = lambda key, rs=rows: sum(r[key] for r in rs) / max(1, len(rs))  # noqa: E731
    summary = {
        "photos": n, "right": len(right), "size": args.size, "adapter": str(args.adapter),
        "E0": {"drop_db": mean("drop_db"), "l2_photo": mean("l2_photo"), "l2_in_crop": mean("l2_in_crop"),
               "l2_at_target": mean("l2_at_target"), "downscale": mean("downscale"),
               "energy_in_crop": sum(r["l2_in_crop"] ** 2 for r in rows) / max(1e-9, sum(r["l2_photo"] ** 2 for r in rows)),
               "band_low": mean("band_low"), "band_mid": mean("band_mid"), "band_removed": mean("band_removed")},
        "E1": {str(t): {"asr": mean(f"e1_{t}_flip", right), "control": mean(f"e1_{t}_control", right),
                        "flipped": sum(r[f"e1_{t}_flip"] for r in right),
                        "control_flipped": sum(r[f"e1_{t}_control"] for r in right),
                        "db": mean(f"e1_{t}_db", right)} for t in args.drops} if right else {},
    }
    if args.pgd_steps and right:
        summary["E2"] = {"asr": mean("e2_flip", right), "flipped": sum(r["e2_flip"] for r in right),
                         "db": mean("e2_db", right), "steps": args.pgd_steps}
    if args.context_steps and right:
        summary["E3"] = {"asr": mean("e3_flip", right), "flipped": sum(r["e3_flip"] for r in right),
                         "adapter_asr": mean("e3_adapter_flip", right),
                         "adapter_flipped": sum(r["e3_adapter_flip"] for r in right),
                         "db": mean("e3_db", right), "steps": args.context_steps, "lr": args.context_lr,
                         "after": {}}
        for name in PERTURBATIONS:
            kept = [r for r in right if f"e3_{name}_flip" in r]
            summary["E3"]["after"][name] = {"right": len(kept), "flipped": sum(r[f"e3_{name}_flip"] for r in kept),
                                            "adapter_flipped": sum(r[f"e3_{name}_adapter_flip"] for r in kept)}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, "rows": rows, "command": sys.argv}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
