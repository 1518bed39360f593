"""What happens to a served image before a model sees it.

A platform re-encodes uploads as JPEG, makes thumbnails, a scraper may blur or
re-compress. These functions apply such transformations to decoded images so an
evaluation can check whether the encrypted version still misleads the target
(and the full version still works) afterwards.

Every function takes ``[B, 3, H, W]`` float tensors in ``[0, 1]`` and returns
the same layout, values clamped to ``[0, 1]``, on the input's device and dtype.
They run under ``torch.no_grad`` and are not differentiable (JPEG and the
codec round trip are real encoders). Only :func:`resize` changes ``H, W``
(unless ``restore=True``).
"""

from __future__ import annotations

import functools
import io
import math
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn.functional as F

from .codec.padding import crop_to, pad_to_multiple

__all__ = [
    "jpeg",
    "resize",
    "gaussian_blur",
    "codec_roundtrip",
    "PERTURBATIONS",
    "get_perturbations",
]

Perturbation = Callable[[torch.Tensor], torch.Tensor]


def _check(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a [B, 3, H, W] tensor, got {shape}")


@torch.no_grad()
def jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """Real JPEG encode + decode with Pillow, image by image.

    Pixels are rounded to 8 bits first (as any saved file). Pillow's defaults
    otherwise (4:2:0 chroma subsampling, standard tables), as a typical server.
    """
    _check(x, "jpeg")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    from PIL import Image

    arr = (x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im.convert("RGB")))
    y = torch.from_numpy(np.stack(out).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    return y.to(device=x.device, dtype=x.dtype).contiguous()


@torch.no_grad()
def resize(x: torch.Tensor, scale: float = 0.5, restore: bool = False) -> torch.Tensor:
    """Bicubic, antialiased resize by ``scale`` (a thumbnail for ``scale < 1``).

    The output is ``round(H * scale) x round(W * scale)`` (at least 1x1); the
    target model's own preprocessing resizes it again. With ``restore=True`` it
    is scaled back to ``H x W`` (bicubic), as a viewer that zooms the thumbnail.
    """
    _check(x, "resize")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    xf = x.detach().float()
    y = F.interpolate(xf, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    if restore:
        y = F.interpolate(y, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return y.to(x.dtype)


@torch.no_grad()
def gaussian_blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur with kernel size ``2 * ceil(3 * sigma) + 1`` (torchvision).

    Borders are reflected, so a constant image stays that constant. The kernel is
    shrunk (kept odd) when the image is too small for it; ``sigma <= 0`` returns
    a copy.
    """
    _check(x, "gaussian_blur")
    if sigma <= 0:
        return x.clone()
    from torchvision.transforms.functional import gaussian_blur as _tv_blur

    k = 2 * math.ceil(3 * sigma) + 1
    # reflect padding needs k // 2 < side
    k = min(k, 2 * (min(x.shape[-2:]) - 1) + 1)
    if k < 3:
        return x.clone()
    y = _tv_blur(x.detach().float(), kernel_size=[k, k], sigma=[float(sigma), float(sigma)])
    return y.clamp(0, 1).to(x.dtype)


@torch.no_grad()
def codec_roundtrip(x: torch.Tensor, codec, multiple: int = 64) -> torch.Tensor:
    """Compress with a CompressAI codec and decompress (real entropy coding).

    The image is padded to a multiple of ``multiple`` (replicated borders,
    :func:`psic_adapter.bitstream.images.pad_to_multiple`) and cropped back. The codec
    must be ready to code: ``codec.eval(); codec.update()`` (not done here, the
    codec is not modified). It runs on the codec's device; the result comes
    back on the input's.
    """
    _check(x, "codec_roundtrip")
    try:
        device = next(codec.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    xp, size = pad_to_multiple(x.detach().float().clamp(0, 1).to(device), multiple)
    enc = codec.compress(xp)
    rec = codec.decompress(enc["strings"], enc["shape"])["x_hat"]
    return crop_to(rec, size).clamp(0, 1).to(device=x.device, dtype=x.dtype).contiguous()


PERTURBATIONS: Dict[str, Perturbation] = {
    "jpeg75": functools.partial(jpeg, quality=75),
    "resize0.5": functools.partial(resize, scale=0.5),
    "blur1": functools.partial(gaussian_blur, sigma=1.0),
}
"""The fixed perturbations, by name (a codec round trip needs a codec: see
:func:`get_perturbations`)."""


def get_perturbations(codec=None, codec_name: str = "codec") -> Dict[str, Perturbation]:
    """A fresh copy of :data:`PERTURBATIONS`, plus ``codec_name`` -> the codec
    round trip (:func:`codec_roundtrip`) when ``codec`` is given."""
    out = dict(PERTURBATIONS)
    if codec is not None:
        if codec_name in out:
            raise ValueError(f"perturbation name {codec_name!r} is taken")
        out[codec_name] = functools.partial(codec_roundtrip, codec=codec)
    return out
