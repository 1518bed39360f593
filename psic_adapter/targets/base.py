"""The interface every target implements, and the preprocessing they share.

A *target* is a frozen machine-vision model that PSIC's encrypted decode must
mislead: a CLIP model (image-text retrieval, zero-shot classification), an
ImageNet classifier, or an ensemble of them. Losses and metrics only talk to
:class:`Target`, never to open_clip or timm directly.

All inputs are image batches ``B x 3 x H x W`` (or ``B x 1 x H x W``, grey,
repeated to three channels) with values in ``[0, 1]`` and any ``H x W``; a
target preprocesses them itself, differentiably, so gradients reach the
decoder that made them.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TargetError

__all__ = ["Target", "resize_center_crop"]

_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def resize_center_crop(
    x: torch.Tensor,
    size: int,
    resize_size: Optional[int] = None,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Resize a batch on its short side and centre-crop it to ``size x size``.

    Differentiable in ``x``; the tensor counterpart of torchvision's
    ``Resize(resize_size) + CenterCrop(size)`` as CLIP and timm use them:
    the short side becomes ``resize_size`` (default ``size``) with the long
    side scaled alike (truncated, like torchvision), then the centre
    ``size x size`` is kept. ``resize_mode="squash"`` instead resizes straight
    to ``size x size`` (open_clip's mode for some models). Bicubic and bilinear
    resizing use ``antialias=True`` so that downscaling matches PIL. A side that
    already has the right length is not resampled. Values are not clamped.
    """
    if interpolation not in _INTERPOLATIONS:
        interpolation = "bicubic"
    kwargs = {"mode": interpolation}
    if interpolation != "nearest":
        kwargs.update(align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    if resize_mode == "squash":
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), **kwargs)
        return x
    if resize_mode != "shortest":
        raise TargetError(f"unknown resize mode {resize_mode!r}: expected 'shortest' or 'squash'")
    short = int(resize_size or size)
    if short < size:
        raise TargetError(f"resize size {short} is smaller than the crop size {size}")
    if min(h, w) != short:
        if h <= w:
            new_h, new_w = short, max(short, int(short * w / h))
        else:
            new_h, new_w = max(short, int(short * h / w)), short
        x = F.interpolate(x, size=(new_h, new_w), **kwargs)
    h, w = x.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


