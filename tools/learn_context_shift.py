"""Could a global context learn the best per-photo shift? (issue 15, after E3)

E3 (``where_the_budget_goes.py --context-steps``) finds, per photo, the one shift per hidden unit
of each spatial branch that flips the target, with the classifier as an oracle. A global context
would have to predict that shift from what it reads, each branch's summary of its input
(``SpatialBranch.summary``). This asks whether it can:

1. on the training photos (at ``--size`` px), the E3 shift of every photo the target gets right,
   and the summaries the branches read on it;
2. per branch, a ridge regression from summary to shift, its strength chosen by 5-fold cross-
   validation, reported as the share of the shifts' variance it explains on held-out photos;
3. on the test photos, the change with the predicted shift (and, as a control, with the mean
   shift of the training photos), set to the adapter's own dB: flips against the adapter's.

A linear map, not the MLP a context has: if a linear one explains nothing on held-out photos,
the summaries do not hold what chooses the shift, whatever reads them.

    python tools/learn_context_shift.py --adapter runs/FT0/adapter-cal --train ../shared/data/photos/train \\
        --test ../shared/data/photos/val samples --json shift.json

``--shard i/n --cache F`` computes step 1 for every n-th training photo into ``F`` (run n of them
side by side), and ``--from-cache F...`` does steps 2-3 from them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import List

import torch

_SPEC = importlib.util.spec_from_file_location("where_the_budget_goes", Path(__file__).with_name("where_the_budget_goes.py"))
budget = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(budget)

LAMBDAS = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def coded(model, target, img: torch.Tensor, size: int):
    """A photo at ``size`` px through the codec: original, latent, crop size, base and encrypted decodes, the
    target's answer on the original and whether it keeps it on the base decode."""
    from psic_adapter.bitstream.images import crop_to, pad_to_multiple, resize_longer_side

    x = budget.served(resize_longer_side(img[None].float(), size))
    with torch.no_grad():
        xp, hw = pad_to_multiple(x, 64)
        y_hat = model.analyze(xp)["y_hat"]
        base = budget.served(crop_to(model.synthesize(y_hat, None), hw))
        enc = budget.served(crop_to(model.synthesize(y_hat, model.encrypted_condition()), hw))
        label = int(target.predict(x))
        right = int(target.predict(base)) == label
    return x, y_hat, hw, base, enc, label, right


def drop_db(x, base, y) -> float:
    return 10 * math.log10(budget.mse(y, x) / budget.mse(base, x))


def oracle_records(model, target, photos, size: int, steps: int, lr: float) -> List[dict]:
    records = []
    for k, img in enumerate(photos):
        x, y_hat, hw, base, enc, label, right = coded(model, target, img, size)
        if not right:
            continue
        found: List[torch.Tensor] = []
        budget.context_ceiling(model, target, x, base, y_hat, hw, drop_db(x, base, enc), label, steps, lr, found=found)
        records.append({"summary": budget.branch_summaries(model, y_hat), "shift": found})
        print(f"[{k + 1}/{len(photos)}] {len(records)} right", file=sys.stderr, flush=True)
    return records


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    x = torch.cat([x, torch.ones(len(x), 1)], 1)
    return torch.linalg.solve(x.T @ x + lam * torch.eye(x.shape[1]), x.T @ y)


def predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1)], 1) @ w


def fit(records: List[dict]) -> List[dict]:
    """Per branch: the ridge map chosen by 5-fold cross-validation, and the share of the shifts' variance it
    explains on held-out photos (R^2; at most 0 where the summaries tell nothing)."""
    fits = []
    for j in range(len(records[0]["shift"])):
        x = torch.stack([r["summary"][j] for r in records]).double()
        y = torch.stack([r["shift"][j] for r in records]).double()
        folds = torch.arange(len(x)) % 5
        total = float((y - y.mean(0)).pow(2).sum()) or 1e-12
        r2 = {}
        for lam in LAMBDAS:
            err = sum(float((predict(ridge(x[folds != f], y[folds != f], lam), x[folds == f]) - y[folds == f]).pow(2).sum())
                      for f in range(5))
            r2[lam] = 1 - err / total
        best = max(r2, key=r2.get)
        fits.append({"w": ridge(x, y, best).float(), "lambda": best, "heldout_r2": r2[best],
                     "mean": y.mean(0).float(), "shift_rms": float(y.pow(2).mean().sqrt())})
    return fits


def measure(model, target, photos, size: int, fits: List[dict]) -> dict:
    n = adapter = predicted = constant = 0
    for img in photos:
        x, y_hat, hw, base, enc, label, right = coded(model, target, img, size)
        if not right:
            continue
        summary = budget.branch_summaries(model, y_hat)
        cost = drop_db(x, base, enc)
        guess = [predict(f["w"], s[None])[0] for f, s in zip(fits, summary)]
        flips = []
        for start in (guess, [f["mean"] for f in fits]):
            z = budget.context_ceiling(model, target, x, base, y_hat, hw, cost, label, 0, 0.0, start=start)
            with torch.no_grad():
                flips.append(int(target.predict(z)) != label)
        with torch.no_grad():
            adapter += int(target.predict(enc)) != label
        n, predicted, constant = n + 1, predicted + flips[0], constant + flips[1]
    return {"right": n, "adapter_flipped": adapter, "predicted_flipped": predicted, "mean_shift_flipped": constant}


def photos_of(specs, split: str) -> List[torch.Tensor]:
    from psic_adapter.data import build_dataset

    out = []
    for spec in specs:
        ds = build_dataset(spec, crop=None, split=split)
        out += [ds[i]["image"] for i in range(len(ds))]
    return out


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", required=True, help="a 'spatial' adapter folder")
    p.add_argument("--train", nargs="+", default=[], help="photos to find the shifts on")
    p.add_argument("--test", nargs="+", default=[], help="photos to measure the predicted shift on")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=40, help="E3's Adam steps per photo")
    p.add_argument("--lr", type=float, default=0.05, help="E3's Adam learning rate")
    p.add_argument("--shard", default="0/1", help="i/n: find the shifts of every n-th training photo from the i-th")
    p.add_argument("--cache", help="write the shifts found here (and stop)")
    p.add_argument("--from-cache", nargs="+", default=[], help="shift files of --cache instead of --train")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)

    from psic_adapter.adapter import load_adapter
    from psic_adapter.codec import load_codec
    from psic_adapter.targets import build_target

    torch.set_grad_enabled(True)
    model = load_adapter(load_codec("bmshj2018-hyperprior", 3, ["shipped"], device="cpu"), args.adapter).eval()
    if model.config.modulation != "spatial":
        p.error(f"{args.adapter} is {model.config.modulation!r}, not a 'spatial' adapter")
    target = build_target("efficientnet-lite0", device="cpu").eval()
    for param in list(model.parameters()) + list(target.parameters()):
        param.requires_grad_(False)
    if args.from_cache:
        records = [r for f in args.from_cache for r in torch.load(f, weights_only=True)]  # our own files
    else:
        i, n = (int(v) for v in args.shard.split("/"))
        records = oracle_records(model, target, photos_of(args.train, "test")[i::n], args.size, args.steps, args.lr)
        if args.cache:
            torch.save(records, args.cache)
            return 0
    fits = fit(records)
    result = {"train_right": len(records), "adapter": args.adapter, "size": args.size, "steps": args.steps,
              "branches": [{k: v for k, v in f.items() if k not in ("w", "mean")} for f in fits]}
    if args.test:
        result["test"] = measure(model, target, photos_of(args.test, "test"), args.size, fits)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"result": result, "command": sys.argv}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
