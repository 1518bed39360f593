"""The ``.psic`` file: one base-codec bitstream and what is needed to decode it.

Layout (all integers big-endian)::

    magic      4 bytes   b"PSIC"
    version    1 byte    FORMAT_VERSION
    hlen       4 bytes   length of the header
    header     hlen      UTF-8 JSON (compact): codec, quality, dims, base and
                         adapter fingerprints, entropy-table hash, image size,
                         mode and bit depth, latent shape, string lengths
    payload              the codec's strings, concatenated, then the alpha plane
    checksum   4 bytes   CRC-32 of everything before it

The strings are exactly the bytes the base codec's ``compress`` returned, in
both decoding modes: the file does not depend on the key. The checksum and the
stored lengths turn truncation and corruption into a clear
:class:`~psic_adapter.errors.ContainerError` instead of a wrong image.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from .errors import ContainerError, OverwriteError

MAGIC = b"PSIC"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">4sBI")
_CRC = struct.Struct(">I")


@dataclass
class ContainerHeader:
    codec: str
    quality: Optional[int]
    height: int
    width: int
    mode: str = "RGB"
    bit_depth: int = 8
    base_fingerprint: str = ""
    tables_hash: str = ""
    adapter_fingerprint: Optional[str] = None
    dims: Dict[str, Any] = field(default_factory=dict)
    padded: Tuple[int, int] = (0, 0)
    shape: Any = None
    layout: Any = None  # nested lists of string lengths, the shape of `strings`
    alpha_len: int = 0

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _to_jsonable(obj):
    """torch.Size / tuples / dicts -> plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (bytes, str)):
        return obj.item()
    if isinstance(obj, (int, float, str)) or obj is None:
        return obj
    raise ContainerError(f"cannot store a latent shape entry of type {type(obj).__name__}")


def _layout(strings) -> Tuple[Any, List[bytes]]:
    """Nested lists of bytes -> (the same nesting with lengths, flat list of bytes)."""
    flat: List[bytes] = []

    def walk(s):
        if isinstance(s, (bytes, bytearray)):
            flat.append(bytes(s))
            return len(s)
        if isinstance(s, (list, tuple)):
            return [walk(v) for v in s]
        raise ContainerError(f"compress() returned a string entry of type {type(s).__name__}")

    return walk(strings), flat


def _rebuild(layout, data: bytes, offset: int) -> Tuple[Any, int]:
    if isinstance(layout, int) and not isinstance(layout, bool):
        end = offset + layout
        if layout < 0 or end > len(data):
            raise ContainerError("the file is truncated (a string runs past the end of the payload)")
        return data[offset:end], end
    if isinstance(layout, list):
        out = []
        for item in layout:
            v, offset = _rebuild(item, data, offset)
            out.append(v)
        return out, offset
    raise ContainerError("the file's header is corrupted (bad string layout)")


def _shape_back(shape):
    """JSON lists back to what CompressAI's decompress expects (tuples / dicts of them)."""
    if isinstance(shape, dict):
        return {k: _shape_back(v) for k, v in shape.items()}
    if isinstance(shape, list):
        if all(isinstance(v, int) for v in shape):
            return tuple(shape)
        return [_shape_back(v) for v in shape]
    return shape


def pack(strings, shape, header: ContainerHeader, alpha: bytes = b"") -> bytes:
    """Serialise a ``compress`` result and its header into the file's bytes."""
    layout, flat = _layout(strings)
    header.layout = layout
    header.shape = _to_jsonable(shape)
    header.alpha_len = len(alpha)
    hdr = header.to_json()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(hdr)) + hdr + b"".join(flat) + alpha
    return body + _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)


def _check_header(header: ContainerHeader) -> None:
    """Field types and ranges that the decoder relies on (the checksum only proves the bytes are intact)."""

    def bad(what: str, value) -> ContainerError:
        return ContainerError(f"the file's header is corrupted (bad {what} {value!r})")

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name in ("height", "width"):
        v = getattr(header, name)
        if not count(v) or v < 1:
            raise bad(name, v)
    if header.mode not in ("L", "RGB", "RGBA"):
        raise bad("mode", header.mode)
    if not count(header.bit_depth) or header.bit_depth not in (8, 16):
        raise bad("bit_depth", header.bit_depth)
    if not count(header.alpha_len) or header.alpha_len < 0:
        raise bad("alpha_len", header.alpha_len)
    if not isinstance(header.codec, str) or not header.codec:
        raise bad("codec", header.codec)


def unpack(data: bytes) -> Tuple[Dict[str, Any], ContainerHeader, bytes]:
    """The file's bytes -> (``{"strings", "shape"}``, header, alpha bytes)."""
    if not data:
        raise ContainerError("the file is empty")
    if len(data) < len(MAGIC) and MAGIC.startswith(data):
        raise ContainerError("the file is truncated (shorter than its fixed header)")
    if data[:4] != MAGIC:
        raise ContainerError("not a .psic file (wrong magic)")
    if len(data) < _PREFIX.size + _CRC.size:
        raise ContainerError("the file is truncated (shorter than its fixed header)")
    _, version, hlen = _PREFIX.unpack_from(data, 0)
    if version > FORMAT_VERSION:
        raise ContainerError(f"format version {version} is newer than this psic understands ({FORMAT_VERSION}); upgrade psic-adapter")
    if version < 1:
        raise ContainerError(f"unknown format version {version}")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    body = data[: -_CRC.size]
    if _PREFIX.size + hlen > len(body):
        raise ContainerError("the file is truncated (the header runs past the end)")
    if zlib.crc32(body) & 0xFFFFFFFF != crc:
        raise ContainerError("the file is corrupted or truncated (checksum mismatch)")
    try:
        raw = json.loads(body[_PREFIX.size : _PREFIX.size + hlen].decode("utf-8"))
        header = ContainerHeader(**raw)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ContainerError(f"the file's header is unreadable ({exc})") from None
    _check_header(header)
    payload = body[_PREFIX.size + hlen :]
    try:
        strings, end = _rebuild(header.layout, payload, 0)
    except RecursionError:
        raise ContainerError("the file's header is corrupted (bad string layout)") from None
    if end + header.alpha_len != len(payload):
        raise ContainerError("the file's payload length does not match its header")
    alpha = payload[end:]
    return {"strings": strings, "shape": _shape_back(header.shape)}, header, alpha


def write(path: Union[str, os.PathLike], data: bytes, force: bool = False) -> Path:
    """Write the bytes to ``path`` atomically; an existing file needs ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise OverwriteError(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def read(path: Union[str, os.PathLike]) -> Tuple[Dict[str, Any], ContainerHeader, bytes]:
    path = Path(path)
    if not path.is_file():
        raise ContainerError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ContainerError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return unpack(data)
    except ContainerError as exc:
        raise ContainerError(f"{path}: {exc}") from None
