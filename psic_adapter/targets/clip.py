"""CLIP targets through open_clip 3.x.

PSIC's main target is OpenAI's CLIP ViT-B/32: the encrypted decode must not be
retrievable by its caption (and vice versa) and must fool zero-shot
classification. :class:`CLIPTarget` wraps any open_clip model.

Weights (``pretrained``):

* a pretrained tag of the model (``"openai"``, ``"laion2b_s34b_b79k"``, ...),
  downloaded by open_clip on first use;
* a local checkpoint file: an open_clip / timm-hub state dict (``.bin``,
  ``.pth``, ``.pt``, ``.safetensors``), or OpenAI's original TorchScript
  archive (``ViT-B-32.pt`` from the ``clip`` package), which is read with
  open_clip's OpenAI loader;
* ``None`` (or ``"random"``): random initialisation, for tests.

OpenAI's weights were trained with QuickGELU; open_clip's plain configs use
GELU. ``quick_gelu=None`` (the default) switches QuickGELU on where the weights
are OpenAI's: the tag's config says so (``"openai"``), the file is OpenAI's
TorchScript archive, or the file's path contains ``openai`` (as the Hugging
Face cache of ``timm/vit_base_patch32_clip_224.openai`` does). Pass
``quick_gelu=True/False`` to decide yourself, or use a ``-quickgelu`` model
name.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..errors import TargetError
from .base import Target

__all__ = ["CLIPTarget", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SCHEMAS = ("hf-hub:", "local-dir:")


def _is_torchscript_archive(path: str) -> bool:
    """Whether ``path`` is a TorchScript zip (OpenAI's original CLIP checkpoints are)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except OSError:
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _is_random(pretrained: Optional[str]) -> bool:
    return pretrained is None or str(pretrained).strip().lower() in ("", "random")


def _build_clip_model(
    model_name: str,
    pretrained: Optional[str],
    device: Union[str, torch.device],
    precision: str,
    quick_gelu: Optional[bool],
    cache_dir: Optional[str],
    model_kwargs: Dict[str, Any],
) -> Tuple[torch.nn.Module, str, str]:
    """The open_clip model, the name for its tokenizer, and a label for its weights ("" for a schema source)."""
    import open_clip

    pretrained = None if _is_random(pretrained) else str(pretrained)
    has_schema = model_name.startswith(_SCHEMAS)
    if has_schema:
        if pretrained is not None:
            raise TargetError(
                f"{model_name!r} brings its own weights; pass pretrained=None instead of {pretrained!r}"
            )
    else:
        model_name = model_name.replace("/", "-")
        if model_name not in open_clip.list_models():
            raise TargetError(
                f"unknown open_clip model {model_name!r}; e.g. ViT-B-32, ViT-B-16, ViT-L-14, RN50 "
                f"(open_clip.list_models() lists all {len(open_clip.list_models())})"
            )

    force_quick_gelu = bool(quick_gelu)
    label = "" if has_schema else ("random" if pretrained is None else pretrained)
    if pretrained is not None:
        if os.path.isfile(pretrained):
            label = os.path.basename(pretrained)
            if _is_torchscript_archive(pretrained):
                if model_kwargs:
                    raise TargetError("model_kwargs cannot reshape a model read from OpenAI's TorchScript file")
                try:
                    model = open_clip.load_openai_model(pretrained, precision=precision, device=device)
                except Exception as exc:  # noqa: BLE001 - any failure is a bad file for the user
                    raise TargetError(f"could not read OpenAI CLIP file {pretrained}: {exc}") from exc
                return model, model_name, label
            if quick_gelu is None:
                force_quick_gelu = "openai" in os.path.abspath(pretrained).lower()
        else:
            cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
            if not cfg:
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise TargetError(
                    f"CLIP weights {pretrained!r} are neither a file nor a pretrained tag of {model_name} "
                    f"(tags: {', '.join(tags) or 'none'})"
                )
            if quick_gelu is None:
                force_quick_gelu = bool(cfg.get("quick_gelu", False))
    try:
        model = open_clip.create_model(
            model_name,
            pretrained=pretrained,
            precision=precision,
            device=device,
            force_quick_gelu=force_quick_gelu,
            cache_dir=cache_dir,
            **model_kwargs,
        )
    except Exception as exc:  # noqa: BLE001 - download, file and key errors all name the user's input
        hint = "" if pretrained is None or os.path.isfile(pretrained) else (
            " Without a network, download the checkpoint elsewhere and pass its path as the weights."
        )
        what = f"CLIP {model_name!r}" + (f" with weights {label!r}" if label else "")
        raise TargetError(f"could not build {what}: {str(exc).rstrip('.')}.{hint}") from exc
    return model, model_name, label


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")  # torch >= 2.4
    except TypeError:
        return torch.is_autocast_cpu_enabled()


class CLIPTarget(Target):
    """An open_clip CLIP model as a target.

    Args:
        model_name: an open_clip architecture (``"ViT-B-32"``, ``"ViT-B/32"``,
            ``"ViT-B-32-quickgelu"``, ``"RN50"``, ...), or an
            ``"hf-hub:org/repo"`` / ``"local-dir:/path"`` source, which brings
            its own weights (then ``pretrained`` must be ``None``).
        pretrained: a pretrained tag, a local checkpoint file, or ``None`` /
            ``"random"`` for random weights (see the module docstring).
        device: where the model runs.
        precision: open_clip precision (``"fp32"``, ``"fp16"``, ``"bf16"``,
            ``"amp"``, ...); inputs are cast to the model's parameter dtype.
        class_names: optional class names; they make :meth:`label_features`
            (and :meth:`logits` without texts) zero-shot classification over
            ``prompt.format(name)``.
        prompt: the zero-shot prompt template, with one ``{}``.
        quick_gelu: force QuickGELU on or off; ``None`` decides from the weights.
        cache_dir: open_clip's download cache.
        model_kwargs: overrides of the architecture config, passed to
            ``open_clip.create_model`` (e.g. ``embed_dim``, ``vision_cfg``,
            ``text_cfg``): this is how a tiny offline model is built for tests.

    Preprocessing (image size, mean, std, interpolation, resize mode) is read
    from the model's open_clip preprocess config, falling back to OpenAI's
    mean/std and 224 px. Text goes through ``open_clip.get_tokenizer`` (the
    bundled BPE for OpenAI-style models, which needs no network).
    """

    kind = "clip"

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: Optional[str] = "openai",
        device: Union[str, torch.device] = "cpu",
        precision: str = "fp32",
        class_names: Optional[Sequence[str]] = None,
        prompt: str = "a photo of a {}.",
        quick_gelu: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        import open_clip

        if "{}" not in prompt:
            raise TargetError(f"the prompt template must contain '{{}}', got {prompt!r}")
        model, tokenizer_name, label = _build_clip_model(
            model_name, pretrained, device, precision, quick_gelu, cache_dir, dict(model_kwargs or {})
        )
        model.eval()
        self.model = model
        self.name = f"clip:{tokenizer_name}" + (f"@{label}" if label else "")
        self.prompt = prompt
        self.class_names = list(class_names) if class_names is not None else None

        cfg = dict(open_clip.get_model_preprocess_cfg(model))
        size = cfg.get("size") or getattr(model.visual, "image_size", None) or 224
        resize_mode = cfg.get("resize_mode", "shortest")
        if resize_mode not in ("shortest", "squash"):
            warnings.warn(f"{self.name}: resize mode {resize_mode!r} is approximated by 'shortest'", stacklevel=2)
            resize_mode = "shortest"
        param = next(model.parameters())
        self._set_preprocessing(
            size,
            cfg.get("mean") or OPENAI_CLIP_MEAN,
            cfg.get("std") or OPENAI_CLIP_STD,
            dtype=param.dtype if param.is_floating_point() else torch.float32,
            device=param.device,
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=resize_mode,
        )
        context_length = open_clip.get_model_tokenize_cfg(model).get("context_length")
        self.tokenizer = open_clip.get_tokenizer(tokenizer_name, context_length=context_length)
        self.feature_dim = getattr(model.visual, "output_dim", None)
        self._freeze()
        if self.feature_dim is None:  # e.g. timm image towers: measure it once
            with torch.no_grad():
                probe = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device, dtype=self.dtype)
                self.feature_dim = int(self.model.encode_image(probe).shape[-1])

    # -------------------------------------------------------------- features
    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """``B x D`` CLIP image embeddings (before L2 normalisation)."""
        x = self.preprocess(x)
        if x.device.type == "cpu" and _cpu_autocast_enabled():
            # Under CPU bf16 autocast, open_clip's sequence-first attention runs its in-projections as batched
            # matmuls that copy the weight for every token position: slower than fp32 (measured: docs/benchmarks.md,
            # "Training step"). The tower runs in fp32 on the CPU; the codec keeps its bf16.
            with torch.autocast("cpu", enabled=False):
                return self.model.encode_image(x.float())
        return self.model.encode_image(x)

    def _encode_texts(self, texts: List[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens)

    def label_features(self) -> torch.Tensor:
        """``C x D`` text features of ``prompt.format(name)`` for each class name."""
        if not self.class_names:
            raise TargetError(f"{self.name}: label features need class_names")
        return self.text_features([self.prompt.format(n) for n in self.class_names])

    # -------------------------------------------------------------- decisions
    def logits(self, x: torch.Tensor, texts: Optional[Sequence[str]] = None) -> torch.Tensor:
        """``B x T``: ``logit_scale * cos(image, text)`` (+ ``logit_bias`` for SigLIP).

        ``texts`` are the candidates (captions, or prompts); without texts the
        class prompts of ``class_names`` are used (zero-shot classification).
        """
        if texts is None:
            if not self.class_names:
                raise TargetError(f"{self.name}: CLIP logits need texts, or class_names at construction")
            text = self.label_features()
        else:
            text = self.text_features(texts)
        image = F.normalize(self.image_features(x), dim=-1)
        text = F.normalize(text, dim=-1)
        out = self.model.logit_scale.exp() * image @ text.t()
        bias = getattr(self.model, "logit_bias", None)
        if bias is not None:
            out = out + bias
        return out
