"""The paper's image-classification benchmark: zero-shot ImageNet top-1 and ASR (section 4.1).

An ImageFolder of ImageNet synset folders (``n01440764/...``, the ILSVRC-2012
validation set sorted into folders); CLIP decides zero-shot over
``"a photo of a {name}."`` for all 1000 classes (an ImageNet classifier over
its own). A tree of other classes is classified among its own folder names.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ...data import ImageFolderPrompts, imagenet_class_names
from ...errors import ConfigError
from .. import metrics as M
from ..record import EvalResult
from ..measure import Judge
from ..runner import EvalConfig, Sample, classification_of
from .common import TaskStream, bar, subset
from ...types import PathLike


def imagenet_zero_shot(
    decoder,
    target,
    root: PathLike,
    *,
    config: Optional[EvalConfig] = None,
    limit: Optional[int] = None,
    progress: bool = False,
    gallery: Optional[List] = None,
) -> EvalResult:
    """Zero-shot ImageNet classification of the decodes (the paper's "image classification").

    Args:
        decoder: the versions of each image (:class:`~..protocol.PSICDecoder`
            for a PSIC adapter and its key; its codec on the CPU).
        target: a CLIP target (zero-shot over class prompts), or an ImageNet
            classifier (its own 1000 classes; the folders must then be synsets).
        root: an ImageFolder tree, ``root/<class>/<images>``. When every folder
            is an ImageNet-1k synset (``n01440764``), CLIP decides among all
            1000 ImageNet classes (open_clip's curated names) and the labels
            are the synsets' ImageNet indices, as in the paper (ILSVRC-2012
            val). Otherwise the classes are the folders (names with ``_`` as
            spaces) and the labels their sorted indices.
        limit: evaluate this many images, drawn at random (``config.seed``)
            across the classes (the paper: 5,000 of ILSVRC-2012 val).
        config: ``prompt`` (``"a photo of a {}."``), ``class_names`` (override
            the names: 1000 for synset folders, else one per folder),
            ``grid_images`` and ``seed`` are read; the rest belongs to the
            ``classify`` task.

    Returns:
        An :class:`EvalResult` whose classification holds top-1 accuracy of
        original / base / full / encrypted / control, the ASR and its control,
        and whose scale's ``task`` holds ``per_class`` accuracy and ASR.
    """

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

    judge = Judge(target, run_cfg)
    stream = TaskStream(decoder, cfg, task="imagenet", judge=target, gallery=gallery)
    versions = stream.versions
    order = subset(len(ds), limit, cfg.seed)
    preds: Dict[str, List[int]] = {v: [] for v in ["original", *versions, "control"]}
    labels: List[int] = []
    folder_of: List[int] = []
    for i in bar(order, "imagenet", progress):
        item = ds[i]
        folder = int(item["label"])
        sample = Sample(Path(str(item["path"])).stem, item["image"][None], str(item["text"]), labels_of[folder])
        images = stream.decode(sample)
        row = stream.rows[-1]
        shown = {}
        for v, p in judge.predict_versions({"original": sample.image, **images}).items():
            preds[v].append(p)
            shown[v] = judge.label_name(p)
            row[f"top1_{v}"] = shown[v]
        row["label"] = judge.label_name(sample.label)
        labels.append(sample.label)
        folder_of.append(folder)
        stream.add_gallery(sample, images, shown)

    p = {v: torch.tensor(vals, dtype=torch.long) for v, vals in preds.items()}
    y = torch.tensor(labels, dtype=torch.long)
    cls = classification_of(p, y, versions, label_source)
    folders = torch.tensor(folder_of, dtype=torch.long)
    per_class = {}
    for c, folder_name in enumerate(ds.folders):
        m = folders == c
        if not bool(m.any()):
            continue
        entry = {"name": ds.classes[c], "n": int(m.sum())}
        entry["accuracy"] = {v: M.accuracy(p[v][m], y[m]) for v in ["original", *versions, "control"]}
        entry["asr"] = M.classification_asr(p["base"][m], p["encrypted"][m], y[m])
        entry["control_asr"] = M.classification_asr(p["base"][m], p["control"][m], y[m])
        per_class[folder_name] = entry
    task = {
        "root": str(root),
        "n_folders": len(ds.folders),
        "classes_decided_among": len(names),
        "over": over,
        "prompt": cfg.prompt if target.kind != "classifier" else None,
        "per_class": per_class,
    }
    return stream.result(getattr(target, "name", ""), cls, task, description="ImageNet images at their own size")
