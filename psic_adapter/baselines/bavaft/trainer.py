"""Training BAvAFT: the trigger and the encoder against a frozen target, on the project's training loop."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ...codec.padding import PAD_MULTIPLE, crop_to, pad_to_multiple
from ...errors import ConfigError, FingerprintMismatchError, PSICError
from ...options import opt
from ...training import losses
from ...training.balance import DynamicBalance
from ...training.config import COMPRESSAI_LAMBDAS
from ...training.loop import TrainingLoop, psnr_of_mse
from ...training.objectives import OBJECTIVES, EncryptionObjective
from .model import CONFIG_NAME, FORMAT, BAvAFT
from ...types import PathLike

CHECKPOINT_NAME = "bavaft_checkpoint.safetensors"


@dataclass
class BAvAFTTrainConfig:
    """Hyper-parameters of a BAvAFT run (names as :class:`~psic_adapter.training.TrainConfig`'s). Each field
    carries its help: ``psic bavaft train``'s flags are made from this class, so the command line and the API
    train the same baseline (the one docs/results.md measured: 200 steps, batch 8, 128 px crops, the margin
    objective)."""

    steps: int = opt(200, "optimisation steps")
    batch_size: int = opt(8, "images per step", flag="--batch")
    crop: int = opt(128, "square crop size, px")
    lr: float = opt(1e-5, "the encoder's learning rate (g_a, h_a; 1e-5 as the project's stage 2: it fine-tunes "
                          "pretrained weights)")
    trigger_lr: float = opt(1e-3, "the trigger network's learning rate (a fresh network)")
    lmbda: Optional[float] = opt(None, "rate-distortion lambda, lmbda * 255^2 * MSE (default: CompressAI's for the "
                                       "quality)")
    objective: str = opt("margin", "the attack: uaeo, naive, authors or margin (as psic train's)", choices=OBJECTIVES)
    s: float = opt(0.1, "UAEO temperature", flag="--uaeo-s")
    margin: float = opt(5.0, "margin of the margin objective, in logits")
    rate_weight: float = opt(1.0, "prior weight of the poisoned rate (relative to the clean RD loss)")
    attack_weight: float = opt(1.0, "prior weight of the attack")
    distortion_weight: float = opt(1.0, "prior weight of the poisoned distortion")
    balance: str = opt("dynamic", "dynamic (DynamicBalance) or fixed (the priors)", choices=("dynamic", "fixed"))
    balance_beta: float = opt(0.9, "the dynamic balance's EMA factor")
    balance_floor: float = opt(0.1, "the dynamic balance's floor (a fraction of a term's first magnitude)")
    balance_min: float = opt(1e-3, "the dynamic balance's smallest weight")
    balance_max: float = opt(1e3, "the dynamic balance's largest weight")
    clip_max_norm: float = opt(1.0, "gradient clipping")
    lr_milestones: Sequence[float] = opt((), "fractions of the steps where both learning rates drop 10x", metavar="F")
    amp: str = opt("auto", "bf16 autocast: auto (bf16 on CUDA), bf16, off", choices=("auto", "bf16", "off"))
    num_workers: int = opt(0, "DataLoader workers", flag="--workers")
    seed: int = opt(0, "seed of the data order and the trigger")
    checkpoint_every: int = opt(0, "save a resumable checkpoint every N steps (0: at the end only)")
    log_every: int = opt(10, "log.jsonl cadence, in steps")

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
