"""Expectation over transformation: what a served image goes through, shown to the target in training.

An encrypted decode must mislead the target where it is used, after a platform
has made a thumbnail of it, re-encoded it as JPEG, blurred it or coded it
again. Training draws one such transformation per step (:func:`served_transform`)
and applies it before the target; real encoders are not differentiable, so
their gradient is the identity's (:func:`straight_through`, BPDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..perturbations import jpeg

#: none; "basic" (differentiable resize / blur / noise); "real" (thumbnails, JPEG, blur, the codec again)
EOT_MODES = ("none", "basic", "real")


def random_transform(x: Tensor, generator: torch.Generator) -> Tensor:
    """One random, differentiable stand-in for what a served image goes through.

    With equal odds: nothing; a downscale by 0.4-0.9 (bicubic, antialiased; the
    target resizes again itself); a Gaussian blur with sigma 0.5-1.5; additive
    Gaussian noise of 1-4 / 255 (the rounding and blocking of a re-encode).
    One draw for the whole batch.
    """
    u = torch.rand(2, generator=generator).tolist()
    kind = int(u[0] * 4)
    if kind == 1:
        scale = 0.4 + 0.5 * u[1]
        h, w = x.shape[-2:]
        size = (max(8, round(h * scale)), max(8, round(w * scale)))
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    if kind == 2:
        return random_transform_blur(x, 0.5 + u[1])
    if kind == 3:
        sigma = (1.0 + 3.0 * u[1]) / 255.0
        noise = torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
        return x + sigma * noise
    return x


def eot_mode(eot) -> str:
    """``True``/``False`` (older configs) or one of :data:`EOT_MODES`."""
    if eot is True:
        return "basic"
    if eot is False or eot is None:
        return "none"
    if eot not in EOT_MODES:
        raise ConfigError(f"eot must be one of {EOT_MODES}, not {eot!r}")
    return eot


def straight_through(x: Tensor, y: Tensor) -> Tensor:
    """``y`` in the forward pass, the identity's gradient in the backward pass (BPDA)."""
    return x + (y.to(x.dtype) - x).detach()


def served_transform(x: Tensor, generator: torch.Generator, codec=None) -> Tensor:
    """One random draw of what happens to a served image before a model sees it.

    With equal odds: nothing; a thumbnail (an antialiased downscale by 1-3x, the
    target then resizes it itself); real JPEG at quality 60-90; a Gaussian blur
    with sigma 0.5-1.5; a second pass through the base ``codec`` (real entropy
    coding's equal: the codec's forward in eval mode, which rounds the latents;
    skipped without a codec); a thumbnail saved as JPEG. Real encoders are not
    differentiable: their gradient is the identity's (straight-through, as in
    BPDA), which is what makes an attack learn to survive them. One draw for
    the whole batch.
    """
    kinds = 6 if codec is not None else 5
    u = torch.rand(3, generator=generator).tolist()
    kind = min(int(u[0] * kinds), kinds - 1)
    def thumbnail(t: Tensor) -> Tensor:
        factor = 3.0 ** u[1]
        h, w = t.shape[-2:]
        size = (max(16, round(h / factor)), max(16, round(w / factor)))
        return F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True)

    quality = int(60 + 30 * u[2])
    if kind == 1:
        return thumbnail(x)
    if kind == 2:
        return straight_through(x, jpeg(x.detach().float().clamp(0, 1), quality=quality))
    if kind == 3:
        return random_transform_blur(x, 0.5 + u[1])
    if kind == 4:
        t = thumbnail(x)
        return straight_through(t, jpeg(t.detach().float().clamp(0, 1), quality=quality))
    if kind == 5:
        return straight_through(x, codec_forward(codec, x.detach().clamp(0, 1)))
    return x


@torch.no_grad()
def codec_forward(codec, x: Tensor, multiple: int = 64) -> Tensor:
    """The codec's eval-mode forward (rounded latents: what compress + decompress decode), padded and cropped."""
    from ..bitstream.images import crop_to, pad_to_multiple

    was_training = codec.training
    codec.eval()
    try:
        xp, size = pad_to_multiple(x, multiple)
        return crop_to(codec(xp)["x_hat"], size).clamp(0, 1)
    finally:
        codec.train(was_training)


def random_transform_blur(x: Tensor, sigma: float) -> Tensor:
    """A differentiable separable Gaussian blur (reflected borders)."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)
