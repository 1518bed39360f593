"""The paper's other benchmark tasks (PSIC, ICML 2025, section 4.1) from real bitstreams.

``psic eval`` measures zero-shot classification over class prompts on any
image set (:mod:`.runner`). This module adds the tasks of the paper's
benchmark that need a dataset layout of their own:

* :func:`imagenet_zero_shot` -- **image classification**: an ImageFolder of
  ImageNet synset folders (``n01440764/...``, the ILSVRC-2012 validation set
  sorted into folders), CLIP zero-shot over ``"a photo of a {name}."`` for all
  1000 classes, top-1 accuracy and ASR. A folder tree of any other classes is
  classified among its own folder names.
* :func:`celeba_attributes` -- **facial attribute analysis**: CelebA's
  ``list_attr_celeba.txt`` and ``img_align_celeba/``; for each of the 40
  attributes CLIP picks between a positive and a negative prompt
  (:data:`CELEBA_PROMPTS`); accuracy and ASR over (image, attribute) pairs and
  per attribute.
* :func:`captioning` -- **image captioning on an unseen model**: any Hugging
  Face image-to-text model (the paper: BLIP-2 OPT-2.7b) captions the original,
  base, full and encrypted decodes; BLEU@1-4 and CIDEr(-D) against reference
  captions (Flickr8k's ``Flickr8k.token.txt``, a COCO or Karpathy JSON, a CSV,
  or a caption folder), and how far the encrypted captions drift from the
  base ones.

Each image is compressed with the base codec (real entropy coding; bpp from
the bytes), its latent entropy-decoded once and synthesised as *base* (adapter
off), *encrypted* (no key) and *full* (the owner's key, when given), exactly as
:meth:`.runner.Evaluator.decode` does. Images are streamed: only the rows of the
image grid are kept, so a 5,000-image ImageNet run holds one image at a time.

Every task returns a dict shaped like :meth:`.runner.Evaluator.run`'s result
(``n_images``, ``bpp``, ``quality``, ``classification`` where the task has
one, ``per_image``, ``_grid``) plus the task's own entry (``"imagenet"``,
``"celeba"`` or ``"captioning"``), so that :func:`.runner.write_eval_report`
can lay it out (:func:`report_run` fills what a captioning result lacks) and
:func:`task_headline` gives its headline numbers. The robustness, wrong-key
and white-box checks stay with the ``classify`` task.

BLEU and CIDEr are pycocoevalcap's pure-Python scorers (the COCO caption
evaluation code: BLEU with the "closest" reference length, CIDEr-D with
sigma 6 and the x10 scale). Its METEOR and SPICE need Java and are not used;
its PTB tokenizer (Java as well) is replaced by :func:`tokenize_caption`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from . import metrics as M
from .runner import EvalConfig, Evaluator, Sample, classification_summary

PathLike = Union[str, os.PathLike]

__all__ = [
    "TASKS",
    "imagenet_zero_shot",
    "CELEBA_ATTRIBUTES",
    "CELEBA_PROMPTS",
    "celeba_prompts",
    "CelebAAttributes",
    "read_celeba_attributes",
    "read_celeba_partition",
    "celeba_attributes",
    "tokenize_caption",
    "caption_scores",
    "read_references",
    "HFCaptioner",
    "captioning",
    "task_headline",
    "report_run",
]

TASKS = ("classify", "imagenet", "celeba", "caption")
"""The tasks of ``psic eval --task``."""


# --------------------------------------------------------------------------- shared


def _versions(key) -> List[str]:
    return ["base", "full", "encrypted"] if key is not None else ["base", "encrypted"]


def _subset(n: int, limit: Optional[int], seed: int) -> List[int]:
    """All indices, or ``limit`` of them drawn at random (seeded) and kept in order.

    A random draw rather than the first ``limit``: sorted datasets (an
    ImageFolder) would otherwise give the first classes only.
    """
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise ConfigError(f"limit must be a positive number of images, got {limit}")
    g = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(n, generator=g)[:limit].tolist())


def _bar(it, desc: str, progress: bool, total: Optional[int] = None):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, disable=not progress, leave=False, total=total)


class _NoTarget:
    """What :class:`Evaluator` needs of a target when only its decoder is used."""

    kind = "classifier"
    class_names = ["-"]
    device = torch.device("cpu")


def _decoder(model, key, target=None, config: Optional[EvalConfig] = None) -> Evaluator:
    """An :class:`Evaluator` used for :meth:`Evaluator.decode` (and the key check)."""
    cfg = replace(config or EvalConfig(), class_names=["-"])
    return Evaluator(model, target if target is not None else _NoTarget(), key=key, config=cfg, progress=False)


class _Decodes:
    """Streams decodes: bpp, PSNR / MS-SSIM of each version, per-image rows, grid rows."""

    def __init__(self, ev: Evaluator, versions: Sequence[str], grid_images: int):
        self.ev, self.versions, self.grid_images = ev, list(versions), grid_images
        self.bpp: List[float] = []
        self.quality: Dict[str, Dict[str, List[float]]] = {v: {"psnr": [], "ms_ssim": []} for v in self.versions}
        self.per_image: List[Dict[str, Any]] = []
        self.grid: List[Tuple[str, List[Tuple[str, Tensor]]]] = []

    def decode(self, sample: Sample) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """(the decodes, the image's per-image row) of one sample."""
        d = self.ev.decode(sample)
        row: Dict[str, Any] = {"name": sample.name, "bpp": d["bpp"], "size": list(d["size"])}
        self.bpp.append(d["bpp"])
        for v in self.versions:
            p = float(M.psnr(d[v], sample.image)[0])
            q = float(M.ms_ssim(d[v], sample.image)[0])
            self.quality[v]["psnr"].append(p)
            self.quality[v]["ms_ssim"].append(q)
            row[f"psnr_{v}"] = p
            row[f"ms_ssim_{v}"] = q
        self.per_image.append(row)
        return d, row

    def add_grid_row(self, sample: Sample, d: Dict[str, Any], row: Dict[str, Any], labels: Mapping[str, str]) -> None:
        if len(self.grid) >= self.grid_images:
            return
        cells = [(f"original: {labels['original']}", sample.image[0])]
        for v in self.versions:
            cells.append((f"{v}: {labels[v]}, {row[f'psnr_{v}']:.2f} dB", d[v][0]))
        self.grid.append((sample.name, cells))

    def summary(self) -> Dict[str, Any]:
        return {
            "n_images": len(self.per_image),
            "bpp": M.summarize(self.bpp),
            "quality": {v: {k: M.summarize(vals) for k, vals in q.items()} for v, q in self.quality.items()},
        }


# --------------------------------------------------------------------------- ImageNet


def imagenet_zero_shot(
    model,
    target,
    root: PathLike,
    key=None,
    limit: Optional[int] = None,
    config: Optional[EvalConfig] = None,
    *,
    progress: bool = False,
) -> Dict[str, Any]:
    """Zero-shot ImageNet classification of the decodes (the paper's "image classification").

    Args:
        model: a :class:`~psic_adapter.adapter.PSICModel` (its codec on the CPU:
            entropy coding is CPU-only).
        target: a CLIP target (zero-shot over class prompts), or an ImageNet
            classifier (its own 1000 classes; the folders must then be synsets).
        root: an ImageFolder tree, ``root/<class>/<images>``. When every folder
            is an ImageNet-1k synset (``n01440764``), CLIP decides among all
            1000 ImageNet classes (open_clip's curated names) and the labels
            are the synsets' ImageNet indices, as in the paper (ILSVRC-2012
            val). Otherwise the classes are the folders (names with ``_`` as
            spaces) and the labels their sorted indices.
        key: the owner's key (adds the full version); ``None``: base and
            encrypted only.
        limit: evaluate this many images, drawn at random (``config.seed``)
            across the classes (the paper: 5,000 of ILSVRC-2012 val).
        config: ``prompt`` (``"a photo of a {}."``), ``class_names`` (override
            the names: 1000 for synset folders, else one per folder),
            ``grid_images`` and ``seed`` are read; the rest belongs to the
            ``classify`` task.

    Returns:
        A run result (see the module docstring) whose ``classification`` and
        ``imagenet`` entries hold top-1 ``accuracy`` of original / base / full
        / encrypted, the ``asr`` (among images the base decode gets right, the
        share the encrypted one gets wrong), ``full_asr``, agreements, and in
        ``imagenet`` also ``per_class`` accuracy and ASR.
    """
    from ..data import ImageFolderPrompts, imagenet_class_names

    cfg = config or EvalConfig(wrong_keys=0, attack_steps=0, perturbations=())
    ds = ImageFolderPrompts(root, prompt=cfg.prompt, imagenet_names="clip")
    synsets = all(i >= 0 for i in ds.imagenet_index)
    if target.kind == "classifier":
        if not synsets:
            raise ConfigError(
                f"{root}: an ImageNet classifier needs ImageNet synset folders (n01440764/...); "
                "use a CLIP target for other classes"
            )
        names = list(cfg.class_names or target.class_names or [])
        if len(names) != 1000:
            raise ConfigError(f"target {target.name} decides among {len(names)} classes, not ImageNet's 1000")
        over, labels_of = "imagenet", ds.imagenet_index
        label_source = "ImageNet-1k labels of the synset folders (the classifier's 1000 classes)"
        run_cfg = replace(cfg, class_names=None)
    elif synsets and (cfg.class_names is None or len(cfg.class_names) == 1000):
        names = list(cfg.class_names or imagenet_class_names("clip"))
        over, labels_of = "imagenet", ds.imagenet_index
        label_source = "ImageNet-1k labels of the synset folders (zero-shot over all 1000 classes)"
        run_cfg = replace(cfg, class_names=names)
    else:
        names = list(cfg.class_names or ds.classes)
        if len(names) != len(ds.classes):
            raise ConfigError(f"{len(names)} class names for the {len(ds.classes)} class folders of {root}")
        over, labels_of = "folders", list(range(len(ds.classes)))
        label_source = f"folder index (zero-shot over the {len(names)} folder classes)"
        run_cfg = replace(cfg, class_names=names)

    ev = Evaluator(model, target, key=key, config=run_cfg, progress=False)
    versions = _versions(key)
    stream = _Decodes(ev, versions, cfg.grid_images)
    order = _subset(len(ds), limit, cfg.seed)
    preds: Dict[str, List[int]] = {v: [] for v in ["original", *versions]}
    labels: List[int] = []
    folder_of: List[int] = []
    for i in _bar(order, "imagenet", progress):
        item = ds[i]
        folder = int(item["label"])
        sample = Sample(Path(str(item["path"])).stem, item["image"][None], str(item["text"]), labels_of[folder])
        d, row = stream.decode(sample)
        shown = {}
        for v in ["original", *versions]:
            p = int(ev.predict(sample.image if v == "original" else d[v])[0])
            preds[v].append(p)
            shown[v] = ev.label_name(p)
            row[f"top1_{v}"] = shown[v]
        row["label"] = ev.label_name(sample.label)
        labels.append(sample.label)
        folder_of.append(folder)
        stream.add_grid_row(sample, d, row, shown)

    p = {v: torch.tensor(vals, dtype=torch.long) for v, vals in preds.items()}
    y = torch.tensor(labels, dtype=torch.long)
    cls = classification_summary(p, y, versions, label_source)
    folders = torch.tensor(folder_of, dtype=torch.long)
    per_class = {}
    for c, folder_name in enumerate(ds.folders):
        m = folders == c
        if not bool(m.any()):
            continue
        entry = {"name": ds.classes[c], "n": int(m.sum())}
        entry["accuracy"] = {v: M.accuracy(p[v][m], y[m]) for v in ["original", *versions]}
        entry["asr"] = M.classification_asr(p["base"][m], p["encrypted"][m], y[m])
        per_class[folder_name] = entry
    task = {
        "root": str(root),
        "n_images": len(order),
        "n_folders": len(ds.folders),
        "classes_decided_among": len(names),
        "over": over,
        "prompt": cfg.prompt if target.kind != "classifier" else None,
        **cls,
        "per_class": per_class,
    }
    result = {"task": "imagenet", **stream.summary(), "classification": cls, "imagenet": task}
    result["per_image"] = stream.per_image
    result["_grid"] = stream.grid
    return result


# --------------------------------------------------------------------------- CelebA

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
"""CelebA's 40 binary attributes, in the order of ``list_attr_celeba.txt``."""

_P = "a photo of "
CELEBA_PROMPTS: Dict[str, Tuple[str, str]] = {
    "5_o_Clock_Shadow": (_P + "a person with a five o'clock shadow", _P + "a clean-shaven person"),
    "Arched_Eyebrows": (_P + "a person with arched eyebrows", _P + "a person with straight eyebrows"),
    "Attractive": (_P + "an attractive person", _P + "an unattractive person"),
    "Bags_Under_Eyes": (_P + "a person with bags under the eyes", _P + "a person without bags under the eyes"),
    "Bald": (_P + "a bald person", _P + "a person with a full head of hair"),
    "Bangs": (_P + "a person with bangs", _P + "a person without bangs"),
    "Big_Lips": (_P + "a person with big lips", _P + "a person with thin lips"),
    "Big_Nose": (_P + "a person with a big nose", _P + "a person with a small nose"),
    "Black_Hair": (_P + "a person with black hair", _P + "a person whose hair is not black"),
    "Blond_Hair": (_P + "a person with blond hair", _P + "a person whose hair is not blond"),
    "Blurry": ("a blurry photo of a person", "a sharp photo of a person"),
    "Brown_Hair": (_P + "a person with brown hair", _P + "a person whose hair is not brown"),
    "Bushy_Eyebrows": (_P + "a person with bushy eyebrows", _P + "a person with thin eyebrows"),
    "Chubby": (_P + "a chubby person", _P + "a slim person"),
    "Double_Chin": (_P + "a person with a double chin", _P + "a person without a double chin"),
    "Eyeglasses": (_P + "a person with eyeglasses", _P + "a person without eyeglasses"),
    "Goatee": (_P + "a person with a goatee", _P + "a person without a goatee"),
    "Gray_Hair": (_P + "a person with gray hair", _P + "a person whose hair is not gray"),
    "Heavy_Makeup": (_P + "a person wearing heavy makeup", _P + "a person wearing no makeup"),
    "High_Cheekbones": (_P + "a person with high cheekbones", _P + "a person with low cheekbones"),
    "Male": (_P + "a man", _P + "a woman"),
    "Mouth_Slightly_Open": (_P + "a person with the mouth slightly open", _P + "a person with the mouth closed"),
    "Mustache": (_P + "a person with a mustache", _P + "a person without a mustache"),
    "Narrow_Eyes": (_P + "a person with narrow eyes", _P + "a person with wide open eyes"),
    "No_Beard": (_P + "a person without a beard", _P + "a person with a beard"),
    "Oval_Face": (_P + "a person with an oval face", _P + "a person with a round or square face"),
    "Pale_Skin": (_P + "a person with pale skin", _P + "a person with tanned skin"),
    "Pointy_Nose": (_P + "a person with a pointy nose", _P + "a person with a rounded nose"),
    "Receding_Hairline": (_P + "a person with a receding hairline", _P + "a person with a full hairline"),
    "Rosy_Cheeks": (_P + "a person with rosy cheeks", _P + "a person without rosy cheeks"),
    "Sideburns": (_P + "a person with sideburns", _P + "a person without sideburns"),
    "Smiling": (_P + "a smiling person", _P + "a person who is not smiling"),
    "Straight_Hair": (_P + "a person with straight hair", _P + "a person with curly hair"),
    "Wavy_Hair": (_P + "a person with wavy hair", _P + "a person with straight or curly hair"),
    "Wearing_Earrings": (_P + "a person wearing earrings", _P + "a person without earrings"),
    "Wearing_Hat": (_P + "a person wearing a hat", _P + "a person without a hat"),
    "Wearing_Lipstick": (_P + "a person wearing lipstick", _P + "a person without lipstick"),
    "Wearing_Necklace": (_P + "a person wearing a necklace", _P + "a person without a necklace"),
    "Wearing_Necktie": (_P + "a person wearing a necktie", _P + "a person without a necktie"),
    "Young": (_P + "a young person", _P + "an old person"),
}
"""For each CelebA attribute: CLIP's (positive, negative) prompt. The attribute is
predicted present when the image is closer to the positive prompt. Antonyms
where one exists (CLIP reads negation poorly), "without ..." otherwise."""


def celeba_prompts(names: Sequence[str], overrides: Optional[Mapping[str, Tuple[str, str]]] = None) -> List[Tuple[str, str]]:
    """(positive, negative) prompts for attribute ``names``: ``overrides``, then
    :data:`CELEBA_PROMPTS`, then ``"a photo of a person with / without <name>"``."""
    out = []
    for n in names:
        pair = (overrides or {}).get(n) or CELEBA_PROMPTS.get(n)
        if pair is None:
            words = n.replace("_", " ").lower()
            pair = (f"{_P}a person with {words}", f"{_P}a person without {words}")
        if len(pair) != 2 or not all(isinstance(s, str) and s.strip() for s in pair) or pair[0] == pair[1]:
            raise ConfigError(f"attribute {n!r}: expected two different prompts (positive, negative), got {pair!r}")
        out.append((pair[0], pair[1]))
    return out


@dataclass
class CelebAAttributes:
    """An attribute table: ``labels[i, a]`` is +1 / -1 for image ``files[i]`` and attribute ``names[a]``."""

    names: List[str]
    files: List[str]
    labels: Tensor  # LongTensor [N, A] of +1 / -1


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc})") from None


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
    text = _read_text(path, "CelebA attribute table")
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
    for ln, line in enumerate(_read_text(path, "CelebA partition file").splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts or (ln == 1 and parts[0].lower() in ("image_id", "image", "filename")):
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}, line {ln}: expected '<image> 0|1|2', got {line[:60]!r}")
        out[parts[0]] = int(parts[1])
    return out


