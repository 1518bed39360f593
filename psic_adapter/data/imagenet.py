"""ImageNet-1k class names and indices, read from timm's and open_clip's data files (no download)."""

from __future__ import annotations

import csv
import functools
import importlib.util
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import ConfigError


_SYNSET = re.compile(r"^n\d{8}$")


def package_file(package: str, *parts: str) -> Optional[Path]:
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
def imagenet_tables() -> Tuple[Tuple[str, ...], Dict[str, str]]:
    """(ImageNet-1k synsets in class-index order, synset -> lemmas) from timm's data files.

    Read straight from ``timm/data/_info`` (importing ``timm.data`` costs
    seconds); falls back to :class:`timm.data.ImageNetInfo`, then to nothing.
    """
    syn = package_file("timm", "data", "_info", "imagenet_synsets.txt")
    lem = package_file("timm", "data", "_info", "imagenet_synset_to_lemma.txt")
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
def clip_imagenet_names() -> Tuple[str, ...]:
    """open_clip's curated ImageNet class names, read without importing open_clip."""
    path = package_file("open_clip", "zero_shot_metadata.py")
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
    return [imagenet_class_name(s, names=names) for s in imagenet_tables()[0]]


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
        synsets, lemmas = imagenet_tables()
        if names == "clip" and folder in synsets:
            clip = clip_imagenet_names()
            if len(clip) == len(synsets):
                return clip[synsets.index(folder)]
        if folder in lemmas:
            return lemmas[folder].split(",")[0].strip()
        return folder
    return folder.replace("_", " ").strip()


@functools.lru_cache(maxsize=None)
def imagenet_name_index() -> Dict[str, int]:
    """Lower-case ImageNet-1k class names (every WordNet lemma and open_clip's curated name) -> index;
    names that two classes share (ImageNet has two "crane"s) are left out."""
    synsets, lemmas = imagenet_tables()
    clip = clip_imagenet_names()
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


def imagenet_index(folder: str) -> int:
    """The ImageNet-1k class index of a folder named by its synset (``n02123045``) or by a
    class name (``tabby cat``, ``golden_retriever``); -1 when it names no single class."""
    if _SYNSET.match(folder):
        synsets, _ = imagenet_tables()
        try:
            return synsets.index(folder)
        except ValueError:
            return -1
    return imagenet_name_index().get(folder.strip().lower().replace("_", " "), -1)


def format_prompt(prompt: str, name: str) -> str:
    try:
        text = prompt.format(name)
    except (IndexError, KeyError, ValueError) as exc:
        raise ConfigError(f"prompt {prompt!r} must contain one '{{}}' for the class name ({exc})") from None
    if text == prompt:
        raise ConfigError(f"prompt {prompt!r} has no '{{}}' for the class name")
    return text


