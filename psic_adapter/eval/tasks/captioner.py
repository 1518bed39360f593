"""A Hugging Face image-to-text model as a captioner: ``captioner(images) -> captions``."""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from ...errors import ConfigError


def _to_pil(x: Tensor):
    """A ``1x3xHxW`` image in [0, 1] as the 8-bit RGB picture a saved file would hold."""
    from PIL import Image

    arr = (x[0].detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


class HFCaptioner:
    """A Hugging Face image-to-text model as ``captioner(images) -> captions``.

    Loads ``AutoProcessor`` (or an image processor + tokenizer when the model
    has no processor, as VisionEncoderDecoder checkpoints) and
    ``AutoModelForImageTextToText`` (``AutoModelForVision2Seq`` on older
    transformers): BLIP, BLIP-2, InstructBLIP, GIT, Pix2Struct, ViT-GPT2...
    Decoding is deterministic (greedy, or beam search with ``num_beams``).

    Args:
        name_or_path: a hub id (``Salesforce/blip2-opt-2.7b`` as in the paper,
            ``Salesforce/blip-image-captioning-base``) or a local folder
            written by ``save_pretrained``.
        device: where the captioner runs.
        dtype: ``"float16"`` / ``"bfloat16"`` / ``"float32"`` (default: the
            checkpoint's).
        prompt: an optional text prompt (e.g. ``"a photo of"``); it is removed
            from the captions.
    """

    def __init__(self, name_or_path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                 dtype: Optional[str] = None, max_new_tokens: int = 30, num_beams: int = 1,
                 prompt: Optional[str] = None, batch_size: int = 8):
        try:
            import transformers
        except ImportError as exc:
            raise ConfigError("captioning needs transformers: pip install 'psic-adapter[captioning]'") from exc
        name = os.fspath(name_or_path)
        self.name = name
        self.device = torch.device(device)
        self.max_new_tokens, self.num_beams, self.prompt, self.batch_size = max_new_tokens, num_beams, prompt, batch_size
        kwargs = {}
        if dtype is not None:
            kwargs["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = getattr(torch, dtype)
        auto = getattr(transformers, "AutoModelForImageTextToText", None) or getattr(transformers, "AutoModelForVision2Seq")
        try:
            self.model = auto.from_pretrained(name, **kwargs).to(self.device).eval()
        except Exception as exc:  # noqa: BLE001 - a missing model, no network, an unknown architecture
            raise ConfigError(f"could not load the captioner {name!r}: {str(exc).splitlines()[0]}") from exc
        self.processor = self.tokenizer = None
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(name)
        except Exception:  # noqa: BLE001 - no processor: image processor + tokenizer below
            self.processor = None
        if self.processor is None or not hasattr(self.processor, "batch_decode") or not hasattr(self.processor, "image_processor"):
            try:
                self.image_processor = transformers.AutoImageProcessor.from_pretrained(name)
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(name)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"could not load the processor of the captioner {name!r}: {str(exc).splitlines()[0]}") from exc
            self.processor = None

    def _inputs(self, pil_images):
        if self.processor is not None:
            if self.prompt:
                return self.processor(images=pil_images, text=[self.prompt] * len(pil_images), return_tensors="pt")
            return self.processor(images=pil_images, return_tensors="pt")
        inputs = dict(self.image_processor(images=pil_images, return_tensors="pt"))
        if self.prompt:
            inputs.update(self.tokenizer([self.prompt] * len(pil_images), return_tensors="pt"))
        return inputs

    def _decode(self, ids: Tensor) -> List[str]:
        dec = self.processor if self.processor is not None else self.tokenizer
        return [t.strip() for t in dec.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def __call__(self, images: Sequence[Tensor]) -> List[str]:
        """Captions of ``1x3xHxW`` images in [0, 1] (quantised to 8 bits first, as a saved image)."""
        out: List[str] = []
        dtype = next(self.model.parameters()).dtype
        for s in range(0, len(images), self.batch_size):
            pil = [_to_pil(x) for x in images[s : s + self.batch_size]]
            inputs = {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in self._inputs(pil).items() if isinstance(v, Tensor)}
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                      do_sample=False)
            prefix = inputs.get("input_ids")
            if prefix is not None and ids.shape[1] >= prefix.shape[1] and torch.equal(ids[:, : prefix.shape[1]], prefix):
                ids = ids[:, prefix.shape[1]:]  # decoder-only models return the prompt first
            texts = self._decode(ids)
            if self.prompt:
                p = self.prompt.strip().lower()
                texts = [t[len(p):].strip() if t.lower().startswith(p) else t for t in texts]
            out.extend(texts)
        return out
