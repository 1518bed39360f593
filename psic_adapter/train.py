"""Training: the UAEO objective on the two-stage schedule, fast, resumable, multi-GPU.

:class:`Trainer` runs :mod:`~psic_adapter.schedule`'s phases on a
:class:`~psic_adapter.PSICModel` against a frozen :class:`~psic_adapter.targets.Target`:

* **full** steps decode with the owner's condition: distortion (+ rate in
  stage 1) and a *semantic guard*, ``KL(target(base decode) || target(full
  decode))``, that keeps the target's view of the full decode at the base
  codec's (stage 1: at the original image's). ``guard_weight=0`` is the
  paper's L2 alone, which lets the attack leak into the full version when the
  decoder itself trains;
* **encrypted** steps decode with the encrypted condition for part of the batch
  and random wrong-key conditions for the rest (so that any wrong key decodes
  to the encrypted version), with the encryption objective (UAEO by default)
  and a weighted distortion.

Speed: the text tower runs once per caption (cached by the target); frozen
parts get no gradients (stage 2 encodes under ``no_grad``); on CUDA, bf16
autocast and channels_last; optional ``torch.compile``; DataLoader workers
with pinned memory; ``schedule="joint"`` decodes both versions from one
encode in one batched synthesis.

Multi-GPU: launch with ``torchrun --nproc_per_node=K -m psic_adapter.cli train ...``;
the codec side is wrapped in ``DistributedDataParallel`` and the data sharded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import losses
from .coding import PAD_MULTIPLE
from .errors import ConfigError, OverwriteError, PSICError
from .images import crop_to, pad_to_multiple
from .objectives import OBJECTIVES, EncryptionObjective, eot_mode
from .schedule import Phase, configure_trainable, phase_at

PathLike = Union[str, os.PathLike]

#: CompressAI's MSE lambdas by zoo quality (paper: "lambda ... to obtain models at different levels")
COMPRESSAI_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}
CHECKPOINT_NAME = "checkpoint.safetensors"
#: TrainConfig fields that a resumed run may change (the rest is the recipe, fixed for a run)
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "num_workers", "compile")


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (defaults: the paper's where it gives them).

    Args:
        stage: 1 (everything trains) or 2 (encoder and entropy models frozen).
        adapter_only: stage 2 with the base decoder frozen too (CLTG alone).
        steps, batch_size, crop: optimisation steps, batch, square crop size
            (paper: batch 128, 256x256).
        lr: base-codec parameters (paper: 1e-4 stage 1, 1e-5 stage 2).
        adapter_lr: CLTG parameters (default: ``lr`` in stage 1; 1e-3 in stage 2,
            where a fresh adapter meets a trained decoder).
        aux_lr: CompressAI's auxiliary optimiser for the entropy bottleneck quantiles.
        lmbda: rate-distortion lambda (``lmbda * 255**2 * MSE``); default: CompressAI's
            lambda for the base quality (0.0067 when unknown).
        objective: "uaeo" (paper eq. 9), "naive" (ablation: push away from the own
            caption), "authors" (their code's variant), or "margin" (untargeted
            Carlini-Wagner margin on the target's logits).
        s: UAEO scale factor.
        encryption_weight: weight of the encryption objective.
        encrypted_distortion: weight of the encrypted version's distortion
            relative to the full version's (default: 1 in stage 1, as the paper;
            0.3 in stage 2, where the paper has none).
        guard_weight: weight of the semantic guard on full steps (0: the paper's L2 alone;
            default: 1 when the decoder trains, 0 for adapter-only training, where the
            base decoder is frozen and L2 alone keeps the full version at the base).
            Its reference is the base codec's decode (a frozen copy of the decoder
            when the decoder trains); in stage 1, the original image.
        margin: margin of the "margin" objective, in logits.
        budget_db: stage 2: a per-image PSNR budget of the encrypted version under the
            base decode. Beyond it a hinge ``budget_weight * relu(MSE_enc / MSE_base -
            10**(budget_db / 10))`` pushes back hard; within it the encryption objective
            has the room to itself (``encrypted_distortion`` still prefers less).
        budget_weight: weight of that hinge.
        eot: expectation over transformation: the target sees the encrypted decode
            through a random transformation each step, so that the attack survives
            what a platform does to a served image: ``"basic"`` (or ``True``:
            differentiable resize, blur, noise), ``"real"`` (thumbnails, real JPEG,
            blur, the base codec again; straight-through gradients), ``"none"``.
        views: ``"crops"``: random ``crop`` x ``crop`` crops of the images, encoded at
            every step; ``"scale"`` (stage 2): the images encoded once at each of
            ``train_sizes`` (longer side, px) and square windows of ``view_sizes``
            (min, max px) cut from the latents (:class:`~psic_adapter.views.LatentViews`):
            every scale from a native crop to a whole photo as the target sees it.
        wrong_key_fraction: share of each encrypted batch decoded with random wrong-key conditions.
        schedule: "alternate" (paper: full and encrypted steps alternate) or
            "joint" (both in every step, from one encode).
        clip_max_norm: gradient clipping (paper: 1.0).
        lr_milestones: fractions of ``steps`` at which the learning rates drop 10x.
        amp: "auto" (bf16 autocast on CUDA and on CPUs with bf16 matrix units, AMX:
            about 4x faster there), "bf16" or "off". channels_last: "auto" (where amp
            is), "on", "off".
        compile: ``torch.compile`` the synthesis transform and the target.
        num_workers: DataLoader workers (pinned memory on CUDA).
        checkpoint_every: save a resumable checkpoint every N steps (0: at the end only).
        log_every: JSON-lines log cadence (every term of the loss, bpp, PSNR).
    """

    stage: int = 2
    adapter_only: bool = False
    steps: int = 1000
    batch_size: int = 128
    crop: int = 256
    lr: Optional[float] = None
    adapter_lr: Optional[float] = None
    aux_lr: float = 1e-3
    lmbda: Optional[float] = None
    objective: str = "uaeo"
    s: float = 0.1
    encryption_weight: float = 1.0
    encrypted_distortion: Optional[float] = None
    guard_weight: Optional[float] = None
    margin: float = 5.0
    budget_db: Optional[float] = None
    budget_weight: float = 100.0
    eot: Union[bool, str] = False
    views: str = "crops"
    view_sizes: Sequence[int] = (224, 512)
    train_sizes: Sequence[int] = (384, 512, 768)
    wrong_key_fraction: float = 0.5
    schedule: str = "alternate"
    clip_max_norm: float = 1.0
    lr_milestones: Sequence[float] = ()
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    num_workers: int = 0
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 10

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, not {self.stage!r}")
        if self.stage == 1 and self.adapter_only:
            raise ConfigError("adapter_only is a stage-2 option")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.schedule not in ("alternate", "joint"):
            raise ConfigError(f"schedule must be 'alternate' or 'joint', not {self.schedule!r}")
        if self.amp not in ("auto", "bf16", "off") or self.channels_last not in ("auto", "on", "off"):
            raise ConfigError("amp must be auto|bf16|off and channels_last auto|on|off")
        for name in ("steps", "batch_size", "crop"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.budget_db is not None and (self.stage != 2 or self.budget_db <= 0):
            raise ConfigError("budget_db is a positive number of dB, for stage 2 (its reference is the base decode)")
        if not 0.0 <= self.wrong_key_fraction <= 1.0:
            raise ConfigError("wrong_key_fraction must be in [0, 1]")
        self.eot = eot_mode(self.eot)
        if self.views not in ("crops", "scale"):
            raise ConfigError(f"views must be 'crops' or 'scale', not {self.views!r}")
        if self.views == "scale" and self.stage != 2:
            raise ConfigError("views='scale' encodes the images once: it needs stage 2 (a frozen encoder)")
        if len(self.view_sizes) != 2 or not 16 <= int(self.view_sizes[0]) <= int(self.view_sizes[1]):
            raise ConfigError(f"view_sizes must be (min, max) pixels, not {self.view_sizes!r}")
        if not self.train_sizes or min(int(v) for v in self.train_sizes) < int(self.view_sizes[0]):
            raise ConfigError("train_sizes must be at least the smallest view size")
        if self.batch_size < 2 and self.objective in ("uaeo", "authors"):
            raise ConfigError("the UAEO objective compares captions within a batch: use batch_size >= 2")

    # resolved defaults -------------------------------------------------------
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (1e-4 if self.stage == 1 else 1e-5)

    def resolved_adapter_lr(self) -> float:
        if self.adapter_lr is not None:
            return self.adapter_lr
        return self.resolved_lr() if self.stage == 1 else 1e-3

    def resolved_lmbda(self, quality: Optional[int] = None) -> float:
        if self.lmbda is not None:
            return self.lmbda
        return COMPRESSAI_LAMBDAS.get(quality, 0.0067)

    def resolved_guard_weight(self) -> float:
        if self.guard_weight is not None:
            return self.guard_weight
        return 0.0 if self.adapter_only else 1.0

    def resolved_encrypted_distortion(self) -> float:
        if self.encrypted_distortion is not None:
            return self.encrypted_distortion
        return 1.0 if self.stage == 1 else 0.3

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("lr_milestones", "view_sizes", "train_sizes"):
            d[k] = [v for v in getattr(self, k)]
        return d


# --------------------------------------------------------------------- helpers
class EpochSampler(torch.utils.data.Sampler):
    """Seeded per-epoch order, sharded across ranks, that can start mid-epoch (resume)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world
        return order[self.rank * per_rank : (self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.start :])

    def __len__(self) -> int:
        return max(0, self.n // self.world - self.start)


def _dist_info():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env(device: str) -> bool:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    return True


def cpu_has_bf16_units() -> bool:
    """True on CPUs with bf16 matrix units (Intel AMX), where bf16 autocast pays off."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def _psnr(mse: Tensor) -> float:
    m = float(mse)
    return 100.0 if m <= 1e-10 else 10.0 * math.log10(1.0 / m)


class _CodecStep(nn.Module):
    """The trainable codec side of one step (what DDP wraps).

    Stage 1: the whole codec forward on images ``x`` (rate and distortion).
    Stage 2: the synthesis of latents ``y_hat`` (encoded once, without
    gradients, by the caller) under the stacked conditions, in one batch.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inp: Tensor, condition: Tensor, stage: int, repeats: int = 1):
        if repeats > 1:
            inp = inp.repeat(repeats, 1, 1, 1)
        if stage == 1:
            out = self.model(inp, condition=condition)
            return out["x_hat"], out["likelihoods"]
        return self.model.synthesize(inp, condition), None


# ------------------------------------------------------------------ the loop
def _rng_state() -> Dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(rng: Dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])


def _plain(v):
    """Lists and tuples compare equal (a recipe read back from JSON has lists)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class TrainingLoop:
    """What every trainer of this project shares (PSIC's :class:`Trainer`, the BAvAFT baseline).

    The seeded, sharded, resumable stream of batches; the tqdm bar; the
    JSON-lines log; checkpoints that hold the counters, the RNG states and
    whatever the subclass adds; bit-exact resume; refusing to overwrite a
    finished run. Subclasses implement :meth:`step`, :meth:`checkpoint_state`,
    :meth:`load_checkpoint_state` and :meth:`finish`.
    """

    #: the file whose presence marks a finished run in ``out_dir``
    done_marker = ("adapter", "adapter_config.json")
    checkpoint_name = CHECKPOINT_NAME
    postfix_keys: Sequence[str] = ("loss",)

    def _init_loop(self, dataset, config, out_dir: PathLike, device: Optional[str], progress: bool,
                   recipe: Optional[Dict[str, Any]], rank: int = 0, world: int = 1) -> None:
        self.dataset, self.cfg = dataset, config
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.recipe = dict(recipe or {})
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rank, self.world, self.is_main = rank, world, rank == 0
        self.sampler = EpochSampler(len(dataset), config.seed, shuffle=True, rank=rank, world=world)
        self.step_count = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self._log_fh = None

    # ---- what a subclass provides
    def step(self, batch: Dict[str, Any]) -> Dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def checkpoint_state(self) -> Dict[str, Any]:  # pragma: no cover - abstract
        """Model and optimiser state to put in a checkpoint."""
        raise NotImplementedError

    def load_checkpoint_state(self, state: Dict[str, Any], path: Path) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self, last: Dict[str, float]) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_fields(self) -> Dict[str, Any]:
        """Extra fields of each log record (learning rates ...)."""
        return {}

    @property
    def bar_desc(self) -> str:
        return "train"

    # ---- checkpoints
    def save_checkpoint(self, path: Optional[PathLike] = None) -> Path:
        from .checkpoints import save_state

        path = Path(path or self.out_dir / self.checkpoint_name)
        state = {
            "step": self.step_count,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "train_config": self.cfg.to_dict(),
            "rng": _rng_state(),
            **self.checkpoint_state(),
        }
        return save_state(path, state)

    def load_checkpoint(self, path: Optional[PathLike] = None) -> None:
        from .checkpoints import load_state

        path = Path(path or self.out_dir / self.checkpoint_name)
        if not path.is_file():
            raise PSICError(f"{path}: no checkpoint to resume from")
        state = load_state(path)
        try:
            self._check_same_recipe(state.get("train_config"), path)
            self.load_checkpoint_state(state, path)
            _set_rng_state(state["rng"])
            self.step_count = int(state["step"])
            self.epoch = int(state["epoch"])
            self.batch_in_epoch = int(state["batch_in_epoch"])
        except PSICError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise PSICError(f"{path}: this checkpoint does not fit the run ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        self._trim_log(self.step_count)

    def _check_same_recipe(self, saved, path: Path) -> None:
        """A resumed run keeps its recipe: only :data:`RESUMABLE_CHANGES` may differ."""
        if not isinstance(saved, dict):
            raise PSICError(f"{path}: the checkpoint does not say how its run was trained")
        now = self.cfg.to_dict()
        changed = sorted(k for k in set(now) | set(saved)
                         if k not in RESUMABLE_CHANGES and _plain(saved.get(k)) != _plain(now.get(k)))
        if changed:
            diffs = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
            raise PSICError(f"--resume with another recipe than the checkpoint's ({diffs}): resume with the same "
                            "settings, or start a new run in another --out")

    def _trim_log(self, step: int) -> None:
        """Drop log records past the checkpoint's step (they are about to be redone), so that none repeats."""
        log = self.out_dir / "log.jsonl"
        if not self.is_main or not log.is_file():
            return
        kept = []
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by the interruption
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                kept.append(line)
        from .fileio import atomic_write_text

        atomic_write_text(log, "".join(k + "\n" for k in kept), force=True)

    # ---- data and log
    def _batches(self) -> Iterator[Dict[str, Any]]:
        from .data import make_loader

        pin = self.device.type == "cuda"
        while True:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * self.cfg.batch_size)
            loader = make_loader(self.dataset, self.cfg.batch_size, shuffle=False, num_workers=self.cfg.num_workers,
                                 pin_memory=pin, drop_last=True, sampler=self.sampler, seed=self.cfg.seed)
            got = False
            for batch in loader:
                got = True
                self.batch_in_epoch += 1
                yield batch
            if not got and self.batch_in_epoch == 0:
                raise ConfigError(
                    f"the dataset ({len(self.dataset)} items) is smaller than one batch of {self.cfg.batch_size} "
                    f"per process: lower the batch size (or add repeats of the sample photos)"
                )
            self.epoch += 1
            self.batch_in_epoch = 0

    def _log(self, record: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        if self._log_fh is None:
            self._log_fh = open(self.out_dir / "log.jsonl", "a")
        self._log_fh.write(json.dumps(record) + "\n")
        self._log_fh.flush()

    def prepare_out_dir(self, resume: bool = False, force: bool = False) -> None:
        if not self.is_main:
            return
        done = self.out_dir.joinpath(*self.done_marker)
        if not resume and done.exists() and not force:
            raise OverwriteError(f"{done.parent} exists (use --force to overwrite, or --resume)")
        log = self.out_dir / "log.jsonl"
        if not resume and log.exists():
            if not force:
                raise OverwriteError(f"{log} exists (use --force to start over, or --resume)")
            log.unlink()
        self.out_dir.mkdir(parents=True, exist_ok=True)

    # ---- the loop
    def train(self, resume: bool = False, force: bool = False) -> Dict[str, Any]:
        """Run ``steps`` optimisation steps (tqdm, JSON-lines log, checkpoints), then :meth:`finish`."""
        from tqdm.auto import tqdm

        self.prepare_out_dir(resume=resume, force=force)
        if resume:
            self.load_checkpoint()
        else:  # the noise of training (quantisation ...) is the seed's, per rank
            seed = self.cfg.seed * 1_000_003 + self.rank
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step_count, disable=not (self.progress and self.is_main),
                   desc=self.bar_desc, unit="step")
        batches = self._batches()
        t0, seen = time.perf_counter(), 0
        last: Dict[str, float] = {}
        try:
            while self.step_count < cfg.steps:
                batch = next(batches)
                last = self.step(batch)
                seen += batch["image"].shape[0] * self.world
                bar.update(1)
                if self.step_count % cfg.log_every == 0 or self.step_count == cfg.steps:
                    elapsed = time.perf_counter() - t0
                    self._log({"step": self.step_count, "epoch": self.epoch, **last, **self.log_fields(),
                               "img_per_s": seen / max(elapsed, 1e-9)})
                    bar.set_postfix({k: f"{last[k]:.3g}" for k in self.postfix_keys if k in last})
                if cfg.checkpoint_every and self.step_count % cfg.checkpoint_every == 0 and self.is_main:
                    self.save_checkpoint()
        finally:
            bar.close()
        result = self.finish(last)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        return result


