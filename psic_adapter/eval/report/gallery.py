"""Image rows that show what changed: original, base, full, encrypted, the difference amplified, a zoom.

Cells are PNG thumbnails (a longer side of 320 px): lossless, so that what a person compares between
the decodes is the decodes, not JPEG's artefacts.
The difference is ``encrypted - base`` around mid-grey, scaled so that its 99th
percentile reaches the edge of the range (the factor is printed); the zoom is
the 64 x 64 patch where the difference is largest, base above encrypted,
enlarged without interpolation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

THUMB = 320
PATCH = 64


@dataclass
class Cell:
    label: str
    png: bytes


def _rgb(x: Tensor) -> np.ndarray:
    t = x.detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    return (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def thumbnail(x: Tensor, longer: int = THUMB, nearest: bool = False) -> bytes:
    """A ``1x3xHxW`` / ``3xHxW`` image in [0, 1] as PNG bytes, at most ``longer`` px on its longer side."""
    from PIL import Image

    im = Image.fromarray(_rgb(x))
    scale = longer / max(im.size)
    if scale < 1 or nearest:
        size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
        im = im.resize(size, Image.NEAREST if nearest else Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def amplified_difference(encrypted: Tensor, base: Tensor) -> Tuple[Tensor, float]:
    """``0.5 + k (encrypted - base)`` clamped, with ``k`` putting the 99th percentile of |diff| at 0.5."""
    d = encrypted.float() - base.float()
    p99 = float(torch.quantile(d.abs().flatten()[:: max(1, d.numel() // 200_000)], 0.99))
    k = 0.5 / p99 if p99 > 1e-6 else 1.0
    return (0.5 + k * d).clamp(0, 1), k


def largest_change_patch(encrypted: Tensor, base: Tensor, size: int = PATCH) -> Tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` patch where ``|encrypted - base|`` is largest."""
    d = (encrypted.float() - base.float()).abs().mean(1, keepdim=True)
    h, w = d.shape[-2:]
    size = min(size, h, w)
    energy = F.avg_pool2d(d, size, stride=max(1, size // 4))
    idx = int(energy.flatten().argmax())
    ew = energy.shape[-1]
    top, left = (idx // ew) * max(1, size // 4), (idx % ew) * max(1, size // 4)
    return min(top, h - size), min(left, w - size)


def gallery_row(row) -> List[Cell]:
    """The cells of one :class:`~psic_adapter.eval.runner.GalleryRow`."""
    imgs: Dict[str, Tensor] = row.images
    answers, psnr = row.answers, row.psnr
    cells = [Cell(f"original: {answers.get('original', '?')}", thumbnail(imgs["original"]))]
    for v in ("base", "full", "encrypted"):
        if v in imgs:
            same = v == "full" and imgs["full"] is imgs["base"]
            note = " (= base, bit for bit)" if same else ""
            cells.append(Cell(f"{v}: {answers.get(v, '?')}, {psnr.get(v, float('nan')):.2f} dB{note}",
                              thumbnail(imgs[v])))
    diff, k = amplified_difference(imgs["encrypted"], imgs["base"])
    cells.append(Cell(f"encrypted - base, x{k:.0f}", thumbnail(diff)))
    top, left = largest_change_patch(imgs["encrypted"], imgs["base"])
    s = min(PATCH, *imgs["base"].shape[-2:])
    patch = torch.cat([imgs["base"][..., top: top + s, left: left + s], imgs["encrypted"][..., top: top + s, left: left + s]],
                      dim=-2)
    cells.append(Cell(f"zoom at ({left}, {top}): base above, encrypted below",
                      thumbnail(patch, longer=4 * s, nearest=True)))
    return cells
