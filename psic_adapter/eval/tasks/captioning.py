"""The paper's captioning benchmark: an unseen captioner on the decodes, BLEU@1-4 and CIDEr (section 4.1).

Any Hugging Face image-to-text model (the paper: BLIP-2 OPT-2.7b;
:class:`~.captioner.HFCaptioner`) captions the original, base, full and
encrypted decodes; BLEU@1-4 and CIDEr(-D) against reference captions
(Flickr8k's ``Flickr8k.token.txt``, a COCO or Karpathy JSON, a CSV, or a caption
folder: :func:`psic_adapter.data.captions.read_references`), and how far the
encrypted captions drift from the base ones.

BLEU and CIDEr are pycocoevalcap's pure-Python scorers (the COCO caption
evaluation code: BLEU with the "closest" reference length, CIDEr-D with sigma 6
and the x10 scale). Its METEOR and SPICE need Java and are not used; its PTB
tokenizer (Java as well) is replaced by :func:`tokenize_caption`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from torch import Tensor

from ...data.captions import read_references
from ...data.common import load_rgb
from ...errors import ConfigError
from ..record import EvalResult, Stat
from ..runner import EvalConfig, Sample
from .common import TaskStream, bar, subset
from ...types import PathLike


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


def captioning(
    decoder,
    captioner: Callable[[Sequence[Tensor]], List[str]],
    images_root: PathLike,
    *,
    config: Optional[EvalConfig] = None,
    limit: Optional[int] = None,
    progress: bool = False,
    references: Union[None, PathLike, Mapping[str, Sequence[str]]] = None,
    split: Optional[Union[str, PathLike]] = None,
    batch_size: int = 8,
    include_original: bool = True,
    gallery: Optional[List] = None,
) -> EvalResult:
    """Image captioning of the decodes by a model the adapter never saw (the paper: BLIP-2 OPT-2.7b).

    Args:
        decoder: the versions of each image (:class:`~..protocol.PSICDecoder`; codec on the CPU).
        captioner: ``images -> captions``, e.g. an :class:`~.captioner.HFCaptioner`
            (a model the adapter never saw: it is the judge here, not a target).
        images_root: the folder holding the images.
        references: the reference captions (see :func:`psic_adapter.data.captions.read_references`).
        limit: caption this many images, drawn at random (``config.seed``).
        batch_size: images per captioner call.
        split: a file of image names (Flickr8k's ``Flickr_8k.devImages.txt``)
            or a Karpathy JSON split name.
        include_original: caption the uncompressed images too (an upper bound).

    Returns:
        An :class:`EvalResult` (no classes: its classification is empty) whose scale's ``task`` holds ``scores``
        (BLEU@1-4 and CIDEr of each version against the references, see
        :func:`caption_scores`), ``encrypted_vs_base`` and ``full_vs_base``
        (the same scores of those captions against the base captions as the
        only reference, and the share of identical captions): a low BLEU of
        the encrypted captions against the base ones means the encryption
        changes what the captioner says. Each per-image row holds the captions.
    """
    cfg = config or EvalConfig(wrong_keys=0, attack_steps=0, perturbations=())
    items = read_references(references, images_root, split)
    order = subset(len(items), limit, cfg.seed)
    items = [items[i] for i in order]
    if not callable(captioner):
        raise ConfigError("the captioner must be a callable images -> captions (e.g. HFCaptioner(name))")
    captioner_name = getattr(captioner, "name", type(captioner).__name__)
    stream = TaskStream(decoder, cfg, task="caption", gallery=gallery)
    versions = stream.versions
    shown_versions = (["original"] if include_original else []) + versions + ["control"]
    captions: Dict[str, List[str]] = {v: [] for v in shown_versions}
    refs: List[List[str]] = []
    step = max(1, int(batch_size))
    for s in bar(range(0, len(items), step), "captioning", progress, total=math.ceil(len(items) / step)):
        chunk = items[s : s + step]
        samples = [Sample(Path(p).stem, load_rgb(p)[None], caps[0]) for p, caps in chunk]
        decoded = []
        for smp in samples:
            images = stream.decode(smp)
            decoded.append((images, stream.rows[-1]))
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
            stream.add_gallery(smp, d, shown, row=row)
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
        "references_per_image": Stat.of([len(r) for r in refs]).mean,
        "max_new_tokens": getattr(captioner, "max_new_tokens", None),
        "scores": scores,
        "encrypted_vs_base": versus_base("encrypted"),
        "control_vs_base": versus_base("control"),
        "metrics": "BLEU@1-4 and CIDEr-D (pycocoevalcap), PTB-style tokens without punctuation",
    }
    if "full" in captions:
        task["full_vs_base"] = versus_base("full")
    return stream.result(captioner_name, None, task, description="the images to caption, at their own size")
