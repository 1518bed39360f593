"""Image + text datasets for training and evaluating PSIC adapters.

PSIC trains on image-caption pairs (the paper uses 70k CC3M pairs, section 4.1)
and evaluates on captioned or labelled images. Every dataset here yields the
same kind of item, a dict::

    {"image": FloatTensor[3, H, W] in [0, 1], "text": str, "label": int, "path": str}

(``label`` is -1 where it is unknown), so that :func:`make_loader` batches any
of them once crops make the sizes equal. Files are read through
:mod:`psic_adapter.bitstream.images`, so grey, RGBA (alpha dropped), 16-bit PNG and JPEG
all arrive as RGB in [0, 1].

The datasets:

* :class:`CaptionFolder` -- ``a.jpg`` + ``a.txt`` side by side (the CC3M /
  img2dataset layout), searched recursively.
* :class:`CaptionCSV` -- a CSV/TSV with image and caption columns
  (``image``/``caption``, open_clip's ``filepath``/``title``, or ``path``/``text``).
* :class:`ImageFolderPrompts` -- an ImageFolder tree; the text is a prompt made
  from the class name (ImageNet synset folders get readable names).
* :class:`SamplePhotos` -- twenty real photos bundled with scikit-image,
  scikit-learn and matplotlib, with hand-written captions and a fixed
  train/test/extra split; no download needed.

:func:`build_dataset` picks one from a spec string, :func:`make_loader` wraps
one in a seeded DataLoader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .captions import CaptionCSV, CaptionFolder
from .common import DEFAULT_PROMPT, IMAGE_EXTENSIONS, DataWarning, ItemDataset, Size
from .folders import ImageFolderPrompts, PlainImages, folder_kind
from .imagenet import imagenet_class_name, imagenet_class_names, imagenet_index
from .loader import collate, make_loader
from .samples import EXTRA_PHOTOS, SAMPLE_PHOTOS, TEST_PHOTOS, TRAIN_PHOTOS, SamplePhoto, SamplePhotos, repeats_for, sample_names, sample_photo
from .transforms import CenterCrop, Compose, RandomCrop, RandomHorizontalFlip, eval_transform, train_transform

__all__ = [
    "IMAGE_EXTENSIONS", "DEFAULT_PROMPT", "DataWarning", "ItemDataset", "CaptionFolder", "CaptionCSV",
    "ImageFolderPrompts", "PlainImages", "SamplePhoto", "SAMPLE_PHOTOS", "TRAIN_PHOTOS", "TEST_PHOTOS",
    "EXTRA_PHOTOS",
    "SamplePhotos", "sample_photo", "sample_names", "repeats_for", "imagenet_class_name", "imagenet_class_names",
    "imagenet_index", "RandomCrop", "CenterCrop", "RandomHorizontalFlip", "Compose", "train_transform",
    "eval_transform", "build_dataset", "collate", "make_loader",
]


def build_dataset(
    spec: Union[str, os.PathLike],
    crop: Optional[Size] = None,
    split: str = "train",
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    repeats: int = 1,
) -> Dataset:
    """One door to every dataset.

    ``spec`` is ``"samples"`` (:class:`SamplePhotos` of ``split``; write
    ``./samples`` for a folder of that name), a ``.csv``/``.tsv`` file
    (:class:`CaptionCSV`), or a folder: a :class:`CaptionFolder` when its images
    have ``.txt`` captions beside them, an :class:`ImageFolderPrompts` when its
    images sit in sub-folders named by ImageNet classes, else a
    :class:`PlainImages` (any folder of images, flat or nested).

    ``split="train"`` uses :func:`train_transform` (random ``crop`` + flip);
    ``"test"``/``"val"``/``"all"`` use :func:`eval_transform` (centre ``crop``).
    For folders and CSVs the split only picks the transform; for the sample
    photos it also picks the photos (``"val"`` means ``"test"``; ``"extra"`` and
    ``"heldout"`` are theirs: :data:`~.samples.SPLITS`), and crops of photos
    never trained on are centre crops. ``repeats`` only applies to the sample photos.
    """
    if split not in ("train", "test", "val", "all", "extra", "heldout"):
        raise ConfigError(f"split must be 'train', 'test', 'val', 'extra', 'heldout' or 'all', not {split!r}")
    training = split == "train"
    if isinstance(spec, str) and spec.strip().lower() == "samples":
        sample_split = "test" if split == "val" else split
        return SamplePhotos(
            sample_split,
            crop=crop,
            transform=RandomHorizontalFlip() if training else None,
            seed=seed,
            repeats=repeats,
            center_crop=sample_split in ("test", "extra", "heldout"),
        )
    transform = train_transform(crop) if training else eval_transform(crop)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv"):
            return CaptionCSV(path, transform=transform)
        raise DataError(f"{path}: not a .csv/.tsv file (expected 'samples', a folder, or a CSV of image,caption)")
    if path.is_dir():
        kind = folder_kind(path)
        if kind == "caption":
            return CaptionFolder(path, transform=transform)
        if kind == "plain":
            return PlainImages(path, transform=transform)
        return ImageFolderPrompts(path, prompt=prompt, transform=transform)
    raise DataError(f"{spec}: no such file or folder (expected 'samples', a folder of images, or a .csv file)")


