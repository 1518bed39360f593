"""Is an adapter's global context used? (issue 15, runs XCN / XCL)

A ``spatial_context`` MLP shifts each spatial branch's hidden units by an amount read from the
whole decode. It helps only if that shift differs from photo to photo. For an adapter folder,
and optionally training checkpoints of the same adapter, this prints per injection point:

* the MLP's dead hidden units (zero on every photo),
* the RMS of the shift it adds,
* how much the shift varies across photos, against the standard deviation of the branch's
  pre-activation (the scale the shift acts on).

The photos are coded at a longer side of ``--size`` px and decoded whole (training sees windows).

    python tools/context_activity.py runs/XCL0/adapter --data ../shared/data/photos/val
    python tools/context_activity.py runs/XCN-start0 runs/XCL0/checkpoint.safetensors --data photos/val
"""

from __future__ import annotations

import argparse
import sys
from typing import List

import torch


def activity(model, photos: List[torch.Tensor], size: int) -> List[dict]:
    """Per spatial branch with a context, over ``photos`` decoded encrypted: its dead hidden units, the RMS of
    the shift it adds, how much that shift varies across the photos, and the standard deviation of the branch's
    pre-activation (over units and pixels, averaged over photos), the scale the shift acts on."""
    from psic_adapter.adapter.cltg import SpatialBranch
    from psic_adapter.bitstream.images import pad_to_multiple, resize_longer_side

    adapter = model.psic_adapters[model.resolve_adapter_name()]
    branches = [b for b in adapter.modules() if isinstance(b, SpatialBranch) and b.context is not None]
    seen = {id(b): {"hidden": [], "shift": [], "std": []} for b in branches}

    def record(b, f):  # what each photo's decode feeds the branch, reduced as it goes
        rec = seen[id(b)]
        rec["hidden"].append(torch.relu(b.context[0](b.summary(f).to(b.context[0].weight.dtype))))
        rec["shift"].append(b.context_shift(f))
        rec["std"].append(b.reduce(f).std())
        return torch.relu(b.pre_activation(f))

    try:
        for b in branches:  # the instance attribute wins over SpatialBranch.hidden
            b.hidden = lambda f, shift=None, b=b: record(b, f)
        with torch.no_grad():
            for img in photos:
                x, _ = pad_to_multiple(resize_longer_side(img[None].float(), size), 64)
                model.synthesize(model.analyze(x)["y_hat"], model.encrypted_condition())
    finally:
        for b in branches:
            vars(b).pop("hidden", None)
    rows = []
    for k, b in enumerate(branches):
        rec = seen[id(b)]
        h, shift = torch.cat(rec["hidden"]), torch.cat(rec["shift"])
        rows.append({"point": k, "dead": int((h.max(0).values == 0).sum()), "units": h.shape[1],
                     "shift_rms": float(shift.pow(2).mean().sqrt()),
                     "across_photos": float((shift - shift.mean(0)).pow(2).mean().sqrt()),
                     "pre_activation_std": float(torch.stack(rec["std"]).mean())})
    return rows


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("adapter", help="an adapter folder with spatial_context")
    p.add_argument("checkpoints", nargs="*", help="training checkpoints of the same adapter (checkpoint.safetensors)")
    p.add_argument("--data", default="samples", help="a folder of photos, or 'samples' (default)")
    p.add_argument("--size", type=int, default=512, help="longer side the photos are coded at, px")
    p.add_argument("--count", type=int, default=16, help="at most this many photos")
    args = p.parse_args(argv)
    if args.size < 64 or args.count < 1:
        p.error("--size must be at least 64 and --count at least 1")

    from psic_adapter.adapter import load_adapter
    from psic_adapter.codec import load_codec
    from psic_adapter.data import build_dataset
    from psic_adapter.errors import PSICError
    from psic_adapter.training.checkpoints import load_state

    try:
        codec = load_codec("bmshj2018-hyperprior", 3, ["shipped"], device="cpu")
        model = load_adapter(codec, args.adapter).eval()
        if not model.config.spatial_context:
            raise PSICError(f"{args.adapter} has no global context (spatial_context)")
        ds = build_dataset(args.data, crop=None, split="test")
        photos = [ds[i]["image"] for i in range(min(len(ds), args.count))]
        if not photos:
            raise PSICError(f"no photos in {args.data}")
        adapter = model.psic_adapters[model.resolve_adapter_name()]
        for source in [None] + args.checkpoints:
            if source is not None:
                state = load_state(source)
                if not isinstance(state, dict) or "adapter_state" not in state \
                        or not isinstance(state.get("adapter_config"), dict):
                    raise PSICError(f"{source} is not a PSIC training checkpoint")
                if state["adapter_config"].get("salt") != model.config.salt:
                    raise PSICError(f"{source} is a checkpoint of another adapter than {args.adapter} (its salt "
                                    "differs)")
                try:
                    adapter.load_state_dict(state["adapter_state"])
                except (RuntimeError, TypeError) as exc:
                    raise PSICError(f"{source} does not fit {args.adapter}: {str(exc).splitlines()[0][:160]}") from None
            rows = activity(model, photos, args.size)
            print(f"{source or args.adapter} ({len(photos)} photos at {args.size} px):")
            for r in rows:
                share = r["across_photos"] / max(r["pre_activation_std"], 1e-12)
                print(f"  point {r['point']}: {r['dead']}/{r['units']} hidden units dead, shift RMS {r['shift_rms']:.4f}, "
                      f"across photos {r['across_photos']:.4f} ({share:.1%} of the branch's pre-activation std "
                      f"{r['pre_activation_std']:.3f})")
    except PSICError as exc:
        print(f"context_activity: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
