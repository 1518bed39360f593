"""Helpers for tests that take real ``.psic`` files apart and put lying ones back together.

The CRC is recomputed exactly as :func:`psic_adapter.bitstream.container.pack` does
(``zlib.crc32`` of everything before it, big-endian), so that an edited file gets
past the checksum and reaches the header checks, as a crafted file would.
"""

from __future__ import annotations

import functools
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

_PREFIX = struct.Struct(">4sBI")
_CRC = struct.Struct(">I")
MAGIC = b"PSIC"

#: a value for :func:`edit_psic` that removes the field
DELETE = object()

KEY = "owner-key-0123456789abcdef"


def split_psic(data: bytes) -> Tuple[int, Dict[str, Any], bytes]:
    """A file's bytes -> (format version, header as a dict, payload); the CRC is dropped."""
    magic, version, hlen = _PREFIX.unpack_from(data, 0)
    assert magic == MAGIC
    header = json.loads(data[_PREFIX.size: _PREFIX.size + hlen])
    return version, header, data[_PREFIX.size + hlen: -_CRC.size]


class RawJSON(str):
    """A header value written as this JSON text, as is (for nestings deeper than ``json.dumps`` can write)."""


def nested_json(depth: int, inner: str = "7") -> RawJSON:
    """``[[[...[inner]...]]]``, ``depth`` lists deep."""
    return RawJSON("[" * depth + inner + "]" * depth)


def header_json(header: Dict[str, Any]) -> bytes:
    """As ``ContainerHeader.to_json``: compact, sorted keys (NaN written as JSON's ``NaN``);
    :class:`RawJSON` values go in verbatim."""
    raw = {k: v for k, v in header.items() if isinstance(v, RawJSON)}
    plain = {k: (f"@@raw:{k}@@" if k in raw else v) for k, v in header.items()}
    text = json.dumps(plain, separators=(",", ":"), sort_keys=True)
    for k, v in raw.items():
        text = text.replace(json.dumps(f"@@raw:{k}@@"), v)
    return text.encode("utf-8")


def with_crc(body: bytes) -> bytes:
    return body + _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)


def build_psic(header: Any, payload: bytes, version: int = 2, hlen: Optional[int] = None) -> bytes:
    """A file from a header (a dict, or raw bytes) and a payload, with a valid CRC.

    ``hlen`` overrides the header length field (to make it lie)."""
    raw = header if isinstance(header, (bytes, bytearray)) else header_json(header)
    body = _PREFIX.pack(MAGIC, version, len(raw) if hlen is None else hlen) + bytes(raw) + payload
    return with_crc(body)


def edit_psic(data: bytes, version: Optional[int] = None, payload: Optional[bytes] = None, **changes) -> bytes:
    """A real file with header fields changed (:data:`DELETE` removes one), the CRC recomputed."""
    v, header, pl = split_psic(data)
    for k, val in changes.items():
        if val is DELETE:
            header.pop(k, None)
        else:
            header[k] = val
    return build_psic(header, pl if payload is None else payload, version=v if version is None else version)


def smooth_image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth uint8 ``h x w x channels`` image (codecs behave better on it than on noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 10, channels), dtype=np.uint8)
    mode = {3: "RGB", 4: "RGBA"}[channels]
    return np.asarray(Image.fromarray(small, mode).resize((w, h), Image.BICUBIC))


def write_png(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(arr).save(path)
    return path


@functools.lru_cache(maxsize=None)
def tiny_codec():
    """One small random hyperprior (N=32, M=48) per test process, used for plain (adapter-free) coding only."""
    from .conftest import small_trainable_codec

    return small_trainable_codec(seed=0)


@functools.lru_cache(maxsize=None)
def real_psic(h: int, w: int, channels: int = 3) -> bytes:
    """The bytes of a real ``.psic`` file of a smooth ``h x w`` RGB / RGBA image, coded with :func:`tiny_codec`."""
    import tempfile

    from psic_adapter.bitstream import coding

    with tempfile.TemporaryDirectory() as d:
        src = write_png(Path(d) / "in.png", smooth_image(h, w, channels))
        coding.encode_file(src, Path(d) / "out.psic", tiny_codec())
        return (Path(d) / "out.psic").read_bytes()
