"""Training BAvAFT: the trigger and the encoder against a frozen target, on the project's training loop."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ...bitstream.container import PAD_MULTIPLE
from ...bitstream.images import crop_to, pad_to_multiple
from ...errors import ConfigError, FingerprintMismatchError, PSICError
from ...training import losses
from ...training.balance import DynamicBalance
from ...training.config import COMPRESSAI_LAMBDAS
from ...training.loop import TrainingLoop, psnr_of_mse
from ...training.objectives import OBJECTIVES, EncryptionObjective
from .model import CONFIG_NAME, FORMAT, BAvAFT

PathLike = Union[str, os.PathLike]
CHECKPOINT_NAME = "bavaft_checkpoint.safetensors"


@dataclass
class BAvAFTTrainConfig:
    """Hyper-parameters of a BAvAFT run (names as :class:`~psic_adapter.training.TrainConfig`'s).

    Args:
        steps, batch_size, crop: optimisation steps, batch, square crop size.
        lr: the encoder's learning rate (g_a, h_a); 1e-5 as the project's stage 2
            (fine-tuning pretrained codec weights: Adam at 1e-4 moved the clean
            mode by ~1 dB and changed its top-1 in 30 steps here).
        trigger_lr: the trigger network's (a fresh network).
        lmbda: RD lambda (``lmbda * 255**2 * MSE``); default CompressAI's for the quality.
        objective: the attack: "uaeo", "margin", "naive" or "authors" (as the Trainer's).
        s, margin: UAEO temperature, margin objective's margin (logits).
        rate_weight, attack_weight, distortion_weight: the priors of the poisoned
            rate, the attack and the poisoned distortion (relative to the clean RD loss).
        balance: "dynamic" (:class:`DynamicBalance`) or "fixed" (the priors).
        balance_beta, balance_floor, balance_min, balance_max: its EMA factor,
            floor (fraction of a term's first magnitude) and weight clip.
        clip_max_norm: gradient clipping (1.0 as the project).
        lr_milestones: fractions of ``steps`` where both learning rates drop 10x.
        amp: "auto" (bf16 on CUDA), "bf16" or "off".
    """

    steps: int = 1000
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-5
    trigger_lr: float = 1e-3
    lmbda: Optional[float] = None
    objective: str = "uaeo"
    s: float = 0.1
    margin: float = 5.0
    rate_weight: float = 1.0
    attack_weight: float = 1.0
    distortion_weight: float = 1.0
    balance: str = "dynamic"
    balance_beta: float = 0.9
    balance_floor: float = 0.1
    balance_min: float = 1e-3
    balance_max: float = 1e3
    clip_max_norm: float = 1.0
    lr_milestones: Sequence[float] = ()
    amp: str = "auto"
    num_workers: int = 0
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 10

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.balance not in ("dynamic", "fixed"):
            raise ConfigError(f"balance must be 'dynamic' or 'fixed', not {self.balance!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ConfigError("amp must be auto|bf16|off")
        for name in ("steps", "batch_size", "crop"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.batch_size < 2 and self.objective in ("uaeo", "authors"):
            raise ConfigError("the UAEO objective compares captions within a batch: use batch_size >= 2")

    def resolved_lmbda(self, quality: Optional[int] = None) -> float:
        return self.lmbda if self.lmbda is not None else COMPRESSAI_LAMBDAS.get(quality, 0.0067)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d


def _split_likelihoods(lik: Any, n: int) -> Tuple[Any, Any]:
    """Split every likelihood tensor (nested dicts/lists) at batch index ``n``."""
    if isinstance(lik, Tensor):
        return lik[:n], lik[n:]
    if isinstance(lik, Mapping):
        parts = {k: _split_likelihoods(v, n) for k, v in lik.items()}
        return {k: a for k, (a, _) in parts.items()}, {k: b for k, (_, b) in parts.items()}
    if isinstance(lik, (list, tuple)):
        parts = [_split_likelihoods(v, n) for v in lik]
        return [a for a, _ in parts], [b for _, b in parts]
    raise ConfigError(f"unexpected likelihoods of type {type(lik).__name__}")


class BAvAFTTrainer(TrainingLoop):
    """Fit a :class:`BAvAFT` (trigger network + encoder) against a frozen target.

    Shares the project's training loop (:class:`~psic_adapter.training.TrainingLoop`:
    seeded epochs, JSON-lines log, checkpoints, resume) and its encryption
    objectives (:class:`~psic_adapter.training.objectives.EncryptionObjective`, ensembles
    included), and replaces the model side: one batched codec forward of
    ``[x, poison(x)]`` per step, the loss of the module docstring, Adam with two
    groups ("encoder": ``lr``, "trigger": ``trigger_lr``), gradient clipping,
    MultiStepLR. Single process (no DDP).

    Writes ``out_dir/bavaft/`` (:meth:`BAvAFT.save_pretrained`), ``log.jsonl``
    and ``bavaft_checkpoint.safetensors`` (resumable).
    """

    done_marker = ("bavaft", CONFIG_NAME)
    checkpoint_name = CHECKPOINT_NAME
    postfix_keys = ("loss", "psnr_clean", "psnr_poisoned", "attack")

    def __init__(self, model: BAvAFT, target, dataset, config: BAvAFTTrainConfig, out_dir: PathLike,
                 quality: Optional[int] = None, device: Optional[str] = None, progress: bool = True,
                 recipe: Optional[Dict[str, Any]] = None):
        if not isinstance(model, BAvAFT):
            raise ConfigError("BAvAFTTrainer takes a BAvAFT model")
        if not isinstance(config, BAvAFTTrainConfig):
            raise ConfigError("BAvAFTTrainer takes a BAvAFTTrainConfig")
        self._init_loop(dataset, config, out_dir, device, progress, recipe)
        self.model, self.target = model, target
        self.quality = quality
        cuda = self.device.type == "cuda"
        self.objective = EncryptionObjective(target, config.objective, amp=(cuda and config.amp == "auto") or config.amp == "bf16",
                                             device_type=self.device.type)
        self.lmbda = config.resolved_lmbda(quality)
        model.to(self.device)
        target.to(self.device)
        self.param_groups = [
            {"params": model.encoder_parameters(), "lr": config.lr, "name": "encoder"},
            {"params": model.trigger_parameters(), "lr": config.trigger_lr, "name": "trigger"},
        ]
        self.optimizer = torch.optim.Adam(self.param_groups)
        milestones = sorted({max(1, int(f * config.steps)) for f in config.lr_milestones})
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=milestones, gamma=0.1)
        self.balance = DynamicBalance(
            {"rate_poisoned": config.rate_weight, "attack": config.attack_weight,
             "dist_poisoned": config.distortion_weight},
            anchor="rd_clean", mode=config.balance, beta=config.balance_beta, floor=config.balance_floor,
            w_min=config.balance_min, w_max=config.balance_max,
        )

    @property
    def bar_desc(self) -> str:
        return "BAvAFT"

    # --------------------------------------------------------------- one step
    def step(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """One optimisation step; returns the loss terms, weights and PSNRs as floats."""
        cfg, model = self.cfg, self.model
        model.train()
        x = batch["image"].to(self.device, non_blocking=True)
        texts = batch.get("text") or [""] * x.shape[0]
        n = x.shape[0]
        views = self.objective.view_for_encryption(x, texts)

        x_p = model.poison(x)
        x_in, size = pad_to_multiple(torch.cat([x, x_p]), PAD_MULTIPLE)
        with self.objective.autocast():
            out = model.codec(x_in)
        x_hat = crop_to(out["x_hat"].float(), size)
        xh_clean, xh_pois = x_hat[:n], x_hat[n:]
        lik_clean, lik_pois = _split_likelihoods(out["likelihoods"], n)
        num_pixels = n * x_in.shape[-2] * x_in.shape[-1]
        scale = self.lmbda * 255.0**2
        bpp_clean = losses.rate_loss(lik_clean, num_pixels)
        bpp_pois = losses.rate_loss(lik_pois, num_pixels)
        mse_clean = F.mse_loss(xh_clean, x)
        mse_pois = F.mse_loss(xh_pois, x)
        rd_clean = bpp_clean + scale * mse_clean
        attack = self.objective.encryption_loss(xh_pois, views)
        parts = {"rate_poisoned": bpp_pois, "attack": attack, "dist_poisoned": scale * mse_pois}
        weights = self.balance.update({"rd_clean": float(rd_clean.detach()),
                                       **{k: float(v.detach()) for k, v in parts.items()}})
        loss = rd_clean + sum(weights[k] * v for k, v in parts.items())

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_max_norm) if cfg.clip_max_norm else None
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1

        rec = {
            "loss": float(loss.detach()),
            "rd_clean": float(rd_clean.detach()),
            "bpp_clean": float(bpp_clean.detach()),
            "bpp_poisoned": float(bpp_pois.detach()),
            "mse_clean": float(mse_clean.detach()),
            "mse_poisoned": float(mse_pois.detach()),
            "attack": float(attack.detach()),
            "trigger_linf": float((x_p.detach() - x).abs().max()),
        }
        rec["psnr_clean"] = psnr_of_mse(torch.tensor(rec["mse_clean"]))
        rec["psnr_poisoned"] = psnr_of_mse(torch.tensor(rec["mse_poisoned"]))
        rec["psnr_trigger"] = psnr_of_mse(F.mse_loss(x_p.detach(), x))
        rec.update({f"w_{k}": float(v) for k, v in weights.items()})
        if grad_norm is not None:
            rec["grad_norm"] = float(grad_norm)
        return rec

    def log_fields(self) -> Dict[str, Any]:
        return {"lr_encoder": self.optimizer.param_groups[0]["lr"], "lr_trigger": self.optimizer.param_groups[1]["lr"]}

    # ------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "model_config": self.model.config.to_dict(),
            "base_fingerprint": self.model.base_fingerprint,
            "state": {k: v.detach().cpu() for k, v in self.model.bavaft_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "balance": self.balance.state_dict(),
        }

    def load_checkpoint_state(self, state: Dict[str, Any], path: Path) -> None:
        if state.get("format") != FORMAT:
            raise PSICError(f"{path}: not a BAvAFT checkpoint")
        if state["base_fingerprint"] != self.model.base_fingerprint:
            raise FingerprintMismatchError(f"{path} was made on another base codec")
        if state["model_config"] != self.model.config.to_dict():
            raise PSICError(f"{path} was made with another BAvAFT configuration: {state['model_config']}")
        self.model.load_bavaft_state_dict(state["state"])
        self.model.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.balance.load_state_dict(state["balance"])

    def finish(self, last: Dict[str, float]) -> Dict[str, Any]:
        """Save ``out_dir/bavaft`` and a final checkpoint."""
        self.model.eval()
        training = {
            **self.recipe,
            "train_config": self.cfg.to_dict(),
            "lmbda": self.lmbda,
            "steps_done": self.step_count,
            "target": getattr(self.target, "name", type(self.target).__name__),
            "final": {k: v for k, v in last.items() if isinstance(v, float)},
        }
        out = self.model.save_pretrained(self.out_dir / "bavaft", training=training, force=True)
        self.save_checkpoint()
        return {"steps": self.step_count, "last": last, "bavaft": str(out), "log": str(self.out_dir / "log.jsonl")}


def train_bavaft(model: BAvAFT, target, dataset, config: Optional[BAvAFTTrainConfig], out_dir: PathLike,
                 resume: bool = False, force: bool = False, **kwargs) -> Dict[str, Any]:
    """Train ``model`` (trigger + encoder) against ``target`` on ``dataset``; see :class:`BAvAFTTrainer`.

    ``kwargs`` go to the trainer (``quality``, ``device``, ``progress``, ``recipe``).
    Returns ``{"steps", "last", "bavaft" (the saved folder), "log"}``.
    """
    trainer = BAvAFTTrainer(model, target, dataset, config or BAvAFTTrainConfig(), out_dir, **kwargs)
    return trainer.train(resume=resume, force=force)
