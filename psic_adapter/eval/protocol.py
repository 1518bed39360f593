"""The versions of one image: what an evaluation asks of a method.

An evaluation does not care how a method makes its decodes; it asks a
:class:`VersionDecoder` for the versions of one original image and measures
them all alike:

* ``"base"``: the unmodified base codec's decode (the reference);
* ``"encrypted"``: what a viewer without the key gets (should mislead the target);
* ``"full"``: what the owner gets (should not).

:class:`PSICDecoder` makes them from ONE base-codec bitstream (real entropy
coding), decoded once to its latent and synthesised per version.
``psic_adapter.baselines.bavaft.BAvAFTDecoder`` makes them from two encodings
(clean and poisoned). Methods with a key condition (PSIC) also expose
:meth:`VersionDecoder.decode_condition`, which the wrong-key and white-box
checks use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..bitstream.coding import finite_decode
from ..errors import ConfigError

VERSION_NAMES = ("base", "full", "encrypted")


@dataclass
class Decoded:
    """The versions of one image, each ``[1, 3, H, W]`` in [0, 1] at the original's size."""

    images: Dict[str, Tensor]
    bpp: Dict[str, float]  # bits per pixel of each version's real bitstream
    size: Tuple[int, int]
    latent: Optional[Tensor] = None  # y_hat of the bitstream (methods with conditions)
    extra: Dict[str, float] = field(default_factory=dict)
    photo_shift: Any = None  # the owner's per-photo shift the file would carry (PSICDecoder with a shift search)
    search: Optional[Dict[str, Any]] = None  # what that shift's search saw (ShiftSearch's report: steps, margins, trace)


class VersionDecoder:
    """Base class: ``decode(x) -> Decoded`` with the versions in :attr:`versions`."""

    method: str = "?"
    versions: Tuple[str, ...] = ("base", "encrypted")
    descriptions: Dict[str, str] = {}
    #: the white-box and wrong-key checks apply (there is a condition to attack)
    has_conditions: bool = False

    def decode(self, x: Tensor) -> Decoded:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def base_codec(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def decode_condition(self, decoded: Decoded, condition: Tensor) -> Tensor:
        raise ConfigError(f"{self.method} has no condition to decode with")

    def wrong_key_conditions(self, n: int, generator: torch.Generator) -> Tensor:
        raise ConfigError(f"{self.method} has no keys")

    def encrypted_condition(self) -> Tensor:
        raise ConfigError(f"{self.method} has no condition")

    def condition_parameters(self):
        """Modules whose parameters must not collect gradients while a condition is attacked."""
        return []


class PSICDecoder(VersionDecoder):
    """The versions of a :class:`~psic_adapter.PSICModel`'s one bitstream.

    ``key``: the owner's key (checked; a wrong one is an error here, since the
    "full" version would silently be the encrypted one). Without it there is
    no "full" version.
    """

    method = "PSIC"
    has_conditions = True

    def __init__(self, model, key=None, shift_search=None):
        self.model = model
        self.key = key
        #: the owner's per-photo shift (:class:`~psic_adapter.training.shift_search.ShiftSearch`), chosen on each
        #: original as ``psic compress --shift-for`` does, for the encrypted version
        self.shift_search = shift_search
        if shift_search is not None and getattr(model.psic_adapters[model.resolve_adapter_name()], "branches", None) is None:
            raise ConfigError(f"a per-photo shift needs a 'spatial' adapter; this one is {model.config.modulation!r}")
        if key is not None and not model.key_matches(key):
            raise ConfigError("the key given does not match this adapter (the full version would be the encrypted one)")
        self.versions = ("base", "full", "encrypted") if key is not None else ("base", "encrypted")
        full = ("the base codec's decode (the adapter bypassed)" if model.bypasses_full()
                else "decoded with the owner's condition")
        self.descriptions = {"base": "the base codec alone",
                             "encrypted": "no key (or a wrong one)" + (
                                 ", with the owner's per-photo shift" if shift_search is not None else ""),
                             "full": f"the owner's key: {full}"}
        model.eval()

    @property
    def base_codec(self):
        return self.model.base

    @torch.no_grad()
    def decode(self, x: Tensor) -> Decoded:
        from ..bitstream.coding import encode
        from . import metrics as M

        enc = encode(self.model, x)  # the base codec's bitstream, byte for byte (CPU)
        h, w = enc["size"]
        y_hat = self.model.decode_latent(enc["strings"], enc["shape"])
        bpp = M.bpp_from_strings(enc["strings"], h * w)
        base = finite_decode(self.model.synthesize(y_hat, None)).clamp(0, 1)[..., :h, :w]
        images = {"base": base}
        shift = search = None
        if self.shift_search is not None:
            shift, search = self.shift_search(self.model, y_hat, x[..., :h, :w])
        images["encrypted"] = finite_decode(self.model.synthesize(y_hat, self.model.encrypted_condition(),
                                                                  photo_shift=shift)).clamp(0, 1)[..., :h, :w]
        if self.key is not None:
            cond = self.model.condition_for(key=self.key)
            images["full"] = base if cond is None else finite_decode(self.model.synthesize(y_hat, cond)).clamp(0, 1)[..., :h, :w]
        return Decoded(images=images, bpp={v: bpp for v in images}, size=(h, w), latent=y_hat, photo_shift=shift,
                       search=search)

    def decode_condition(self, decoded: Decoded, condition: Tensor) -> Tensor:
        """The decode under ``condition`` (a wrong key's, an attacker's), with the photo's shift where the file
        carries one: whoever holds the file holds the shift."""
        h, w = decoded.size
        return self.model.synthesize(decoded.latent, condition, photo_shift=decoded.photo_shift).clamp(0, 1)[..., :h, :w]

    def wrong_key_conditions(self, n: int, generator: torch.Generator) -> Tensor:
        return self.model.wrong_key_conditions(n, generator=generator)

    def encrypted_condition(self) -> Tensor:
        return self.model.encrypted_condition()

    def condition_parameters(self):
        return [self.model]


def versions_of(decoder: VersionDecoder, wanted: Sequence[str]) -> Tuple[str, ...]:
    return tuple(v for v in wanted if v in decoder.versions)
