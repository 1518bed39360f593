"""CelebA's files: the 40-attribute table, the train/val/test partition, where the images are."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from ..errors import DataError
from .common import PathLike, read_text

@dataclass
class CelebAAttributes:
    """An attribute table: ``labels[i, a]`` is +1 / -1 for image ``files[i]`` and attribute ``names[a]``."""

    names: List[str]
    files: List[str]
    labels: Tensor  # LongTensor [N, A] of +1 / -1


def _pm1(value: str, path: Path, line: int) -> int:
    try:
        v = int(value)
    except ValueError:
        raise DataError(f"{path}, line {line}: attribute value {value!r} is not 1 or -1") from None
    if v == 0:  # some re-exports write 0/1
        return -1
    if v not in (1, -1):
        raise DataError(f"{path}, line {line}: attribute value {value!r} is not 1 or -1")
    return v


def read_celeba_attributes(path: PathLike) -> CelebAAttributes:
    """Parse CelebA's attribute table.

    ``list_attr_celeba.txt``: line 1 the image count, line 2 the attribute
    names, then ``000001.jpg  -1  1  1 ...`` (whitespace-separated, +1 / -1).
    The Kaggle re-export ``list_attr_celeba.csv`` (header ``image_id,<names>``)
    is read too; 0/1 values are taken as -1/+1. A row with the wrong number of
    values, a value that is not +-1 (or 0/1), or a count that disagrees with the
    rows is a :class:`~psic_adapter.errors.DataError` naming the line.
    """
    path = Path(path)
    text = read_text(path, "CelebA attribute table")
    lines = text.splitlines()
    files: List[str] = []
    rows: List[List[int]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.reader(lines)
        header = next(reader, None)
        if not header or len(header) < 2:
            raise DataError(f"{path}: expected a header 'image_id,<attribute names>'")
        names = [h.strip() for h in header[1:]]
        for ln, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise DataError(f"{path}, line {ln}: {len(row) - 1} values for {len(names)} attributes")
            files.append(row[0].strip())
            rows.append([_pm1(v.strip(), path, ln) for v in row[1:]])
        count = None
    else:
        if len(lines) < 2:
            raise DataError(f"{path}: expected an image count, a line of attribute names, then one row per image")
        try:
            count = int(lines[0].split()[0])
        except (ValueError, IndexError):
            raise DataError(f"{path}, line 1: expected the number of images, got {lines[0][:40]!r}") from None
        names = lines[1].split()
        if not names:
            raise DataError(f"{path}, line 2: no attribute names")
        for ln, line in enumerate(lines[2:], start=3):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != len(names) + 1:
                raise DataError(f"{path}, line {ln}: {len(parts) - 1} values for {len(names)} attributes")
            files.append(parts[0])
            rows.append([_pm1(v, path, ln) for v in parts[1:]])
    if len(set(names)) != len(names):
        raise DataError(f"{path}: repeated attribute names")
    if not rows:
        raise DataError(f"{path}: no image rows")
    if count is not None and count != len(rows):
        raise DataError(f"{path}: line 1 announces {count} images, the table has {len(rows)} rows")
    return CelebAAttributes(names, files, torch.tensor(rows, dtype=torch.long))


def read_celeba_partition(path: PathLike) -> Dict[str, int]:
    """``list_eval_partition.txt`` (``000001.jpg 0``; 0 train, 1 val, 2 test) or its CSV -> {file: split}."""
    path = Path(path)
    out: Dict[str, int] = {}
    for ln, line in enumerate(read_text(path, "CelebA partition file").splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts or (ln == 1 and parts[0].lower() in ("image_id", "image", "filename")):
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}, line {ln}: expected '<image> 0|1|2', got {line[:60]!r}")
        out[parts[0]] = int(parts[1])
    return out


SPLITS = {"train": 0, "val": 1, "valid": 1, "test": 2}


def _first_file(candidates: Iterable[Path]) -> Optional[Path]:
    for c in candidates:
        if c.is_file():
            return c
    return None


def find_celeba(root: Path) -> Tuple[Path, Optional[Path], List[Path]]:
    """(attribute table, partition file or None, image folders to look in)."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected CelebA: list_attr_celeba.txt + img_align_celeba/)")
    attr = _first_file(root / d / f"list_attr_celeba.{ext}" for d in ("", "Anno") for ext in ("txt", "csv"))
    if attr is None:
        raise DataError(f"{root}: no list_attr_celeba.txt (nor Anno/list_attr_celeba.txt, nor list_attr_celeba.csv)")
    part = _first_file(root / d / f"list_eval_partition.{ext}" for d in ("", "Eval") for ext in ("txt", "csv"))
    folders = [root / "img_align_celeba" / "img_align_celeba", root / "img_align_celeba",
               root / "Img" / "img_align_celeba", root]
    return attr, part, [f for f in folders if f.is_dir()]


