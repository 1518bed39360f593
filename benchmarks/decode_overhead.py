"""Decode-time and size overhead of PSIC adapters over the plain codec (CPU).

Measures, on one 768x512 photo (scikit-image's astronaut, resized and cropped):

* ``decompress`` of the real bitstream: the base codec, the wrapped model's
  encrypted decode (no key) and its full decode (owner's key, derived once
  during warm-up and cached, as in a viewer that decodes many images);
* ``g_s`` alone on the decoded latent: the base synthesis transform vs the same
  transform with the CLTG biases injected (``PSICModel.synthesize``);
* a base-vs-base control (two identical runs of the base codec) that shows the
  noise floor of the timing on this machine;

and the adapter's parameter count over the codec's. Runs are interleaved
(A/B/C/A/B/C..., the order rotated every round) after warm-up, and medians are
reported. Targets of the issue: decode overhead <= 3 %, parameters <= 2 %.

    python benchmarks/decode_overhead.py                       # bmshj2018-hyperprior q3
    python benchmarks/decode_overhead.py --codec cheng2020-anchor --quality 3 --json out.json

The base codec is the one shipped with the package (bmshj2018-hyperprior quality 3)
for that architecture, random weights for others (and with ``--random-weights``): decode time does not depend on the weights'
values, only on the architecture, but the bitstream length does slightly.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KEY = "benchmark owner key"


def photo_768x512() -> torch.Tensor:
    """scikit-image's astronaut (512x512) resized to 768x768 (bicubic), centre rows cropped: 1x3x512x768."""
    from PIL import Image
    from skimage import data

    im = Image.fromarray(data.astronaut()).resize((768, 768), Image.BICUBIC)
    arr = np.asarray(im)[128:640]
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def load_base(name: str, quality: int, checkpoint) -> tuple:
    from psic_adapter.codec import build_codec, load_codec, prepare_for_coding

    if checkpoint:
        return load_codec(name, quality=quality, checkpoint=checkpoint), f"checkpoint {checkpoint}"
    torch.manual_seed(0)
    return prepare_for_coding(build_codec(name, quality)), "random weights"


def interleaved(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int, clock: Callable[[], float]):
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no variant always runs first
        for n in order:
            t0 = clock()
            fns[n]()
            times[n].append(clock() - t0)
    return times