_SPLITS = {"train": 0, "val": 1, "valid": 1, "test": 2}


def _first_file(candidates: Iterable[Path]) -> Optional[Path]:
    for c in candidates:
        if c.is_file():
            return c
    return None


def _find_celeba(root: Path) -> Tuple[Path, Optional[Path], List[Path]]:
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


def celeba_attributes(
    model,
    target,
    root: PathLike,
    key=None,
    limit: Optional[int] = None,
    *,
    split: Optional[str] = "test",
    config: Optional[EvalConfig] = None,
    prompts: Optional[Mapping[str, Tuple[str, str]]] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Zero-shot CLIP facial attribute analysis of the decodes (CelebA).

    Args:
        model: a :class:`~psic_adapter.adapter.PSICModel` (codec on the CPU).
        target: a CLIP target (it compares each image with two prompts per
            attribute; see :data:`CELEBA_PROMPTS`).
        root: CelebA's folder: ``list_attr_celeba.txt`` (or ``Anno/``, or the
            Kaggle ``.csv``) and the images in ``img_align_celeba/`` (or the
            Kaggle ``img_align_celeba/img_align_celeba/``, or ``root`` itself);
            ``list_eval_partition.txt`` (or ``Eval/``) when present.
        key: the owner's key (adds the full version).
        limit: evaluate this many images, drawn at random (``config.seed``)
            from the split (the paper: 10,000).
        split: ``"test"`` (default), ``"val"``, ``"train"`` or ``None`` /
            ``"all"``. Without a partition file every listed image is used.
        config: ``grid_images`` and ``seed`` are read.
        prompts: ``{attribute: (positive, negative)}`` overriding the table.

    Images listed but missing from the folder are skipped with one warning.

    Returns:
        A run result (module docstring) whose ``classification`` counts each
        (image, attribute) pair as a sample (CelebA's labels are the truth),
        and ``celeba`` adds the attribute names, the prompts, ``per_attribute``
        accuracy and ASR, and the mean of the per-attribute accuracies and ASRs.
    """
    cfg = config or EvalConfig(wrong_keys=0, attack_steps=0, perturbations=())
    if target.kind == "classifier":
        raise ConfigError("facial attributes are zero-shot: they need a CLIP target (e.g. clip:ViT-B-32)")
    root = Path(root).expanduser()
    attr_path, part_path, folders = _find_celeba(root)
    table = read_celeba_attributes(attr_path)
    names = table.names
    pairs = celeba_prompts(names, prompts)
    flat = [s for pair in pairs for s in pair]

    keep = list(range(len(table.files)))
    split_name = None if split is None or str(split).lower() == "all" else str(split).lower()
    if split_name is not None:
        if split_name not in _SPLITS:
            raise ConfigError(f"CelebA split must be train, val, test or all, not {split!r}")
        if part_path is not None:
            part = read_celeba_partition(part_path)
            keep = [i for i in keep if part.get(table.files[i]) == _SPLITS[split_name]]
            if not keep:
                raise DataError(f"{part_path}: no image of the attribute table is in the {split_name} split")
        else:
            split_name = None  # no partition file: all images
    found, missing = [], []
    for i in keep:
        path = next((f / table.files[i] for f in folders if (f / table.files[i]).is_file()), None)
        (found if path is not None else missing).append((i, path))
    if not found:
        raise DataError(f"{root}: none of the {len(keep)} listed images found (looked in {', '.join(map(str, folders))})")
    if missing:
        warnings.warn(f"CelebA {root}: {len(missing)} of {len(keep)} listed images are missing (e.g. "
                      f"{table.files[missing[0][0]]}); skipped", stacklevel=2)

    from ..data import _load_rgb

    ev = _decoder(model, key, target, cfg)
    versions = _versions(key)
    stream = _Decodes(ev, versions, cfg.grid_images)
    n_attr = len(names)
    preds: Dict[str, List[Tensor]] = {v: [] for v in ["original", *versions]}
    labels: List[Tensor] = []
    chosen = [found[j] for j in _subset(len(found), limit, cfg.seed)]
    for i, path in _bar(chosen, "celeba", progress):
        y = table.labels[i]
        sample = Sample(Path(table.files[i]).stem, _load_rgb(path)[None])
        d, row = stream.decode(sample)
        shown = {}
        for v in ["original", *versions]:
            x = sample.image if v == "original" else d[v]
            with torch.no_grad():
                s = target.logits(x.to(target.device), flat).float().cpu().view(n_attr, 2)
            p = torch.where(s[:, 0] > s[:, 1], 1, -1).long()
            preds[v].append(p)
            right = int((p == y).sum())
            row[f"attributes_right_{v}"] = right
            shown[v] = f"{right}/{n_attr} attributes"
        labels.append(y)
        stream.add_grid_row(sample, d, row, shown)

    p = {v: torch.stack(vals) for v, vals in preds.items()}
    y = torch.stack(labels)
    cls = classification_summary(p, y, versions, "CelebA attribute labels; each (image, attribute) pair is a sample")
    per_attr = {}
    for a, name in enumerate(names):
        entry: Dict[str, Any] = {
            "prompts": list(pairs[a]),
            "n_positive": int((y[:, a] == 1).sum()),
            "accuracy": {v: M.accuracy(p[v][:, a], y[:, a]) for v in ["original", *versions]},
            "asr": M.classification_asr(p["base"][:, a], p["encrypted"][:, a], y[:, a]),
            "n_base_right": int((p["base"][:, a] == y[:, a]).sum()),
        }
        if "full" in p:
            entry["full_asr"] = M.classification_asr(p["base"][:, a], p["full"][:, a], y[:, a])
        per_attr[name] = entry
    task = {
        "root": str(root),
        "attribute_file": str(attr_path),
        "split": split_name or "all",
        "n_images": len(chosen),
        "n_missing": len(missing),
        "attributes": list(names),
        **cls,
        "mean_attribute_accuracy": {
            v: M.summarize([e["accuracy"][v] for e in per_attr.values()])["mean"] for v in ["original", *versions]
        },
        "mean_attribute_asr": M.summarize([e["asr"] for e in per_attr.values()])["mean"],
        "per_attribute": per_attr,
    }
    result = {"task": "celeba", **stream.summary(), "classification": cls, "celeba": task}
    result["per_image"] = stream.per_image
    result["_grid"] = stream.grid
    return result


# --------------------------------------------------------------------------- captioning

#: punctuation tokens that coco-caption's PTB tokenizer step removes (plus the brackets it renames)
_PUNCT = {"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--", "...", ";",
          '"', "(", ")", "[", "]", "{", "}"}
_TOKEN = re.compile(r"n't|'[a-z]+|[a-z0-9]+(?:[-.'/][a-z0-9]+)*|\.\.\.|--|\S")


def tokenize_caption(text: str) -> List[str]:
    """Lower-case word tokens of a caption, PTB-style, without punctuation.

    A pure-Python stand-in for coco-caption's (Java) PTBTokenizer step:
    lower-cased, clitics split (``dog's`` -> ``dog 's``, ``don't`` -> ``do
    n't``), hyphenated words and numbers kept whole, and the punctuation that
    coco-caption drops (``. , ; : ! ? - -- ... ' " ( )`` ...) dropped. Scores
    can differ slightly from coco-caption's on unusual punctuation.
    """
    s = str(text).lower().replace("\u2019", "'")
    s = re.sub(r"([a-z])n't\b", r"\1 n't", s)
    s = re.sub(r"'(s|re|ve|ll|d|m)\b", r" '\1", s)
    return [t for t in _TOKEN.findall(s) if t not in _PUNCT and not re.fullmatch(r"[^\w$%&#@+*=<>~^|\\/]+", t)]


def caption_scores(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> Dict[str, float]:
    """Corpus BLEU@1-4 and CIDEr of ``candidates[i]`` against ``references[i]`` (one or more each).

    pycocoevalcap's scorers (the COCO caption evaluation): BLEU with the
    reference length closest to each candidate; CIDEr-D (clipped n-gram
    counts, Gaussian length penalty sigma 6, x10; document frequencies from
    the references of this corpus, so one image alone always scores 0, and an
    n-gram in every image's references weighs nothing). Captions are tokenized
    with :func:`tokenize_caption` first.

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "cider", "n"}``. With no
        candidate every score is nan.
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as exc:  # pragma: no cover - an extra
        raise ConfigError("captioning metrics need pycocoevalcap: pip install 'psic-adapter[captioning]'") from exc
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} reference lists")
    if not candidates:
        return {"bleu1": math.nan, "bleu2": math.nan, "bleu3": math.nan, "bleu4": math.nan, "cider": math.nan, "n": 0}
    res, gts = {}, {}
    for i, (c, refs) in enumerate(zip(candidates, references)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError(f"candidate {i} has no reference caption")
        res[i] = [" ".join(tokenize_caption(c))]
        gts[i] = [" ".join(tokenize_caption(r)) for r in refs]
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["cider"] = float(cider)
    out["n"] = len(candidates)
    return out


def _read_name_list(path: Path) -> List[str]:
    return [ln.strip() for ln in _read_text(path, "image list").splitlines() if ln.strip()]


def read_references(
    references: Union[None, PathLike, Mapping[str, Sequence[str]]],
    images_root: PathLike,
    split: Optional[Union[str, PathLike]] = None,
) -> List[Tuple[str, List[str]]]:
    """``[(image path, [reference captions])]`` in the order of the references.

    ``references`` may be:

    * ``None``: ``images_root`` is a caption folder (``a.jpg`` + ``a.txt``), one reference each;
    * Flickr8k's ``Flickr8k.token.txt`` (``image.jpg#0<TAB>caption``; also
      Flickr30k's ``results_20130124.token``): five references per image;
    * a COCO caption JSON (``images`` + ``annotations``) or Karpathy's
      ``dataset_flickr8k.json`` (``images[].sentences``);
    * a CSV / TSV with image and caption columns (:class:`~psic_adapter.data.CaptionCSV`);
      rows naming the same image give it several references;
    * a mapping ``{image name or path: [captions]}``.

    Image names are looked up under ``images_root``. ``split`` keeps a part:
    a file listing image names one per line (Flickr8k's
    ``Flickr_8k.devImages.txt`` is the paper's validation set), or a split
    name (``val``, ``test``...) of a Karpathy JSON. Listed images missing from
    ``images_root`` are skipped with one warning.
    """
    from ..data import CaptionCSV, CaptionFolder

    root = Path(images_root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (the images to caption)")
    split_names: Optional[set] = None
    split_tag: Optional[str] = None
    if split is not None:
        sp = Path(split).expanduser()
        if sp.is_file():
            split_names = {Path(n).name for n in _read_name_list(sp)}
        else:
            split_tag = str(split)

    grouped: Dict[str, List[str]] = {}

    def add(name: str, caption: str) -> None:
        caption = caption.strip()
        if caption:
            grouped.setdefault(name, []).append(caption)

    if references is None:
        for path, text, _ in CaptionFolder(root).items:
            add(path, text)
    elif isinstance(references, Mapping):
        for name, caps in references.items():
            for c in ([caps] if isinstance(caps, str) else caps):
                add(str(name), c)
    else:
        ref = Path(references).expanduser()
        if ref.is_dir():
            for path, text, _ in CaptionFolder(ref).items:
                add(path, text)
        elif not ref.is_file():
            raise DataError(f"{ref}: no such captions file")
        elif ref.suffix.lower() == ".json":
            try:
                data = json.loads(_read_text(ref, "captions file"))
            except json.JSONDecodeError as exc:
                raise DataError(f"{ref}: not JSON ({exc})") from None
            images = data.get("images") if isinstance(data, dict) else None
            if not isinstance(images, list):
                raise DataError(f"{ref}: expected a COCO caption JSON or Karpathy's dataset JSON (an 'images' list)")
            if "annotations" in data:  # COCO
                files = {im["id"]: im["file_name"] for im in images}
                for a in data["annotations"]:
                    if a.get("image_id") in files:
                        add(files[a["image_id"]], str(a.get("caption", "")))
            else:  # Karpathy
                for im in images:
                    if split_tag is not None and im.get("split") != split_tag:
                        continue
                    name = im.get("filename") or im.get("file_name")
                    if im.get("filepath"):
                        name = f"{im['filepath']}/{name}"
                    for s in im.get("sentences", []):
                        add(name, str(s.get("raw") or " ".join(s.get("tokens", []))))
                split_tag = None
        elif ref.suffix.lower() in (".csv", ".tsv"):
            for path, text, _ in CaptionCSV(ref, root=root).items:
                add(path, text)
        else:  # Flickr8k / Flickr30k token file
            for ln, line in enumerate(_read_text(ref, "captions file").splitlines(), start=1):
                if not line.strip():
                    continue
                if "\t" not in line:
                    raise DataError(f"{ref}, line {ln}: expected 'image.jpg#N<TAB>caption' (Flickr8k.token.txt)")
                name, caption = line.split("\t", 1)
                add(name.split("#", 1)[0].strip(), caption)
    if split_tag is not None:
        raise ConfigError(f"split {str(split)!r} is neither a file of image names nor a split of a Karpathy JSON")
    out, missing = [], []
    for name, caps in grouped.items():
        if split_names is not None and Path(name).name not in split_names:
            continue
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = root / path
        if path.is_file():
            out.append((str(path), caps))
        else:
            missing.append(name)
    if missing:
        warnings.warn(f"captioning: {len(missing)} images with references are not in {root} (e.g. {missing[0]}); "
                      "skipped", stacklevel=2)
    if not out:
        raise DataError(f"no image with reference captions found in {root}")
    return out


def _to_pil(x: Tensor):
    """A ``1x3xHxW`` image in [0, 1] as the 8-bit RGB picture a saved file would hold."""
    from PIL import Image

    arr = (x[0].detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


class HFCaptioner:
    """A Hugging Face image-to-text model as ``captioner(images) -> captions``.

    Loads ``AutoProcessor`` (or an image processor + tokenizer when the model
    has no processor, as VisionEncoderDecoder checkpoints) and
    ``AutoModelForImageTextToText`` (``AutoModelForVision2Seq`` on older
    transformers): BLIP, BLIP-2, InstructBLIP, GIT, Pix2Struct, ViT-GPT2...
    Decoding is deterministic (greedy, or beam search with ``num_beams``).

    Args:
        name_or_path: a hub id (``Salesforce/blip2-opt-2.7b`` as in the paper,
            ``Salesforce/blip-image-captioning-base``) or a local folder
            written by ``save_pretrained``.
        device: where the captioner runs.
        dtype: ``"float16"`` / ``"bfloat16"`` / ``"float32"`` (default: the
            checkpoint's).
        prompt: an optional text prompt (e.g. ``"a photo of"``); it is removed
            from the captions.
    """

    def __init__(self, name_or_path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                 dtype: Optional[str] = None, max_new_tokens: int = 30, num_beams: int = 1,
                 prompt: Optional[str] = None, batch_size: int = 8):
        try:
            import transformers
        except ImportError as exc:
            raise ConfigError("captioning needs transformers: pip install 'psic-adapter[captioning]'") from exc
        name = os.fspath(name_or_path)
        self.name = name
        self.device = torch.device(device)
        self.max_new_tokens, self.num_beams, self.prompt, self.batch_size = max_new_tokens, num_beams, prompt, batch_size
        kwargs = {}
        if dtype is not None:
            kwargs["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = getattr(torch, dtype)
        auto = getattr(transformers, "AutoModelForImageTextToText", None) or getattr(transformers, "AutoModelForVision2Seq")
        try:
            self.model = auto.from_pretrained(name, **kwargs).to(self.device).eval()
        except Exception as exc:  # noqa: BLE001 - a missing model, no network, an unknown architecture
            raise ConfigError(f"could not load the captioner {name!r}: {str(exc).splitlines()[0]}") from exc
        self.processor = self.tokenizer = None
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(name)
        except Exception:  # noqa: BLE001 - no processor: image processor + tokenizer below
            self.processor = None
        if self.processor is None or not hasattr(self.processor, "batch_decode") or not hasattr(self.processor, "image_processor"):
            try:
                self.image_processor = transformers.AutoImageProcessor.from_pretrained(name)
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(name)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(f"could not load the processor of the captioner {name!r}: {str(exc).splitlines()[0]}") from exc
            self.processor = None

    def _inputs(self, pil_images):
        if self.processor is not None:
            if self.prompt:
                return self.processor(images=pil_images, text=[self.prompt] * len(pil_images), return_tensors="pt")
            return self.processor(images=pil_images, return_tensors="pt")
        inputs = dict(self.image_processor(images=pil_images, return_tensors="pt"))
        if self.prompt:
            inputs.update(self.tokenizer([self.prompt] * len(pil_images), return_tensors="pt"))
        return inputs

    def _decode(self, ids: Tensor) -> List[str]:
        dec = self.processor if self.processor is not None else self.tokenizer
        return [t.strip() for t in dec.batch_decode(ids, skip_special_tokens=True)]

    @torch.no_grad()
    def __call__(self, images: Sequence[Tensor]) -> List[str]:
        """Captions of ``1x3xHxW`` images in [0, 1] (quantised to 8 bits first, as a saved image)."""
        out: List[str] = []
        dtype = next(self.model.parameters()).dtype
        for s in range(0, len(images), self.batch_size):
            pil = [_to_pil(x) for x in images[s : s + self.batch_size]]
            inputs = {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in self._inputs(pil).items() if isinstance(v, Tensor)}
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                      do_sample=False)
            prefix = inputs.get("input_ids")
            if prefix is not None and ids.shape[1] >= prefix.shape[1] and torch.equal(ids[:, : prefix.shape[1]], prefix):
                ids = ids[:, prefix.shape[1]:]  # decoder-only models return the prompt first
            texts = self._decode(ids)
            if self.prompt:
                p = self.prompt.strip().lower()
                texts = [t[len(p):].strip() if t.lower().startswith(p) else t for t in texts]
            out.extend(texts)
        return out


def captioning(
    model,
    target_unused,
    captioner_name_or_path: Union[str, os.PathLike, Callable[[Sequence[Tensor]], List[str]]],
    images_root: PathLike,
    references: Union[None, PathLike, Mapping[str, Sequence[str]]],
    key=None,
    limit: Optional[int] = None,
    max_new_tokens: int = 30,
    device: str = "cpu",
    *,
    split: Optional[Union[str, PathLike]] = None,
    batch_size: int = 8,
    num_beams: int = 1,
    prompt: Optional[str] = None,
    dtype: Optional[str] = None,
    include_original: bool = True,
    grid_images: int = 6,
    seed: int = 0,
    progress: bool = False,
) -> Dict[str, Any]:
    """Image captioning of the decodes by a model the adapter never saw (the paper: BLIP-2 OPT-2.7b).

    Args:
        model: a :class:`~psic_adapter.adapter.PSICModel` (codec on the CPU).
        target_unused: ignored (the captioner is not the adapter's target);
            kept so that every task takes ``(model, target, ...)``.
        captioner_name_or_path: a Hugging Face image-to-text model, hub id or
            local folder (see :class:`HFCaptioner`), or a ready callable
            ``images -> captions`` (e.g. an :class:`HFCaptioner`).
        images_root: the folder holding the images.
        references: the reference captions (see :func:`read_references`).
        key: the owner's key (adds the full version).
        limit: caption this many images, drawn at random (``seed``).
        max_new_tokens, device, num_beams, prompt, dtype, batch_size: for the captioner.
        split: a file of image names (Flickr8k's ``Flickr_8k.devImages.txt``)
            or a Karpathy JSON split name.
        include_original: caption the uncompressed images too (an upper bound).

    Returns:
        A run result (module docstring) with ``captioning``: ``scores``
        (BLEU@1-4 and CIDEr of each version against the references, see
        :func:`caption_scores`), ``encrypted_vs_base`` and ``full_vs_base``
        (the same scores of those captions against the base captions as the
        only reference, and the share of identical captions): a low BLEU of
        the encrypted captions against the base ones means the encryption
        changes what the captioner says. Each per-image row holds the captions.
    """
    items = read_references(references, images_root, split)
    order = _subset(len(items), limit, seed)
    items = [items[i] for i in order]
    if callable(captioner_name_or_path) and not isinstance(captioner_name_or_path, (str, os.PathLike)):
        captioner = captioner_name_or_path
        captioner_name = getattr(captioner, "name", type(captioner).__name__)
    else:
        captioner = HFCaptioner(captioner_name_or_path, device=device, dtype=dtype, max_new_tokens=max_new_tokens,
                                num_beams=num_beams, prompt=prompt, batch_size=batch_size)
        captioner_name = captioner.name
    from ..data import _load_rgb

    ev = _decoder(model, key)
    versions = _versions(key)
    shown_versions = (["original"] if include_original else []) + versions
    stream = _Decodes(ev, versions, grid_images)
    captions: Dict[str, List[str]] = {v: [] for v in shown_versions}
    refs: List[List[str]] = []
    step = max(1, int(batch_size))
    for s in _bar(range(0, len(items), step), "captioning", progress, total=math.ceil(len(items) / step)):
        chunk = items[s : s + step]
        samples = [Sample(Path(p).stem, _load_rgb(p)[None], caps[0]) for p, caps in chunk]
        decoded = [stream.decode(smp) for smp in samples]
        batch_caps = {}
        for v in shown_versions:
            imgs = [smp.image for smp in samples] if v == "original" else [d[v] for d, _ in decoded]
            batch_caps[v] = [str(c) for c in captioner(imgs)]
            if len(batch_caps[v]) != len(imgs):
                raise ConfigError(f"the captioner returned {len(batch_caps[v])} captions for {len(imgs)} images")
            captions[v].extend(batch_caps[v])
        for j, (smp, (d, row)) in enumerate(zip(samples, decoded)):
            row["references"] = chunk[j][1]
            for v in shown_versions:
                row[f"caption_{v}"] = batch_caps[v][j]
            shown = {v: f'"{batch_caps[v][j]}"' for v in shown_versions}
            shown.setdefault("original", f'"{chunk[j][1][0]}" (reference)')
            stream.add_grid_row(smp, d, row, shown)
        refs.extend(caps for _, caps in chunk)

    scores = {v: caption_scores(captions[v], refs) for v in shown_versions}

    def versus_base(v: str) -> Dict[str, Any]:
        out = caption_scores(captions[v], [[b] for b in captions["base"]])
        same = [a.strip().lower() == b.strip().lower() for a, b in zip(captions[v], captions["base"])]
        out["identical"] = sum(same) / len(same) if same else math.nan
        return out

    task: Dict[str, Any] = {
        "captioner": captioner_name,
        "images_root": str(images_root),
        "references": None if references is None or isinstance(references, Mapping) else str(references),
        "n_images": len(items),
        "references_per_image": M.summarize([len(r) for r in refs]),
        "max_new_tokens": max_new_tokens,
        "scores": scores,
        "encrypted_vs_base": versus_base("encrypted"),
        "metrics": "BLEU@1-4 and CIDEr-D (pycocoevalcap), PTB-style tokens without punctuation",
    }
    if "full" in captions:
        task["full_vs_base"] = versus_base("full")
    result = {"task": "caption", **stream.summary(), "captioning": task}
    result["per_image"] = stream.per_image
    result["_grid"] = stream.grid
    return result


# --------------------------------------------------------------------------- report glue


def task_headline(result: Mapping[str, Any]) -> Dict[str, Any]:
    """The task's own headline numbers (``{}`` for the ``classify`` task).

    imagenet: ``imagenet_top1_<version>``, ``imagenet_asr``; celeba:
    ``celeba_acc_<version>``, ``celeba_asr``; caption: ``bleu4_<version>``,
    ``cider_<version>``, ``bleu4_encrypted_vs_base``.
    """
    task = result.get("task")
    h: Dict[str, Any] = {}
    if task == "imagenet":
        t = result["imagenet"]
        h.update({f"imagenet_top1_{v}": a for v, a in t["accuracy"].items()})
        h["imagenet_asr"] = t["asr"]
        if "full_asr" in t:
            h["imagenet_full_asr"] = t["full_asr"]
    elif task == "celeba":
        t = result["celeba"]
        h.update({f"celeba_acc_{v}": a for v, a in t["accuracy"].items()})
        h["celeba_asr"] = t["asr"]
        h["celeba_mean_attribute_asr"] = t["mean_attribute_asr"]
    elif task == "caption":
        t = result["captioning"]
        for v, s in t["scores"].items():
            h[f"bleu4_{v}"] = s["bleu4"]
            h[f"cider_{v}"] = s["cider"]
        h["bleu4_encrypted_vs_base"] = t["encrypted_vs_base"]["bleu4"]
        if "full_vs_base" in t:
            h["bleu4_full_vs_base"] = t["full_vs_base"]["bleu4"]
    return h


def report_run(result: Mapping[str, Any]) -> Dict[str, Any]:
    """A task result as :func:`.runner.write_eval_report` takes it.

    Adds ``task_headline`` (the numbers of :func:`task_headline`), and for a
    captioning result, which has no classes, a ``classification`` entry whose
    ASR is n/a (the report's headline reads it).
    """
    out = dict(result)
    out["task_headline"] = task_headline(result)
    if "classification" not in out:
        cls: Dict[str, Any] = {"asr": math.nan, "n_base_right": 0,
                               "note": f"the {result.get('task')} task has no classes; see task_headline"}
        if "full" in out.get("quality", {}):
            cls["full_agreement_with_base"] = math.nan
        out["classification"] = cls
    return out
