"""What every dataset of :mod:`psic_adapter.data` shares: the item, file discovery, helpers.

An item is ``{"image": FloatTensor[3, H, W] in [0, 1], "text": str, "label": int, "path": str}``
(``label`` -1 where unknown). Files are read through :mod:`psic_adapter.bitstream.images`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from ..bitstream.images import load_image
from ..errors import ConfigError, DataError
from ..types import PathLike

Size = Union[int, Tuple[int, int], Sequence[int]]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_PROMPT = "a photo of a {}."


class DataWarning(UserWarning):
    """Something in a dataset was skipped (e.g. images without a caption)."""


def as_size(size: Size, what: str = "crop") -> Tuple[int, int]:
    if isinstance(size, bool):
        raise ConfigError(f"{what} size must be an int or (height, width), not {size!r}")
    if isinstance(size, int):
        h = w = size
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} size must be an int or (height, width), not {size!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"{what} size must be positive, not {size!r}")
    return h, w


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def walk_files(root: Path) -> List[Path]:
    """Every non-hidden file under ``root``, sorted; follows links, not in circles."""
    found: List[Path] = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(found)


def check_folder(root: PathLike, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such folder (expected {what})")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected {what})")
    return root


def read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig", errors="replace").strip()
    except OSError as exc:
        raise DataError(f"{path}: cannot read caption ({exc})") from None


def takes_generator(fn: Callable) -> bool:
    return bool(getattr(fn, "takes_generator", False))


def apply_transform(transform: Optional[Callable], x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    if transform is None:
        return x
    if generator is not None and takes_generator(transform):
        return transform(x, generator=generator)
    return transform(x)


def load_rgb(path: PathLike) -> torch.Tensor:
    """An image file as a float ``3xHxW`` tensor in [0, 1]."""
    x, _ = load_image(path)
    return x[0]


class ItemDataset(Dataset):
    """A list of ``(path, text, label)`` read lazily into item dicts."""

    items: List[Tuple[str, str, int]]
    transform: Optional[Callable]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, object]:
        path, text, label = self.items[index]
        image = apply_transform(self.transform, load_rgb(path))
        return {"image": image, "text": text, "label": label, "path": path}

    @property
    def texts(self) -> List[str]:
        return [t for _, t, _ in self.items]

    @property
    def paths(self) -> List[str]:
        return [p for p, _, _ in self.items]


def read_text(path: Path, what: str) -> str:
    """A small text file (UTF-8, a BOM allowed); a one-line DataError otherwise."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc})") from None