def summarize(times: Dict[str, List[float]], base: str) -> Dict[str, Dict[str, float]]:
    """Median, IQR and min per variant; overhead vs ``base`` from the medians and, more robust
    to a machine whose load drifts, the median of the per-round ratios (runs of one round are adjacent)."""
    ref = statistics.median(times[base])
    out = {}
    for n, ts in times.items():
        med = statistics.median(ts)
        q1, _, q3 = statistics.quantiles(ts, n=4)
        paired = statistics.median(t / b for t, b in zip(ts, times[base]))
        out[n] = {"median_ms": 1e3 * med, "iqr_ms": 1e3 * (q3 - q1), "min_ms": 1e3 * min(ts),
                  "overhead_pct": 100.0 * (med / ref - 1.0), "paired_overhead_pct": 100.0 * (paired - 1.0),
                  "runs": len(ts)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", default="bmshj2018-hyperprior")
    p.add_argument("--quality", type=int, default=3)
    p.add_argument("--checkpoint", nargs="+", help="codec weights (default: the shipped q3 hyperprior when it fits)")
    p.add_argument("--random-weights", action="store_true", help="random weights instead of the shipped codec (same speed)")
    p.add_argument("--preset", default="paper", choices=["paper", "official"])
    p.add_argument("--modulation", default="spatial", choices=["bias", "film", "spatial"],
                   help="CLTG modulation (default: spatial, the robust recipe's)")
    p.add_argument("--spatial-rank", type=int, help="hidden channels of the spatial branch (default: the library's, 32)")
    p.add_argument("--spatial-context", type=int, help="hidden units of the branch's global context (default: none)")
    p.add_argument("--repeats", type=int, default=15, help="timed runs per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: perf_counter; cpu: this process's CPU time (steadier on a shared machine; "
                        "use with --threads 1, as idle OpenMP threads spin)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    from psic_adapter import PSICConfig, wrap_model
    from psic_adapter.codec import normalize_name

    checkpoint = args.checkpoint
    if (checkpoint is None and not args.random_weights and normalize_name(args.codec) == "bmshj2018-hyperprior"
            and args.quality == 3):
        checkpoint = ["shipped"]
    base, source = load_base(args.codec, args.quality, checkpoint)

    # the wrapped model gets its own copy: the base codec runs with no hook at all
    model = wrap_model(copy.deepcopy(base), PSICConfig(preset=args.preset, modulation=args.modulation,
                                                        spatial_rank=args.spatial_rank,
                                                        spatial_context=args.spatial_context),
                      key=KEY, quality=args.quality)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # stand-in for a trained adapter: small non-zero weights everywhere
        for prm in model.psic_adapters.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.02)
    model.eval()
    # the same model with the last spatial branch decoded as it trains (not folded into the next layer,
    # psic_adapter/adapter/fusion.py): what the fold saves, in the same run
    # (a model of its own: a deep copy's hooks would still call the original's)
    from psic_adapter.adapter import PSICModel

    unfolded = PSICModel(copy.deepcopy(base)).add_adapter("default", PSICConfig.from_dict(model.config.to_dict()),
                                                          key=KEY)
    unfolded.psic_adapters.load_state_dict(model.psic_adapters.state_dict())
    unfolded.eval()
    unfolded._fold_points.clear()

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    x = photo_768x512()
    with torch.inference_mode():
        enc = base.compress(x)
        strings, shape = enc["strings"], enc["shape"]
        nbytes = sum(len(s) for s in _flat(strings))

        captured = {}
        h = base.g_s.register_forward_pre_hook(lambda _m, a: captured.setdefault("y_hat", a[0]))
        plain = base.decompress(strings, shape)["x_hat"]
        h.remove()
        y_hat = captured["y_hat"]
        cond = model.encrypted_condition()  # the adapter's work in g_s is the same for any condition

        full = model.decompress(strings, shape, key=KEY)["x_hat"]  # derives (and caches) the key
        encrypted = model.decompress(strings, shape)["x_hat"]
        fold_diff = (encrypted - unfolded.decompress(strings, shape)["x_hat"]).abs().max().item()
        assert not torch.equal(encrypted, plain), "the adapter is not active"
        if model.config.full_version == "base":  # the owner's decode bypasses the adapter: the base decode itself
            assert torch.equal(full, plain), "the full version should be the base decode"
        else:
            assert not torch.equal(full, plain) and not torch.equal(encrypted, full), "the adapter is not active"
        mse = torch.mean((plain.clamp(0, 1) - x) ** 2).item()

        dec_times = interleaved(
            {
                "base": lambda: base.decompress(strings, shape),
                "base (again)": lambda: base.decompress(strings, shape),
                "wrapped, encrypted": lambda: model.decompress(strings, shape),
                **({"wrapped, encrypted, not folded": lambda: unfolded.decompress(strings, shape)}
                   if model._fold_points else {}),
                "wrapped, full (key)": lambda: model.decompress(strings, shape, key=KEY),
            },
            args.repeats, args.warmup, clock,
        )
        gs_times = interleaved(
            {
                "base": lambda: base.g_s(y_hat),
                "base (again)": lambda: base.g_s(y_hat),
                "wrapped": lambda: model.synthesize(y_hat, cond),
                **({"wrapped, not folded": lambda: unfolded.synthesize(y_hat, cond)} if model._fold_points else {}),
            },
            args.repeats, args.warmup, clock,
        )

    n_adapter, n_base = model.num_adapter_parameters(), model.num_base_parameters()
    result = {
        "codec": normalize_name(args.codec),
        "quality": args.quality,
        "weights": source,
        "preset": args.preset,
        "modulation": args.modulation,
        "image": "skimage astronaut, resized to 768x768, cropped to 768x512",
        "bitstream_bytes": nbytes,
        "bpp": 8 * nbytes / (x.shape[-1] * x.shape[-2]),
        "psnr_db": 10 * np.log10(1.0 / mse),
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "decompress": summarize(dec_times, "base"),
        "g_s": summarize(gs_times, "base"),
        "adapter_parameters": n_adapter,
        "codec_parameters": n_base,
        "parameter_ratio_pct": 100.0 * n_adapter / n_base,
        "injection_points": [pt["module"] for pt in model.config.injection_points],
        "folded_point": sorted(model._fold_points.values()),
        "folded_vs_not_max_abs_diff": fold_diff,
    }

    print(f"{result['codec']} q{args.quality} ({source}), preset {args.preset} ({args.modulation}), 768x512 photo: "
          f"{result['bpp']:.4f} bpp, {result['psnr_db']:.2f} dB; {result['threads']} threads, {args.clock} clock, "
          f"{args.repeats} interleaved runs after {args.warmup} warm-up")
    print(f"{'what':<12} {'variant':<32} {'median ms':>10} {'IQR ms':>8} {'min ms':>8} {'overhead':>9} {'paired':>8}")
    for what in ("decompress", "g_s"):
        for name, s in result[what].items():
            print(f"{what:<12} {name:<32} {s['median_ms']:>10.1f} {s['iqr_ms']:>8.1f} {s['min_ms']:>8.1f} "
                  f"{s['overhead_pct']:>+8.2f}% {s['paired_overhead_pct']:>+7.2f}%")
    worst = max(s["paired_overhead_pct"] for w in ("decompress", "g_s") for n, s in result[w].items()
                if n.startswith("wrapped") and "not folded" not in n)
    print(f"adapter parameters: {n_adapter:,} / codec {n_base:,} = {result['parameter_ratio_pct']:.3f} % (target <= 2 %)")
    print(f"worst decode overhead (paired): {worst:+.2f} % (targets: <= 3 % for bias/FiLM, <= 10 % for spatial; the "
          f"base-vs-base rows show the noise floor)")
    if result["folded_point"]:
        print(f"folded vs not folded: max |difference| {fold_diff:.2e} (float rounding; the same function)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _flat(s):
    if isinstance(s, (bytes, bytearray)):
        yield s
    else:
        for v in s:
            yield from _flat(v)


if __name__ == "__main__":
    sys.exit(main())
