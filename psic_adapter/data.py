"""Image + text datasets for training and evaluating PSIC adapters.

PSIC trains on image-caption pairs (the paper uses 70k CC3M pairs, section 4.1)
and evaluates on captioned or labelled images. Every dataset here yields the
same kind of item, a dict::

    {"image": FloatTensor[3, H, W] in [0, 1], "text": str, "label": int, "path": str}

(``label`` is -1 where it is unknown), so that :func:`make_loader` batches any
of them once crops make the sizes equal. Files are read through
:mod:`psic_adapter.images`, so grey, RGBA (alpha dropped), 16-bit PNG and JPEG
all arrive as RGB in [0, 1].

The datasets:

* :class:`CaptionFolder` -- ``a.jpg`` + ``a.txt`` side by side (the CC3M /
  img2dataset layout), searched recursively.
* :class:`CaptionCSV` -- a CSV/TSV with image and caption columns
  (``image``/``caption``, open_clip's ``filepath``/``title``, or ``path``/``text``).
* :class:`ImageFolderPrompts` -- an ImageFolder tree; the text is a prompt made
  from the class name (ImageNet synset folders get readable names).
* :class:`SamplePhotos` -- nine real photos bundled with scikit-image,
  scikit-learn and matplotlib, with hand-written captions and a fixed
  train/test split; no download needed.

:func:`build_dataset` picks one from a spec string, :func:`make_loader` wraps
one in a seeded DataLoader.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import ConfigError, DataError, ImageError
from .images import array_to_tensor, load_image, read_array

PathLike = Union[str, os.PathLike]
Size = Union[int, Tuple[int, int], Sequence[int]]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_PROMPT = "a photo of a {}."

__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_PROMPT",
    "DataWarning",
    "CaptionFolder",
    "CaptionCSV",
    "ImageFolderPrompts",
    "PlainImages",
    "SamplePhoto",
    "SAMPLE_PHOTOS",
    "TRAIN_PHOTOS",
    "TEST_PHOTOS",
    "SamplePhotos",
    "sample_photo",
    "sample_names",
    "imagenet_class_name",
    "RandomCrop",
    "CenterCrop",
    "RandomHorizontalFlip",
    "Compose",
    "train_transform",
    "eval_transform",
    "build_dataset",
    "collate",
    "make_loader",
]


class DataWarning(UserWarning):
    """Something in a dataset was skipped (e.g. images without a caption)."""


# --------------------------------------------------------------------------- helpers


def _as_size(size: Size, what: str = "crop") -> Tuple[int, int]:
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


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_files(root: Path) -> List[Path]:
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


def _check_folder(root: PathLike, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such folder (expected {what})")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected {what})")
    return root


def _read_caption(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig", errors="replace").strip()
    except OSError as exc:
        raise DataError(f"{path}: cannot read caption ({exc})") from None


def _takes_generator(fn: Callable) -> bool:
    return bool(getattr(fn, "takes_generator", False))


def _apply(transform: Optional[Callable], x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    if transform is None:
        return x
    if generator is not None and _takes_generator(transform):
        return transform(x, generator=generator)
    return transform(x)


def _load_rgb(path: PathLike) -> torch.Tensor:
    """An image file as a float ``3xHxW`` tensor in [0, 1]."""
    x, _ = load_image(path)
    return x[0]


class _ItemDataset(Dataset):
    """A list of ``(path, text, label)`` read lazily into item dicts."""

    items: List[Tuple[str, str, int]]
    transform: Optional[Callable]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, object]:
        path, text, label = self.items[index]
        image = _apply(self.transform, _load_rgb(path))
        return {"image": image, "text": text, "label": label, "path": path}

    @property
    def texts(self) -> List[str]:
        return [t for _, t, _ in self.items]

    @property
    def paths(self) -> List[str]:
        return [p for p, _, _ in self.items]


# --------------------------------------------------------------------------- CaptionFolder


class CaptionFolder(_ItemDataset):
    """Images with a same-stem caption file beside them (``a.jpg`` + ``a.txt``).

    The CC3M layout that img2dataset writes. The folder is searched recursively
    (hidden files and folders are ignored); the caption is the ``.txt`` file's
    text, stripped. Images without a caption file (or with an empty one) are
    skipped, and one :class:`DataWarning` says how many. No captioned image at
    all is a :class:`DataError`.
    """

    def __init__(self, root: PathLike, transform: Optional[Callable] = None):
        self.root = _check_folder(root, "a folder of images with same-stem .txt captions")
        self.transform = transform
        files = _walk_files(self.root)
        present = set(files)
        items: List[Tuple[str, str, int]] = []
        missing: List[Path] = []
        empty: List[Path] = []
        n_images = 0
        for f in files:
            if not _is_image_file(f.name):
                continue
            n_images += 1
            txt = f.with_suffix(".txt")
            if txt not in present:
                missing.append(f)
                continue
            caption = _read_caption(txt)
            if not caption:
                empty.append(f)
                continue
            items.append((str(f), caption, -1))
        if not items:
            if n_images == 0:
                raise DataError(f"{self.root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
            raise DataError(
                f"{self.root}: none of the {n_images} images has a caption "
                "(expected a same-stem .txt beside each image, e.g. a.jpg + a.txt)"
            )
        if missing or empty:
            parts = []
            if missing:
                parts.append(f"{len(missing)} without a .txt caption (e.g. {missing[0]})")
            if empty:
                parts.append(f"{len(empty)} with an empty caption (e.g. {empty[0]})")
            warnings.warn(
                f"CaptionFolder {self.root}: skipped {len(missing) + len(empty)} of {n_images} images: "
                + "; ".join(parts),
                DataWarning,
                stacklevel=2,
            )
        self.items = items
        self.skipped = len(missing) + len(empty)

    def __repr__(self) -> str:
        return f"CaptionFolder({str(self.root)!r}, {len(self)} images)"


# --------------------------------------------------------------------------- CaptionCSV

IMAGE_COLUMNS = ("image", "filepath", "path")
CAPTION_COLUMNS = ("caption", "title", "text")


def _pick_column(fields: Dict[str, str], wanted: Optional[str], choices: Sequence[str]) -> Optional[str]:
    """The real header name for ``wanted`` (or the first of ``choices``), case-insensitively."""
    for name in ([wanted] if wanted else list(choices)):
        key = name.strip().lower()
        if key in fields:
            return fields[key]
    return None


class CaptionCSV(_ItemDataset):
    """Image paths and captions from a CSV (or TSV) file with a header.

    The header must name an image column (``image``, ``filepath`` or ``path``)
    and a caption column (``caption``, ``title`` or ``text``), in any case;
    ``image_key``/``caption_key`` name others. An optional integer ``label``
    column fills ``label``. The delimiter is a tab for ``.tsv`` files or when the
    header is tab-separated (open_clip's default), else a comma; pass
    ``delimiter`` to force one. Fields are parsed with :mod:`csv`, so quoted
    captions keep their commas and quotes.

    Relative paths are taken from the CSV's folder, or from ``root`` when given.
    A missing column, a malformed row, or a missing image file is a
    :class:`DataError` that names the CSV and the line.
    """

    def __init__(
        self,
        csv_path: PathLike,
        root: Optional[PathLike] = None,
        transform: Optional[Callable] = None,
        image_key: Optional[str] = None,
        caption_key: Optional[str] = None,
        delimiter: Optional[str] = None,
    ):
        self.csv_path = Path(csv_path).expanduser()
        if not self.csv_path.is_file():
            what = "a folder" if self.csv_path.is_dir() else "no such file"
            raise DataError(f"{self.csv_path}: {what} (expected a CSV file with image and caption columns)")
        self.root = Path(root).expanduser() if root is not None else self.csv_path.parent
        if root is not None and not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder (the root for the paths in {self.csv_path})")
        self.transform = transform
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as fh:
                text = fh.read()
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.csv_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise DataError(f"{self.csv_path}: cannot read ({exc})") from None
        header_line = text.splitlines()[0] if text.strip() else ""
        if not header_line.strip():
            raise DataError(f"{self.csv_path}: empty file (expected a header with image and caption columns)")
        if delimiter is None:
            delimiter = self._guess_delimiter(header_line)
        self.delimiter = delimiter
        self.items = self._parse(text, delimiter, image_key, caption_key)

    def _guess_delimiter(self, header: str) -> str:
        if self.csv_path.suffix.lower() == ".tsv":
            return "\t"
        if "\t" in header:
            cols = {c.strip().lower() for c in header.split("\t")}
            if cols & set(IMAGE_COLUMNS + CAPTION_COLUMNS):
                return "\t"
        return ","

    def _parse(self, text: str, delimiter: str, image_key, caption_key) -> List[Tuple[str, str, int]]:
        import io

        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            header = next(reader)
        except csv.Error as exc:
            raise DataError(f"{self.csv_path}: malformed header ({exc})") from None
        fields = {h.strip().lower(): h for h in header}
        img_col = _pick_column(fields, image_key, IMAGE_COLUMNS)
        cap_col = _pick_column(fields, caption_key, CAPTION_COLUMNS)
        if img_col is None or cap_col is None:
            need = []
            if img_col is None:
                need.append(f"an image column ({image_key!r})" if image_key else "an image column (image, filepath or path)")
            if cap_col is None:
                need.append(f"a caption column ({caption_key!r})" if caption_key else "a caption column (caption, title or text)")
            raise DataError(
                f"{self.csv_path}: header lacks {' and '.join(need)}; found columns {header} "
                f"(delimiter {delimiter!r})"
            )
        i_img, i_cap = header.index(img_col), header.index(cap_col)
        i_lab = header.index(fields["label"]) if "label" in fields else None
        items: List[Tuple[str, str, int]] = []
        empty_caps: List[int] = []
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(f"{self.csv_path}, line {reader.line_num}: malformed CSV ({exc})") from None
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue  # blank line
            if len(row) != len(header):
                raise DataError(
                    f"{self.csv_path}, line {line}: {len(row)} fields where the header has {len(header)} "
                    "(quote captions that contain the delimiter)"
                )
            rel = row[i_img].strip()
            if not rel:
                raise DataError(f"{self.csv_path}, line {line}: empty {img_col!r} field")
            path = Path(rel).expanduser()
            if not path.is_absolute():
                path = self.root / path
            if not path.is_file():
                raise DataError(f"{self.csv_path}, line {line}: image {rel!r} not found (looked for {path})")
            caption = row[i_cap].strip()
            if not caption:
                empty_caps.append(line)
                continue
            label = -1
            if i_lab is not None and row[i_lab].strip():
                try:
                    label = int(row[i_lab])
                except ValueError:
                    raise DataError(f"{self.csv_path}, line {line}: label {row[i_lab]!r} is not an integer") from None
            items.append((str(path), caption, label))
        if empty_caps:
            warnings.warn(
                f"CaptionCSV {self.csv_path}: skipped {len(empty_caps)} rows with an empty caption "
                f"(e.g. line {empty_caps[0]})",
                DataWarning,
                stacklevel=3,
            )
        if not items:
            raise DataError(f"{self.csv_path}: no rows with an image and a caption")
        return items

    def __repr__(self) -> str:
        return f"CaptionCSV({str(self.csv_path)!r}, {len(self)} images)"


# --------------------------------------------------------------------------- ImageNet names

_SYNSET = re.compile(r"^n\d{8}$")


def _package_file(package: str, *parts: str) -> Optional[Path]:
    """A data file inside an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc, *parts)
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=None)
def _imagenet_tables() -> Tuple[Tuple[str, ...], Dict[str, str]]:
    """(ImageNet-1k synsets in class-index order, synset -> lemmas) from timm's data files.

    Read straight from ``timm/data/_info`` (importing ``timm.data`` costs
    seconds); falls back to :class:`timm.data.ImageNetInfo`, then to nothing.
    """
    syn = _package_file("timm", "data", "_info", "imagenet_synsets.txt")
    lem = _package_file("timm", "data", "_info", "imagenet_synset_to_lemma.txt")
    if syn is not None and lem is not None:
        synsets = tuple(s.strip() for s in syn.read_text(encoding="utf-8").splitlines() if s.strip())
        lemmas = dict(
            row[:2] for row in csv.reader(lem.read_text(encoding="utf-8").splitlines(), delimiter="\t") if len(row) >= 2
        )
        return synsets, lemmas
    try:  # pragma: no cover - only where timm's data files moved
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        synsets = tuple(info.label_names())
        return synsets, {s: info.label_name_to_description(s) for s in synsets}
    except Exception:  # pragma: no cover - timm absent
        return (), {}


