"""Reading and writing images as tensors, and padding them for a codec.

Codecs work on RGB tensors in [0, 1]. Real files are grey, RGB or RGBA, 8- or
16-bit PNG, or JPEG (a camera's EXIF orientation applied, at any bit depth; 32-bit
integer and float images are read as 16-bit where their values fit, [0, 65535] and
[0, 1], and refused otherwise): :func:`load_image` turns any of them into a ``1x3xHxW``
float tensor plus an :class:`ImageInfo` that :func:`save_image` uses to write the
decode back in the original layout (grey stays grey, the alpha plane is put
back, 16-bit stays 16-bit).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..codec.padding import crop_to, pad_to_multiple  # noqa: F401 (the codec's padding; named here too)
from ..errors import ImageError
from ..types import PathLike

#: the default pixel limit (width x height) of an image read or decoded: about 40 megapixels,
#: which a CompressAI codec already needs several GB of memory to code on a CPU
DEFAULT_MAX_PIXELS = 40_000_000
_max_pixels: Optional[int] = None


def served(x: torch.Tensor) -> torch.Tensor:
    """A decode as it is served: clamped and rounded to 8 bits."""
    return (x.float().clamp(0, 1) * 255).round() / 255


def max_pixels() -> int:
    """The pixel limit: :func:`set_max_pixels`, else the ``PSIC_MAX_PIXELS`` environment variable,
    else :data:`DEFAULT_MAX_PIXELS`."""
    if _max_pixels is not None:
        return _max_pixels
    env = os.environ.get("PSIC_MAX_PIXELS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ImageError(f"PSIC_MAX_PIXELS must be a number of pixels, not {env!r}") from None
        if value < 1:
            raise ImageError(f"PSIC_MAX_PIXELS must be positive, not {value}")
        return value
    return DEFAULT_MAX_PIXELS


def set_max_pixels(value: Optional[int]) -> None:
    """Set the pixel limit for this process (``None``: back to the environment / the default)."""
    global _max_pixels
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ImageError(f"the pixel limit must be a positive integer, not {value!r}")
    _max_pixels = value


def check_pixels(width: int, height: int, what: str = "image") -> None:
    """A clear error for images over the pixel limit, before any pixel is decoded."""
    if width * height > max_pixels():
        raise ImageError(f"{what} is {width}x{height} = {width * height:,} pixels, more than the limit of "
                         f"{max_pixels():,} (set PSIC_MAX_PIXELS or psic_adapter.bitstream.set_max_pixels to allow more)")


@dataclass
class ImageInfo:
    """What :func:`load_image` found in a file, to write its decode back alike."""

    height: int
    width: int
    mode: str  # "L" (grey), "RGB" or "RGBA"
    bit_depth: int  # 8 or 16
    alpha: Optional[np.ndarray] = None  # HxW uint8/uint16 when mode == "RGBA"

    def alpha_bytes(self) -> bytes:
        """The alpha plane, losslessly compressed (empty when there is none)."""
        if self.alpha is None:
            return b""
        return zlib.compress(np.ascontiguousarray(self.alpha).tobytes(), 9)

    @staticmethod
    def alpha_from_bytes(data: bytes, height: int, width: int, bit_depth: int) -> Optional[np.ndarray]:
        """The alpha plane back from :meth:`alpha_bytes`; never inflates past the plane's size."""
        if not data:
            return None
        dtype = np.uint16 if bit_depth == 16 else np.uint8
        size = height * width * np.dtype(dtype).itemsize
        try:
            d = zlib.decompressobj()
            raw = d.decompress(data, size + 1)
        except zlib.error:
            raise ImageError("the alpha plane is corrupted (not zlib data)") from None
        if len(raw) != size or d.unconsumed_tail or not d.eof:
            raise ImageError("the alpha plane has the wrong size")
        return np.frombuffer(raw, dtype=dtype).reshape(height, width)


