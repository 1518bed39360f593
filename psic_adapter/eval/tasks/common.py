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
from ..config import EvalConfig
from ..measure import GalleryRow, Measurements, Sample, bar  # noqa: F401 (bar: the tasks' progress bar)
from ..record import Classification, EvalResult, ScaleResult, Stat

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


class TaskStream(Measurements):
    """A task's images, measured one at a time by the one loop (:class:`~..measure.Measurements`: versions and
    control, bpp, PSNR / MS-SSIM, rows, gallery) at the task's one scale, and turned into an :class:`EvalResult`."""

    def __init__(self, decoder, config: Optional[EvalConfig] = None, task: str = "task", judge=None,
                 gallery: Optional[List[GalleryRow]] = None):
        super().__init__(decoder, config or EvalConfig(), SCALE, judge=judge, gallery=gallery, seed_name=task)
        self.task = task

    def decode(self, sample: Sample) -> Dict[str, Tensor]:
        """The versions of ``sample`` and its control (``{"base", "encrypted", ["full"], "control"}``)."""
        return self.measure(sample)[0]

    def result(self, target_name: str, classification: Optional[Classification], task: Dict[str, Any],
               meta: Optional[Dict[str, Any]] = None, description: str = "") -> EvalResult:
        scale = ScaleResult(
            scale=SCALE, description=description or "whole images at their own size", n_images=len(self.rows),
            bpp=self.bpp_stats(), quality=self.quality_stats(), downsampling=Stat.of(self.factors),
            classification=classification or Classification(label_source=f"the {self.task} task has no classes"),
            task=task,
        )
        return EvalResult(method=self.decoder.method, target=target_name,
                          versions={v: self.decoder.descriptions.get(v, v) for v in self.versions},
                          scales={SCALE: scale}, primary=SCALE, task=self.task, per_image=self.rows,
                          meta=dict(meta or {}))
