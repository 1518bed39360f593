"""The result of an evaluation, typed: what ``metrics.json`` holds and what reports read.

One schema (:data:`SCHEMA_VERSION`) for every producer (the runner, every task,
the BAvAFT baseline) and every reader (the HTML report, the model card, the
terminal table, the demo): a metric is added in one place, here.

* :class:`EvalResult` -- one method on one set of images: its versions, one
  :class:`ScaleResult` per evaluation scale, the key checks, and per-image rows.
* :class:`ScaleResult` -- bit rate, quality per version, what the target
  decided (:class:`Classification`, with the control beside the ASR), the
  same after each perturbation (:class:`Robustness`), retrieval for CLIP, and
  the factor by which the target downsampled the images.
* :class:`Headline` -- the few numbers a person reads first.

``EvalResult.to_dict()`` is JSON (NaN written as ``null``), ``EvalResult.from_dict``
reads it back and checks the schema version.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import PSICError
from ..types import PathLike

SCHEMA_VERSION = 2
METRICS_NAME = "metrics.json"
NAN = float("nan")


def _num(v: Any) -> float:
    return NAN if v is None else float(v)


@dataclass
class Stat:
    """Mean, standard deviation, count, min and max of per-image values (NaN skipped)."""

    mean: float = NAN
    std: float = NAN
    n: int = 0
    min: float = NAN
    max: float = NAN

    @classmethod
    def of(cls, values) -> "Stat":
        vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not vals:
            return cls()
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return cls(mean, std, len(vals), min(vals), max(vals))

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Stat":
        return cls(_num(d.get("mean")), _num(d.get("std")), int(d.get("n") or 0), _num(d.get("min")), _num(d.get("max")))


@dataclass
class Classification:
    """What the target decided on each version, against "right" answers.

    ``asr``: among the images whose base decode the target gets right, the share
    whose encrypted decode it gets wrong (paper, section 4.1). ``control_asr``:
    the same for the base decode plus Gaussian noise of the encrypted change's
    energy (per image): what any change of that size does. ``asr - control_asr``
    is what the adapter did.
    """

    label_source: str = ""
    n_base_right: int = 0
    asr: float = NAN
    control_asr: float = NAN
    full_asr: float = NAN
    accuracy: Dict[str, float] = field(default_factory=dict)  # per version, original and control
    agreement_with_base: Dict[str, float] = field(default_factory=dict)  # per version and control

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Classification":
        return cls(d.get("label_source", ""), int(d.get("n_base_right") or 0), _num(d.get("asr")),
                   _num(d.get("control_asr")), _num(d.get("full_asr")),
                   {k: _num(v) for k, v in (d.get("accuracy") or {}).items()},
                   {k: _num(v) for k, v in (d.get("agreement_with_base") or {}).items()})


@dataclass
class Robustness:
    """ASR (and its control) after a perturbation of the served image."""

    asr: float = NAN
    control_asr: float = NAN
    n_base_right: int = 0

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Robustness":
        return cls(_num(d.get("asr")), _num(d.get("control_asr")), int(d.get("n_base_right") or 0))


@dataclass
class ScaleResult:
    """One evaluation scale (whole images at their size, at a longer side of N px, or crops)."""

    scale: str
    description: str = ""
    n_images: int = 0
    n_photos: int = 0  # the photos the images come from (crops: fewer than the images; 0: as many as the images)
    bpp: Dict[str, Stat] = field(default_factory=dict)  # per version
    quality: Dict[str, Dict[str, Stat]] = field(default_factory=dict)  # version -> psnr / ms_ssim
    downsampling: Stat = field(default_factory=Stat)  # the factor the target's preprocessing applied
    classification: Classification = field(default_factory=Classification)
    robustness: Dict[str, Robustness] = field(default_factory=dict)
    retrieval: Optional[Dict[str, Any]] = None
    task: Dict[str, Any] = field(default_factory=dict)  # a task's own metrics (ImageNet, CelebA, captions)

    def psnr(self, version: str) -> float:
        q = self.quality.get(version)
        return q["psnr"].mean if q and "psnr" in q else NAN

    @property
    def photos(self) -> int:
        """How many photos the images come from (crops of 2 photos are 2 photos, whatever their number)."""
        return self.n_photos or self.n_images

    @property
    def crops(self) -> bool:
        """Whether the images are crops of fewer (or as many) photos."""
        return self.scale == "crops" or self.photos != self.n_images

    @property
    def images_text(self) -> str:
        """``"20 images"``, or ``"64 crops of 20 photos"`` where the images are crops."""
        if self.crops:
            return f"{self.n_images} crops of {self.photos} photo{'s' if self.photos != 1 else ''}"
        return f"{self.n_images} image{'s' if self.n_images != 1 else ''}"

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ScaleResult":
        return cls(
            scale=d["scale"], description=d.get("description", ""), n_images=int(d.get("n_images") or 0),
            n_photos=int(d.get("n_photos") or 0),
            bpp={k: Stat.from_dict(v) for k, v in (d.get("bpp") or {}).items()},
            quality={v: {m: Stat.from_dict(s) for m, s in q.items()} for v, q in (d.get("quality") or {}).items()},
            downsampling=Stat.from_dict(d.get("downsampling") or {}),
            classification=Classification.from_dict(d.get("classification") or {}),
            robustness={k: Robustness.from_dict(v) for k, v in (d.get("robustness") or {}).items()},
            retrieval=d.get("retrieval"), task=dict(d.get("task") or {}),
        )


@dataclass
class WrongKeys:
    """Random wrong-key conditions fed to the network directly (bypassing the key check)."""

    n_keys: int = 0
    asr: Stat = field(default_factory=Stat)
    asr_min: float = NAN
    psnr: Stat = field(default_factory=Stat)
    max_abs_diff_to_encrypted: float = NAN

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "WrongKeys":
        return cls(int(d.get("n_keys") or 0), Stat.from_dict(d.get("asr") or {}), _num(d.get("asr_min")),
                   Stat.from_dict(d.get("psnr") or {}), _num(d.get("max_abs_diff_to_encrypted")))


@dataclass
class WhiteBox:
    """An attacker with the adapter and not the key, optimising one condition for all images."""

    steps: int = 0
    images_optimised_on: int = 0
    asr: float = NAN
    agreement_with_base: float = NAN
    psnr: Stat = field(default_factory=Stat)
    confidence_start: float = NAN
    confidence_end: float = NAN

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "WhiteBox":
        return cls(int(d.get("steps") or 0), int(d.get("images_optimised_on") or 0), _num(d.get("asr")),
                   _num(d.get("agreement_with_base")), Stat.from_dict(d.get("psnr") or {}),
                   _num(d.get("confidence_start")), _num(d.get("confidence_end")))


@dataclass
class Headline:
    """The numbers a person reads first, at the result's primary scale."""

    method: str
    scale: str
    images: int
    bpp: float
    psnr_base: float
    psnr_encrypted: float
    psnr_full: float
    asr: float
    control_asr: float
    n_base_right: int
    full_agreement_with_base: float
    downsampling: float
    asr_by_scale: Dict[str, float] = field(default_factory=dict)
    control_by_scale: Dict[str, float] = field(default_factory=dict)
    asr_by_perturbation: Dict[str, float] = field(default_factory=dict)
    control_by_perturbation: Dict[str, float] = field(default_factory=dict)

    @property
    def db_under_base(self) -> float:
        return self.psnr_base - self.psnr_encrypted

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["db_under_base"] = self.db_under_base
        return d