def _read_png16(path: Path) -> Optional[np.ndarray]:
    """A 16-bit PNG as HxWxC uint16 (pypng), or None for any other file."""
    import png  # pypng

    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
    reader = png.Reader(filename=str(path))
    width, height, rows, meta = reader.asDirect()
    if meta["bitdepth"] != 16:
        return None
    check_pixels(width, height, str(path))
    planes = meta["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, planes)
    return arr


#: EXIF orientation (tag 0x0112) -> the numpy steps that show the photo as it is seen (as PIL's exif_transpose)
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _exif_orientation(path: Path) -> int:
    """The EXIF orientation of an image file (1: as stored), read by PIL."""
    from PIL import Image

    with Image.open(path) as im:
        try:
            value = im.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block: the image as stored, as PIL's exif_transpose does
            return 1
    return value if value in _ORIENT else 1


def _wide_pixels(im, path: Path) -> np.ndarray:
    """A 32-bit integer ("I") or float ("F") image as uint16, when its values fit 16 bits ([0, 65535], or [0, 1]
    for floats); any other range is an :class:`ImageError` (it was wrapped modulo 65536, or read as black)."""
    arr = np.asarray(im)
    if im.mode == "I":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ImageError(f"{path}: 32-bit integer pixels from {lo} to {hi}: only 8- and 16-bit images are "
                             "supported (convert it to a 16-bit PNG)")
        return arr.astype(np.uint16)
    if not np.isfinite(arr).all():
        raise ImageError(f"{path}: floating-point pixels that are not finite (NaN or infinite)")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0 or hi > 1:
        raise ImageError(f"{path}: floating-point pixels from {lo:g} to {hi:g}: only values in [0, 1] are read "
                         "(as 16-bit); convert it to a 16-bit PNG")
    return np.round(arr.astype(np.float64) * 65535).astype(np.uint16)


def read_array(path: PathLike) -> np.ndarray:
    """An image file as an HxW or HxWxC uint8/uint16 array, as it is seen (EXIF orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    try:
        arr = _read_png16(path)
        if arr is not None:  # a camera's orientation tag counts for 16-bit PNGs too
            orientation = _exif_orientation(path)
            if orientation != 1:
                arr = np.ascontiguousarray(_ORIENT[orientation](arr))
        else:
            from PIL import Image, ImageOps

            with Image.open(path) as raw:
                check_pixels(raw.width, raw.height, str(path))
                raw.load()
                im = ImageOps.exif_transpose(raw)  # a camera's orientation tag: the photo as it is seen
                if im.mode in ("I;16", "I;16B", "I;16L"):
                    arr = np.asarray(im).astype(np.uint16)
                elif im.mode in ("I", "F"):
                    arr = _wide_pixels(im, path)
                elif im.mode in ("L", "RGB", "RGBA"):
                    arr = np.asarray(im)
                elif im.mode == "LA":
                    arr = np.asarray(im.convert("RGBA"))
                elif im.mode in ("P", "PA"):
                    arr = np.asarray(im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB"))
                else:  # CMYK, YCbCr, 1 ...
                    arr = np.asarray(im.convert("RGB"))
        if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha, 16-bit
            g, a = arr[..., 0], arr[..., 1]
            arr = np.stack([g, g, g, a], axis=-1)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{path}: not enough memory to read this image") from None
    except Exception as exc:  # PIL raises many kinds of errors for bad files
        raise ImageError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr


def array_to_tensor(arr: np.ndarray) -> Tuple[torch.Tensor, ImageInfo]:
    """HxW / HxWx3 / HxWx4 uint8 or uint16 array -> (1x3xHxW float tensor in [0, 1], info)."""
    if arr.dtype == np.uint16:
        bit_depth, scale = 16, 65535.0
    elif arr.dtype == np.uint8:
        bit_depth, scale = 8, 255.0
    else:
        raise ImageError(f"unsupported pixel type {arr.dtype} (expected 8- or 16-bit)")
    alpha = None
    if arr.ndim == 2:
        mode, rgb = "L", np.repeat(arr[..., None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 3:
        mode, rgb = "RGB", arr
    elif arr.ndim == 3 and arr.shape[2] == 4:
        mode, rgb, alpha = "RGBA", arr[..., :3], arr[..., 3].copy()
    else:
        raise ImageError(f"unsupported image layout {arr.shape}")
    h, w = rgb.shape[:2]
    if h < 1 or w < 1:
        raise ImageError("image is empty")
    x = torch.from_numpy(np.ascontiguousarray(rgb).astype(np.float32) / scale).permute(2, 0, 1)[None]
    return x, ImageInfo(height=h, width=w, mode=mode, bit_depth=bit_depth, alpha=alpha)


def load_image(path: PathLike) -> Tuple[torch.Tensor, ImageInfo]:
    """Any supported image file -> (1x3xHxW float32 tensor in [0, 1], :class:`ImageInfo`)."""
    return array_to_tensor(read_array(path))


def tensor_to_array(x: torch.Tensor, info: Optional[ImageInfo] = None) -> np.ndarray:
    """A 1x3xHxW or 3xHxW tensor in [0, 1] -> array in the layout that ``info`` describes."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError("tensor_to_array takes one image")
        x = x[0]
    bit_depth = info.bit_depth if info is not None else 8
    scale = 65535.0 if bit_depth == 16 else 255.0
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    arr = (x.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * scale).round().astype(dtype)
    if info is None or info.mode == "RGB":
        return arr
    if info.mode == "L":
        # the codec decodes three channels; a grey original gets their mean back
        grey = x.detach().float().cpu().clamp(0, 1).mean(0).numpy()
        return (grey * scale).round().astype(dtype)
    if info.mode == "RGBA":
        if info.alpha is None:
            raise ImageError("RGBA image info without an alpha plane")
        return np.concatenate([arr, info.alpha[..., None].astype(dtype)], axis=2)
    raise ImageError(f"unknown image mode {info.mode!r}")


def check_writable(path: PathLike, force: bool = False, inputs=()) -> Path:
    """Refuse an existing file unless ``force``, a folder, and an input of the command."""
    from ..fileio import check_output

    return check_output(path, force=force, inputs=inputs)


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
            ".webp": "WEBP"}