class Target(nn.Module):
    """A frozen machine-vision model that the encrypted decode must mislead.

    Subclasses build their model, set the attributes below, call
    :meth:`_set_preprocessing` and finally :meth:`_freeze`; they implement
    :meth:`image_features`, :meth:`logits`, :meth:`label_features` and
    :meth:`_encode_texts`.

    Attributes:
        name: what the target is, e.g. ``"clip:ViT-B-32@openai"``.
        kind: ``"clip"``, ``"classifier"`` or ``"ensemble"``.
        image_size: side of the square input the model sees.
        feature_dim: ``D``, the width of :meth:`image_features` and
            :meth:`text_features`.
        class_names: the class of each logit for a classifier (ImageNet names
            for ImageNet models); for CLIP the optional names given to build
            zero-shot prompts; else ``None``.

    Frozen: every parameter has ``requires_grad=False`` and the module stays
    in eval mode. :meth:`train` is overridden so that a parent module's
    ``.train()`` cannot switch batch norm or dropout back on: a target is a
    fixed judge, never trained. Gradients still flow through it to its input.
    Do not make a target a submodule of a model whose ``state_dict`` you save,
    or its weights are saved with it; and a parent's ``requires_grad_(True)``
    reaches its parameters, so keep targets out of trainable modules.

    Text features are cached per string (see :meth:`text_features`): captions
    are encoded once, not at every step.
    """

    name: str = "target"
    kind: str = "target"
    image_size: int = 224
    feature_dim: Optional[int] = None
    class_names: Optional[List[str]] = None
    #: captions encoded per forward pass of the text tower
    text_batch_size: int = 256

    def __init__(self) -> None:
        super().__init__()
        self._text_cache: Dict[str, torch.Tensor] = {}
        self.resize_size: Optional[int] = None
        self.resize_mode = "shortest"
        self.interpolation = "bicubic"

    # ------------------------------------------------------------------ setup
    def _set_preprocessing(
        self,
        image_size: Union[int, Sequence[int]],
        mean: Sequence[float],
        std: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: Union[str, torch.device] = "cpu",
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        crop_pct: float = 1.0,
    ) -> None:
        if not isinstance(image_size, int):
            sizes = tuple(int(s) for s in image_size)
            if len(set(sizes)) != 1:
                raise TargetError(f"{self.name}: non-square input size {sizes} is not supported")
            image_size = sizes[0]
        if not 0.0 < float(crop_pct) <= 1.0:
            raise TargetError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if len(mean) != 3 or len(std) != 3:
            raise TargetError(f"{self.name}: expected 3-channel mean/std, got {mean} / {std}")
        self.image_size = int(image_size)
        self.resize_size = int(math.floor(self.image_size / float(crop_pct)))
        self.resize_mode = resize_mode
        self.interpolation = interpolation if interpolation in _INTERPOLATIONS else "bicubic"
        kw = {"dtype": dtype, "device": device}
        self.register_buffer("mean", torch.tensor(list(mean), **kw).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), **kw).view(1, 3, 1, 1), persistent=False)

    def _freeze(self) -> None:
        self.requires_grad_(False)
        nn.Module.train(self, False)

    def train(self, mode: bool = True) -> "Target":
        """Stay in eval mode whatever ``mode`` is: targets are frozen judges."""
        return super().train(False)

    # ------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    # --------------------------------------------------------- preprocessing
    def _check_images(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] not in (1, 3):
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise TargetError(f"{self.name}: expected images B x 3 x H x W in [0, 1], got {shape}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], any size -> the model's normalised square input.

        Short side resized to ``image_size`` (``image_size / crop_pct`` where
        a classifier was given a crop fraction), antialiased, with the model's
        interpolation (bicubic for CLIP and most timm models), centre crop to
        ``image_size x image_size``, then ``(x - mean) / std``. Moves ``x`` to
        the target's device and dtype. Differentiable in ``x``.
        """
        x = self._check_images(x).to(device=self.mean.device, dtype=self.mean.dtype)
        x = resize_center_crop(x, self.image_size, self.resize_size, self.resize_mode, self.interpolation)
        return (x - self.mean) / self.std

    # -------------------------------------------------------------- features
    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B x D`` features of images in [0, 1] (preprocessing included; not normalised)."""
        raise NotImplementedError

    def _encode_texts(self, texts: List[str]) -> torch.Tensor:
        """``T x D`` features of new strings; called under ``no_grad`` by :meth:`text_features`."""
        raise NotImplementedError

    def text_features(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """``T x D`` features of captions (CLIP) or class names (classifiers).

        Each distinct string is encoded once, without gradients, and kept in a
        per-target cache (:meth:`clear_text_cache` empties it); the result is
        on the target's device and dtype, not normalised. A single string is
        read as one caption.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TargetError(f"{self.name}: texts must be strings")
        if not texts:
            return torch.empty(0, self.feature_dim or 0, device=self.device, dtype=self.dtype)
        missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if missing:
            with torch.no_grad():
                for start in range(0, len(missing), self.text_batch_size):
                    chunk = missing[start : start + self.text_batch_size]
                    feats = self._encode_texts(chunk).detach()
                    if feats.shape[0] != len(chunk):
                        raise TargetError(f"{self.name}: text encoder returned {feats.shape[0]} rows for {len(chunk)} texts")
                    for text, feat in zip(chunk, feats):
                        self._text_cache[text] = feat
        out = torch.stack([self._text_cache[t] for t in texts])
        return out.to(device=self.device, dtype=self.dtype)

    def clear_text_cache(self) -> None:
        """Forget every cached text feature."""
        self._text_cache.clear()

    def label_features(self) -> torch.Tensor:
        """``C x D`` class prototypes, the texts of a class-label task."""
        raise NotImplementedError

    # -------------------------------------------------------------- decisions
    def logits(self, x: torch.Tensor, texts: Optional[Sequence[str]] = None) -> torch.Tensor:
        """``B x C`` scores that the target decides with (see the subclass)."""
        raise NotImplementedError

    #: whether :meth:`logits_and_maps` can read the feature maps of inner stages
    has_maps = False

    def logits_and_maps(self, x: torch.Tensor, texts: Optional[Sequence[str]] = None):
        """:meth:`logits` and the feature maps of the target's inner stages, from one pass.

        For feature-level losses (``TrainConfig.feature_weight``); targets
        without inner stages to read raise :class:`TargetError`.
        """
        raise TargetError(f"{self.name}: no feature maps of its inner stages to read (a timm classifier has them)")

    @torch.no_grad()
    def predict(self, x: torch.Tensor, texts: Optional[Sequence[str]] = None) -> torch.Tensor:
        """The target's decision, ``argmax`` of :meth:`logits`, as a ``LongTensor[B]``."""
        return self.logits(x, texts).argmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`image_features`."""
        return self.image_features(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, kind={self.kind!r}, image_size={self.image_size}"