@dataclass
class EvalResult:
    """One method measured on one set of images (see the module docstring)."""

    method: str = "PSIC"
    target: str = ""
    versions: Dict[str, str] = field(default_factory=dict)  # version -> what it is
    scales: Dict[str, ScaleResult] = field(default_factory=dict)
    primary: str = ""
    wrong_keys: Optional[WrongKeys] = None
    whitebox: Optional[WhiteBox] = None
    task: str = "classify"
    per_image: List[Dict[str, Any]] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    # ------------------------------------------------------------ reading
    @property
    def main(self) -> ScaleResult:
        """The primary scale's result."""
        if self.primary in self.scales:
            return self.scales[self.primary]
        if not self.scales:
            raise PSICError("this evaluation result holds no scale")
        return next(iter(self.scales.values()))

    def headline(self) -> Headline:
        m = self.main
        cls = m.classification
        return Headline(
            method=self.method, scale=m.scale, images=m.n_images,
            bpp=m.bpp["encrypted"].mean if "encrypted" in m.bpp else NAN,
            psnr_base=m.psnr("base"), psnr_encrypted=m.psnr("encrypted"), psnr_full=m.psnr("full"),
            asr=cls.asr, control_asr=cls.control_asr, n_base_right=cls.n_base_right,
            full_agreement_with_base=cls.agreement_with_base.get("full", NAN),
            downsampling=m.downsampling.mean,
            asr_by_scale={k: s.classification.asr for k, s in self.scales.items()},
            control_by_scale={k: s.classification.control_asr for k, s in self.scales.items()},
            asr_by_perturbation={k: r.asr for k, r in m.robustness.items()},
            control_by_perturbation={k: r.control_asr for k, r in m.robustness.items()},
        )

    # --------------------------------------------------------- serialising
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["headline"] = self.headline().to_dict() if self.scales else None
        return to_jsonable(d)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EvalResult":
        if not isinstance(d, dict):
            raise PSICError("an evaluation result must be a JSON object")
        schema = d.get("schema")
        if schema != SCHEMA_VERSION:
            raise PSICError(f"evaluation result schema {schema!r} is not this psic-adapter's ({SCHEMA_VERSION}); "
                            "evaluate again with this version")
        try:
            return cls(
                method=d.get("method", "PSIC"), target=d.get("target", ""), versions=dict(d.get("versions") or {}),
                scales={k: ScaleResult.from_dict(v) for k, v in (d.get("scales") or {}).items()},
                primary=d.get("primary", ""),
                wrong_keys=WrongKeys.from_dict(d["wrong_keys"]) if d.get("wrong_keys") else None,
                whitebox=WhiteBox.from_dict(d["whitebox"]) if d.get("whitebox") else None,
                task=d.get("task", "classify"), per_image=list(d.get("per_image") or []),
                meta=dict(d.get("meta") or {}), schema=schema,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PSICError(f"not a psic evaluation result ({exc.__class__.__name__}: {exc})") from None

    def save(self, path: PathLike, force: bool = False) -> Path:
        from ..fileio import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", force=force)


def load_results(path: PathLike) -> List[EvalResult]:
    """The results in a ``metrics.json`` (or a report folder holding one): a list, one per method/adapter.
    A file of :meth:`EvalResult.save` (one result) reads as a list of one."""
    from ..fileio import read_limited

    p = Path(path)
    if p.is_dir():
        p = p / METRICS_NAME
    try:
        data = json.loads(read_limited(p, 64 << 20, what="metrics file").decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PSICError(f"{p}: not valid JSON ({exc.__class__.__name__})") from None
    if isinstance(data, dict) and "runs" not in data and "scales" in data:  # one result (EvalResult.save)
        return [EvalResult.from_dict(data)]
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not runs:
        raise PSICError(f"{p}: not a psic metrics file (no 'runs')")
    return [EvalResult.from_dict(r) for r in runs]


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts (NaN and inf -> null)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "tolist") and not isinstance(obj, (bytes, str)):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (bytes, str)):
        return to_jsonable(obj.item())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)
