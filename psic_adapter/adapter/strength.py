"""A per-image strength for the adapter's change, read from the latent alone (issue 15).

An adapter changes every image by about the same energy, but a PSNR budget is relative to
the codec's own error, which is small on smooth photos and large on textured ones: the
same change costs 2.5 dB on one photo and 0.1 dB on another, and a budget held on average
leaves most photos far under it (docs/results.md, "where the budget goes"). The codec's
error follows how much the latent holds, which the decoder sees: the share of non-zero
latent entries. ``PSICConfig(strength=...)`` scales the adapter's modulation of each image by

    s = clamp(exp(intercept + slope * log(nonzero share of y_hat)
                  + size_slope * log(latent positions of y_hat)), min, max)

(its gains, biases and gates alike), so the change grows where the codec's error is large.
``size_slope`` (absent: 0) is fitted when the strength is fitted at several sizes (``psic
calibrate --size 512 0``): the same adapter costs less at a photo's own size than at 512 px
(the codec's error per pixel differs, and the non-zero share does not follow it all the way),
so a strength fitted at one size under-spends at the other. It reads the size of the latent it
decodes, so it holds for whole photos; training decodes windows of photos, which it would read
as smaller photos, so :func:`check_trainable` refuses to go on training such an adapter.
It needs no original and no second decode: the decoder computes it from the ``y_hat`` it
decodes, at the cost of one reduction. ``fit_strength`` (``psic_adapter.training.calibrate``)
fits ``intercept`` and ``slope`` (and ``size_slope``, at several sizes) on training photos so
that each photo's encrypted PSNR would sit ``target_db`` under the base's (a per-image oracle,
then least squares in log space).
"""

from __future__ import annotations

import math
from typing import Any, Dict

import torch
from torch import Tensor

from ..errors import ConfigError, show, show_names

PROXIES = ("latent_nonzero",)
#: the fields of a strength spec, and what each may hold
FIELDS = {"proxy", "intercept", "slope", "size_slope", "min", "max", "target_db", "fitted_on"}
MAX_STRENGTH = 16.0


def _number_in(v: Any, lo: float, hi: float) -> bool:
    """``v`` is a JSON number (not a bool) within ``[lo, hi]``; an integer too large for a float is not (the
    comparison is exact: ``math.isfinite`` would raise on it)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return lo <= v <= hi  # False for NaN; an int is compared exactly, however large


def check_strength(spec: Any) -> None:
    """A strength spec read from an adapter config: known fields, finite numbers in range (untrusted)."""
    if spec is None:
        return
    if not isinstance(spec, dict):
        raise ConfigError("strength must be a JSON object or null")
    unknown = sorted(set(map(str, spec)) - FIELDS)
    if unknown:
        raise ConfigError(f"unknown strength field(s): {show_names(unknown)}")
    if spec.get("proxy") not in PROXIES:
        raise ConfigError(f"strength proxy must be one of {PROXIES}, not {show(spec.get('proxy'))}")
    for name, lo, hi in (("intercept", -100, 100), ("slope", -100, 100), ("min", 0, MAX_STRENGTH),
                         ("max", 0, MAX_STRENGTH)):
        v = spec.get(name)
        if not _number_in(v, lo, hi):
            raise ConfigError(f"strength {name} must be a finite number in [{lo}, {hi}], not {show(v)}")
    if "size_slope" in spec and not _number_in(spec["size_slope"], -100, 100):
        raise ConfigError(f"strength size_slope must be a finite number in [-100, 100], not {show(spec['size_slope'])}")
    if not 0 < spec["min"] <= spec["max"]:
        raise ConfigError("strength needs 0 < min <= max")
    t = spec.get("target_db")
    if t is not None and (not _number_in(t, 0, 20) or t == 0):
        raise ConfigError(f"strength target_db must be in (0, 20] dB, not {show(t)}")
    f = spec.get("fitted_on")
    if f is not None and (not isinstance(f, str) or len(f) > 1000):
        raise ConfigError("strength fitted_on must be a short string")


def latent_activity(y_hat: Tensor) -> Tensor:
    """``[B]``: the share of non-zero entries of each image's latent (at least 1e-4)."""
    return (y_hat.detach() != 0).flatten(1).float().mean(dim=1).clamp_min(1e-4)


def latent_positions(y_hat: Tensor) -> Tensor:
    """``[B]``: the latent's spatial positions (``h * w``; the same for every image of a batch)."""
    return y_hat.new_full((y_hat.shape[0],), float(math.prod(y_hat.shape[2:])), dtype=torch.float32)


def strength_of(spec: Dict[str, Any], y_hat: Tensor) -> Tensor:
    """``[B, 1, 1, 1]``: the strength of each image's change under ``spec``."""
    log_s = spec["intercept"] + spec["slope"] * latent_activity(y_hat).log()
    if spec.get("size_slope"):
        log_s = log_s + spec["size_slope"] * latent_positions(y_hat).log()
    s = torch.exp(log_s)
    return s.clamp(spec["min"], spec["max"]).view(-1, 1, 1, 1)


def check_trainable(spec: Any) -> None:
    """Refuse to train through a strength that reads the photo's size: training decodes windows of photos,
    which it would read as smaller photos (their strength would not be the one a decode of the photo uses)."""
    if spec is not None and spec.get("size_slope"):
        raise ConfigError("this adapter's strength depends on the photo's size (psic calibrate with several "
                          "--size), which training windows do not show: go on training the adapter it was "
                          "calibrated from, then calibrate again")


def oracle_strength(base: Tensor, change: Tensor, original: Tensor, drop_db: float) -> float:
    """``a >= 0`` such that ``base + a * change`` is exactly ``drop_db`` under ``base`` in PSNR against ``original``."""
    e, d = (base - original).double(), change.double()
    a2 = float(d.pow(2).sum())
    b = 2 * float((e * d).sum())
    c = float(e.pow(2).sum()) * (1 - 10 ** (drop_db / 10))
    if a2 <= 0:
        return 0.0
    return (-b + math.sqrt(max(0.0, b * b - 4 * a2 * c))) / (2 * a2)
