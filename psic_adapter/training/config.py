"""``TrainConfig``: the hyper-parameters of a training run, and the named recipes.

Every field carries its command-line help in its metadata: ``psic train``'s
flags are generated from this class (``psic_adapter.cli.train``), so a
default lives in one place.

Recipes (:data:`RECIPES`) are named sets of defaults, for the adapter
(:class:`~psic_adapter.adapter.PSICConfig`) and for training:

* ``"robust"`` (the default of stage-2 adapter-only fitting and of ``psic demo``):
  what was measured to hold at the scale of use (docs/results.md): the
  "spatial" modulation with a branch of 8 hidden channels (as strong as 32 at half
  the decode overhead: runs NR, docs/results.md), the untargeted margin objective, a 1 dB budget,
  views from native crops to whole photos as the target sees them, and the
  target shown the encrypted decode through thumbnails, JPEG and the codec.
* ``"paper"``: the paper's settings for comparison: bias CLTG, UAEO, fixed
  weights, 256 px crops, batch 128, no budget, no processing.

Explicit settings always win over a recipe's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..errors import ConfigError, show
from ..options import opt
from .objectives import OBJECTIVES, check_feature_weight, eot_mode

#: CompressAI's MSE lambdas by zoo quality (paper: "lambda ... to obtain models at different levels")
COMPRESSAI_LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}

#: TrainConfig fields that a resumed run may change (the rest is the recipe, fixed for a run)
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "num_workers", "compile",
                     "val_data", "val_every", "val_images", "val_size", "val_at_db")

#: how the PSNR budget acts: a hinge on each image's excess, or a controller that spends it
BUDGET_CONTROLS = ("hinge", "dual")
#: learning-rate schedules: 10x drops at lr_milestones, or a cosine decay after a linear warm-up
LR_SCHEDULES = ("step", "cosine")


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (defaults: the paper's where it gives them; see each field's help).

    A run that trains the base decoder (stage 1, and stage 2 without ``adapter_only``: :attr:`trains_decoder`)
    decodes the full version under the owner's condition: its adapter must say so with
    ``PSICConfig(full_version="condition")`` (:attr:`adapter_full_version`). The trainer refuses an adapter whose
    full version is the base decode rather than change it, since ``full_version`` is part of the adapter's
    fingerprint.
    """

    stage: int = opt(2, "1: codec and adapter train together (from scratch); 2: encoder and entropy models "
                        "frozen (fits an existing codec)", choices=(1, 2))
    adapter_only: bool = opt(False, "stage 2: train the CLTG parameters alone (the base decoder frozen; the "
                                    "full version is then the base decode exactly)")
    steps: int = opt(1000, "optimisation steps")
    batch_size: int = opt(128, "images per step (paper: 128)", flag="--batch")
    crop: int = opt(256, "square crop size of views='crops' (paper: 256)")
    lr: Optional[float] = opt(None, "codec learning rate (default: 1e-4 stage 1, 1e-5 stage 2, as the paper)")
    adapter_lr: Optional[float] = opt(None, "CLTG learning rate (default: lr in stage 1, 1e-3 in stage 2)")
    aux_lr: float = opt(1e-3, "CompressAI's auxiliary optimiser (entropy bottleneck quantiles, stage 1)")
    lmbda: Optional[float] = opt(None, "rate-distortion lambda, lmbda * 255^2 * MSE (default: CompressAI's for "
                                       "the quality)")
    objective: str = opt("uaeo", "encryption objective: uaeo (paper eq. 9), naive (ablation), authors (their "
                                 "code's variant), margin (untargeted margin on the target's logits)",
                         choices=OBJECTIVES)
    s: float = opt(0.1, "UAEO scale factor", flag="--uaeo-s")
    encryption_weight: float = opt(1.0, "weight of the encryption objective")
    encrypted_distortion: Optional[float] = opt(None, "weight of the encrypted version's distortion relative to "
                                                      "the full version's (default: 1 in stage 1, 0.3 in stage 2)")
    guard_weight: Optional[float] = opt(None, "semantic guard on the full version (default: 1 where the decoder "
                                              "trains, 0 otherwise; 0 is the paper's L2 alone)")
    margin: float = opt(5.0, "margin of the margin objective, in logits")
    feature_weight: float = opt(0.0, "margin objective: add this weight times a feature-level term (the cosine "
                                     "similarity of the target's inner feature maps of the encrypted decode with "
                                     "the original's, which it lowers); 0: the logits alone")
    budget_db: Optional[float] = opt(None, "stage 2: per-image PSNR budget of the encrypted version under the base "
                                           "decode, in dB (a hard hinge)")
    budget_weight: float = opt(100.0, "weight of the budget hinge")
    budget_control: str = opt("hinge", "hinge: punish each image's PSNR drop beyond --budget-db; dual: a Lagrange "
                                       "multiplier (dual ascent) holds the batch's mean drop at --budget-target-db, "
                                       "so the budget is spent, not only capped", choices=BUDGET_CONTROLS)
    budget_target_db: Optional[float] = opt(None, "budget_control=dual: the mean PSNR drop the controller aims at "
                                                  "(default: 0.9 x --budget-db)")
    dual_lr: float = opt(0.5, "budget_control=dual: the multiplier's step per dB of error per step")
    eot: str = opt("none", "show the target the encrypted decode through random processing: basic (resizes, "
                           "blurs, noise) or real (thumbnails, JPEG, blur, the base codec again)",
                   choices=("none", "basic", "real"))
    views: str = opt("crops", "crops: random --crop crops, encoded every step; scale (stage 2): images encoded once "
                              "at --train-sizes, square windows of --view-sizes cut from the latents",
                     choices=("crops", "scale"))
    view_sizes: Tuple[int, int] = opt((224, 512), "smallest and largest view side, px (views=scale)",
                                      metavar="PX")
    train_sizes: Tuple[int, ...] = opt((384, 512, 768), "longer sides at which training images are encoded "
                                                        "(views=scale)", metavar="PX")
    wrong_key_fraction: float = opt(0.5, "share of each encrypted batch decoded with random wrong-key conditions")
    schedule: str = opt("alternate", "alternate: full and encrypted steps alternate (paper); joint: both in every "
                                     "step, from one encode", choices=("alternate", "joint"))
    clip_max_norm: float = opt(1.0, "gradient clipping (paper: 1.0)")
    lr_schedule: str = opt("step", "step: 10x drops at --lr-milestones; cosine: linear warm-up over --warmup of the "
                                   "steps, then a cosine decay to zero", choices=LR_SCHEDULES)
    lr_milestones: Tuple[float, ...] = opt((), "fractions of the steps at which the learning rates drop 10x",
                                           metavar="F")
    warmup: float = opt(0.0, "lr_schedule=cosine: the fraction of the steps spent warming up")
    amp: str = opt("auto", "bf16 autocast: auto (CUDA, and CPUs with AMX), bf16, off", choices=("auto", "bf16", "off"))
    channels_last: str = opt("auto", "channels_last memory: auto (where amp is), on, off", choices=("auto", "on", "off"))
    compile: bool = opt(False, "torch.compile the decoder and the target")
    num_workers: int = opt(0, "DataLoader workers", flag="--workers")
    seed: int = opt(0, "seed of the data order, the views, the wrong keys and the processing draws")
    checkpoint_every: int = opt(0, "save a resumable checkpoint every N steps (0: at the end only, or as "
                                    "--rounds says)")
    log_every: int = opt(10, "log.jsonl cadence, in steps")
    val_data: Optional[str] = opt(None, "images to read the validation ASR on while training (a folder, or "
                                        "'samples' for the test sample photos); never trained on")
    val_every: int = opt(0, "read the validation ASR every N steps (0: never)")
    val_images: int = opt(12, "validation photos (the first N of --val-data)")
    val_size: int = opt(512, "validation photos are coded at this longer side, px (the scale of use)")
    val_at_db: Optional[float] = opt(0.8, "also read the validation ASR with each photo's change rescaled to "
                                          "exactly this PSNR drop (the probe knows the original), so that reads "
                                          "compare at equal cost; 0: not read")

    def __post_init__(self):
        self.eot = eot_mode(self.eot)
        for name in ("view_sizes", "train_sizes", "lr_milestones"):
            setattr(self, name, tuple(getattr(self, name)))
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
        self._check_numbers()
        for name in ("steps", "batch_size", "crop", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if self.budget_db is not None and (self.stage != 2 or self.budget_db <= 0):
            raise ConfigError("budget_db is a positive number of dB, for stage 2 (its reference is the base decode)")
        if self.budget_control not in BUDGET_CONTROLS:
            raise ConfigError(f"budget_control must be one of {BUDGET_CONTROLS}, not {self.budget_control!r}")
        if self.budget_control == "dual" and self.budget_db is None:
            raise ConfigError("budget_control='dual' spends a budget: give budget_db")
        if self.budget_target_db is not None and not 0 < self.budget_target_db:
            raise ConfigError("budget_target_db is a positive number of dB")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}")
        for name in ("lr", "adapter_lr", "aux_lr"):  # Adam's step is the learning rate: above 1 it only diverges
            if getattr(self, name) is not None and getattr(self, name) > 1:
                raise ConfigError(f"{name} must be at most 1, not {getattr(self, name)!r}")
        if self.warmup >= 1:
            raise ConfigError("warmup is a fraction of the steps, below 1")
        check_feature_weight(self.objective, self.feature_weight)
        if self.val_at_db is not None and not 0 <= self.val_at_db <= 10:
            raise ConfigError("val_at_db is a PSNR drop in dB, at most 10 (0: not read)")
        for name in ("val_every", "val_images", "val_size"):
            if getattr(self, name) < (0 if name == "val_every" else 1):
                raise ConfigError(f"{name} must be {'>= 0' if name == 'val_every' else 'at least 1'}")
        if self.val_every and not self.val_data:
            raise ConfigError("val_every needs val_data (the photos to read the validation ASR on)")
        if not 0.0 <= self.wrong_key_fraction <= 1.0:
            raise ConfigError("wrong_key_fraction must be in [0, 1]")
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

    def _check_numbers(self) -> None:
        """Every number (learning rates, weights, counts, sizes; each entry of a tuple) is finite and >= 0, and a
        count is an integer: a NaN learning rate trained a NaN adapter, and saved it, with exit status 0."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for v in value if isinstance(value, tuple) else (value,):
                if v is None or isinstance(v, str):
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    if isinstance(f.default, bool):
                        continue
                    raise ConfigError(f"{f.name} must be a number, not {show(v)}")
                if not math.isfinite(v) or v < 0:
                    raise ConfigError(f"{f.name} must be a finite number >= 0, not {show(v)}")
                if isinstance(f.default, int) and not isinstance(f.default, bool) and not isinstance(v, int):
                    raise ConfigError(f"{f.name} is a count: an integer, not {show(v)}")

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

    @property
    def trains_decoder(self) -> bool:
        """Whether the run trains the base decoder: stage 1, and stage 2 unless ``adapter_only``."""
        return self.stage == 1 or not self.adapter_only

    @property
    def adapter_full_version(self) -> str:
        """The ``full_version`` a new adapter for this run needs: ``"condition"`` where the decoder trains (the
        full version is decoded under the owner's condition), else ``"base"`` (the base decode, bit for bit)."""
        return "condition" if self.trains_decoder else "base"

    def resolved_guard_weight(self) -> float:
        if self.guard_weight is not None:
            return self.guard_weight
        return 0.0 if self.adapter_only else 1.0

    def resolved_budget_target_db(self) -> Optional[float]:
        if self.budget_db is None:
            return None
        return self.budget_target_db if self.budget_target_db is not None else 0.9 * self.budget_db

    def resolved_encrypted_distortion(self) -> float:
        if self.encrypted_distortion is not None:
            return self.encrypted_distortion
        return 1.0 if self.stage == 1 else 0.3

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("lr_milestones", "view_sizes", "train_sizes"):
            d[k] = list(getattr(self, k))
        return d

    @classmethod
    def from_recipe(cls, recipe: str, **overrides) -> "TrainConfig":
        """A config from a named recipe's training defaults, ``overrides`` winning (``None`` values ignored)."""
        base = dict(recipe_settings(recipe)["train"])
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


#: named recipes: adapter (PSICConfig) and training (TrainConfig) defaults
RECIPES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "robust": {
        "adapter": {"preset": "paper", "modulation": "spatial", "spatial_rank": 8},
        "train": {"stage": 2, "adapter_only": True, "objective": "margin", "budget_db": 1.0, "views": "scale",
                  "eot": "real", "batch_size": 8, "steps": 1500, "budget_control": "dual",
                  "encrypted_distortion": 0.0, "wrong_key_fraction": 0.0, "lr_schedule": "cosine",
                  "warmup": 0.05},
    },
    "paper": {
        "adapter": {"preset": "paper", "modulation": "bias"},
        "train": {"objective": "uaeo", "views": "crops", "eot": "none", "batch_size": 128, "crop": 256},
    },
}


def recipe_settings(name: str) -> Dict[str, Dict[str, Any]]:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return RECIPES[name]


def default_recipe(stage: int, adapter_only: bool) -> str:
    """``"robust"`` for fitting an adapter onto a frozen codec, else ``"paper"``."""
    return "robust" if stage == 2 and adapter_only else "paper"

