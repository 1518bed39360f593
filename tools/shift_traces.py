"""What the owner's per-photo shift search did on each photo, from ``psic eval --shift-for``'s ``metrics.json``.

``psic eval --shift-for TARGET`` keeps each photo's search in its row (``shift_search``: the steps taken, the margin
before and after, ``trace``: the margin at each step). This reads those rows and says, per scale:

* how many photos the target gets right on the base decode, how many of those the adapter alone turns (its margin
  before any step is below 0) and how many the shift turns (the eval's own answer on the served decode);
* where the search's time goes: how many searches stopped early (their answer changed with the stop margin) and
  how many ran out (to the cap, or given up: ``ShiftSearch.give_up``), and the passes each group took;
* what a lower cap (``--shift-steps K``) would keep. A search that stopped within K steps is the same search under
  cap K (the steps are deterministic on the CPU), so its photo's answer is the same: that count is exact. A search
  still going after K steps would end elsewhere; it is counted as "likely" turned where its margin after K steps
  was already below 0, which is an estimate, not a measurement.

The margins are the search's target's; "the adapter alone" (its margin before any step below 0) is read only where
the eval's target is that one.

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


def runs_of(paths: Iterable[str]) -> List[Dict[str, Any]]:
    """The runs (one an adapter) whose rows carry a search, from ``metrics.json`` files or the eval folders that hold
    them: each ``{"name", "cap", "same_target", "rows"}``. ``cap``: the eval's ``--shift-steps``; ``same_target``:
    whether the eval's target is the one the shift was chosen against (else "the adapter alone" is not read)."""
    runs: List[Dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "metrics.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SystemExit(f"shift_traces: {path}: not a readable metrics.json ({e.__class__.__name__})")
        for run in data.get("runs", []) if isinstance(data, dict) else []:
            rows = [r for r in run.get("per_image", []) if isinstance(r, dict) and isinstance(r.get("shift_search"), dict)]
            if not rows:
                continue
            meta = run.get("meta") or {}
            search = meta.get("photo_shift") or {}
            cap = search.get("steps")
            runs.append({"name": f"{path.parent.name}/{meta.get('name', '?')}",
                         "cap": int(cap) if isinstance(cap, int) else max(int(r["shift_search"]["steps"]) for r in rows),
                         "same_target": search.get("target") in (None, "", run.get("target")), "rows": rows})
    return runs


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")


def summarize(run: Dict[str, Any], caps: Sequence[int] = ()) -> Dict[str, Dict[str, Any]]:
    """One run's reading, per scale: ``photos``, ``right`` (the base decode right), ``alone`` / ``turned`` (of those: the
    adapter alone, None where the eval's target is not the search's / with the shift), ``stopped`` / ``ran_out``
    (searches, and their passes through the decoder and the target: ``passes_stopped`` / ``passes_ran_out``),
    ``cap``, and ``at_cap[K]`` (K at most the cap): ``exact`` (turned by a search that stopped within K steps: the
    same search under cap K), ``likely`` (right, still searching after K steps, its margin then below 0: an
    estimate), ``passes``. A trace entry of None (a decode that was not finite) counts as not below 0."""
    cap = run["cap"]
    for k in caps:
        if not 1 <= k <= cap:
            raise SystemExit(f"shift_traces: a cap of {k}: {run['name']} searched at most {cap} steps a photo")
    out: Dict[str, Dict[str, Any]] = {}
    rows = run["rows"]
    for scale in dict.fromkeys(r.get("scale", "?") for r in rows):
        s: Dict[str, Any] = {"photos": 0, "right": 0, "alone": 0 if run["same_target"] else None, "turned": 0,
                             "stopped": 0, "ran_out": 0, "passes_stopped": 0, "passes_ran_out": 0, "cap": cap,
                             "at_cap": {}}
        searches = []
        for r in (r for r in rows if r.get("scale", "?") == scale):
            seen = r["shift_search"]
            trace = list(seen.get("trace") or [])
            steps = int(seen["steps"])
            stopped = len(trace) == steps + 1 and not seen.get("gave_up")  # the answer changed: no step after it
            right = bool(r.get("base_right"))
            turned = right and not r.get("encrypted_right", True)
            s["photos"] += 1
            s["stopped" if stopped else "ran_out"] += 1
            s["passes_stopped" if stopped else "passes_ran_out"] += len(trace)
            s["right"] += right
            s["turned"] += turned
            if s["alone"] is not None:
                before = seen.get("margin_before")
                s["alone"] += right and _finite(before) and before < 0
            searches.append((trace, steps, stopped, right, turned))
        for k in caps:
            same = [(right, turned) for _, steps, stopped, right, turned in searches if stopped and steps <= k]
            running = [(t, right) for t, steps, stopped, right, _ in searches if not (stopped and steps <= k)]
            s["at_cap"][k] = {"exact": sum(turned for _, turned in same) if k < cap else s["turned"],
                              "likely": 0 if k == cap else sum(1 for t, right in running
                                                               if right and len(t) > k and _finite(t[k]) and t[k] < 0),
                              "passes": sum(min(len(t), k) for t, *_ in searches)}
        out[scale] = s
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evals", nargs="+", help="psic eval --shift-for output folders or their metrics.json")
    ap.add_argument("--caps", nargs="*", type=int, default=[10, 20, 30], help="lower caps on the search's steps to read")
    ap.add_argument("--json", help="also write the summary here")
    args = ap.parse_args(argv)
    runs = runs_of(args.evals)
    if not runs:
        print("shift_traces: no rows with a shift search (psic eval --shift-for, from psic-adapter 0.1.6)", file=sys.stderr)
        return 1
    summary = {run["name"]: summarize(run, args.caps) for run in runs}
    for name, scales in summary.items():
        for scale, s in scales.items():
            alone = "(another target)" if s["alone"] is None else s["alone"]
            print(f"{name} {scale}: {s['photos']} photos, {s['right']} right on the base decode; turned by the adapter "
                  f"alone {alone}, with the shift {s['turned']}")
            print(f"  searches stopped early {s['stopped']} ({s['passes_stopped']} passes), ran all {s['cap']} steps "
                  f"{s['ran_out']} ({s['passes_ran_out']} passes)")
            total = s["passes_stopped"] + s["passes_ran_out"]
            for k, c in s["at_cap"].items():
                print(f"  cap {k}: turned {c['exact']} exactly, {c['likely']} more likely; {c['passes']} passes "
                      f"({c['passes'] / max(total, 1):.0%} of these)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
