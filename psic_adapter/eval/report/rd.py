"""Rate-distortion over several adapters (qualities), and the Bjontegaard deltas against the base.

The base codec, the full version and the encrypted version each give one
(bpp, PSNR, MS-SSIM) point per adapter; BD-rate (the average bit-rate change at
equal quality, %) and BD-PSNR (the average PSNR change at equal rate, dB) of
each version against the base come from the maintained ``bjontegaard`` package
(piecewise cubic, "pchip", interpolation), as CompressAI's users compare codecs.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

from ..record import EvalResult

VERSIONS = ("base", "full", "encrypted")


def rd_points(results: Sequence[EvalResult], scale: str = "") -> Dict[str, List[Dict[str, float]]]:
    """``version -> [{"bpp", "psnr", "ms_ssim", "label"}]`` over ``results`` at ``scale`` (default: each primary)."""
    out: Dict[str, List[Dict[str, float]]] = {}
    for r in results:
        s = r.scales.get(scale) if scale else r.main
        if s is None:
            continue
        for v in VERSIONS:
            if v not in s.quality or v not in s.bpp:
                continue
            out.setdefault(v, []).append({
                "bpp": s.bpp[v].mean, "psnr": s.quality[v]["psnr"].mean,
                "ms_ssim": s.quality[v]["ms_ssim"].mean if "ms_ssim" in s.quality[v] else math.nan,
                "label": str(r.meta.get("name", "")),
            })
    for v in out:
        out[v].sort(key=lambda p: p["bpp"])
    return out


def bd_deltas(anchor: Sequence[Dict[str, float]], test: Sequence[Dict[str, float]], metric: str = "psnr",
              method: str = "pchip") -> Dict[str, float]:
    """``{"bd_rate" (%), "bd_<metric>"}`` of ``test`` against ``anchor``; NaN where they cannot be computed
    (fewer than 4 points each, or curves that do not overlap enough)."""
    import numpy as np

    nan = {"bd_rate": math.nan, f"bd_{metric}": math.nan}
    if len(anchor) < 4 or len(test) < 4:
        return nan
    ra = np.array([p["bpp"] for p in anchor], dtype=float)
    da = np.array([p[metric] for p in anchor], dtype=float)
    rt = np.array([p["bpp"] for p in test], dtype=float)
    dt = np.array([p[metric] for p in test], dtype=float)
    if not (np.isfinite(ra).all() and np.isfinite(da).all() and np.isfinite(rt).all() and np.isfinite(dt).all()):
        return nan
    import bjontegaard as bd

    out = dict(nan)
    for key, fn in (("bd_rate", bd.bd_rate), (f"bd_{metric}", bd.bd_psnr)):
        try:
            out[key] = float(fn(ra, da, rt, dt, method=method, require_matching_points=False))
        except (ValueError, ZeroDivisionError, np.linalg.LinAlgError):
            pass
    return out


def bd_table(points: Dict[str, List[Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """BD-rate / BD-PSNR / BD-MS-SSIM of full and encrypted against the base."""
    out = {}
    base = points.get("base", [])
    for v in ("full", "encrypted"):
        if v in points:
            d = bd_deltas(base, points[v], "psnr")
            ms = bd_deltas(base, points[v], "ms_ssim")
            d.update({"bd_rate_ms_ssim": ms["bd_rate"], "bd_ms_ssim": ms["bd_ms_ssim"]})
            out[v] = d
    return out