def save_array(arr: np.ndarray, path: PathLike, force: bool = False, inputs=()) -> Path:
    """Write an array as PNG (16-bit when it is uint16) or, by extension, JPEG; atomically."""
    from ..fileio import atomic_write

    path = check_writable(path, force, inputs)
    suffix = path.suffix.lower()
    if arr.dtype == np.uint16:
        if suffix != ".png":
            raise ImageError(f"{path}: 16-bit images can only be written as PNG")
        import png

        planes = 1 if arr.ndim == 2 else arr.shape[2]
        writer = png.Writer(arr.shape[1], arr.shape[0], bitdepth=16, greyscale=planes in (1, 2), alpha=planes in (2, 4))

        def write(fh):
            writer.write(fh, arr.reshape(arr.shape[0], -1).tolist())
    else:
        from PIL import Image

        fmt = _FORMATS.get(suffix)
        if fmt is None:
            raise ImageError(f"{path}: unknown image extension {suffix!r} (use .png)")
        im = Image.fromarray(arr)
        if fmt == "JPEG" and im.mode == "RGBA":
            raise ImageError(f"{path}: JPEG cannot hold an alpha channel (use .png)")

        def write(fh):
            im.save(fh, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return atomic_write(path, write, force=force, inputs=inputs)


def save_image(x: torch.Tensor, path: PathLike, info: Optional[ImageInfo] = None, force: bool = False,
               inputs=()) -> Path:
    """Write a decoded ``1x3xHxW`` tensor in the original's layout (see :class:`ImageInfo`)."""
    return save_array(tensor_to_array(x, info), path, force=force, inputs=inputs)


def resize_longer_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, 3, H, W]`` resized (bicubic, antialiased, clamped) so that ``max(H, W) == size``."""
    h, w = x.shape[-2:]
    if max(h, w) == size:
        return x
    scale = size / max(h, w)
    new = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
