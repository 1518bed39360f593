"""Images in, ``.psic`` files out, and back: real entropy coding end to end.

:func:`encode` / :func:`decode` work on tensors (pad to the codec's multiple,
``compress``, ``decompress``, crop back); :func:`encode_file` /
:func:`decode_file` add image files and the container, with every check that
keeps a wrong decode from being written silently: the base codec's
fingerprint, its entropy tables, the adapter the file was made for, and
finite pixels.

Entropy coding runs on the CPU: CompressAI's coder is not reproducible on a
GPU (decodes of GPU encodes were seen to give NaN images).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from . import container
from .codecs import architecture_name, codec_dims, entropy_tables_hash, fingerprint
from .condition import KeyLike
from .errors import ContainerError, FingerprintMismatchError, PSICError
from .eval.metrics import count_bytes
from .images import ImageInfo, crop_to, load_image, pad_to_multiple, save_image

PathLike = Union[str, os.PathLike]
PAD_MULTIPLE = 64  # 2**6: g_a / h_a downsample by 16 x 4 in every CompressAI image codec


def _base(model: nn.Module) -> nn.Module:
    from .adapter import PSICModel

    return model.base if isinstance(model, PSICModel) else model


@torch.no_grad()
def encode(model: nn.Module, x: torch.Tensor) -> Dict[str, Any]:
    """``x`` [1, 3, H, W] in [0, 1] -> the codec's ``compress`` output on padded ``x`` (+ ``"size"``)."""
    xp, size = pad_to_multiple(x, PAD_MULTIPLE)
    out = model.compress(xp)
    return {"strings": out["strings"], "shape": out["shape"], "size": size}


@torch.no_grad()
def decode(model: nn.Module, enc: Dict[str, Any], size: Tuple[int, int], key: Optional[KeyLike] = None,
           mode: Optional[str] = None, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decode ``compress`` output and crop to ``size``; raises if the decode is not finite."""
    from .adapter import PSICModel

    if isinstance(model, PSICModel):
        out = model.decompress(enc["strings"], enc["shape"], key=key, mode=mode, condition=condition)
    else:
        if key is not None or mode is not None or condition is not None:
            raise PSICError("a key or a mode needs an adapter")
        out = model.decompress(enc["strings"], enc["shape"])
    x_hat = crop_to(out["x_hat"], size)
    if not torch.isfinite(x_hat).all():
        raise ContainerError(
            "the decode is not finite: encoder and decoder disagree (entropy coding on a GPU is "
            "not reproducible; encode and decode on the CPU)"
        )
    return x_hat


@dataclass
class EncodeResult:
    path: Path
    file_bytes: int
    stream_bytes: int
    height: int
    width: int

    @property
    def bpp(self) -> float:
        """Bits per pixel of the codec's bitstream (the container's header excluded)."""
        return 8 * self.stream_bytes / (self.height * self.width)

    @property
    def file_bpp(self) -> float:
        return 8 * self.file_bytes / (self.height * self.width)


def encode_file(src: PathLike, dst: PathLike, model: nn.Module, codec_name: Optional[str] = None,
                quality: Optional[int] = None, force: bool = False) -> EncodeResult:
    """Compress an image file into a ``.psic`` file.

    ``model`` is a codec or a :class:`~psic_adapter.PSICModel`; with an adapter the
    file records the adapter's fingerprint (the bitstream is the same either way).
    """
    from .adapter import PSICModel

    dst = Path(dst)
    if dst.exists() and not force:
        from .errors import OverwriteError

        raise OverwriteError(f"{dst} exists (use --force to overwrite)")
    x, info = load_image(src)
    base = _base(model)
    enc = encode(model, x)
    header = container.ContainerHeader(
        codec=codec_name or architecture_name(base),
        quality=quality,
        height=info.height,
        width=info.width,
        mode=info.mode,
        bit_depth=info.bit_depth,
        base_fingerprint=fingerprint(base)[:32],
        tables_hash=entropy_tables_hash(base)[:16],
        adapter_fingerprint=model.adapter_fingerprint() if isinstance(model, PSICModel) else None,
        dims=codec_dims(base),
        padded=tuple(int(s) for s in x.shape[-2:]),
    )
    data = container.pack(enc["strings"], enc["shape"], header, alpha=info.alpha_bytes())
    container.write(dst, data, force=force)
    return EncodeResult(dst, len(data), count_bytes(enc["strings"]), info.height, info.width)


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


def decode_file(src: PathLike, dst: PathLike, model: nn.Module, key: Optional[KeyLike] = None,
                plain: bool = False, force: bool = False) -> Dict[str, Any]:
    """Decode a ``.psic`` file into an image file (PNG keeps 16-bit, grey and alpha).

    With an adapter the default is the encrypted version, the owner's ``key``
    gives the full one. ``plain=True`` decodes with the base codec alone
    (which is the full image: see docs/threat-model.md).
    """
    from .adapter import PSICModel

    dst = Path(dst)
    if dst.exists() and not force:
        from .errors import OverwriteError

        raise OverwriteError(f"{dst} exists (use --force to overwrite)")
    enc, header, alpha = container.read(src)
    check_codec(header, model)
    wrapped = isinstance(model, PSICModel)
    if plain and key is not None:
        raise PSICError("--plain decodes with the base codec alone, which takes no key")
    if plain and wrapped:
        model = model.base
        wrapped = False
    if header.adapter_fingerprint and not wrapped and not plain:
        raise PSICError(
            f"{src} was made for adapter {header.adapter_fingerprint}: pass --adapter DIR "
            "(or --plain to decode with the base codec alone)"
        )
    if wrapped and header.adapter_fingerprint and model.adapter_fingerprint() != header.adapter_fingerprint:
        raise FingerprintMismatchError(
            f"{src} was made for adapter {header.adapter_fingerprint}, not {model.adapter_fingerprint()}"
        )
    if key is not None and not wrapped:
        raise PSICError("a key needs an adapter (--adapter DIR)")
    matched = None
    if wrapped and key is not None:
        matched = model.key_matches(key)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the key check is reported through `matched`
        x_hat = decode(model, enc, (header.height, header.width), key=key)
    info = ImageInfo(
        height=header.height,
        width=header.width,
        mode=header.mode,
        bit_depth=header.bit_depth,
        alpha=ImageInfo.alpha_from_bytes(alpha, header.height, header.width, header.bit_depth),
    )
    save_image(x_hat, dst, info, force=force)
    version = "plain" if not wrapped else ("full" if matched else "encrypted")
    return {"path": dst, "version": version, "key_matched": matched, "header": header}
