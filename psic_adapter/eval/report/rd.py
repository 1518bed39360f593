"""Rate-distortion over several adapters (qualities), and the Bjontegaard deltas against the base.

Points are grouped by the **images** they were measured on: two results belong to one curve only where
they measured the same images at the same scale (a curve that joined two image sets would draw the
difference between the photos, not between the rates). Within an image set, the base codec, the full
version and the encrypted version each give one (bpp, PSNR, MS-SSIM) point per result, labelled with the
result's name. BD-rate (the average bit-rate change at equal quality, %) and BD-PSNR (the average PSNR
change at equal rate, dB) of each version against the base of the **same image set** come from the
maintained ``bjontegaard`` package (piecewise cubic, "pchip", interpolation), as CompressAI's users compare
codecs; they need four rate points or more on each curve.
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, List, Sequence, Tuple

from ..record import EvalResult

VERSIONS = ("base", "full", "encrypted")
#: the points a Bjontegaard delta needs on each curve
BD_MIN_POINTS = 4

Curves = Dict[str, List[Dict[str, float]]]  # version -> points sorted by bpp


def image_set(result: EvalResult, scale: str) -> Tuple[str, str]:
    """``(identity, label)`` of the images ``result`` measured at ``scale``: the per-image rows' names where
    the result holds them (else its data and image count), and a label a person reads."""
    s = result.scales[scale]
    names = sorted(str(r.get("name")) for r in result.per_image if r.get("scale") == scale)
    data = result.meta.get("data", "")
    data = ", ".join(map(str, data)) if isinstance(data, (list, tuple)) else str(data)
    ident = "\n".join(names) if names else f"{data}\n{s.n_images}"
    digest = hashlib.sha256(f"{scale}\n{ident}".encode()).hexdigest()[:12]
    label = f"{s.images_text} at {scale}" + (f" ({data})" if data else "")
    return digest, label


def rd_points(results: Sequence[EvalResult], scale: str = "") -> Dict[str, Curves]:
    """``image set label -> version -> [{"bpp", "psnr", "ms_ssim", "label"}]`` over ``results`` at ``scale``
    (default: each result's primary scale); each point is labelled with its result's name. Results that
    measured different images are different image sets, never one curve."""
    sets: Dict[str, Tuple[str, Curves]] = {}  # identity -> (label, curves)
    for r in results:
        key = scale or r.main.scale
        if key not in r.scales:
            continue
        s = r.scales[key]
        ident, label = image_set(r, key)
        curves = sets.setdefault(ident, (label, {}))[1]
        for v in VERSIONS:
            if v not in s.quality or v not in s.bpp:
                continue
            curves.setdefault(v, []).append({
                "bpp": s.bpp[v].mean, "psnr": s.quality[v]["psnr"].mean,
                "ms_ssim": s.quality[v]["ms_ssim"].mean if "ms_ssim" in s.quality[v] else math.nan,
                "label": str(r.meta.get("name", "")),
            })
    out: Dict[str, Curves] = {}
    for label, curves in sets.values():
        for pts in curves.values():
            pts.sort(key=lambda p: p["bpp"])
        name, k = label, 2
        while name in out:  # two image sets that read alike stay two
            name, k = f"{label} #{k}", k + 1
        out[name] = curves
    return out


def bd_deltas(anchor: Sequence[Dict[str, float]], test: Sequence[Dict[str, float]], metric: str = "psnr",
              method: str = "pchip") -> Dict[str, float]:
    """``{"bd_rate" (%), "bd_<metric>"}`` of ``test`` against ``anchor``; NaN where they cannot be computed
    (fewer than 4 points each, or curves that do not overlap enough). Both curves must be of the same images."""
    import numpy as np

    nan = {"bd_rate": math.nan, f"bd_{metric}": math.nan}
    if len(anchor) < BD_MIN_POINTS or len(test) < BD_MIN_POINTS:
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


def bd_table(points: Dict[str, Curves]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``image set -> version -> {bd_rate, bd_psnr, bd_rate_ms_ssim, bd_ms_ssim}``: full and encrypted against
    the base of the same image set, for the image sets whose curves have :data:`BD_MIN_POINTS` points or more
    (the others are left out: a delta between curves of other images, or of too few points, means nothing)."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for label, curves in points.items():
        base = curves.get("base", [])
        if len(base) < BD_MIN_POINTS:
            continue
        for v in ("full", "encrypted"):
            if len(curves.get(v, [])) >= BD_MIN_POINTS:
                d = bd_deltas(base, curves[v], "psnr")
                ms = bd_deltas(base, curves[v], "ms_ssim")
                d.update({"bd_rate_ms_ssim": ms["bd_rate"], "bd_ms_ssim": ms["bd_ms_ssim"]})
                out.setdefault(label, {})[v] = d
    return out
