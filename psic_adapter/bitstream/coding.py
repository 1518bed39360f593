"""Images in, ``.psic`` files out, and back: real entropy coding end to end.

:func:`encode` / :func:`decode` work on tensors (pad to the codec's multiple,
``compress``, ``decompress``, crop back); :func:`encode_file` /
:func:`decode_file` add image files and the container, with every check that
keeps a wrong decode from being written silently:

* the base codec's fingerprint and its entropy tables;
* the header against the codec: the latent shape and string layout that the
  codec's ``compress`` gives for the file's padded size;
* the adapter the file was made for;
* the **latent checksum**: at compress time the bitstream is entropy-decoded
  once and a few fixed random projections of the decoded latent are stored; a
  decode must reproduce them. This catches a payload that decodes to something
  else (a flipped byte with a recomputed CRC) and the known cross-device failure
  of learned codecs, an entropy decoder on another machine or device that
  reproduces other symbols. Projections, not a hash: they tolerate the float
  rounding of a mean predicted by another machine's convolutions (1e-5) while
  any changed symbol moves them by 0.5 or more;
* an explicit key that is not the owner's (an error: nothing is written);
* finite pixels.

Entropy coding runs on the CPU: CompressAI's coder is not reproducible on a
GPU (decodes of GPU encodes were seen to give NaN images).
"""

from __future__ import annotations

import weakref
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..codec import architecture_name, codec_dims, decode_latent, entropy_tables_hash, fingerprint
from ..errors import ConfigError, ContainerError, FingerprintMismatchError, KeyMismatchError, OverwriteError, PSICError
from ..codec.padding import PAD_MULTIPLE, crop_to, pad_to_multiple, padded_size
from ..types import KeyLike, PathLike
from . import container
from .images import ImageInfo, load_image, save_image

#: projections of the decoded latent stored in a .psic file, and the tolerance of their check
LATENT_PROJECTIONS = 4
LATENT_TOLERANCE = 0.05


def count_bytes(strings) -> int:
    """Total bytes in a (possibly nested) list/tuple of ``bytes`` (a ``compress`` output's strings)."""
    if isinstance(strings, dict):
        if "strings" not in strings:
            raise TypeError("a dict passed as strings needs a 'strings' entry (a CompressAI compress() output)")
        strings = strings["strings"]
    if isinstance(strings, (bytes, bytearray, memoryview)):
        return len(strings) if not isinstance(strings, memoryview) else strings.nbytes
    if isinstance(strings, (list, tuple)):
        return sum(count_bytes(s) for s in strings)
    raise TypeError(f"expected bytes or a nested list of bytes, got {type(strings).__name__}")


def _base(model: nn.Module) -> nn.Module:
    return model.base if hasattr(model, "psic_adapters") else model


def _is_wrapped(model: nn.Module) -> bool:
    return hasattr(model, "psic_adapters")


@torch.no_grad()
def encode(model: nn.Module, x: torch.Tensor) -> Dict[str, Any]:
    """``x`` [1, 3, H, W] in [0, 1] -> the codec's ``compress`` output on padded ``x`` (+ ``"size"``).

    A size that a ``.psic`` file cannot hold (:func:`container.check_size`: the padded image within the pixel
    limit, sides at most 65536) is refused before anything is coded."""
    container.check_size(int(x.shape[-2]), int(x.shape[-1]))
    xp, size = pad_to_multiple(x, PAD_MULTIPLE)
    out = model.compress(xp)
    return {"strings": out["strings"], "shape": out["shape"], "size": size}


def finite_decode(x_hat: torch.Tensor) -> torch.Tensor:
    """``x_hat``, or a :class:`ContainerError` where a decode is not finite: the one check of every decode."""
    if not torch.isfinite(x_hat).all():
        raise ContainerError(
            "the decode is not finite: the decoder did not reproduce the encoder's symbols (the file is "
            "corrupted, or it was coded on another device: entropy coding must run on the CPU)"
        )
    return x_hat