# --------------------------------------------------------------------- trainer
class Trainer(TrainingLoop):
    """Fit a PSIC adapter (and, by stage, the codec) against a target model.

    Args:
        model: a :class:`~psic_adapter.PSICModel` whose active adapter was made
            with the owner's key (the full condition is needed).
        target: a frozen target (:func:`psic_adapter.targets.build_target`).
        dataset: items ``{"image", "text"}`` of equal size (give a crop).
        config: :class:`TrainConfig`.
        out_dir: where ``adapter/``, ``codec.safetensors`` (when the codec trains),
            ``log.jsonl`` and ``checkpoint.safetensors`` go.
        quality: the base codec's quality level (picks the default lambda).
        device: "cpu", "cuda", ... (default: CUDA when available).
    """

    postfix_keys = ("loss", "psnr_full", "psnr_encrypted", "encryption")

    def __init__(self, model, target, dataset, config: TrainConfig, out_dir: PathLike,
                 quality: Optional[int] = None, device: Optional[str] = None, progress: bool = True,
                 recipe: Optional[Dict[str, Any]] = None):
        from .adapter import PSICModel

        if not isinstance(model, PSICModel):
            raise ConfigError("Trainer takes a PSICModel (wrap_model(codec, key=...))")
        rank, world = _dist_info()
        self._init_loop(dataset, config, out_dir, device, progress, recipe, rank, world)
        self.model, self.target = model, target
        self.quality = quality if quality is not None else model.config.base_model.get("quality")
        cuda = self.device.type == "cuda"
        fast = cuda or (self.device.type == "cpu" and cpu_has_bf16_units())
        self.amp = (fast and config.amp == "auto") or config.amp == "bf16"
        self.channels_last = (fast and config.channels_last == "auto") or config.channels_last == "on"
        # wrong keys and EOT draws: a generator of its own, saved in checkpoints
        self.generator = torch.Generator().manual_seed(config.seed * 7919 + self.rank)
        self.objective = EncryptionObjective(target, config.objective, s=config.s, margin=config.margin,
                                             amp=self.amp, device_type=self.device.type, eot=config.eot,
                                             generator=self.generator, codec=model.base)
        # Where the decoder trains, the full version is a trained condition with its guard; an
        # adapter fitted to a frozen codec decodes the full version as the base codec itself.
        trains_decoder = config.stage == 1 or not config.adapter_only
        if trains_decoder and model.config.full_version == "base":
            model.config.full_version = "condition"
        self.full_bypass = model.config.full_version == "base"
        self.views = None

        self.full_cond = model.full_condition().to(self.device)  # raises without the key
        if self.world > 1:
            self.full_cond = self._sync_adapter_identity(self.full_cond)
        self.lmbda = config.resolved_lmbda(self.quality)
        self.enc_dist_w = config.resolved_encrypted_distortion()

        model.to(self.device)
        target.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
            target.to(memory_format=torch.channels_last)
        self.groups = configure_trainable(model, config.stage, config.adapter_only)
        self.trains_codec = bool(self.groups["base"])
        # The guard keeps the target's view of the full decode at the base decode's.
        # Stage 2 with a training decoder needs the decoder as it was: a frozen copy.
        self.reference_g_s = None
        self.guard_weight = config.resolved_guard_weight()
        if config.stage == 2 and self.trains_codec and self.guard_weight > 0:
            self.reference_g_s = _frozen_copy(model.base.g_s)
        if config.compile:
            model.base.g_s.compile()
            target.image_features = torch.compile(target.image_features)

        self.step_module: nn.Module = _CodecStep(model)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.step_module = DDP(
                self.step_module,
                device_ids=[self.device.index] if cuda else None,
                broadcast_buffers=False,
                find_unused_parameters=config.stage == 1,  # the quantiles only see the aux loss
            )
        param_groups = []
        if self.groups["base"]:
            param_groups.append({"params": self.groups["base"], "lr": config.resolved_lr(), "name": "base"})
        param_groups.append({"params": self.groups["adapter"], "lr": config.resolved_adapter_lr(), "name": "adapter"})
        self.optimizer = torch.optim.Adam(param_groups)
        self.aux_optimizer = torch.optim.Adam(self.groups["aux"], lr=config.aux_lr) if self.groups["aux"] else None
        milestones = sorted({max(1, int(f * config.steps)) for f in config.lr_milestones})
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=milestones, gamma=0.1)

    @property
    def bar_desc(self) -> str:
        return f"stage {self.cfg.stage}{' adapter-only' if self.cfg.adapter_only else ''}"

    def _batches(self) -> Iterator[Dict[str, Any]]:
        if self.cfg.views != "scale":
            yield from super()._batches()
            return
        from .views import LatentViews

        if self.views is None:
            lo, hi = (int(v) for v in self.cfg.view_sizes)
            self.views = LatentViews(self.model, self.dataset, sizes=self.cfg.train_sizes, min_view=lo, max_view=hi,
                                     seed=self.cfg.seed, progress=self.progress and self.is_main)
        while True:
            yield self.views.batch(self.step_count, self.cfg.batch_size, rank=self.rank)

    def _sync_adapter_identity(self, full_cond: Tensor) -> Tensor:
        """Make every rank train rank 0's adapter: its config (salt, key check) and full condition.

        Each process that wraps the codec itself draws its own salt, hence its own
        owner's condition; DDP broadcasts parameters, not these. Without this,
        ranks > 0 train the full version on another condition than the one saved.
        """
        import torch.distributed as dist

        from .config import PSICConfig

        obj = [self.model.config.to_dict(), full_cond.detach().cpu()]
        dist.broadcast_object_list(obj, src=0, device=self.device if self.device.type == "cuda" else None)
        if self.rank != 0:
            name = self.model.active_adapter
            self.model.psic_configs[name] = PSICConfig.from_dict(obj[0])
            self.model._owner_conditions[name] = obj[1][0].clone()
            self.model._key_cache = {k: v for k, v in self.model._key_cache.items() if k[0] != name}
        return obj[1].to(self.device)

    @torch.no_grad()
    def _reference_decode(self, y_hat: Tensor) -> Tensor:
        """The base codec's decode of ``y_hat`` (the decoder as it was before training)."""
        with self.objective.autocast():
            if self.reference_g_s is not None:
                return self.reference_g_s(y_hat).float()
            with self.model.disable_adapter():
                return self.model.base.g_s(y_hat).float()

    def _encrypted_conditions(self, n: int) -> Tensor:
        cond = self.model.encrypted_condition().to(self.device).expand(n, -1).clone()
        k = int(round(self.cfg.wrong_key_fraction * n))
        if k:
            cond[n - k :] = self.model.wrong_key_conditions(k, generator=self.generator).to(self.device)
        return cond

    # --------------------------------------------------------------- one step
    def step(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """One optimisation step on ``batch``; returns the loss terms as floats."""
        cfg, obj = self.cfg, self.objective
        x = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        texts = batch.get("text") or [""] * x.shape[0]
        n = x.shape[0]
        if cfg.schedule == "joint":
            versions = ["full", "encrypted"]
            name = f"S{cfg.stage}-joint"
        else:
            phase: Phase = phase_at(cfg.stage, self.step_count)
            versions = [phase.version]
            name = phase.name
        if self.full_bypass:  # the full version is the base decode: nothing of it to train
            versions, name = ["encrypted"], f"S{cfg.stage}-2"
        conds = [self.full_cond.expand(n, -1) if v == "full" else self._encrypted_conditions(n) for v in versions]
        guard = self.guard_weight > 0 and "full" in versions
        encrypted = "encrypted" in versions
        views = None
        if encrypted or guard:  # only the target passes this step needs (stage 2's guard needs none)
            views = obj.clean_view(x, texts, feats=encrypted and not obj.uses_logits,
                                   logits=(encrypted and obj.uses_logits) or (guard and cfg.stage == 1))

        # crops of any size: pad to the codec's multiple of 64, crop the decodes back
        x_ref = None
        if "y_hat" in batch:  # a latent window (views="scale"): the decode is exactly the window
            x_in, size = x, tuple(x.shape[-2:])
            y_hat = batch["y_hat"].to(self.device, non_blocking=True)
            if self.channels_last:
                y_hat = y_hat.contiguous(memory_format=torch.channels_last)
        else:
            x_in, size = pad_to_multiple(x, PAD_MULTIPLE)
        if cfg.stage == 2:
            if "y_hat" not in batch:
                with torch.no_grad():
                    y_hat = self.model.analyze(x_in)["y_hat"]  # frozen encoder: rounding, no graph
            need_ref = guard or (encrypted and cfg.budget_db is not None)
            x_ref = crop_to(self._reference_decode(y_hat), size) if need_ref else None
            ref_logits = obj.reference_logits(x_ref, views) if guard else None
            with obj.autocast():
                x_hat, likelihoods = self.step_module(y_hat, torch.cat(conds), 2, repeats=len(versions))
        else:
            ref_logits = obj.reference_logits(None, views) if guard else None
            x_hat, likelihoods = self.step_module(x_in, torch.cat(conds), 1, repeats=len(versions))
        x_hat = crop_to(x_hat.float(), size)
        parts = dict(zip(versions, x_hat.split(n)))
        scale = self.lmbda * 255.0**2
        terms: Dict[str, Tensor] = {}
        loss = x_hat.new_zeros(())
        if likelihoods is not None:
            bpp = losses.rate_loss(likelihoods, n * x_in.shape[-2] * x_in.shape[-1] * len(versions)) * len(versions)
            terms["bpp"] = bpp / len(versions)
            loss = loss + bpp
        if "full" in parts:
            mse = F.mse_loss(parts["full"], x)
            terms["mse_full"] = mse
            loss = loss + scale * mse
            if guard:
                g = obj.guard_loss(parts["full"], views, ref_logits)
                terms["guard"] = g
                loss = loss + self.guard_weight * g
        if x_ref is not None:
            terms["mse_base"] = F.mse_loss(x_ref, x).detach()
        if "encrypted" in parts:
            mse = F.mse_loss(parts["encrypted"], x)
            terms["mse_encrypted"] = mse
            enc = obj.encryption_loss(parts["encrypted"], views)
            terms["encryption"] = enc
            loss = loss + self.enc_dist_w * scale * mse + cfg.encryption_weight * enc
            if cfg.budget_db is not None:
                over = _budget_excess(parts["encrypted"], x_ref, x, cfg.budget_db)
                terms["budget_excess"] = over
                loss = loss + cfg.budget_weight * over
        terms["loss"] = loss

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if cfg.clip_max_norm:
            terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.clip_max_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.aux_optimizer is not None:
            self.aux_optimizer.zero_grad(set_to_none=True)
            aux = self.model.base.aux_loss()
            aux.backward()
            if self.world > 1:
                import torch.distributed as dist

                for p in self.groups["aux"]:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= self.world
            self.aux_optimizer.step()
            terms["aux"] = aux.detach()
        self.step_count += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["phase"] = name
        for v in ("full", "encrypted", "base"):
            if f"mse_{v}" in out:
                out[f"psnr_{v}"] = _psnr(torch.tensor(out[f"mse_{v}"]))
        return out

    def log_fields(self) -> Dict[str, Any]:
        return {"lr": self.optimizer.param_groups[-1]["lr"]}

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> Dict[str, Any]:
        base_state = {}
        if self.trains_codec:
            base_state = {k: v.detach().cpu() for k, v in self.model.base.state_dict().items()}
        return {
            "format": 1,
            "adapter_config": self.model.config.to_dict(),
            "adapter_state": self.model.adapter_state_dict(),
            "base_state": base_state,
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict() if self.aux_optimizer else None,
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_checkpoint_state(self, state: Dict[str, Any], path: Path) -> None:
        if "adapter_config" not in state:
            raise PSICError(f"{path} is not a PSIC training checkpoint")
        if state["adapter_config"]["salt"] != self.model.config.salt:
            raise PSICError(f"{path} belongs to another adapter (its salt differs): resume with the same adapter")
        self.model.psic_adapters[self.model.active_adapter].load_state_dict(state["adapter_state"])
        if state["base_state"]:
            # The entropy coder's tables (e.g. ``_quantized_cdf``) change size when
            # ``update()`` recomputes them; CompressAI only resizes empty ones.
            own = dict(self.model.base.named_buffers())
            for k, v in state["base_state"].items():
                if k in own and own[k].shape != v.shape:
                    own[k].resize_(v.shape)
            self.model.base.load_state_dict(state["base_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.aux_optimizer is not None and state["aux_optimizer"] is not None:
            self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])

    def finish(self, last: Dict[str, float]) -> Dict[str, Any]:
        """Save the adapter (+ the codec when it trained) and a final checkpoint."""
        from .codecs import fingerprint, save_codec

        self.model.eval()
        result: Dict[str, Any] = {"steps": self.step_count, "last": last}
        if not self.is_main:
            return result
        cfg = self.model.config
        if self.trains_codec:
            self.model.base.update(force=True)
            codec_path = save_codec(self.model.base, self.out_dir / "codec.safetensors")
            cfg.base_model["fingerprint"] = fingerprint(self.model.base)
            cfg.base_model["checkpoint"] = "codec.safetensors (trained with this adapter)"
            result["codec"] = str(codec_path)
        cfg.training = {
            **self.recipe,
            "train_config": self.cfg.to_dict(),
            "lmbda": self.lmbda,
            "steps_done": self.step_count,
            "target": getattr(self.target, "name", type(self.target).__name__),
            "final": {k: v for k, v in last.items() if isinstance(v, float)},
        }
        adapter_dir = self.model.save_pretrained(self.out_dir / "adapter", force=True)
        self.save_checkpoint()
        result["adapter"] = str(adapter_dir)
        result["log"] = str(self.out_dir / "log.jsonl")
        return result


def checkpoint_adapter_config(out_dir: PathLike):
    """The adapter config (salt, key check, ...) in ``out_dir``'s checkpoint, or ``None``.

    Resuming needs the adapter the checkpoint was made with: a freshly wrapped
    codec draws a new salt (``PSICModel(codec).add_adapter("default", config, key=key)``
    rebuilds it; the trainer then loads its weights from the checkpoint).
    """
    from .config import PSICConfig

    from .checkpoints import load_state

    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    state = load_state(path)
    try:
        return PSICConfig.from_dict(state["adapter_config"])
    except (KeyError, TypeError) as exc:
        raise PSICError(f"{path}: not a PSIC training checkpoint ({exc.__class__.__name__})") from None


def _budget_excess(x_enc: Tensor, x_ref: Tensor, x: Tensor, budget_db: float) -> Tensor:
    """Mean over images of ``relu(MSE(x_enc, x) / MSE(x_ref, x) - 10**(budget_db / 10))``.

    Zero while each encrypted decode is within ``budget_db`` of PSNR under the
    reference (base) decode of the same image.
    """
    dims = tuple(range(1, x.dim()))
    mse_enc = (x_enc - x).pow(2).mean(dims)
    mse_ref = (x_ref.detach() - x).pow(2).mean(dims).clamp_min(1e-8)
    return F.relu(mse_enc / mse_ref - 10.0 ** (budget_db / 10.0)).mean()


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy without forward hooks (no adapter acts on it), eval mode, no gradients."""
    import copy

    ref = copy.deepcopy(module)
    for m in ref.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    ref.requires_grad_(False)
    return ref.eval()


def train(model, target, dataset, config: TrainConfig, out_dir: PathLike, **kwargs) -> Dict[str, Any]:
    """Shorthand for ``Trainer(model, target, dataset, config, out_dir, **kwargs).train()``."""
    resume = kwargs.pop("resume", False)
    force = kwargs.pop("force", False)
    return Trainer(model, target, dataset, config, out_dir, **kwargs).train(resume=resume, force=force)
