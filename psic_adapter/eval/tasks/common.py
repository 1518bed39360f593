"""What every task shares: streaming the versions of each image, and turning them into an :class:`EvalResult`.

Every task has one signature, ``task(decoder, judge, root, *, config, limit, progress, gallery, **options)``:
``decoder`` is a :class:`~..protocol.VersionDecoder` (PSIC or BAvAFT), ``judge``
the model that reads the decodes (a target, or a captioner), ``root`` the data.
Each returns an :class:`~..record.EvalResult` with one scale (``"native"``: the
task's images at their own size), its quality, its classification (with the
control) where the task has classes, and the task's own numbers in
``ScaleResult.task``. A ``gallery`` list, when given, receives the first
images' versions for the report (:class:`~..runner.GalleryRow`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from ...errors import ConfigError
from .. import metrics as M
from ..record import Classification, EvalResult, ScaleResult, Stat
from ..runner import EvalConfig, GalleryRow, Sample, control_of, mix_seed

SCALE = "native"


def subset(n: int, limit: Optional[int], seed: int) -> List[int]:
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


def bar(it, desc: str, progress: bool, total: Optional[int] = None):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, disable=not progress, leave=False, total=total)


class TaskStream:
    """Decodes images one at a time: their versions and control, bpp, PSNR / MS-SSIM, rows, gallery."""

    def __init__(self, decoder, config: Optional[EvalConfig] = None, task: str = "task", judge=None,
                 gallery: Optional[List[GalleryRow]] = None):
        self.decoder = decoder
        self.cfg = config or EvalConfig()
        self.task = task
        # the factor by which a target's preprocessing shrinks each image (none for a captioner)
        self.short = getattr(judge, "resize_size", None) or getattr(judge, "image_size", None)
        self.factors: List[float] = []
        self.versions = list(decoder.versions)
        self.bpp: Dict[str, List[float]] = {v: [] for v in self.versions}
        self.quality: Dict[str, Dict[str, List[float]]] = {v: {"psnr": [], "ms_ssim": []} for v in self.versions}
        self.quality["control"] = {"psnr": []}
        self.rows: List[Dict[str, Any]] = []
        self.gallery: List[GalleryRow] = gallery if gallery is not None else []

    def decode(self, sample: Sample) -> Dict[str, Tensor]:
        """The versions of ``sample`` and its control (``{"base", "encrypted", ["full"], "control"}``)."""
        d = self.decoder.decode(sample.image)
        images = dict(d.images)
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, self.task, len(self.rows)))
        images["control"] = control_of(images["base"], images["encrypted"], g)
        row: Dict[str, Any] = {"scale": SCALE, "name": sample.name, "size": list(d.size)}
        if self.short:
            row["downsampling"] = min(sample.image.shape[-2:]) / float(self.short)
            self.factors.append(row["downsampling"])
        for v in self.versions:
            self.bpp[v].append(d.bpp[v])
        row["bpp"] = d.bpp.get("encrypted")
        for v in [*self.versions, "control"]:
            p = float(M.psnr(images[v], sample.image)[0])
            self.quality[v]["psnr"].append(p)
            row[f"psnr_{v}"] = p
            if v != "control":
                q = float(M.ms_ssim(images[v], sample.image)[0])
                self.quality[v]["ms_ssim"].append(q)
                row[f"ms_ssim_{v}"] = q
        self.rows.append(row)
        return images

    def add_gallery(self, sample: Sample, images: Dict[str, Tensor], answers: Dict[str, str]) -> None:
        """Keep this image for the report's rows (the first ``config.grid_images``)."""
        if len(self.gallery) >= self.cfg.grid_images:
            return
        row = self.rows[-1]
        self.gallery.append(GalleryRow(sample.name, {"original": sample.image, **{v: images[v] for v in self.versions}},
                                       answers, {v: row[f"psnr_{v}"] for v in self.versions}))

    def result(self, target_name: str, classification: Optional[Classification], task: Dict[str, Any],
               meta: Optional[Dict[str, Any]] = None, description: str = "") -> EvalResult:
        scale = ScaleResult(
            scale=SCALE, description=description or "whole images at their own size", n_images=len(self.rows),
            bpp={v: Stat.of(b) for v, b in self.bpp.items()},
            quality={v: {k: Stat.of(vals) for k, vals in q.items()} for v, q in self.quality.items()},
            downsampling=Stat.of(self.factors),
            classification=classification or Classification(label_source=f"the {self.task} task has no classes"),
            task=task,
        )
        return EvalResult(method=self.decoder.method, target=target_name,
                          versions={v: self.decoder.descriptions.get(v, v) for v in self.versions},
                          scales={SCALE: scale}, primary=SCALE, task=self.task, per_image=self.rows,
                          meta=dict(meta or {}))
