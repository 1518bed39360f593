"""``psic eval``: what a method does to real images, measured from real bitstreams, at the scale of use.

For every image the :class:`Evaluator` asks a :class:`~.protocol.VersionDecoder`
for the versions of the image (**base**, **encrypted**, and with the owner's
key **full**; real entropy coding, bpp from the bytes) and adds a **control**:
the base decode plus Gaussian noise with the same energy as the encrypted
change, drawn per image. Then, per evaluation *scale*:

* **scales**: ``native`` (whole images at their own size), ``long512`` /
  ``long1024`` (whole images resized first to that longer side), ``crops``
  (random ``crop`` x ``crop`` crops at native resolution, the training view of
  earlier versions). The target sees every image through its own
  preprocessing (for EfficientNet-Lite0: shorter side to 256, centre crop
  224), so a whole photo is downsampled: the factor is reported.
* **quality**: PSNR / MS-SSIM of each version against the original.
* **classification** (top-1 over the target's classes, or CLIP zero-shot over
  class prompts): accuracy, agreement with the base decode, and the paper's
  **Attack Success Rate** (section 4.1): among the images the base decode gets
  right, the share the encrypted decode gets wrong; beside it the **control's
  ASR**, what noise of the same energy does. Without labels, "right" means the
  target's answer on the original.
* **retrieval** (CLIP with one distinct caption per image): R@1/5/10 and ASR.
* **robustness**: ASR (and control) after JPEG-75, a 0.5x resize, a blur
  (sigma 1) or a second pass through the base codec, applied to the served
  versions alike.
* at the primary scale, for methods with a key condition: **wrong keys** (random
  wrong-key conditions fed to the network, bypassing the key check) and a
  **white-box attacker** (holds the adapter, not the key; optimises one
  condition for all images).

Images are streamed: one image's versions are measured and dropped before the
next is decoded, so a 1024 px evaluation needs little memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from . import metrics as M
from .attacks import whitebox, wrong_keys
from .config import DEFAULT_SCALES, EvalConfig, parse_scale, scale_key  # noqa: F401 (this module's face)
from .measure import (GalleryRow, Judge, Measurements, Sample, bar, control_of, mix_seed,  # noqa: F401
                      photos_of, target_class_names)
from .protocol import PSICDecoder, VersionDecoder
from .record import Classification, EvalResult, Robustness, ScaleResult, Stat
from ..perturbations import get_perturbations
from ..types import PathLike


def load_samples(spec: str, crop: Optional[int] = None, count: Optional[int] = None, seed: int = 0,
                 split: str = "test") -> List[Sample]:
    """Evaluation images from a dataset spec (``"samples"`` = the bundled test photos), whole, with labels.

    Labels are ImageNet-1k indices where the data names them (the sample photos,
    ImageFolder trees of synset or class-name folders), else -1 ("right" is then
    the target's answer on the original). ``crop`` (older use): ``count`` seeded
    random crops instead, unlabeled. ``split="all"`` takes every sample photo (the train ones too: for
    adapters that never trained on them), ``"heldout"`` the fourteen that ``--data samples`` never trains
    on; folders and CSVs are read whole either way.
    """
    from ..data import ImageFolderPrompts, build_dataset

    if split not in ("test", "val", "all", "extra", "heldout"):
        raise ConfigError(f"evaluation images are the 'test' ('val'), 'extra', 'heldout' or 'all' split, not {split!r}")
    ds = build_dataset(spec, crop=None, split=split, seed=seed)
    n = len(ds) if count is None or crop is not None else min(count, len(ds))
    mapping = getattr(ds, "imagenet_index", None) if isinstance(ds, ImageFolderPrompts) else None
    out = []
    for i in range(n):
        item = ds[i]
        path = str(item["path"])
        name = path[7:] if path.startswith("sample:") else Path(path).stem
        label = int(item.get("label", -1))
        if mapping is not None:
            label = mapping[label] if 0 <= label < len(mapping) else -1
        out.append(Sample(name, item["image"][None], str(item.get("text", "")), label))
    if not out:
        raise DataError(f"no evaluation images in {spec}")
    if crop is not None:
        return crops_of(out, crop, count or len(out), seed)
    return out


def crops_of(samples: Sequence[Sample], size: int, count: int, seed: int = 0) -> List[Sample]:
    """``count`` seeded random ``size`` x ``size`` crops, round-robin over the images that hold one.

    Crops are unlabeled: a crop may not show the photo's object, so "right" is
    the target's answer on the original crop.
    """
    usable = [s for s in samples if min(s.image.shape[-2:]) >= size]
    if not usable:
        raise DataError(f"no evaluation image is at least {size} px on its shorter side for {size} px crops")
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for i in range(count):
        j = i % len(usable)
        s = usable[j]
        h, w = s.image.shape[-2:]
        top = int(torch.randint(0, h - size + 1, (), generator=g))
        left = int(torch.randint(0, w - size + 1, (), generator=g))
        out.append(Sample(f"{s.name}#{i}", s.image[..., top: top + size, left: left + size].contiguous(), s.text, -1,
                          photo=s.photo or f"{j}:{s.name}"))  # an identity: two photos may share a name
    return out


def at_scale(samples: Sequence[Sample], scale: str, config: EvalConfig) -> List[Sample]:
    """The samples of one evaluation scale (see :func:`parse_scale`)."""
    from ..bitstream.images import resize_longer_side

    kind, size = parse_scale(scale)
    if kind == "native":
        return list(samples)
    if kind == "crops":
        return crops_of(samples, config.crop, config.crops, config.seed)
    return [Sample(s.name, resize_longer_side(s.image, size), s.text, s.label, photo=s.photo) for s in samples]


def describe_scale(scale: str, config: EvalConfig, photos: Optional[int] = None) -> str:
    kind, size = parse_scale(scale)
    if kind == "native":
        return "whole images at their own size"
    if kind == "crops":
        of = f" of {photos} photo{'s' if photos != 1 else ''}" if photos else ""
        return f"{config.crops} random {config.crop}x{config.crop} crops{of} at native resolution"
    return f"whole images resized to a longer side of {size} px"


#: what each piece of an evaluation costs, in decodes of the same pixels (``decoder.decode``: encode, the base
#: decode, the encrypted one): an image with its predictions and quality, the codec perturbation (it codes the
#: base, encrypted and control decodes again), any other perturbation, a wrong key (one synthesis), a white-box
#: step on a 256 x 256 patch (forward and backward). Ratios taken once with the shipped codec and
#: EfficientNet-Lite0 on a 2-core CPU; the time of a decode is measured where the evaluation runs. Measured
#: times: docs/benchmarks.md.
COST = {"image": 1.4, "codec": 2.5, "perturbation": 0.1, "wrong_key": 0.4, "whitebox": 1.3}


def estimate_seconds(samples: Sequence[Sample], config: EvalConfig, seconds_per_megapixel: float,
                     conditions: bool = True) -> float:
    """How long :meth:`Evaluator.run` will take on ``samples``, from the measured time of a decode
    (``seconds_per_megapixel``, :meth:`Evaluator.seconds_per_megapixel`) and :data:`COST`: an estimate,
    good to a factor of about 2 on a busy machine, for saying before long work how long it will be."""
    scales = [scale_key(s) for s in config.scales]
    primary = scale_key(config.primary) if config.primary else scales[0]
    robust = None if config.robustness_scales is None else {scale_key(r) for r in config.robustness_scales}
    per_image = COST["image"] + sum(COST["codec"] if p == "codec" else COST["perturbation"]
                                    for p in config.perturbations)
    total = 0.0
    for scale in scales:
        kind, size = parse_scale(scale)
        if kind == "crops":
            usable = [s for s in samples if min(s.image.shape[-2:]) >= config.crop]
            mp = config.crops * config.crop ** 2 / 1e6 if usable else 0.0
        elif kind == "long":
            mp = sum(size ** 2 * min(s.image.shape[-2:]) / max(s.image.shape[-2:]) for s in samples) / 1e6
        else:
            mp = sum(s.image.shape[-2] * s.image.shape[-1] for s in samples) / 1e6
        rob = robust is None or scale in robust
        total += mp * (per_image if rob else COST["image"])
        if scale == primary and conditions:
            total += mp * COST["wrong_key"] * config.wrong_keys
            n = len(samples) if kind != "crops" else config.crops
            total += COST["whitebox"] * config.attack_steps * min(config.attack_images, n) * 256 ** 2 / 1e6
    return total * seconds_per_megapixel


def describe_work(samples: Sequence[Sample], config: EvalConfig) -> str:
    """What an evaluation will measure, in a line: the images per scale, wrong keys, the white-box attack."""
    parts = []
    for scale in config.scales:
        kind, size = parse_scale(scale)
        if kind == "crops":
            usable = sum(1 for s in samples if min(s.image.shape[-2:]) >= config.crop)
            parts.append(f"{config.crops} crops of {usable} photos")
        else:
            parts.append(f"{len(samples)} images at {scale_key(scale)}")
    extra = [f"{len(config.perturbations)} perturbations"] if config.perturbations else []
    if config.wrong_keys:
        extra.append(f"{config.wrong_keys} wrong keys")
    if config.attack_steps:
        extra.append(f"a {config.attack_steps}-step white-box attack")
    return "; ".join(parts) + (f" ({', '.join(extra)})" if extra else "")


def minutes(seconds: float) -> str:
    """``about 40 s`` / ``about 7 minutes``."""
    return f"about {seconds:.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} minutes"


def classification_of(preds: Dict[str, Tensor], labels: Tensor, versions: Sequence[str],
                      label_source: str) -> Classification:
    """Accuracy per version, the ASR and its control, the base's right count, agreements with the base.

    ``preds`` maps ``"original"``, each version and ``"control"`` to predictions ``[N]``
    (or attribute decisions ``[N, A]``: each pair is a sample); ``labels`` is what
    "right" means.
    """
    seen = [v for v in ("original", *versions, "control") if v in preds]
    return Classification(
        label_source=label_source,
        n_base_right=int((preds["base"] == labels).sum()),
        asr=M.classification_asr(preds["base"], preds["encrypted"], labels),
        control_asr=M.classification_asr(preds["base"], preds["control"], labels) if "control" in preds
        else float("nan"),
        full_asr=M.classification_asr(preds["base"], preds["full"], labels) if "full" in preds else float("nan"),
        accuracy={v: M.accuracy(preds[v], labels) for v in seen},
        agreement_with_base={v: M.agreement(preds[v], preds["base"]) for v in seen if v != "base"},
    )


class Evaluator:
    """Measures one method on a list of :class:`Sample` at each scale (see the module docstring).

    Args:
        decoder: a :class:`~.protocol.VersionDecoder` (``PSICDecoder(model, key)``), or a
            :class:`~psic_adapter.PSICModel` (then ``key`` is the owner's key, or None).
        target: the frozen target (:func:`psic_adapter.targets.build_target`).
    """

    def __init__(self, decoder, target, key=None, config: Optional[EvalConfig] = None, device: str = "cpu",
                 progress: bool = True):
        if not isinstance(decoder, VersionDecoder):
            decoder = PSICDecoder(decoder, key=key)
        elif key is not None:
            raise ConfigError("give the key to the decoder (PSICDecoder(model, key)), not to the Evaluator")
        self.decoder, self.target = decoder, target
        self.cfg = config or EvalConfig()
        self.device = torch.device(device)
        self.progress = progress
        self.judge = Judge(target, self.cfg)
        self.class_names, self.prompts = self.judge.class_names, self.judge.prompts
        self.gallery: List[GalleryRow] = []

    # --------------------------------------------------------------- helpers
    def predict(self, x: Tensor) -> Tensor:
        """Top-1 class of each image in ``x`` (same size batch)."""
        return self.judge.predict(x)

    def predict_versions(self, images: Dict[str, Tensor]) -> Dict[str, int]:
        """Top-1 of each version of one image, in one batch (:meth:`Judge.predict_versions`)."""
        return self.judge.predict_versions(images)

    def label_name(self, index: int) -> str:
        return self.judge.label_name(index)

    def seconds_per_megapixel(self, samples: Sequence[Sample], side: int = 256, repeats: int = 3) -> float:
        """The median of ``repeats`` decodes of a ``side`` x ``side`` crop of the largest sample, timed here (after
        one warm-up of a small crop), per megapixel: what :func:`estimate_seconds` scales."""
        import statistics
        import time

        x = max(samples, key=lambda s: s.image.shape[-2] * s.image.shape[-1]).image
        x = x[..., :side, :side]
        self.decoder.decode(x[..., :64, :64])
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            self.decoder.decode(x)
            times.append(time.perf_counter() - t)
        return statistics.median(times) / (x.shape[-2] * x.shape[-1] / 1e6)

    def estimate(self, samples: Sequence[Sample]) -> float:
        """Seconds :meth:`run` will take on ``samples`` (:func:`estimate_seconds`, decodes timed here)."""
        return estimate_seconds(samples, self.cfg, self.seconds_per_megapixel(samples),
                                conditions=self.decoder.has_conditions)

    # ------------------------------------------------------------ the metrics
    def run(self, samples: Sequence[Sample], meta: Optional[Dict[str, Any]] = None) -> EvalResult:
        cfg = self.cfg
        if not samples:
            raise DataError("no evaluation images")
        scales = [scale_key(s) for s in cfg.scales]
        if len(set(scales)) != len(scales):
            raise ConfigError(f"evaluation scales repeat: {list(cfg.scales)}")
        primary = scale_key(cfg.primary) if cfg.primary else scales[0]
        if primary not in scales:
            raise ConfigError(f"the primary scale {primary!r} is not among the scales {scales}")
        perts = get_perturbations(codec=self.decoder.base_codec if "codec" in cfg.perturbations else None)
        for name in cfg.perturbations:
            if name not in perts:
                raise ConfigError(f"unknown perturbation {name!r} (known: {', '.join(perts)})")
        result = EvalResult(method=self.decoder.method, target=getattr(self.target, "name", ""),
                            versions={v: self.decoder.descriptions.get(v, v) for v in self.decoder.versions},
                            primary=primary, meta=dict(meta or {}))
        self.gallery = []
        for scale in scales:
            keep = scale == primary and self.decoder.has_conditions and (cfg.wrong_keys > 0 or cfg.attack_steps > 0)
            scaled = at_scale(samples, scale, cfg)
            robust = cfg.robustness_scales is None or scale in {scale_key(r) for r in cfg.robustness_scales}
            res, rows, kept = self._run_scale(scale, scaled, perts if robust else {}, keep=keep,
                                              gallery=scale == primary)
            result.scales[scale] = res
            result.per_image.extend(rows)
            if kept:
                originals, decoded, labels, base_pred = kept
                attack = dict(decoder=self.decoder, judge=self.judge, config=cfg, originals=originals,
                              decoded=decoded, labels=labels, base_pred=base_pred, progress=self.progress)
                if cfg.wrong_keys > 0:
                    result.wrong_keys = wrong_keys(**attack)
                if cfg.attack_steps > 0:
                    result.whitebox = whitebox(**attack)
        return result

    def _run_scale(self, scale: str, samples: Sequence[Sample], perts, keep: bool, gallery: bool):
        cfg = self.cfg
        measured = Measurements(self.decoder, cfg, scale, judge=self.target, gallery=self.gallery if gallery else [])
        versions = measured.versions
        seen = ["original", *versions, "control"]
        preds: Dict[str, List[int]] = {v: [] for v in seen}
        pert_preds: Dict[str, Dict[str, List[int]]] = {p: {v: [] for v in ("base", "encrypted", "control")}
                                                       for p in cfg.perturbations if p in perts}
        kept_orig, kept_dec = [], []
        features: Dict[str, List[Tensor]] = {v: [] for v in versions}
        retrieval = self._wants_retrieval(samples)
        for s in bar(samples, f"eval {scale}", self.progress):
            images, d = measured.measure(s, row={"label": s.label})
            row = measured.rows[-1]
            answers = {}
            for v, p in self.judge.predict_versions({"original": s.image, **images}).items():
                preds[v].append(p)
                answers[v] = self.judge.label_name(p)
            for v in seen:
                row[f"top1_{v}"] = answers[v]
            for pname in pert_preds:
                served = ("base", "encrypted", "control")
                out = self.judge.predict(perts[pname](torch.cat([images[v] for v in served])))
                for v, p in zip(served, out.tolist()):
                    pert_preds[pname][v].append(int(p))
            if retrieval:
                with torch.no_grad():
                    for v in versions:
                        features[v].append(self.target.image_features(images[v].to(self.target.device)).float().cpu())
            if gallery:
                measured.add_gallery(s, images, answers)
            if keep:
                kept_orig.append(s.image)
                kept_dec.append(d)
        rows = measured.rows
        t = {v: torch.tensor(p) for v, p in preds.items()}
        given = torch.tensor([s.label for s in samples])
        # dataset labels index ImageNet-1k: usable where the target decides among those 1000 classes
        if len(self.class_names) == 1000 and bool((given >= 0).any()):
            labels = torch.where(given >= 0, given, t["original"])
            label_source = ("dataset labels" if bool((given >= 0).all())
                            else "dataset labels where given, else the target's answer on the original image")
        else:
            labels, label_source = t["original"], "the target's answer on the original image"
        cls = classification_of(t, labels, versions, label_source)
        for v in ("base", "encrypted", "control"):  # per image, so that a subset's ASR can be counted again
            for row, right in zip(rows, (t[v] == labels).tolist()):
                row[f"{v}_right"] = bool(right)
        rob = {}
        for pname, pp in pert_preds.items():
            pb, pe, pc = (torch.tensor(pp[v]) for v in ("base", "encrypted", "control"))
            rob[pname] = Robustness(M.classification_asr(pb, pe, labels), M.classification_asr(pb, pc, labels),
                                    int((pb == labels).sum()))
        photos = photos_of(samples)
        res = ScaleResult(
            scale=scale, description=describe_scale(scale, self.cfg, photos), n_images=len(samples), n_photos=photos,
            bpp=measured.bpp_stats(), quality=measured.quality_stats(),
            downsampling=Stat.of(measured.factors), classification=cls, robustness=rob,
            retrieval=self._retrieval(samples, features, versions) if retrieval else None,
        )
        kept = (kept_orig, kept_dec, labels, t["base"]) if keep else None
        return res, rows, kept

    def _wants_retrieval(self, samples) -> bool:
        texts = [s.text for s in samples]
        return self.target.kind != "classifier" and len(texts) >= 2 and all(texts) and len(set(texts)) == len(texts)

    def _retrieval(self, samples, features, versions) -> Dict[str, Any]:
        texts = [s.text for s in samples]
        with torch.no_grad():
            tf = self.target.text_features(texts).float().cpu()
        idx = torch.arange(len(texts))
        hits = {v: M.retrieval_hits(torch.cat(features[v]), tf, idx) for v in versions}
        out = {f"recall_{v}": M.recall_at_k(hits[v]) for v in versions}
        out["asr"] = M.retrieval_asr(hits["base"], hits["encrypted"])
        return out
