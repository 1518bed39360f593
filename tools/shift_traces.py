"""What the owner's per-photo shift search did on each photo, from ``psic eval --shift-for``'s ``metrics.json``.

``psic eval --shift-for TARGET`` keeps each photo's search in its row (``shift_search``: the steps taken, the margin
before and after, ``trace``: the margin at each step). This reads those rows and says, per scale:

* how many photos the target gets right on the base decode, how many of those the adapter alone turns (its margin
  before any step is below 0) and how many the shift turns (the eval's own answer on the served decode);
* where the search's time goes: how many searches stopped early (their answer changed with the stop margin) and
  how many ran to the cap, and the decoder passes each group took;
* what a lower cap (``--shift-steps K``) would keep. A search that stopped by step K is the same search under cap K
  (the steps are deterministic), so its photo's answer is the same: that count is exact. A search still running
  at K would end elsewhere; it is counted as "likely" turned where its margin at step K was already below 0, which
  is an estimate, not a measurement.

Run (two evals, one a scale):

    python tools/shift_traces.py evals/PS-is1-native evals/PS-is1-512 --caps 10 20 30

The numbers it prints are a reading of one eval, not a new measurement: a cap chosen here is measured again with
``psic eval --shift-steps K`` before it is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence


def rows_of(paths: Iterable[str]) -> List[Dict[str, Any]]:
    """The per-image rows that carry a search, from ``metrics.json`` files or the eval folders that hold them."""
    rows: List[Dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "metrics.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SystemExit(f"shift_traces: {path}: not a readable metrics.json ({e.__class__.__name__})")
        for run in data.get("runs", []) if isinstance(data, dict) else []:
            rows.extend(r for r in run.get("per_image", []) if isinstance(r, dict) and isinstance(r.get("shift_search"), dict))
    return rows


def summarize(rows: Sequence[Dict[str, Any]], caps: Sequence[int] = ()) -> Dict[str, Dict[str, Any]]:
    """Per scale: ``photos``, ``right`` (the base decode right), ``alone`` / ``turned`` (of those: the adapter alone /
    with the shift), ``stopped`` / ``capped`` (searches, and their decoder passes: ``passes_stopped`` /
    ``passes_capped``), ``cap`` (the most steps any search ran), and ``at_cap[K]``: ``exact`` (turned, stopped by
    step K), ``likely`` (turned, still running at K with its margin already below 0 there), ``passes``."""
    out: Dict[str, Dict[str, Any]] = {}
    for scale in dict.fromkeys(r.get("scale", "?") for r in rows):
        mine = [r for r in rows if r.get("scale", "?") == scale]
        cap = max(int(r["shift_search"]["steps"]) for r in mine)
        s: Dict[str, Any] = {"photos": len(mine), "right": 0, "alone": 0, "turned": 0, "stopped": 0, "capped": 0,
                             "passes_stopped": 0, "passes_capped": 0, "cap": cap, "at_cap": {}}
        searches = []
        for r in mine:
            seen = r["shift_search"]
            trace = [float(t) for t in seen.get("trace", [])]
            stopped = len(trace) == int(seen["steps"]) + 1  # the last pass saw the answer changed: no step after it
            s["stopped" if stopped else "capped"] += 1
            s["passes_stopped" if stopped else "passes_capped"] += len(trace)
            right = bool(r.get("base_right"))
            turned = right and not r.get("encrypted_right", True)
            s["right"] += right
            s["alone"] += right and float(seen["margin_before"]) < 0
            s["turned"] += turned
            searches.append((trace, stopped, right, turned))
        for k in caps:
            same = [(t, right, turned) for t, stopped, right, turned in searches if stopped and len(t) <= k]
            running = [(t, right) for t, stopped, right, _ in searches if not (stopped and len(t) <= k)]
            s["at_cap"][k] = {"exact": sum(turned for _, _, turned in same),
                              "likely": sum(1 for t, right in running if right and len(t) >= k and t[k - 1] < 0),
                              "passes": sum(min(len(t), k) for t, *_ in searches)}
        out[scale] = s
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evals", nargs="+", help="psic eval --shift-for output folders or their metrics.json")
    ap.add_argument("--caps", nargs="*", type=int, default=[10, 20, 30], help="lower caps on the search's steps to read")
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args(argv)
    rows = rows_of(args.evals)
    if not rows:
        print("shift_traces: no rows with a shift search (psic eval --shift-for, from psic-adapter 0.1.6)", file=sys.stderr)
        return 1
    summary = summarize(rows, args.caps)
    for scale, s in summary.items():
        print(f"{scale}: {s['photos']} photos, {s['right']} right on the base decode; turned by the adapter alone "
              f"{s['alone']}, with the shift {s['turned']}")
        print(f"  searches stopped early {s['stopped']} ({s['passes_stopped']} decoder passes), ran to the cap of "
              f"{s['cap']} {s['capped']} ({s['passes_capped']} passes)")
        total = s["passes_stopped"] + s["passes_capped"]
        for k, c in s["at_cap"].items():
            print(f"  cap {k}: turned {c['exact']} exactly, {c['likely']} more likely; {c['passes']} passes "
                  f"({c['passes'] / max(total, 1):.0%} of these)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
