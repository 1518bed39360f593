"""The paper's facial attribute benchmark: CLIP zero-shot on CelebA's 40 attributes (section 4.1)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ...data.celeba import SPLITS, find_celeba, read_celeba_attributes, read_celeba_partition
from ...data.common import load_rgb
from ...errors import ConfigError, DataError
from .. import metrics as M
from ..record import EvalResult, Stat
from ..runner import EvalConfig, Sample, classification_of
from .common import TaskStream, bar, subset
from ...types import PathLike


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



def celeba_attributes(
    decoder,
    target,
    root: PathLike,
    *,
    config: Optional[EvalConfig] = None,
    limit: Optional[int] = None,
    progress: bool = False,
    gallery: Optional[List] = None,
    split: Optional[str] = "test",
    prompts: Optional[Mapping[str, Tuple[str, str]]] = None,
) -> EvalResult:
    """Zero-shot CLIP facial attribute analysis of the decodes (CelebA).

    Args:
        decoder: the versions of each image (:class:`~..protocol.PSICDecoder`; codec on the CPU).
        target: a CLIP target (it compares each image with two prompts per
            attribute; see :data:`CELEBA_PROMPTS`).
        root: CelebA's folder: ``list_attr_celeba.txt`` (or ``Anno/``, or the
            Kaggle ``.csv``) and the images in ``img_align_celeba/`` (or the
            Kaggle ``img_align_celeba/img_align_celeba/``, or ``root`` itself);
            ``list_eval_partition.txt`` (or ``Eval/``) when present.
        limit: evaluate this many images, drawn at random (``config.seed``)
            from the split (the paper: 10,000).
        split: ``"test"`` (default), ``"val"``, ``"train"`` or ``None`` /
            ``"all"``. Without a partition file every listed image is used.
        config: ``grid_images`` and ``seed`` are read.
        prompts: ``{attribute: (positive, negative)}`` overriding the table.

    Images listed but missing from the folder are skipped with one warning.

    Returns:
        An :class:`EvalResult` whose classification counts each (image,
        attribute) pair as a sample (CelebA's labels are the truth), and whose
        scale's ``task`` adds the attribute names, the prompts, ``per_attribute``
        accuracy and ASR, and the mean of the per-attribute accuracies and ASRs.
    """
    cfg = config or EvalConfig(wrong_keys=0, attack_steps=0, perturbations=())
    if target.kind == "classifier":
        raise ConfigError("facial attributes are zero-shot: they need a CLIP target (e.g. clip:ViT-B-32)")
    root = Path(root).expanduser()
    attr_path, part_path, folders = find_celeba(root)
    table = read_celeba_attributes(attr_path)
    names = table.names
    pairs = celeba_prompts(names, prompts)
    flat = [s for pair in pairs for s in pair]

    keep = list(range(len(table.files)))
    split_name = None if split is None or str(split).lower() == "all" else str(split).lower()
    if split_name is not None:
        if split_name not in SPLITS:
            raise ConfigError(f"CelebA split must be train, val, test or all, not {split!r}")
        if part_path is not None:
            part = read_celeba_partition(part_path)
            keep = [i for i in keep if part.get(table.files[i]) == SPLITS[split_name]]
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

    stream = TaskStream(decoder, cfg, task="celeba", judge=target, gallery=gallery)
    versions = stream.versions
    n_attr = len(names)
    preds: Dict[str, List[Tensor]] = {v: [] for v in ["original", *versions, "control"]}
    labels: List[Tensor] = []
    chosen = [found[j] for j in subset(len(found), limit, cfg.seed)]
    for i, path in bar(chosen, "celeba", progress):
        y = table.labels[i]
        sample = Sample(Path(table.files[i]).stem, load_rgb(path)[None])
        images = stream.decode(sample)
        row = stream.rows[-1]
        shown = {}
        for v, x in [("original", sample.image), *images.items()]:
            with torch.no_grad():
                s = target.logits(x.to(target.device), flat).float().cpu().view(n_attr, 2)
            p = torch.where(s[:, 0] > s[:, 1], 1, -1).long()
            preds[v].append(p)
            right = int((p == y).sum())
            row[f"attributes_right_{v}"] = right
            shown[v] = f"{right}/{n_attr} attributes"
        labels.append(y)
        stream.add_gallery(sample, images, shown)

    p = {v: torch.stack(vals) for v, vals in preds.items()}
    y = torch.stack(labels)
    cls = classification_of(p, y, versions, "CelebA attribute labels; each (image, attribute) pair is a sample")
    per_attr = {}
    for a, name in enumerate(names):
        entry: Dict[str, Any] = {
            "prompts": list(pairs[a]),
            "n_positive": int((y[:, a] == 1).sum()),
            "accuracy": {v: M.accuracy(p[v][:, a], y[:, a]) for v in ["original", *versions, "control"]},
            "asr": M.classification_asr(p["base"][:, a], p["encrypted"][:, a], y[:, a]),
            "control_asr": M.classification_asr(p["base"][:, a], p["control"][:, a], y[:, a]),
            "n_base_right": int((p["base"][:, a] == y[:, a]).sum()),
        }
        if "full" in p:
            entry["full_asr"] = M.classification_asr(p["base"][:, a], p["full"][:, a], y[:, a])
        per_attr[name] = entry
    task = {
        "root": str(root),
        "attribute_file": str(attr_path),
        "split": split_name or "all",
        "n_missing": len(missing),
        "attributes": list(names),
        "mean_attribute_accuracy": {
            v: Stat.of([e["accuracy"][v] for e in per_attr.values()]).mean for v in ["original", *versions, "control"]
        },
        "mean_attribute_asr": Stat.of([e["asr"] for e in per_attr.values()]).mean,
        "mean_attribute_control_asr": Stat.of([e["control_asr"] for e in per_attr.values()]).mean,
        "per_attribute": per_attr,
    }
    return stream.result(getattr(target, "name", ""), cls, task, description="CelebA faces at their own size")
