"""Seeded crops and flips of ``3xHxW`` tensors (a generator reaches the transforms that draw)."""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .common import Size, apply_transform, as_size


def _resize_to_cover(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize up (keeping the aspect) until both sides are at least ``size``."""
    h, w = x.shape[-2:]
    ch, cw = size
    if h >= ch and w >= cw:
        return x
    scale = max(ch / h, cw / w)
    nh, nw = max(ch, math.ceil(h * scale - 1e-6)), max(cw, math.ceil(w * scale - 1e-6))
    was_uint8 = x.dtype == torch.uint8
    y = x.float() if was_uint8 else x
    y = F.interpolate(y[None], size=(nh, nw), mode="bicubic", align_corners=False)[0]
    if was_uint8:
        return y.round().clamp_(0, 255).to(torch.uint8)
    return y.clamp_(0.0, 1.0)


def _pad_to_cover(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if not (ph or pw):
        return x
    y = x.float() if x.dtype == torch.uint8 else x
    y = F.pad(y[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")[0]
    return y.to(x.dtype)


def crop(x: torch.Tensor, size: Tuple[int, int], generator: Optional[torch.Generator], small: str = "resize") -> torch.Tensor:
    """A ``size`` crop of ``x`` (``...xHxW``): random with a generator, else central."""
    x = _resize_to_cover(x, size) if small == "resize" else _pad_to_cover(x, size)
    h, w = x.shape[-2:]
    ch, cw = size
    if generator is None:
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    return x[..., top : top + ch, left : left + cw]


def _check_small(small: str) -> str:
    if small not in ("resize", "pad"):
        raise ConfigError(f"small must be 'resize' or 'pad', not {small!r}")
    return small


class RandomCrop:
    """A random ``size`` crop of a ``3xHxW`` tensor.

    Images smaller than the crop are first resized up on their short side
    (``small="resize"``, keeps natural image statistics) or padded by
    replicating the border (``small="pad"``). Draws from ``generator`` when
    given, else from torch's global generator.
    """

    takes_generator = True

    def __init__(self, size: Size, small: str = "resize"):
        self.size = as_size(size)
        self.small = _check_small(small)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if generator is None:
            generator = torch.default_generator
        return crop(x, self.size, generator, self.small)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, small={self.small!r})"


class CenterCrop:
    """The central ``size`` crop of a ``3xHxW`` tensor (small images resized up or padded)."""

    def __init__(self, size: Size, small: str = "resize"):
        self.size = as_size(size)
        self.small = _check_small(small)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return crop(x, self.size, None, self.small)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size}, small={self.small!r})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    takes_generator = True

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"flip probability must be in [0, 1], not {p!r}")
        self.p = float(p)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if generator is None:
            generator = torch.default_generator
        if float(torch.rand((), generator=generator)) < self.p:
            return x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order; a ``generator`` reaches those that take one."""

    takes_generator = True

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        for t in self.transforms:
            x = apply_transform(t, x, generator)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def train_transform(crop: Optional[Size]) -> Compose:
    """Training augmentation: a random ``crop`` (when given) and a horizontal flip."""
    steps: List[Callable] = []
    if crop is not None:
        steps.append(RandomCrop(crop))
    steps.append(RandomHorizontalFlip())
    return Compose(steps)


def eval_transform(crop: Optional[Size] = None) -> Compose:
    """Evaluation: the centre ``crop``, or the whole image when ``crop`` is None."""
    return Compose([CenterCrop(crop)] if crop is not None else [])