@torch.no_grad()
def decode(model: nn.Module, enc: Dict[str, Any], size: Tuple[int, int], key: Optional[KeyLike] = None,
           mode: Optional[str] = None, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decode ``compress`` output and crop to ``size``; raises if the decode is not finite."""
    if _is_wrapped(model):
        out = model.decompress(enc["strings"], enc["shape"], key=key, mode=mode, condition=condition)
    else:
        if key is not None or mode is not None or condition is not None:
            raise PSICError("a key or a mode needs an adapter")
        out = model.decompress(enc["strings"], enc["shape"])
    return finite_decode(crop_to(out["x_hat"], size))


# ------------------------------------------------------------------ latents
def _latent_of(model: nn.Module, strings, shape) -> torch.Tensor:
    """Entropy-decode to ``y_hat`` (the input of ``g_s``) without running ``g_s``."""
    return model.decode_latent(strings, shape) if _is_wrapped(model) else decode_latent(model, strings, shape)


def latent_check(y_hat: torch.Tensor, n: int = LATENT_PROJECTIONS) -> List[float]:
    """``n`` projections of ``y_hat`` on fixed pseudo-random weights in [0.5, 1.5] (see the module docstring)."""
    y = y_hat.detach().double().cpu().flatten()
    g = torch.Generator().manual_seed(0x5053_4943)
    out = []
    for _ in range(n):
        w = torch.rand(y.numel(), generator=g, dtype=torch.float64) + 0.5
        out.append(round(float((w * y).sum()), 6))
    return out


def check_latent(y_hat: torch.Tensor, stored: List[float]) -> None:
    got = latent_check(y_hat, len(stored))
    scale = float(y_hat.detach().abs().sum()) * 1e-7
    if any(abs(a - b) > LATENT_TOLERANCE + scale for a, b in zip(got, stored)):
        raise ContainerError(
            "the decoded latent is not the one the encoder wrote (latent checksum mismatch): the payload is "
            "corrupted, or this machine's entropy decoder reproduces other symbols (code and decode on the CPU)"
        )


# ------------------------------------------------------------------ the header against the codec
# Keyed by the codec object itself (weakly): an ``id()`` key is reused once a codec is freed, and a new codec of
# another architecture then inherited the dead one's template.
_TEMPLATES: "weakref.WeakKeyDictionary[nn.Module, Tuple[Any, Any]]" = weakref.WeakKeyDictionary()


def _template(codec: nn.Module) -> Tuple[Any, Any]:
    """(latent shape, string layout) of ``compress`` on a 64 x 64 image (cached per codec)."""
    if codec not in _TEMPLATES:
        with torch.no_grad():
            out = codec.compress(torch.full((1, 3, PAD_MULTIPLE, PAD_MULTIPLE), 0.5,
                                            device=next(codec.parameters()).device))
        layout, _ = container.string_layout(out["strings"])
        template = (container.shape_to_json(out["shape"]), layout)
        try:
            _TEMPLATES[codec] = template
        except TypeError:  # an object that cannot be weakly referenced: not cached
            return template
    return _TEMPLATES[codec]


def _scaled_shape(template, ph: int, pw: int):
    """The template shape for a ``ph x pw`` padded image: each innermost list's last two entries are spatial."""
    if isinstance(template, dict):
        return {k: _scaled_shape(v, ph, pw) for k, v in template.items()}
    if isinstance(template, list) and template and all(isinstance(v, int) for v in template):
        if len(template) < 2:
            return template
        return [*template[:-2], template[-2] * ph // PAD_MULTIPLE, template[-1] * pw // PAD_MULTIPLE]
    if isinstance(template, list):
        return [_scaled_shape(v, ph, pw) for v in template]
    return template


def _same_nesting(a, b) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return isinstance(a, int) and isinstance(b, int)
    return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
        _same_nesting(x, y) for x, y in zip(a, b))


def check_header_fits(header: container.ContainerHeader, codec: nn.Module) -> None:
    """The header's latent shape and string layout are what this codec writes for its padded size."""
    shape_t, layout_t = _template(codec)
    ph, pw = padded_size(header.height, header.width)
    want = _scaled_shape(shape_t, ph, pw)
    if header.shape != want:
        raise ContainerError(f"the file's header is corrupted (latent shape {header.shape} does not fit a "
                             f"{header.width}x{header.height} image, which {header.codec} codes as {want})"[:300])
    if not _same_nesting(header.layout, layout_t):
        raise ContainerError("the file's header is corrupted (its string layout is not this codec's)")


# ------------------------------------------------------------------ files
@dataclass
class EncodeResult:
    path: Path
    file_bytes: int
    stream_bytes: int
    height: int
    width: int
    shift_search: Optional[Dict[str, Any]] = None  # what the per-photo shift's search saw (ShiftSearch)

    @property
    def bpp(self) -> float:
        """Bits per pixel of the codec's bitstream (the container's header excluded)."""
        return 8 * self.stream_bytes / (self.height * self.width)

    @property
    def file_bpp(self) -> float:
        return 8 * self.file_bytes / (self.height * self.width)


def check_psic_name(dst: PathLike, force: bool) -> None:
    """A ``.psic`` file needs a ``.psic`` name, unless ``force``."""
    dst = Path(dst)
    if dst.suffix.lower() != ".psic" and not force:
        raise OverwriteError(f"{dst}: a .psic file needs a .psic name (or --force to write it under this one)")


def encode_file(src: PathLike, dst: PathLike, model: nn.Module, codec_name: Optional[str] = None,
                quality: Optional[int] = None, force: bool = False, inputs=(), shift_search=None) -> EncodeResult:
    """Compress an image file into a ``.psic`` file.

    ``model`` is a codec or a :class:`~psic_adapter.PSICModel`; with an adapter the
    file records the adapter's fingerprint (the bitstream is the same either way).
    ``shift_search`` (a :class:`~psic_adapter.training.shift_search.ShiftSearch`, a "spatial" adapter): the
    owner's per-photo shift is chosen for this photo and stored in the header (format 3); the codec's
    bytes are the same.
    The output must not be the input (nor one of ``inputs``, the other files the
    caller read: the checkpoint, the adapter), must be named ``.psic`` unless
    ``force``, and an existing one needs ``force``; it is written atomically.
    """
    from ..fileio import check_output

    dst = Path(dst)
    inputs = [src, *inputs]
    check_output(dst, force=force, inputs=inputs)
    check_psic_name(dst, force)
    x, info = load_image(src)
    container.check_size(info.height, info.width, str(src))  # what its own decoder will accept
    base = _base(model)
    if shift_search is not None and not _is_wrapped(model):
        raise PSICError("a per-photo shift needs an adapter (--adapter DIR)")
    enc = encode(model, x)
    y_hat = _latent_of(model, enc["strings"], enc["shape"])
    alpha = info.alpha_bytes()
    shift = search = None
    if shift_search is not None:
        shift, search = shift_search(model, y_hat, x)
    header = container.ContainerHeader(
        codec=codec_name or architecture_name(base),
        quality=quality,
        height=info.height,
        width=info.width,
        mode=info.mode,
        bit_depth=info.bit_depth,
        base_fingerprint=fingerprint(base)[:32],
        tables_hash=entropy_tables_hash(base)[:16],
        adapter_fingerprint=model.adapter_fingerprint() if _is_wrapped(model) else None,
        dims=codec_dims(base),
        padded=padded_size(info.height, info.width),
        alpha_raw_len=info.height * info.width * (2 if info.bit_depth == 16 else 1) if alpha else 0,
        latent_check=latent_check(y_hat),
        photo_shift=shift.to_json() if shift is not None else None,
    )
    data = container.pack(enc["strings"], enc["shape"], header, alpha=alpha)
    try:
        container.unpack(data)  # a file its own decoder reads back, or nothing written
    except ContainerError as exc:
        raise ContainerError(f"{src} cannot be stored as a .psic file: {exc}") from None
    container.write(dst, data, force=force, inputs=inputs)
    return EncodeResult(dst, len(data), count_bytes(enc["strings"]), info.height, info.width, search)


def check_codec(header: container.ContainerHeader, model: nn.Module) -> None:
    """The codec must be the one the file was made with, down to its entropy tables."""
    base = _base(model)
    have = fingerprint(base)[:32]
    if header.base_fingerprint and have != header.base_fingerprint:
        raise FingerprintMismatchError(
            f"this file was compressed with another {header.codec} (weights {header.base_fingerprint[:12]}) "
            f"than the one given ({have[:12]}): pass the same --checkpoint"
        )
    tables = entropy_tables_hash(base)[:16]
    if header.tables_hash and tables != header.tables_hash:
        raise ContainerError(
            "the codec's entropy tables differ from the encoder's (update(force=True) computed them "
            "elsewhere, e.g. on another device): load the checkpoint with its stored tables"
        )
    check_header_fits(header, base)


def _check_adapter(src, header: container.ContainerHeader, model: nn.Module) -> None:
    want = header.adapter_fingerprint
    if not want:
        return
    # container format 1 files name adapters by the fingerprint of psic-adapter 0.1
    have = model.adapter_fingerprint(legacy=header.version < 2)
    if have != want:
        raise FingerprintMismatchError(f"{src} was made for adapter {want}, not {have}")


class UncheckedFormatWarning(UserWarning):
    """A format-1 ``.psic`` file is being decoded: it has no latent checksum."""


def decode_file(src: PathLike, dst: PathLike, model: nn.Module, key: Optional[KeyLike] = None,
                plain: bool = False, force: bool = False, inputs=(), allow_format_1: bool = False) -> Dict[str, Any]:
    """Decode a ``.psic`` file into an image file (PNG keeps 16-bit, grey and alpha).

    With an adapter the default is the encrypted version, the owner's ``key``
    gives the full one; a key that is not the owner's is a
    :class:`~psic_adapter.errors.KeyMismatchError` and nothing is written.
    ``plain=True`` decodes with the base codec alone (which is the full image:
    see docs/threat-model.md). The output is never ``src`` nor one of ``inputs``
    (the key file, the checkpoint ...), ``force`` or not.

    Files of container format 1 (psic-adapter 0.1) carry no latent checksum: a
    corrupted payload (or a format-2 file whose version byte was set to 1) would
    decode to a wrong image without an error. They are refused unless
    ``allow_format_1`` (``psic decompress --allow-format-1``), which decodes them
    with an :class:`UncheckedFormatWarning`.
    """
    from ..fileio import check_output

    dst = Path(dst)
    inputs = [src, *inputs]
    check_output(dst, force=force, inputs=inputs)
    enc, header, alpha = container.read(src)
    if header.latent_check is None:  # format 1: nothing tells a corrupted payload from the image
        unchecked = (f"{src} is a format-1 .psic file (psic-adapter 0.1): it has no latent checksum, so a corrupted "
                     "payload decodes to a wrong image without an error")
        if not allow_format_1:
            raise ContainerError(f"{unchecked}; re-encode the original image, or pass --allow-format-1 "
                                 "(allow_format_1=True) to decode it unchecked")
        warnings.warn(f"{unchecked}: decoding it unchecked (--allow-format-1)", UncheckedFormatWarning, stacklevel=2)
    wrapped = _is_wrapped(model)
    if plain and key is not None:
        raise PSICError("--plain decodes with the base codec alone, which takes no key")
    if plain and wrapped:
        model, wrapped = model.base, False
    check_codec(header, model)
    if header.adapter_fingerprint and not wrapped and not plain:
        raise PSICError(
            f"{src} was made for adapter {header.adapter_fingerprint}: pass --adapter DIR "
            "(or --plain to decode with the base codec alone)"
        )
    if wrapped:
        _check_adapter(src, header, model)
    if key is not None and not wrapped:
        raise PSICError("a key needs an adapter (--adapter DIR)")
    shift = None
    if header.photo_shift is not None and wrapped:  # the adapter reads it (PSICModel.photo_shift_of: checked)
        try:
            shift = model.photo_shift_of(header.photo_shift)
        except (ConfigError, ContainerError) as exc:
            raise ContainerError(f"{src}: {exc}") from None
    if wrapped and key is not None and not model.key_matches(key):
        raise KeyMismatchError(f"the key does not match this adapter: nothing written (without a key, {src} "
                               "decodes to the encrypted version)")
    info = ImageInfo(
        height=header.height, width=header.width, mode=header.mode, bit_depth=header.bit_depth,
        alpha=ImageInfo.alpha_from_bytes(alpha, header.height, header.width, header.bit_depth),
    )
    with torch.no_grad():
        y_hat = _latent_of(model, enc["strings"], enc["shape"])
        if header.latent_check is not None:
            check_latent(y_hat, header.latent_check)
        if wrapped:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the key was checked above
                cond = model.condition_for(key=key)
            # the owner's per-photo shift: the encrypted version only (the full one is the codec's own decode)
            x_hat = model.synthesize(y_hat, cond, photo_shift=shift if key is None else None)
        else:
            x_hat = model.g_s(y_hat)
        x_hat = finite_decode(crop_to(x_hat, (header.height, header.width))).clamp(0, 1)
    save_image(x_hat, dst, info, force=force, inputs=inputs)
    version = "plain" if not wrapped else ("full" if key is not None else "encrypted")
    return {"path": dst, "version": version, "key_matched": True if key is not None else None, "header": header,
            "photo_shift": shift is not None and version == "encrypted"}