@functools.lru_cache(maxsize=None)
def _clip_imagenet_names() -> Tuple[str, ...]:
    """open_clip's curated ImageNet class names, read without importing open_clip."""
    path = _package_file("open_clip", "zero_shot_metadata.py")
    if path is None:
        return ()
    spec = importlib.util.spec_from_file_location("_psic_open_clip_zero_shot_metadata", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # a plain data module: no imports
        return tuple(module.IMAGENET_CLASSNAMES)
    except Exception:  # pragma: no cover
        return ()


def imagenet_class_names(names: str = "clip") -> List[str]:
    """The 1000 ImageNet-1k class names in class-index order.

    ``names="clip"``: open_clip's curated names (what CLIP zero-shot prompts
    use); ``"timm"``: the first WordNet lemma of each synset.
    """
    return [imagenet_class_name(s, names=names) for s in _imagenet_tables()[0]]


def imagenet_class_name(folder: str, names: str = "timm") -> str:
    """A readable class name for a folder name.

    An ImageNet synset (``n01440764``) becomes its first WordNet lemma from
    timm's ImageNet tables (``"tench"``) with ``names="timm"``, or open_clip's
    curated CLIP name with ``names="clip"`` (which tells apart the two
    "crane"s and the two "maillot"s). Anything else has underscores turned
    into spaces. Unknown synsets keep the folder name.
    """
    if names not in ("timm", "clip"):
        raise ConfigError(f"imagenet names must be 'timm' or 'clip', not {names!r}")
    if _SYNSET.match(folder):
        synsets, lemmas = _imagenet_tables()
        if names == "clip" and folder in synsets:
            clip = _clip_imagenet_names()
            if len(clip) == len(synsets):
                return clip[synsets.index(folder)]
        if folder in lemmas:
            return lemmas[folder].split(",")[0].strip()
        return folder
    return folder.replace("_", " ").strip()


@functools.lru_cache(maxsize=None)
def _imagenet_name_index() -> Dict[str, int]:
    """Lower-case ImageNet-1k class names (every WordNet lemma and open_clip's curated name) -> index;
    names that two classes share (ImageNet has two "crane"s) are left out."""
    synsets, lemmas = _imagenet_tables()
    clip = _clip_imagenet_names()
    index: Dict[str, int] = {}
    shared = set()

    def add(name: str, i: int) -> None:
        key = name.strip().lower().replace("_", " ")
        if not key:
            return
        if index.get(key, i) != i:
            shared.add(key)
        index[key] = i

    for i, syn in enumerate(synsets):
        for lemma in lemmas.get(syn, "").split(","):
            add(lemma, i)
        if len(clip) == len(synsets):
            add(clip[i], i)
    return {k: v for k, v in index.items() if k not in shared}


def _imagenet_index(folder: str) -> int:
    """The ImageNet-1k class index of a folder named by its synset (``n02123045``) or by a
    class name (``tabby cat``, ``golden_retriever``); -1 when it names no single class."""
    if _SYNSET.match(folder):
        synsets, _ = _imagenet_tables()
        try:
            return synsets.index(folder)
        except ValueError:
            return -1
    return _imagenet_name_index().get(folder.strip().lower().replace("_", " "), -1)


def _format_prompt(prompt: str, name: str) -> str:
    try:
        text = prompt.format(name)
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigError(f"prompt {prompt!r} must contain one '{{}}' for the class name ({exc})") from None
    if text == prompt:
        raise ConfigError(f"prompt {prompt!r} has no '{{}}' for the class name")
    return text


# --------------------------------------------------------------------------- ImageFolderPrompts


class ImageFolderPrompts(_ItemDataset):
    """An ImageFolder tree (``root/<class>/**/x.jpg``) with a prompt as the text.

    Classes are the sub-folders of ``root`` in sorted order (as torchvision's
    ImageFolder), so ``label`` is the class index. Class names come from the
    folder names (see :func:`imagenet_class_name`); the text of an item is
    ``prompt.format(name)``.

    Attributes: ``classes`` (names), ``folders`` (folder names), ``prompts``
    (one per class), ``class_to_idx`` (folder -> index) and ``imagenet_index``
    (the ImageNet-1k index of each class whose folder is a synset, else -1:
    what an ImageNet classifier's output should be compared with when the
    tree holds only some of the 1000 classes).
    """

    def __init__(
        self,
        root: PathLike,
        prompt: str = DEFAULT_PROMPT,
        transform: Optional[Callable] = None,
        imagenet_names: str = "timm",
    ):
        self.root = _check_folder(root, "an ImageFolder tree: one sub-folder of images per class")
        self.transform = transform
        self.prompt = prompt
        folders = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise DataError(f"{self.root}: no class sub-folders (expected an ImageFolder tree: {self.root}/<class>/<image>)")
        self.folders = folders
        self.classes = [imagenet_class_name(f, imagenet_names) for f in folders]
        self.prompts = [_format_prompt(prompt, name) for name in self.classes]
        self.class_to_idx = {f: i for i, f in enumerate(folders)}
        self.imagenet_index = [_imagenet_index(f) for f in folders]
        items: List[Tuple[str, str, int]] = []
        empty: List[str] = []
        for label, folder in enumerate(folders):
            files = [f for f in _walk_files(self.root / folder) if _is_image_file(f.name)]
            if not files:
                empty.append(folder)
            items.extend((str(f), self.prompts[label], label) for f in files)
        if not items:
            raise DataError(f"{self.root}: no images in any of its {len(folders)} class sub-folders")
        if empty:
            warnings.warn(
                f"ImageFolderPrompts {self.root}: {len(empty)} class folders hold no images "
                f"(e.g. {empty[0]!r}); they keep their class index",
                DataWarning,
                stacklevel=2,
            )
        self.items = items

    def __repr__(self) -> str:
        return f"ImageFolderPrompts({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"

    @property
    def unmapped(self) -> List[str]:
        """Class folders that name no ImageNet-1k class (neither a synset nor a class name)."""
        return [f for f, i in zip(self.folders, self.imagenet_index) if i < 0]


# --------------------------------------------------------------------------- PlainImages


class PlainImages(_ItemDataset):
    """Any folder of images, flat or nested, without captions or labels.

    Items have an empty ``text`` and ``label`` -1: for a classifier target "right"
    is then the target's answer on the original image (the evaluation protocol),
    and training attacks the target's own answers. Hidden files and folders are
    skipped; files that are not images by their extension are ignored.
    """

    def __init__(self, root: PathLike, transform: Optional[Callable] = None):
        self.root = _check_folder(root, "a folder of images")
        self.transform = transform
        files = [f for f in _walk_files(self.root) if _is_image_file(f.name)]
        if not files:
            raise DataError(f"{self.root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
        self.items = [(str(f), "", -1) for f in files]

    def __repr__(self) -> str:
        return f"PlainImages({str(self.root)!r}, {len(self)} images)"


# --------------------------------------------------------------------------- sample photos


@dataclass(frozen=True)
class SamplePhoto:
    """A real photo shipped inside an installed package."""

    name: str
    caption: str
    word: str  # an ImageNet-ish object word
    imagenet_index: int  # nearest ImageNet-1k class, -1 where ImageNet has none
    source: str  # where the pixels come from
    split: str  # "train" or "test"


# Fixed split: the three test photos (a cup, a vehicle, a person) are never
# trained on, so evaluation on split="test" is on unseen photos. All three come
# from scikit-image and matplotlib (hard dependencies), so the test split does
# not change where scikit-learn is absent.
SAMPLE_PHOTOS: Tuple[SamplePhoto, ...] = (
    SamplePhoto("astronaut", "an astronaut in an orange spacesuit in front of an American flag", "astronaut", -1,
                "skimage.data.astronaut", "train"),
    SamplePhoto("chelsea", "a close-up photo of a tabby cat", "cat", 281, "skimage.data.chelsea", "train"),
    SamplePhoto("rocket", "a rocket on its launch pad at dusk", "rocket", 657, "skimage.data.rocket", "train"),
    SamplePhoto("hubble_deep_field", "a telescope photo of many distant galaxies in space", "galaxy", -1,
                "skimage.data.hubble_deep_field", "train"),
    SamplePhoto("china", "a Chinese pagoda on a hill above a lake", "palace", 698,
                "sklearn.datasets.load_sample_image('china.jpg')", "train"),
    SamplePhoto("flower", "a close-up photo of an orange dahlia flower", "flower", -1,
                "sklearn.datasets.load_sample_image('flower.jpg')", "train"),
    SamplePhoto("coffee", "a cup of espresso on a red saucer on a wooden table", "espresso", 967,
                "skimage.data.coffee", "test"),
    SamplePhoto("motorcycle", "a red motorcycle parked in a garage", "motorcycle", 665,
                "skimage.data.stereo_motorcycle (left view)", "test"),
    SamplePhoto("grace_hopper", "a portrait of an old woman in a navy uniform in front of an American flag",
                "military uniform", 652, "matplotlib sample_data/grace_hopper.jpg", "test"),
)
_PHOTO_BY_NAME: Dict[str, SamplePhoto] = {p.name: p for p in SAMPLE_PHOTOS}
TRAIN_PHOTOS: Tuple[str, ...] = tuple(p.name for p in SAMPLE_PHOTOS if p.split == "train")
TEST_PHOTOS: Tuple[str, ...] = tuple(p.name for p in SAMPLE_PHOTOS if p.split == "test")


def _read_sample_array(name: str) -> np.ndarray:
    if name in ("astronaut", "chelsea", "rocket", "hubble_deep_field", "coffee", "motorcycle"):
        import skimage.data

        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]  # (left, right, disparity): the left view
        return getattr(skimage.data, name)()
    # The files are read where the packages keep them (importing sklearn.datasets
    # costs seconds); their public loaders are the fallback.
    if name in ("china", "flower"):
        path = _package_file("sklearn", "datasets", "images", f"{name}.jpg")
        if path is not None:
            return read_array(path)
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        path = _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
        if path is None:
            from matplotlib import cbook

            path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        return read_array(path)
    raise DataError(f"unknown sample photo {name!r} (known: {', '.join(_PHOTO_BY_NAME)})")


@functools.lru_cache(maxsize=None)
def _photo_uint8(name: str) -> torch.Tensor:
    """A sample photo as a ``3xHxW`` uint8 tensor, decoded once per process."""
    if name not in _PHOTO_BY_NAME:
        raise DataError(f"unknown sample photo {name!r} (known: {', '.join(_PHOTO_BY_NAME)})")
    try:
        arr = _read_sample_array(name)
    except ImportError as exc:
        raise DataError(f"sample photo {name!r} needs {exc.name or exc} installed") from None
    except (OSError, ValueError, ImageError) as exc:
        raise DataError(f"sample photo {name!r} could not be read ({exc})") from None
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise DataError(f"sample photo {name!r}: expected 8-bit pixels, got {arr.dtype}")
    x, _ = array_to_tensor(arr)  # grey -> RGB, alpha dropped
    return (x[0] * 255.0).round().to(torch.uint8).contiguous()


@functools.lru_cache(maxsize=None)
def _photo_available(name: str) -> bool:
    try:
        _photo_uint8(name)
        return True
    except DataError:
        return False


def sample_names(split: str = "all") -> List[str]:
    """The sample photos of a split that load here (china/flower need scikit-learn)."""
    if split not in ("train", "test", "all"):
        raise ConfigError(f"split must be 'train', 'test' or 'all', not {split!r}")
    names = [p.name for p in SAMPLE_PHOTOS if split == "all" or p.split == split]
    return [n for n in names if _photo_available(n)]


def sample_photo(name: str) -> Tuple[torch.Tensor, str]:
    """One whole sample photo: ``(1x3xHxW float tensor in [0, 1], caption)``."""
    if name not in _PHOTO_BY_NAME:
        raise DataError(f"unknown sample photo {name!r} (known: {', '.join(_PHOTO_BY_NAME)})")
    return _photo_uint8(name).float().div_(255.0)[None], _PHOTO_BY_NAME[name].caption


def _mix_seed(*values: int) -> int:
    """A 63-bit seed from integers, the same on every platform and process."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & 0x7FFFFFFFFFFFFFFF


class SamplePhotos(Dataset):
    """The bundled real photos (see :data:`SAMPLE_PHOTOS`), with no download.

    ``split`` is ``"train"`` (6 photos), ``"test"`` (3 photos never used for
    training: coffee, motorcycle, grace_hopper) or ``"all"``. Items carry the
    photo's caption as ``text``, its nearest ImageNet-1k class as ``label``
    (-1 where there is none), and ``"sample:<name>"`` as ``path``.

    Without ``crop`` an item is the whole photo (sizes differ: batch size 1).
    With ``crop`` it is a random crop of that size (photos smaller than the crop
    are first resized up on the short side), or the centre crop with
    ``center_crop=True``. ``repeats`` puts that many crops of each photo in an
    epoch (index ``i`` is photo ``i % n_photos``). The crop, and any transform
    of this module given as ``transform``, draw from a generator seeded from
    ``(seed, epoch, index)``: the same item is the same tensor every time;
    :meth:`set_epoch` changes every crop. The epoch is kept in shared memory,
    so it reaches DataLoader workers, persistent ones included.
    """

    def __init__(
        self,
        split: str = "train",
        crop: Optional[Size] = None,
        transform: Optional[Callable] = None,
        seed: int = 0,
        repeats: int = 1,
        center_crop: bool = False,
    ):
        if int(repeats) < 1:
            raise ConfigError(f"repeats must be at least 1, not {repeats!r}")
        self.split = split
        self.names = sample_names(split)
        if not self.names:
            raise DataError(f"no sample photos could be loaded for split {split!r}")
        self.captions = [_PHOTO_BY_NAME[n].caption for n in self.names]
        self.photos = [_PHOTO_BY_NAME[n] for n in self.names]
        self.crop = _as_size(crop) if crop is not None else None
        self.center_crop = bool(center_crop)
        self.transform = transform
        self.seed = int(seed)
        self.repeats = int(repeats)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Draw different crops from now on (call once per epoch, before iterating)."""
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        return len(self.names) * self.repeats

    def generator(self, index: int) -> torch.Generator:
        """The generator that item ``index`` draws from in the current epoch."""
        return torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> Dict[str, object]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k = index % len(self.names)
        name = self.names[k]
        g = self.generator(index)
        image = _photo_uint8(name)
        if self.crop is not None:
            image = _crop(image, self.crop, g if not self.center_crop else None)
        image = image.float().div_(255.0) if image.dtype == torch.uint8 else image
        image = _apply(self.transform, image, g)
        return {"image": image, "text": self.captions[k], "label": self.photos[k].imagenet_index, "path": f"sample:{name}"}

    def __repr__(self) -> str:
        return f"SamplePhotos(split={self.split!r}, {len(self.names)} photos x {self.repeats}, crop={self.crop})"


# --------------------------------------------------------------------------- transforms


def _resize_to_cover(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize up (keeping the aspect) until both sides are at least ``size``."""
    h, w = x.shape[-2:]
    ch, cw = size
    if h >= ch and w >= cw:
        return x
    scale = max(ch / h, cw / w)
    nh, nw = max(ch, math.ceil(h * scale - 1e-6)), max(cw, math.ceil(w * scale - 1e-6))
    was_uint8 = x.dtype == torch.uint8
    y = x.float() if was_uint8 else x
    y = F.interpolate(y[None], size=(nh, nw), mode="bicubic", align_corners=False)[0]
    if was_uint8:
        return y.round().clamp_(0, 255).to(torch.uint8)
    return y.clamp_(0.0, 1.0)


def _pad_to_cover(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = max(0, size[0] - h), max(0, size[1] - w)
    if not (ph or pw):
        return x
    y = x.float() if x.dtype == torch.uint8 else x
    y = F.pad(y[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")[0]
    return y.to(x.dtype)


def _crop(x: torch.Tensor, size: Tuple[int, int], generator: Optional[torch.Generator], small: str = "resize") -> torch.Tensor:
    """A ``size`` crop of ``x`` (``...xHxW``): random with a generator, else central."""
    x = _resize_to_cover(x, size) if small == "resize" else _pad_to_cover(x, size)
    h, w = x.shape[-2:]
    ch, cw = size
    if generator is None:
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    return x[..., top : top + ch, left : left + cw]


def _check_small(small: str) -> str:
    if small not in ("resize", "pad"):
        raise ConfigError(f"small must be 'resize' or 'pad', not {small!r}")
    return small


class RandomCrop:
    """A random ``size`` crop of a ``3xHxW`` tensor.

    Images smaller than the crop are first resized up on their short side
    (``small="resize"``, keeps natural image statistics) or padded by
    replicating the border (``small="pad"``). Draws from ``generator`` when
    given, else from torch's global generator.
    """

    takes_generator = True

    def __init__(self, size: Size, small: str = "resize"):
        self.size = _as_size(size)
        self.small = _check_small(small)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if generator is None:
            generator = torch.default_generator
        return _crop(x, self.size, generator, self.small)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, small={self.small!r})"


class CenterCrop:
    """The central ``size`` crop of a ``3xHxW`` tensor (small images resized up or padded)."""

    def __init__(self, size: Size, small: str = "resize"):
        self.size = _as_size(size)
        self.small = _check_small(small)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _crop(x, self.size, None, self.small)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size}, small={self.small!r})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    takes_generator = True

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"flip probability must be in [0, 1], not {p!r}")
        self.p = float(p)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if generator is None:
            generator = torch.default_generator
        if float(torch.rand((), generator=generator)) < self.p:
            return x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order; a ``generator`` reaches those that take one."""

    takes_generator = True

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        for t in self.transforms:
            x = _apply(t, x, generator)
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def train_transform(crop: Optional[Size]) -> Compose:
    """Training augmentation: a random ``crop`` (when given) and a horizontal flip."""
    steps: List[Callable] = []
    if crop is not None:
        steps.append(RandomCrop(crop))
    steps.append(RandomHorizontalFlip())
    return Compose(steps)


def eval_transform(crop: Optional[Size] = None) -> Compose:
    """Evaluation: the centre ``crop``, or the whole image when ``crop`` is None."""
    return Compose([CenterCrop(crop)] if crop is not None else [])


# --------------------------------------------------------------------------- factory


def _folder_kind(root: Path) -> str:
    """'caption', 'imagefolder' or 'plain' for a folder (a DataError when it holds no image).

    A folder with ``.txt`` captions beside its images is a caption folder. Sub-folders
    named by ImageNet classes (synsets such as ``n02123045``, or class names such as
    ``tabby_cat``) make an ImageFolder tree whose labels are those classes; sub-folders
    named otherwise are just folders of images (plain). Some named by classes and some
    not is ambiguous, and refused.
    """
    files = _walk_files(root)
    images = [f for f in files if _is_image_file(f.name)]
    if not images:
        raise DataError(
            f"{root}: no images found (expected a folder of images, a caption folder of a.jpg + a.txt pairs, "
            f"or an ImageFolder tree {root}/<class>/<image>)"
        )
    present = set(files)
    if any(f.with_suffix(".txt") in present for f in images):
        return "caption"
    folders = sorted({f.relative_to(root).parts[0] for f in images if f.parent != root})
    if not folders:
        return "plain"
    mapped = [f for f in folders if _imagenet_index(f) >= 0]
    if not mapped:
        return "plain"
    if len(mapped) < len(folders):
        unmapped = [f for f in folders if _imagenet_index(f) < 0]
        raise DataError(
            f"{root}: {len(mapped)} sub-folders name ImageNet classes but {len(unmapped)} do not "
            f"(e.g. {unmapped[0]!r}): name every class folder by its synset (n02123045) or ImageNet "
            "class name, or use a folder whose sub-folders are not classes"
        )
    return "imagefolder"


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
    photos it also picks the photos (``"val"`` means ``"test"``), and the test
    crops are centre crops. ``repeats`` only applies to the sample photos.
    """
    if split not in ("train", "test", "val", "all"):
        raise ConfigError(f"split must be 'train', 'test', 'val' or 'all', not {split!r}")
    training = split == "train"
    if isinstance(spec, str) and spec.strip().lower() == "samples":
        sample_split = "test" if split == "val" else split
        return SamplePhotos(
            sample_split,
            crop=crop,
            transform=RandomHorizontalFlip() if training else None,
            seed=seed,
            repeats=repeats,
            center_crop=sample_split == "test",
        )
    transform = train_transform(crop) if training else eval_transform(crop)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv"):
            return CaptionCSV(path, transform=transform)
        raise DataError(f"{path}: not a .csv/.tsv file (expected 'samples', a folder, or a CSV of image,caption)")
    if path.is_dir():
        kind = _folder_kind(path)
        if kind == "caption":
            return CaptionFolder(path, transform=transform)
        if kind == "plain":
            return PlainImages(path, transform=transform)
        return ImageFolderPrompts(path, prompt=prompt, transform=transform)
    raise DataError(f"{spec}: no such file or folder (expected 'samples', a folder of images, or a .csv file)")


# --------------------------------------------------------------------------- loader


def collate(batch: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """Stack ``image`` (all one size) into ``Bx3xHxW``; ``label`` into a LongTensor;
    keep ``text`` and ``path`` (and any other non-tensor field) as lists."""
    if not batch:
        raise DataError("empty batch")
    out: Dict[str, object] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key == "image" or isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise DataError(
                    f"cannot batch {key!r} of different sizes {sorted(shapes)}: give a crop size "
                    "(or use batch size 1)"
                )
            out[key] = torch.stack(values)
        elif key == "label":
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = list(values)
    return out


def _seed_worker(worker_id: int) -> None:
    """Give numpy and random in each worker a seed derived from the loader's."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    sampler=None,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader that batches items with :func:`collate`.

    The shuffle order and the workers' seeds come from a generator seeded with
    ``seed``, so a run is repeatable. Workers persist across epochs when
    ``num_workers > 0``. With a ``sampler`` (e.g. a DistributedSampler) the
    sampler orders the data and ``shuffle`` is ignored.
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be at least 1, not {batch_size!r}")
    if int(num_workers) < 0:
        raise ConfigError(f"num_workers must be >= 0, not {num_workers!r}")
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=bool(shuffle) if sampler is None else False,
        sampler=sampler,
        num_workers=int(num_workers),
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )
