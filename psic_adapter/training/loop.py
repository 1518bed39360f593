"""The training loop every trainer of this project shares (PSIC's, the BAvAFT baseline's).

The seeded, sharded, resumable stream of batches; the tqdm bar; the JSON-lines
log; checkpoints (:mod:`.checkpoints`: no pickle) holding the counters, the RNG
states, the recipe and whatever the trainer adds; bit-exact resume that refuses
a changed recipe and keeps the log free of repeated steps; refusing to
overwrite a finished run; multi-process (DDP) helpers.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, OverwriteError, PSICError, show
from ..types import PathLike
from .config import RESUMABLE_CHANGES

CHECKPOINT_NAME = "checkpoint.safetensors"


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


def dist_info():
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
    """True on CPUs with bf16 units (Intel AMX, AVX512-BF16 as on AMD Zen 4), where bf16 autocast pays off
    (by how much, measured: docs/benchmarks.md)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        try:
            if bool(getattr(torch.cpu, probe)()):
                return True
        except (AttributeError, RuntimeError):
            pass
    return False


def bf16_pays_off(device: torch.device) -> bool:
    """Where bf16 autocast is worth it (what ``amp="auto"`` turns on): CUDA, and CPUs with bf16 units."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_units())


def psnr_of_mse(mse: Tensor) -> float:
    m = float(mse)
    return 100.0 if m <= 1e-10 else 10.0 * math.log10(1.0 / m)


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

    def validate(self) -> Dict[str, Any]:
        """Fields of a validation record, every ``val_every`` steps (none by default)."""
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
            progress = self._check_progress(state, path)
            self.load_checkpoint_state(state, path)
            _set_rng_state(state["rng"])
            self.step_count, self.epoch, self.batch_in_epoch = progress
        except PSICError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise PSICError(f"{path}: this checkpoint does not fit the run ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        self._trim_log(self.step_count)

    def _check_progress(self, state: Dict[str, Any], path: Path):
        """``(step, epoch, batch_in_epoch)`` of a checkpoint: counts, consistent with each other and with the
        scheduler's own count, and not past ``steps`` (a planted count would skip the training, exit 0)."""
        counts = [state["step"], state["epoch"], state["batch_in_epoch"]]
        for name, v in zip(("step", "epoch", "batch_in_epoch"), counts):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise PSICError(f"{path}: its {name} {show(v)} is not a count: not a checkpoint of this run")
        step, epoch, batch_in_epoch = counts
        scheduler = state.get("scheduler")
        done = scheduler.get("last_epoch") if isinstance(scheduler, dict) else step
        if epoch > step or batch_in_epoch > step or done != step:
            raise PSICError(f"{path}: its counts disagree (step {step}, epoch {epoch}, batch {batch_in_epoch}, "
                            f"scheduler {show(done)}): the checkpoint was edited or is corrupted")
        if step > self.cfg.steps:
            raise PSICError(f"{path}: the checkpoint is at step {step}, past the {self.cfg.steps} steps asked for: "
                            f"ask for more than {step} steps to go on training")
        return step, epoch, batch_in_epoch

    def _check_same_recipe(self, saved, path: Path) -> None:
        """A resumed run keeps its recipe: only :data:`RESUMABLE_CHANGES` may differ.

        A setting that the checkpoint does not name was added to the config after the run started; a new
        setting's default is the behaviour from before it existed, so it reads as that default."""
        if not isinstance(saved, dict):
            raise PSICError(f"{path}: the checkpoint does not say how its run was trained")
        now = self.cfg.to_dict()
        try:
            defaults = type(self.cfg)().to_dict()
        except Exception:  # noqa: BLE001 - a config class without defaults for every field: compare as saved
            defaults = {}
        saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
        changed = sorted(k for k in set(now) | set(saved)
                         if k not in RESUMABLE_CHANGES and _plain(saved.get(k)) != _plain(now.get(k)))
        if changed:
            diffs = ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
            raise PSICError(f"--resume with another recipe than the checkpoint's ({diffs}): resume with the same "
                            "settings, or start a new run in another --out")

    def _trim_log(self, step: int) -> None:
        """Drop log records past the checkpoint's step (they are about to be redone), so that none repeats."""
        from ..fileio import atomic_write_text, regular_or_absent

        if not self.is_main:
            return
        log = regular_or_absent(self.out_dir / "log.jsonl", "training log")  # never read or rewritten through a link
        if not log.is_file():
            return
        kept = []
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by the interruption
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                kept.append(line)
        atomic_write_text(log, "".join(k + "\n" for k in kept), force=True)

    # ---- data and log
    def _batches(self) -> Iterator[Dict[str, Any]]:
        from ..data import make_loader

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
            from ..fileio import open_append

            self._log_fh = open_append(self.out_dir / "log.jsonl", "training log")  # never through a link
        self._log_fh.write(json.dumps(record) + "\n")
        self._log_fh.flush()

    def prepare_out_dir(self, resume: bool = False, force: bool = False) -> None:
        if not self.is_main:
            return
        from ..fileio import regular_or_absent

        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise PSICError(f"{self.out_dir} is a file: --out is the run's folder")
        done = self.out_dir.joinpath(*self.done_marker)
        if not resume and done.exists() and not force:
            raise OverwriteError(f"{done.parent} exists (use --force to overwrite, or --resume)")
        log = regular_or_absent(self.out_dir / "log.jsonl", "training log")  # a link would write elsewhere
        if not resume and log.exists():
            if not force:
                raise OverwriteError(f"{log} exists (use --force to start over, or --resume)")
            log.unlink()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PSICError(f"{self.out_dir}: cannot make the run's folder ({exc.strerror})") from None

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
                loss = last.get("loss")
                if isinstance(loss, float) and not math.isfinite(loss):  # the weights are gone: save none of them
                    raise PSICError(f"the loss became {loss} at step {self.step_count}: training stopped, nothing "
                                    "saved from this step (lower the learning rates, or resume from the last "
                                    "checkpoint)")
                seen += batch["image"].shape[0] * self.world
                bar.update(1)
                if self.step_count % cfg.log_every == 0 or self.step_count == cfg.steps:
                    elapsed = time.perf_counter() - t0
                    self._log({"step": self.step_count, "epoch": self.epoch, **last, **self.log_fields(),
                               "img_per_s": seen / max(elapsed, 1e-9)})
                    bar.set_postfix({k: f"{last[k]:.3g}" for k in self.postfix_keys if k in last})
                val_every = getattr(cfg, "val_every", 0)
                if val_every and (self.step_count % val_every == 0 or self.step_count == cfg.steps) and self.is_main:
                    record = self.validate()
                    if record:
                        self._log({"step": self.step_count, "validation": True, **record})
                if cfg.checkpoint_every and self.step_count % cfg.checkpoint_every == 0 and self.is_main:
                    self.save_checkpoint()
        except BaseException:  # a NaN loss, a full disk, Ctrl-C: the log is closed on the way out
            self._close_log()
            raise
        finally:
            bar.close()
        try:
            return self.finish(last)
        finally:
            self._close_log()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
