"""The ``.psic`` file: one base-codec bitstream and what is needed to decode it.

Layout (all integers big-endian)::

    magic      4 bytes   b"PSIC"
    version    1 byte    FORMAT_VERSION
    hlen       4 bytes   length of the header (at most MAX_HEADER_BYTES)
    header     hlen      UTF-8 JSON (compact): codec, quality, dims, base and
                         adapter fingerprints, entropy-table hash, image size,
                         padded size, mode and bit depth, latent shape, string
                         lengths, alpha length, latent checksum; from format 3,
                         the owner's per-photo shift (``photo_shift``)
    payload              the codec's strings, concatenated, then the alpha plane
    checksum   4 bytes   CRC-32 of everything before it

The strings are exactly the bytes the base codec's ``compress`` returned, in
both decoding modes: the file does not depend on the key.

A ``.psic`` file is untrusted input. :func:`unpack` checks every header field's
type and range (sizes capped, lengths consistent with the payload, the padded
size the one the image size implies, nesting bounded) before anything is
allocated; :mod:`psic_adapter.bitstream.coding` then checks the fields against the codec
(the latent shape its ``compress`` gives for that padded size, its
fingerprints) and, after entropy decoding, the latent checksum. The CRC only
tells accidental corruption; a file crafted with a recomputed CRC must still
fail one of those checks or decode to what its header says.

Format 3 is format 2 with a ``photo_shift`` in the header (the owner's per-photo shift of a
"spatial" adapter's branches, chosen at compression: :mod:`psic_adapter.adapter.photo_shift`); a
file without one is written as format 2, byte for byte as before, so older readers read it, and an
older reader refuses a format-3 file by its version ("upgrade psic-adapter") rather than decoding
it without its shift.

Format 1 (psic-adapter 0.1) files are still read (``psic info`` describes them);
they have no latent checksum, so :func:`psic_adapter.bitstream.coding.decode_file`
refuses to decode them unless asked to (``--allow-format-1``), and then warns.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..codec.padding import PAD_MULTIPLE, padded_size  # noqa: F401 (the codec's padding; named here too)
from ..errors import ContainerError, show, show_names

MAGIC = b"PSIC"
FORMAT_VERSION = 3
#: the format a file without a per-photo shift is written in (what earlier releases wrote and read)
PLAIN_FORMAT_VERSION = 2
_PREFIX = struct.Struct(">4sBI")
_CRC = struct.Struct(">I")

MAX_HEADER_BYTES = 1 << 20
MAX_SIDE = 1 << 16
MAX_STRINGS = 4096
MAX_DEPTH = 8
MAX_FILE_BYTES = 1 << 31


def check_size(height: int, width: int, what: str = "the image") -> None:
    """A size a ``.psic`` file can hold, checked before coding and when reading: sides at most
    :data:`MAX_SIDE`, and the image *padded* to :data:`PAD_MULTIPLE` (what the codec codes and a decoder
    allocates: a 1 x 2,000,000 image is 64 x 2,000,000 once padded) within the pixel limit."""
    from .images import max_pixels

    for name, v in (("height", height), ("width", width)):
        if not 1 <= v <= MAX_SIDE:
            raise ContainerError(f"{what} has a {name} of {v:,} px: a .psic file holds sides of 1 to {MAX_SIDE:,} px")
    ph, pw = padded_size(height, width)
    if ph * pw > max_pixels():
        raise ContainerError(f"{what} is {width}x{height}, {pw}x{ph} = {pw * ph:,} pixels once padded to a multiple "
                             f"of {PAD_MULTIPLE} for the codec: more than the pixel limit ({max_pixels():,}; set "
                             "PSIC_MAX_PIXELS to allow more)")


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
    alpha_raw_len: int = 0  # decompressed size of the alpha plane
    latent_check: Optional[List[float]] = None  # projections of the decoded latent (coding.latent_check)
    photo_shift: Optional[Dict[str, Any]] = None  # format 3: the owner's per-photo shift (PhotoShift.to_json)
    version: int = FORMAT_VERSION  # the container format the file was read from (not stored)

    def to_json(self) -> bytes:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "version"}
        if d["photo_shift"] is None:
            del d["photo_shift"]  # a format-2 header, byte for byte
        return json.dumps(d, separators=(",", ":"), sort_keys=True).encode("utf-8")


def shape_to_json(obj):
    """torch.Size / tuples / dicts -> plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): shape_to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [shape_to_json(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (bytes, str)):
        return obj.item()
    if isinstance(obj, (int, float, str)) or obj is None:
        return obj
    raise ContainerError(f"cannot store a latent shape entry of type {type(obj).__name__}")


def string_layout(strings) -> Tuple[Any, List[bytes]]:
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
        return data[offset:end], end
    out = []
    for item in layout:
        v, offset = _rebuild(item, data, offset)
        out.append(v)
    return out, offset


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
    layout, flat = string_layout(strings)
    header.layout = layout
    header.shape = shape_to_json(shape)
    header.alpha_len = len(alpha)
    hdr = header.to_json()
    version = FORMAT_VERSION if header.photo_shift is not None else PLAIN_FORMAT_VERSION
    body = _PREFIX.pack(MAGIC, version, len(hdr)) + hdr + b"".join(flat) + alpha
    return body + _CRC.pack(zlib.crc32(body) & 0xFFFFFFFF)


# ----------------------------------------------------------------------- checks
def _bad(what: str, value) -> ContainerError:
    return ContainerError(f"the file's header is corrupted (bad {what} {show(value)})")


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_number(v) -> bool:
    """A JSON number a float can hold, not NaN or infinite (json.loads reads NaN and huge integers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v)) and abs(float(v)) < 1e30
    except OverflowError:
        return False


def _hexstr(v, length: int) -> bool:
    if not isinstance(v, str) or len(v) != length:
        return False
    try:
        bytes.fromhex(v)
    except ValueError:
        return False
    return True


def _walk_layout(layout, depth: int = 0) -> Tuple[int, int]:
    """(number of strings, total bytes) of a layout; raises on a malformed one."""
    if _count(layout):
        if layout < 0:
            raise _bad("string length", layout)
        return 1, layout
    if not isinstance(layout, list) or depth > MAX_DEPTH:
        raise ContainerError("the file's header is corrupted (bad string layout)")
    n = total = 0
    for item in layout:
        a, b = _walk_layout(item, depth + 1)
        n, total = n + a, total + b
        if n > MAX_STRINGS:
            raise ContainerError("the file's header is corrupted (too many strings)")
    return n, total


def _check_shape(shape, depth: int = 0) -> None:
    if _count(shape):
        if not 1 <= shape <= MAX_SIDE:
            raise _bad("shape", shape)
        return
    if isinstance(shape, dict):
        if not shape or depth > MAX_DEPTH or not all(isinstance(k, str) for k in shape):
            raise _bad("shape", shape)
        for v in shape.values():
            _check_shape(v, depth + 1)
        return
    if not isinstance(shape, list) or not shape or depth > MAX_DEPTH or len(shape) > MAX_STRINGS:
        raise _bad("shape", shape)
    for v in shape:
        _check_shape(v, depth + 1)


def check_header(header: ContainerHeader, payload_len: int) -> None:
    """Field types, ranges and mutual consistency (the checksum only proves the bytes are intact)."""
    if not isinstance(header.codec, str) or not 0 < len(header.codec) <= 64:
        raise _bad("codec", header.codec)
    if header.quality is not None and (not _count(header.quality) or not 0 <= header.quality <= 64):
        raise _bad("quality", header.quality)
    for name in ("height", "width"):
        v = getattr(header, name)
        if not _count(v) or not 1 <= v <= MAX_SIDE:
            raise _bad(name, v)
    check_size(header.height, header.width, "the file's image")
    if header.mode not in ("L", "RGB", "RGBA"):
        raise _bad("mode", header.mode)
    if not _count(header.bit_depth) or header.bit_depth not in (8, 16):
        raise _bad("bit_depth", header.bit_depth)
    if header.base_fingerprint and not _hexstr(header.base_fingerprint, 32):
        raise _bad("base_fingerprint", header.base_fingerprint)
    if header.tables_hash and not _hexstr(header.tables_hash, 16):
        raise _bad("tables_hash", header.tables_hash)
    if header.adapter_fingerprint is not None and not _hexstr(header.adapter_fingerprint, 16):
        raise _bad("adapter_fingerprint", header.adapter_fingerprint)
    if not isinstance(header.dims, dict) or not all(v is None or _count(v) for v in header.dims.values()):
        raise _bad("dims", header.dims)
    padded = header.padded
    if not isinstance(padded, (list, tuple)) or len(padded) != 2 or not all(_count(v) for v in padded):
        raise _bad("padded", padded)
    legacy = header.version < 2  # format 1 stored the unpadded size here, and no alpha size
    if tuple(padded) != padded_size(header.height, header.width) and not (
            legacy and tuple(padded) == (header.height, header.width)):
        raise ContainerError(f"the file's header is corrupted (padded size {list(padded)} does not fit an image of "
                             f"{header.width}x{header.height})")
    _check_shape(header.shape)
    n_strings, total = _walk_layout(header.layout)
    if n_strings == 0:
        raise _bad("layout", header.layout)
    if not _count(header.alpha_len) or header.alpha_len < 0:
        raise _bad("alpha_len", header.alpha_len)
    if total + header.alpha_len != payload_len:
        raise ContainerError("the file's payload length does not match its header (truncated or padded)")
    plane = header.height * header.width * (2 if header.bit_depth == 16 else 1)
    if legacy and header.mode == "RGBA" and header.alpha_raw_len == 0:
        header.alpha_raw_len = plane
    if header.mode == "RGBA":
        if header.alpha_len == 0 or header.alpha_raw_len != plane:
            raise ContainerError("the file's header is corrupted (an RGBA image without a fitting alpha plane)")
    elif header.alpha_len or header.alpha_raw_len:
        raise ContainerError(f"the file's header is corrupted (an alpha plane in a {header.mode} image)")
    if header.latent_check is not None and (
            not isinstance(header.latent_check, list) or not 1 <= len(header.latent_check) <= 16
            or not all(_finite_number(v) for v in header.latent_check)):
        raise _bad("latent_check", header.latent_check)
    if header.version >= 2 and header.latent_check is None:
        raise ContainerError("the file's header is corrupted (no latent checksum)")
    if header.photo_shift is not None:
        if header.version < 3:
            raise ContainerError(f"the file's header is corrupted (a photo_shift in a format-{header.version} file)")
        if not isinstance(header.photo_shift, dict):
            raise _bad("photo_shift", header.photo_shift)
        # its numbers are the adapter's to read: PhotoShift.from_json checks them (shape, integers, bounds, size)
        # before any decode uses them, and whether they fit the adapter
    elif header.version >= 3:
        raise ContainerError("the file's header is corrupted (a format-3 file without its photo_shift)")


def unpack(data: bytes) -> Tuple[Dict[str, Any], ContainerHeader, bytes]:
    """The file's bytes -> (``{"strings", "shape"}``, header, alpha bytes), every field checked."""
    if not data:
        raise ContainerError("the file is empty")
    if len(data) > MAX_FILE_BYTES:
        raise ContainerError(f"larger than {MAX_FILE_BYTES} bytes: not a .psic file")
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
    if hlen > MAX_HEADER_BYTES:
        raise ContainerError(f"the file's header claims {hlen} bytes (more than {MAX_HEADER_BYTES}): not a .psic file")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    body = data[: -_CRC.size]
    if _PREFIX.size + hlen > len(body):
        raise ContainerError("the file is truncated (the header runs past the end)")
    if zlib.crc32(body) & 0xFFFFFFFF != crc:
        raise ContainerError("the file is corrupted or truncated (checksum mismatch)")
    try:
        raw = json.loads(body[_PREFIX.size: _PREFIX.size + hlen].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ContainerError(f"the file's header is unreadable ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ContainerError("the file's header is not a JSON object")
    if "photo_shift" in raw and raw["photo_shift"] is None:  # written only when there is one
        raise ContainerError("the file's header is corrupted (a photo_shift of null)")
    known = {f.name for f in fields(ContainerHeader)} - {"version"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ContainerError(f"the file's header has unknown field(s): {show_names(unknown)}")
    try:
        header = ContainerHeader(**raw, version=version)
    except TypeError as exc:
        raise ContainerError(f"the file's header is incomplete ({exc})") from None
    payload = body[_PREFIX.size + hlen:]
    check_header(header, len(payload))
    strings, end = _rebuild(header.layout, payload, 0)
    alpha = payload[end:]
    return {"strings": strings, "shape": _shape_back(header.shape)}, header, alpha


def write(path: Union[str, os.PathLike], data: bytes, force: bool = False, inputs=()) -> Path:
    """Write the bytes to ``path`` atomically (:func:`psic_adapter.fileio.atomic_write`)."""
    from ..fileio import atomic_write

    return atomic_write(path, data, force=force, inputs=inputs)


def read(path: Union[str, os.PathLike]) -> Tuple[Dict[str, Any], ContainerHeader, bytes]:
    path = Path(path)
    if not path.is_file():
        raise ContainerError(f"{path}: no such file")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ContainerError(f"{path}: larger than {MAX_FILE_BYTES} bytes: not a .psic file")
        data = path.read_bytes()
    except OSError as exc:
        raise ContainerError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return unpack(data)
    except ContainerError as exc:
        raise ContainerError(f"{path}: {exc}") from None
