"""What the owner's per-photo shift costs at compression (CPU): ``psic compress --shift-for`` against plain
``psic compress``, on one 768x512 photo (scikit-image's astronaut, as ``decode_overhead.py``).

Variants, interleaved (the order rotated every round) after one warm-up each, CPU time of this process:

* ``compress``: the base codec's ``compress`` (what every ``.psic`` file costs);
* ``compress+shift (stops early)``: ``compress``, the entropy decode and the search with its defaults (40
  steps at most, it stops once the answer changed with a margin of 1): what a photo costs as shipped;
* ``compress+shift (40 steps)``: the same with the early stop and the give-up off: every step a photo can take
  (one whose answer does not change and is given up on takes the first 10 of them);
* ``compress+shift (40 steps, bf16)``: the same with the steps in bf16 autocast (``--shift-amp bf16``; on a CPU
  without bf16 units it runs, slowly, in emulation: read it where ``bf16_units`` is true);
* ``compress (again)``: a second run of the first, the noise floor of the timing on this machine.

The adapter is the shipped demo adapter (8 hidden channels, calibrated), the target the trained
EfficientNet-Lite0, the codec the shipped one.

    python benchmarks/compress_shift.py --threads 1 --repeats 3 --json compress_shift.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings

import torch

from decode_overhead import interleaved, photo_768x512, summarize


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--steps", type=int, default=40, help="the search's steps at most")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from psic_adapter.adapter import load_adapter
    from psic_adapter.training.shift_search import ShiftSearch
    from psic_adapter.adapter.pretrained import DEMO_ADAPTER
    from psic_adapter.codec import load_codec
    from psic_adapter.targets import build_target

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo adapter's public key
        model = load_adapter(load_codec("bmshj2018-hyperprior", 3, ["shipped"]), DEMO_ADAPTER).eval()
    target = build_target("efficientnet-lite0", device="cpu").eval()
    x = photo_768x512()
    shipped = ShiftSearch(target, steps=args.steps)
    # never below -100: no early stop; and no giving up (a photo given up on costs its first 10 steps of these)
    every_step = ShiftSearch(target, steps=args.steps, stop_margin=100.0, give_up=None)
    every_step_bf16 = ShiftSearch(target, steps=args.steps, stop_margin=100.0, amp="bf16", give_up=None)
    seen = {}

    def compress():
        with torch.no_grad():
            return model.compress(x)

    def with_shift(search, name):
        def run():
            enc = compress()
            with torch.no_grad():
                y_hat = model.decode_latent(enc["strings"], enc["shape"])
            seen[name] = search(model, y_hat, x)[1]
        return run

    fns = {"compress": compress, "compress+shift (stops early)": with_shift(shipped, "early"),
           f"compress+shift ({args.steps} steps)": with_shift(every_step, "all"),
           f"compress+shift ({args.steps} steps, bf16)": with_shift(every_step_bf16, "all bf16"),
           "compress (again)": compress}
    times = interleaved(fns, args.repeats, warmup=1, clock=time.process_time)
    from psic_adapter.training.loop import cpu_has_bf16_units

    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "bf16_units": cpu_has_bf16_units(),
           "photo": "768x512", "clock": "cpu", "variants": summarize(times, "compress"),
           "search": {k: {f: v for f, v in s.items() if f != "label"} for k, s in seen.items()}}
    for name, r in out["variants"].items():
        print(f"{name:32s} {r['median_ms'] / 1e3:8.2f} s  (x{1 + r['paired_overhead_pct'] / 100:.1f} paired, "
              f"IQR {r['iqr_ms'] / 1e3:.2f} s, {r['runs']} runs)")
    print(json.dumps(out["search"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
