"""BAvAFT's versions of an image, for the project's evaluation (:class:`~psic_adapter.eval.protocol.VersionDecoder`).

Per image, three real encodings (bpp from the bytes), all decoded by the
*unmodified* base codec, as a receiver would:

* ``"base"``: the base codec on ``x``;
* ``"full"``: BAvAFT's clean mode (the fine-tuned encoder on ``x``);
* ``"encrypted"``: the poisoned mode (the trigger, then the fine-tuned encoder).

The evaluation then measures them exactly as PSIC's (the control, the scales,
the perturbations). Wrong keys and the white-box key attacker do not apply
(no key, no condition).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ...bitstream.coding import encode, finite_decode
from ...codec.padding import crop_to
from ...errors import PSICError
from ...eval import metrics as M
from ...eval.protocol import Decoded, VersionDecoder
from ...eval.record import EvalResult
from .model import BAvAFT


class BAvAFTDecoder(VersionDecoder):
    """The versions of one image under a trained :class:`BAvAFT` (see the module docstring)."""

    method = "BAvAFT"
    versions = ("base", "full", "encrypted")
    descriptions = {"base": "the base codec alone", "full": "BAvAFT's clean mode (its fine-tuned encoder)",
                    "encrypted": "BAvAFT's poisoned mode (trigger + fine-tuned encoder)"}
    has_conditions = False

    def __init__(self, model: BAvAFT, base_codec: Optional[nn.Module] = None):
        if not isinstance(model, BAvAFT):
            raise PSICError("BAvAFTDecoder takes a BAvAFT model")
        self.bavaft = model
        self._base = base_codec if base_codec is not None else model.base_codec()
        self.bavaft.eval()
        self._base.eval()

    @property
    def base_codec(self) -> nn.Module:
        return self._base

    @torch.no_grad()
    def _code(self, enc: Dict[str, Any]) -> Tuple[Tensor, float]:
        x_hat = finite_decode(crop_to(self._base.decompress(enc["strings"], enc["shape"])["x_hat"], enc["size"]))
        h, w = enc["size"]
        return x_hat.clamp(0, 1), M.bpp_from_strings(enc["strings"], h * w)

    @torch.no_grad()
    def decode(self, x: Tensor) -> Decoded:
        encs = {"base": encode(self._base, x), "full": self.bavaft.encode(x, poisoned=False),
                "encrypted": self.bavaft.encode(x, poisoned=True)}
        images, bpp = {}, {}
        for v, enc in encs.items():
            images[v], bpp[v] = self._code(enc)
        return Decoded(images=images, bpp=bpp, size=tuple(encs["base"]["size"]))


def bavaft_headline(result: EvalResult) -> Dict[str, Any]:
    """The numbers to read first, in BAvAFT's words (clean / poisoned modes against the base codec)."""
    m = result.main
    c = m.classification
    out = {
        "images": m.n_images,
        "bpp_base": m.bpp["base"].mean, "bpp_clean": m.bpp["full"].mean, "bpp_poisoned": m.bpp["encrypted"].mean,
        "psnr_base": m.psnr("base"), "psnr_clean": m.psnr("full"), "psnr_poisoned": m.psnr("encrypted"),
        "asr_poisoned": c.asr, "control_asr": c.control_asr, "asr_clean": c.full_asr,
        "clean_agreement_with_base": c.agreement_with_base.get("full", float("nan")),
        "n_base_right": c.n_base_right,
    }
    for name, r in m.robustness.items():
        out[f"asr_poisoned_{name}"] = r.asr
    return out
