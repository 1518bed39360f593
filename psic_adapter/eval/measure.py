"""The one measuring loop: each image's versions decoded, its control drawn, its quality and rate recorded.

:class:`Measurements` is what :class:`~.runner.Evaluator` (at each scale) and every task
(:mod:`.tasks`) run per image: :meth:`Measurements.measure` asks the
:class:`~.protocol.VersionDecoder` for the versions of one image, adds the **control**
(the base decode plus Gaussian noise of the encrypted change's energy, drawn from a seed of
the image's place), and records bpp, PSNR and MS-SSIM in a per-image row; the caller adds
what its judge says. :class:`Judge` is a target with the class names and prompts it decides
among: what the evaluator, the ImageNet task and the attacks ask for top-1 answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from . import metrics as M
from .config import EvalConfig
from .record import Stat


@dataclass
class Sample:
    name: str
    image: Tensor  # 1x3xHxW in [0, 1]
    text: str = ""
    label: int = -1
    photo: str = ""  # which photo this image is a crop of (an identity, not for display); "" for whole photos


@dataclass
class GalleryRow:
    """One image of the primary scale, for the report: its versions and what the target said."""

    name: str
    images: Dict[str, Tensor]  # original, base, full, encrypted (1x3xHxW)
    answers: Dict[str, str]
    psnr: Dict[str, float]


def bar(it, desc: str, progress: bool, total: Optional[int] = None):
    """A progress bar over ``it`` (silent unless ``progress``)."""
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, disable=not progress, leave=False, total=total)


def mix_seed(seed: int, scale: str, index: int) -> int:
    """A seed for draw ``index`` of ``scale``, the same on every platform."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{scale}/{index}".encode()).digest()[:8], "little") >> 1


def control_of(base: Tensor, encrypted: Tensor, generator: torch.Generator) -> Tensor:
    """The base decode plus Gaussian noise with the energy of ``encrypted - base`` (clamped to [0, 1])."""
    sigma = float((encrypted.float() - base.float()).pow(2).mean().sqrt())
    noise = torch.randn(base.shape, generator=generator, dtype=torch.float32)
    return (base.float() + sigma * noise).clamp(0, 1).to(base.dtype)


def target_class_names(target, config: EvalConfig) -> List[str]:
    """What the top-1 indices mean: given names, the target's, or ImageNet's (CLIP zero-shot)."""
    names = config.class_names or getattr(target, "class_names", None)
    if not names:
        from ..data import imagenet_class_names

        names = imagenet_class_names("clip")
    return [str(n).split(",")[0] for n in names]


class Judge:
    """A target and what its top-1 answers mean: its own classes (a classifier), or class prompts (CLIP zero-shot)."""

    def __init__(self, target, config: EvalConfig):
        self.target = target
        self.class_names = target_class_names(target, config)
        self.prompts = None if target.kind == "classifier" else [config.prompt.format(n) for n in self.class_names]

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Top-1 class of each image in ``x`` (same size batch)."""
        return self.target.logits(x.to(self.target.device), self.prompts).argmax(-1).cpu()

    def predict_versions(self, images: Dict[str, Tensor]) -> Dict[str, int]:
        """Top-1 of each version of one image, in one batch (a version that is another's tensor is not recomputed)."""
        unique: List[Tensor] = []
        where: Dict[str, int] = {}
        for v, x in images.items():
            for k, u in enumerate(unique):
                if u is x:
                    where[v] = k
                    break
            else:
                where[v] = len(unique)
                unique.append(x)
        out = self.predict(torch.cat(unique)).tolist()
        return {v: int(out[k]) for v, k in where.items()}

    def label_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)


def downsampling_of(judge, x: Tensor) -> Optional[float]:
    """The factor by which ``judge``'s preprocessing shrinks an image of ``x``'s size (None: it has no fixed size,
    a captioner)."""
    short = getattr(judge, "resize_size", None) or getattr(judge, "image_size", None)
    return min(x.shape[-2:]) / int(short) if short else None


