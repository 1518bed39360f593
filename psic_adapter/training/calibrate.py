"""Fitting an adapter's per-image strength on training photos (see ``psic_adapter.adapter.strength``)."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional

import torch
from torch import Tensor

from ..adapter.strength import check_strength, latent_activity, oracle_strength
from ..bitstream.container import check_size
from ..bitstream.coding import encode
from ..bitstream.images import resize_longer_side
from ..codec.padding import crop_to
from ..errors import ConfigError
from .validation import served


@torch.no_grad()
def fit_strength(model, images: Iterable[Tensor], target_db: float, size: Optional[int] = 512,
                 clamp: tuple = (0.25, 4.0), fitted_on: str = "") -> Dict[str, Any]:
    """A strength spec for ``model``'s active adapter from ``images`` (``[3, H, W]`` in [0, 1]).

    Each photo is coded at a longer side of ``size`` px (``None``: as it is), entropy-decoded, and
    synthesised with and without the adapter at strength 1 (the decodes ``psic eval`` measures); its oracle strength puts it exactly ``target_db``
    under the base. ``log(oracle)`` is fitted by least squares on ``log(nonzero share of the
    latent)``. The adapter's change is close to linear in its strength over this range; what
    a fitted spec really costs is measured by decoding with it (``psic eval``).
    """
    if not 0 < target_db <= 20:
        raise ConfigError(f"target_db must be in (0, 20] dB, not {target_db!r}")
    if model.config.full_version != "base":  # a strength would scale the owner's full version too
        raise ConfigError("a strength needs an adapter whose full version is the base decode (full_version 'base'); "
                          "this one decodes its full version through the adapter")
    was = model.training
    model.eval()
    cond = model.encrypted_condition()
    spec_before = model.config.strength
    model.config.strength = None  # fit the change at strength 1
    xs: List[float] = []
    ys: List[float] = []
    try:
        for img in images:
            x = img[None].float()
            if size:
                h, w = x.shape[-2:]
                scale = int(size) / max(h, w)  # a size the codec can code, checked before resizing to it
                check_size(max(1, round(h * scale)), max(1, round(w * scale)), f"a photo at {int(size)} px")
                x = resize_longer_side(x, int(size))
            x = served(x)
            # The latent a decoder sees, from the bitstream: what the strength reads when it decodes. The training
            # forward's (analyze) is another for autoregressive codecs (mbt2018, cheng2020: round(y) against
            # round(y - mean) + mean), and a strength fitted on it would be applied far from where it was fitted.
            coded = encode(model, x)
            hw = coded["size"]
            y_hat = model.decode_latent(coded["strings"], coded["shape"])
            base = served(crop_to(model.synthesize(y_hat, None), hw))
            enc = served(crop_to(model.synthesize(y_hat, cond), hw))
            a = oracle_strength(base, enc - base, x, target_db)
            if a > 0 and float((base - x).pow(2).mean()) > 0:
                xs.append(float(latent_activity(y_hat).log()[0]))
                ys.append(math.log(min(max(a, clamp[0]), clamp[1])))
    finally:
        model.config.strength = spec_before
        model.train(was)
    if len(xs) < 2:
        raise ConfigError("fitting a strength needs at least two photos the adapter changes")
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((v - mx) ** 2 for v in xs)
    slope = sum((v - mx) * (w - my) for v, w in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    intercept = my - slope * mx
    resid = sum((w - intercept - slope * v) ** 2 for v, w in zip(xs, ys))
    total = sum((w - my) ** 2 for w in ys)
    spec = {"proxy": "latent_nonzero", "intercept": intercept, "slope": slope, "min": float(clamp[0]),
            "max": float(clamp[1]), "target_db": float(target_db),
            "fitted_on": (fitted_on or f"{n} photos")[:200]}
    check_strength(spec)
    spec_r2 = 1 - resid / total if total > 0 else 0.0
    return {"strength": spec, "photos": n, "r2": spec_r2}
