"""Fitting an adapter's per-image strength on training photos (see ``psic_adapter.adapter.strength``)."""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ..adapter.strength import check_strength, latent_activity, latent_positions, oracle_strength
from ..bitstream.container import check_size
from ..bitstream.coding import encode
from ..bitstream.images import resize_longer_side
from ..codec.padding import crop_to
from ..errors import ConfigError
from .validation import served


@torch.no_grad()
def fit_strength(model, images: Iterable[Tensor], target_db: float,
                 sizes: Union[int, None, Sequence[Optional[int]]] = (512,),
                 clamp: tuple = (0.25, 4.0), fitted_on: str = "") -> Dict[str, Any]:
    """A strength spec for ``model``'s active adapter from ``images`` (``[3, H, W]`` in [0, 1]).

    Each photo is coded at a longer side of each of ``sizes`` px (``None`` or 0: as it is; one size may be
    given alone), entropy-decoded, and
    synthesised with and without the adapter at strength 1 (the decodes ``psic eval`` measures); its oracle
    strength puts it exactly ``target_db`` under the base. ``log(oracle)`` is fitted by least squares on
    ``log(nonzero share of the latent)``, and with several sizes also on ``log(latent positions)`` (the
    spec's ``size_slope``), so that one spec spends about ``target_db`` at each size. The adapter's change is
    close to linear in its strength over this range; what a fitted spec really costs is measured by decoding
    with it (``psic eval``).
    """
    if not 0 < target_db <= 20:
        raise ConfigError(f"target_db must be in (0, 20] dB, not {target_db!r}")
    if sizes is None or isinstance(sizes, int):
        sizes = [sizes]
    sizes = list(dict.fromkeys(int(v) if v else None for v in sizes))  # each size once, in order; 0 is None
    if not sizes:
        raise ConfigError("fitting a strength needs at least one size")
    if model.config.full_version != "base":  # a strength would scale the owner's full version too
        raise ConfigError("a strength needs an adapter whose full version is the base decode (full_version 'base'); "
                          "this one decodes its full version through the adapter")
    was = model.training
    model.eval()
    cond = model.encrypted_condition()
    spec_before = model.config.strength
    model.config.strength = None  # fit the change at strength 1
    rows: List[List[float]] = []  # (log nonzero share, log latent positions, log oracle strength) per photo and size
    photos = 0  # photos with at least one row
    try:
        for img in images:
            before = len(rows)
            for size in sizes:
                x = img[None].float()
                if size:
                    h, w = x.shape[-2:]
                    scale = int(size) / max(h, w)  # a size the codec can code, checked before resizing to it
                    check_size(max(1, round(h * scale)), max(1, round(w * scale)), f"a photo at {int(size)} px")
                    x = resize_longer_side(x, int(size))
                x = served(x)
                # The latent a decoder sees, from the bitstream: what the strength reads when it decodes. The
                # training forward's (analyze) is another for autoregressive codecs (mbt2018, cheng2020: round(y)
                # against round(y - mean) + mean), and a strength fitted on it would be applied far from where it
                # was fitted.
                coded = encode(model, x)
                hw = coded["size"]
                y_hat = model.decode_latent(coded["strings"], coded["shape"])
                base = served(crop_to(model.synthesize(y_hat, None), hw))
                enc = served(crop_to(model.synthesize(y_hat, cond), hw))
                a = oracle_strength(base, enc - base, x, target_db)
                if a > 0 and float((base - x).pow(2).mean()) > 0:
                    rows.append([float(latent_activity(y_hat).log()[0]), float(latent_positions(y_hat).log()[0]),
                                 math.log(min(max(a, clamp[0]), clamp[1]))])
            photos += len(rows) > before
    finally:
        model.config.strength = spec_before
        model.train(was)
    by_size = len(sizes) > 1
    if photos < 2 or (by_size and len(rows) <= 3):
        raise ConfigError("fitting a strength needs at least two photos the adapter changes"
                          + (", and at several sizes more than three fits" if by_size else ""))
    data = torch.tensor(rows, dtype=torch.float64)
    if by_size and float(data[:, 1].max() - data[:, 1].min()) == 0:
        raise ConfigError(f"the sizes {', '.join(f'{v} px' if v else 'their own' for v in sizes)} code these photos at "
                          "one latent size: give sizes that differ, or one size")
    x, y = data[:, : 2 if by_size else 1], data[:, 2]  # features (log non-zero share [, log positions]), log strength
    mx, my = x.mean(0), y.mean()
    # least squares on centred features: a constant column (one size, photos of one shape) gets a zero slope
    coef = torch.linalg.lstsq(x - mx, (y - my)[:, None], driver="gelsd").solution[:, 0]
    intercept = float(my - (mx * coef).sum())
    resid = float((y - intercept - x @ coef).pow(2).sum())
    total = float((y - my).pow(2).sum())
    spec = {"proxy": "latent_nonzero", "intercept": intercept, "slope": float(coef[0]), "min": float(clamp[0]),
            "max": float(clamp[1]), "target_db": float(target_db), "fitted_on": (fitted_on or f"{photos} photos")[:200]}
    if by_size:
        spec["size_slope"] = float(coef[1])
    check_strength(spec)
    return {"strength": spec, "photos": photos, "fits": len(rows), "r2": 1 - resid / total if total > 0 else 0.0}