class Measurements:
    """The per-image measurements of one stream of images (a scale, or a task's images); see the module docstring.

    Args:
        decoder: a :class:`~.protocol.VersionDecoder`.
        config: ``seed`` (the controls) and ``grid_images`` (the gallery) are read.
        scale: the rows' scale, and the name the control seeds are drawn under.
        judge: the model that reads the decodes (its input size gives the downsampling factor).
        gallery: where the first ``config.grid_images`` images' versions go (:class:`~.runner.GalleryRow`).
    """

    def __init__(self, decoder, config: EvalConfig, scale: str, judge=None, gallery: Optional[list] = None,
                 seed_name: Optional[str] = None):
        self.decoder, self.cfg, self.scale, self.judge = decoder, config, scale, judge
        self.seed_name = seed_name or scale
        self.versions = list(decoder.versions)
        self.bpp: Dict[str, List[float]] = {v: [] for v in self.versions}
        self.quality: Dict[str, Dict[str, List[float]]] = {v: {"psnr": [], "ms_ssim": []} for v in self.versions}
        self.quality["control"] = {"psnr": []}
        self.factors: List[float] = []
        self.rows: List[Dict[str, Any]] = []
        self.gallery: list = gallery if gallery is not None else []

    def measure(self, sample, row: Optional[Dict[str, Any]] = None):
        """Decode ``sample``'s versions, add its control, record its row (``row``: fields the caller puts after
        the size); returns ``(images, decoded)``: ``{"base", "encrypted", ["full"], "control"}`` and the
        :class:`~.protocol.Decoded`."""
        d = self.decoder.decode(sample.image)
        images = dict(d.images)
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, self.seed_name, len(self.rows)))
        images["control"] = control_of(images["base"], images["encrypted"], g)
        out: Dict[str, Any] = {"scale": self.scale, "name": sample.name, "size": list(d.size), **(row or {})}
        factor = downsampling_of(self.judge, sample.image)
        if factor is not None:
            out["downsampling"] = factor
            self.factors.append(factor)
        for v in self.versions:
            self.bpp[v].append(d.bpp[v])
        out["bpp"] = d.bpp.get("encrypted", next(iter(d.bpp.values())))
        for v in [*self.versions, "control"]:
            ps = float(M.psnr(images[v], sample.image)[0])
            self.quality[v]["psnr"].append(ps)
            out[f"psnr_{v}"] = ps
            if v != "control":  # the control's MS-SSIM says nothing new, and costs
                q = (float(M.ms_ssim(images[v], sample.image)[0]) if images[v] is not images["base"] or v == "base"
                     else out["ms_ssim_base"])
                self.quality[v]["ms_ssim"].append(q)
                out[f"ms_ssim_{v}"] = q
        if d.search is not None:  # the owner's per-photo shift: what its search saw on this photo
            out["shift_search"] = d.search
        self.rows.append(out)
        return images, d

    def add_gallery(self, sample, images: Dict[str, Tensor], answers: Dict[str, str],
                    row: Optional[Dict[str, Any]] = None) -> None:
        """Keep this image (its row: the last one, or ``row``) for the report's rows (the first ``grid_images``)."""
        if len(self.gallery) >= self.cfg.grid_images:
            return
        row = row if row is not None else self.rows[-1]
        self.gallery.append(GalleryRow(sample.name, {"original": sample.image, **{v: images[v] for v in self.versions}},
                                       answers, {v: row[f"psnr_{v}"] for v in self.versions}))

    def bpp_stats(self) -> Dict[str, Stat]:
        return {v: Stat.of(b) for v, b in self.bpp.items()}

    def quality_stats(self) -> Dict[str, Dict[str, Stat]]:
        return {v: {k: Stat.of(vals) for k, vals in q.items()} for v, q in self.quality.items()}


def photos_of(samples: Sequence[Any]) -> int:
    """How many photos ``samples`` come from (crops name theirs; a whole image is its own)."""
    return len({s.photo for s in samples if s.photo}) + sum(1 for s in samples if not s.photo)
