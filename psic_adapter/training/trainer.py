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

import copy
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..bitstream.container import PAD_MULTIPLE
from ..bitstream.images import crop_to, pad_to_multiple
from ..adapter.cltg import CONTEXT_LR_SCALE, context_parameters
from ..adapter.strength import check_trainable
from ..errors import ConfigError, PSICError
from ..types import PathLike
from . import losses
from .config import TrainConfig
from .loop import CHECKPOINT_NAME, TrainingLoop, bf16_pays_off, dist_info, psnr_of_mse
from .objectives import EncryptionObjective
from .schedule import Phase, configure_trainable, phase_at
from .views import Windows


class StepPlan(NamedTuple):
    """What one step decodes: its phase's name, the versions, their conditions (one ``[n, C]`` per version),
    ``n`` images, whether the full version's guard and the encryption objective act."""

    name: str
    versions: List[str]
    conds: List[Tensor]
    n: int
    guard: bool
    encrypted: bool


class _CodecStep(nn.Module):
    """The trainable codec side of one step (what DDP wraps).

    Stage 1: the whole codec forward on images ``x`` (rate and distortion).
    Stage 2: the synthesis of latents ``y_hat`` (encoded once, without
    gradients, by the caller) under the stacked conditions, in one batch.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inp, condition: Tensor, stage: int, repeats: int = 1):
        if isinstance(inp, Windows):  # latent windows with their context, decoded and cropped back
            return inp.decode(self.model.synthesize, condition, repeats), None
        if repeats > 1:
            inp = inp.repeat(repeats, 1, 1, 1)
        if stage == 1:
            out = self.model(inp, condition=condition)
            return out["x_hat"], out["likelihoods"]
        return self.model.synthesize(inp, condition), None


class Trainer(TrainingLoop):
    """Fit a PSIC adapter (and, by stage, the codec) against a target model.

    Args:
        model: a :class:`~psic_adapter.PSICModel` whose active adapter was made
            with the owner's key (the full condition is needed); where the decoder
            trains, with ``PSICConfig(full_version="condition")`` (refused otherwise:
            :func:`check_full_version`; the trainer never changes the adapter's config).
        target: a frozen target (:func:`psic_adapter.targets.build_target`).
        dataset: items ``{"image", "text"}``: of equal size for ``views="crops"`` (give a
            crop), whole images of any size for ``views="scale"`` (encoded once per size).
        config: :class:`TrainConfig`.
        out_dir: where ``adapter/``, ``codec.safetensors`` (when the codec trains),
            ``log.jsonl`` and ``checkpoint.safetensors`` go.
        quality: the base codec's quality level (picks the default lambda).
        device: "cpu", "cuda", ... (default: CUDA when available).
    """

    postfix_keys = ("loss", "psnr_full", "psnr_encrypted", "encryption")

    def __init__(self, model, target, dataset, config: TrainConfig, out_dir: PathLike,
                 quality: Optional[int] = None, device: Optional[str] = None, progress: bool = True,
                 recipe: Optional[Dict[str, Any]] = None, val_dataset=None):
        from ..adapter import PSICModel

        if not isinstance(model, PSICModel):
            raise ConfigError("Trainer takes a PSICModel (wrap_model(codec, key=...))")
        check_full_version(model.config, config)
        check_trainable(model.config.strength)
        rank, world = dist_info()
        self._init_loop(dataset, config, out_dir, device, progress, recipe, rank, world)
        self.model, self.target = model, target
        self.quality = quality if quality is not None else model.config.base_model.get("quality")
        cuda = self.device.type == "cuda"
        fast = bf16_pays_off(self.device)
        self.amp = (fast and config.amp == "auto") or config.amp == "bf16"
        self.channels_last = (fast and config.channels_last == "auto") or config.channels_last == "on"
        # wrong keys and EOT draws: a generator of its own, saved in checkpoints
        self.generator = torch.Generator().manual_seed(config.seed * 7919 + self.rank)
        self.objective = EncryptionObjective(target, config.objective, s=config.s, margin=config.margin,
                                             amp=self.amp, device_type=self.device.type, eot=config.eot,
                                             generator=self.generator, codec=model.base,
                                             feature_weight=config.feature_weight)
        # full_version "base" (adapter-only fits): the full version is the base decode, nothing of it trains
        self.full_bypass = model.config.full_version == "base"
        self.views = None
        self.val_dataset = val_dataset

        self.full_cond = model.full_condition().to(self.device)  # raises without the key
        if self.world > 1:
            self.full_cond = self._sync_adapter_identity(self.full_cond)
        self.lmbda = config.resolved_lmbda(self.quality)
        self.enc_dist_w = config.resolved_encrypted_distortion()

        model.to(self.device)
        target.to(self.device)
        self.use_layout()
        self.groups = configure_trainable(model, config.stage, config.adapter_only)
        self.trains_codec = bool(self.groups["base"])
        # The guard keeps the target's view of the full decode at the base decode's.
        # Stage 2 with a training decoder needs the decoder as it was: a frozen copy.
        self.reference_g_s = None
        self.guard_weight = config.resolved_guard_weight()
        if config.stage == 2 and self.trains_codec and self.guard_weight > 0:
            self.reference_g_s = frozen_copy(model.base.g_s)
        # Stage 2 writes the base codec's bitstream: what encodes (all but g_s) must leave as it came
        self.bitstream_state = None
        if config.stage == 2 and self.trains_codec:
            self.bitstream_state = {k: v.detach().clone() for k, v in model.base.state_dict().items()
                                    if not k.startswith("g_s.")}
        if config.compile:  # static shapes: views of another size recompile (or run eagerly past torch's cache)
            model.base.g_s.compile(dynamic=False)
            target.image_features = torch.compile(target.image_features, dynamic=False)

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
        # a spatial context's MLP learns at a tenth of the adapter's rate (CONTEXT_LR_SCALE: why)
        context = {id(p) for p in context_parameters(model.psic_adapters[model.resolve_adapter_name()])}
        param_groups.append({"params": [p for p in self.groups["adapter"] if id(p) not in context],
                             "lr": config.resolved_adapter_lr(), "name": "adapter"})
        if context:
            param_groups.append({"params": [p for p in self.groups["adapter"] if id(p) in context],
                                 "lr": config.resolved_adapter_lr() * CONTEXT_LR_SCALE, "name": "context"})
        self.optimizer = torch.optim.Adam(param_groups)
        self.aux_optimizer = torch.optim.Adam(self.groups["aux"], lr=config.aux_lr) if self.groups["aux"] else None
        self.scheduler = lr_scheduler(self.optimizer, config)
        # budget_control="dual": the Lagrange multiplier of the mean PSNR drop (saved in checkpoints)
        self.budget_lambda = 0.0
        self.probe = None
        if config.val_every and val_dataset is not None and getattr(target, "kind", "") == "clip" \
                and not target.class_names:  # zero-shot CLIP decides among its class prompts
            raise ConfigError(f"validation reads a classifier's labels: {getattr(target, 'name', 'the target')} "
                              "has no class names (use a classifier target, or leave out val_every)")

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

        from ..adapter import PSICConfig

        obj = [self.model.config.to_dict(), full_cond.detach().cpu()]
        dist.broadcast_object_list(obj, src=0, device=self.device if self.device.type == "cuda" else None)
        if self.rank != 0:
            self.model.replace_adapter_identity(self.model.active_adapter, PSICConfig.from_dict(obj[0]), obj[1][0])
        return obj[1].to(self.device)

    @torch.no_grad()
    def _reference_decode(self, y_hat) -> Tensor:
        """The base codec's decode of ``y_hat`` (the decoder as it was before training)."""
        if isinstance(y_hat, Windows):
            return y_hat.decode(lambda y, _cond: self._reference_decode(y))
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
    # A step: the batch's images (:meth:`_images`), what it decodes (:meth:`_plan`: the phase's versions and their
    # conditions), the target's view of the originals (:meth:`_clean_views`), the codec's input in one of three
    # batch forms (:meth:`_codec_input`), the decodes (:meth:`_decode`), the loss terms (:meth:`_rate_terms`,
    # :meth:`_full_terms`, :meth:`_encrypted_terms`, :meth:`_budget_terms`), the optimisers (:meth:`_optimise`).
    def step(self, batch: Dict[str, Any]) -> Dict[str, float]:
        """One optimisation step on ``batch``; returns the loss terms as floats (and the ``phase``'s name)."""
        x, texts = self._images(batch)
        plan = self._plan(x.shape[0])
        views = self._clean_views(x, texts, plan)
        x_in, size, y_hat = self._codec_input(batch, x)
        x_hat, likelihoods, x_ref, ref_logits = self._decode(plan, x_in, size, y_hat, views)
        parts = dict(zip(plan.versions, x_hat.split(plan.n)))

        terms: Dict[str, Tensor] = {}
        addends = []  # the weighted terms, summed in this order
        if likelihoods is not None:
            addends += self._rate_terms(likelihoods, plan, x_in, terms)
        if "full" in parts:
            addends += self._full_terms(parts["full"], x, plan, views, ref_logits, terms)
        if x_ref is not None:
            terms["mse_base"] = F.mse_loss(x_ref, x).detach()
        if "encrypted" in parts:
            addends += self._encrypted_terms(parts["encrypted"], x, views, terms)
            addends += self._budget_terms(parts["encrypted"], x_ref, x, terms)
        loss = x_hat.new_zeros(())
        for addend in addends:
            loss = loss + addend
        terms["loss"] = loss

        self._optimise(loss, terms)
        self.step_count += 1
        return self._report(terms, plan.name)

    def _images(self, batch: Dict[str, Any]):
        """The batch's images on the device (in channels_last where that is the layout) and their captions."""
        x = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, batch.get("text") or [""] * x.shape[0]

    def _plan(self, n: int) -> "StepPlan":
        """What this step decodes: the phase's versions (both for ``schedule="joint"``; the encrypted one alone
        where the full version is the base decode) and a condition per image and version."""
        cfg = self.cfg
        if cfg.schedule == "joint":
            versions, name = ["full", "encrypted"], f"S{cfg.stage}-joint"
        else:
            phase: Phase = phase_at(cfg.stage, self.step_count)
            versions, name = [phase.version], phase.name
        if self.full_bypass:  # the full version is the base decode: nothing of it to train
            versions, name = ["encrypted"], f"S{cfg.stage}-2"
        conds = [self.full_cond.expand(n, -1) if v == "full" else self._encrypted_conditions(n) for v in versions]
        return StepPlan(name=name, versions=versions, conds=conds, n=n,
                        guard=self.guard_weight > 0 and "full" in versions, encrypted="encrypted" in versions)

    def _clean_views(self, x: Tensor, texts, plan: "StepPlan"):
        """The target's view of the original images: only the passes this step needs (none for stage 2's guard
        alone, which compares with the reference decode)."""
        if not (plan.encrypted or plan.guard):
            return None
        obj = self.objective
        return obj.clean_view(x, texts, feats=plan.encrypted and not obj.uses_logits,
                              logits=(plan.encrypted and obj.uses_logits) or (plan.guard and self.cfg.stage == 1))

    def _codec_input(self, batch: Dict[str, Any], x: Tensor):
        """``(x_in, size, y_hat)``: the codec's input and the size its decodes are cropped back to, from one of
        three batch forms: latent ``windows`` (``views="scale"``, decoded with their context), the images' own
        latents ``y_hat`` (encoded once by the caller), or crops (padded to the codec's multiple of 64,
        ``y_hat`` None: stage 2 encodes them in :meth:`_decode`)."""
        size = tuple(x.shape[-2:])
        if "windows" in batch:
            return x, size, batch["windows"].to(self.device, torch.channels_last if self.channels_last else None)
        if "y_hat" in batch:
            y_hat = batch["y_hat"].to(self.device, non_blocking=True)
            if self.channels_last:
                y_hat = y_hat.contiguous(memory_format=torch.channels_last)
            return x, size, y_hat
        x_in, size = pad_to_multiple(x, PAD_MULTIPLE)
        return x_in, size, None

    def _decode(self, plan: "StepPlan", x_in: Tensor, size, y_hat, views):
        """``(x_hat, likelihoods, x_ref, ref_logits)``: every version's decode in one batch (float, cropped to
        ``size``), the rate's likelihoods (stage 1), the reference (base) decode where the guard or the budget
        needs it (stage 2) and the target's logits on it (the guard's)."""
        cfg, obj = self.cfg, self.objective
        x_ref = None
        if cfg.stage == 2:
            if y_hat is None:
                with torch.no_grad():
                    y_hat = self.model.analyze(x_in)["y_hat"]  # frozen encoder: rounding, no graph
            need_ref = plan.guard or (plan.encrypted and cfg.budget_db is not None)
            x_ref = crop_to(self._reference_decode(y_hat), size) if need_ref else None
            ref_logits = obj.reference_logits(x_ref, views) if plan.guard else None
            with obj.autocast():
                x_hat, likelihoods = self.step_module(y_hat, torch.cat(plan.conds), 2, repeats=len(plan.versions))
        else:
            ref_logits = obj.reference_logits(None, views) if plan.guard else None
            x_hat, likelihoods = self.step_module(x_in, torch.cat(plan.conds), 1, repeats=len(plan.versions))
        return crop_to(x_hat.float(), size), likelihoods, x_ref, ref_logits

    def _distortion_scale(self) -> float:
        """The distortion's weight per MSE: ``lmbda * 255^2`` (CompressAI's)."""
        return self.lmbda * 255.0**2

    def _rate_terms(self, likelihoods, plan: "StepPlan", x_in: Tensor, terms: Dict[str, Tensor]):
        """Stage 1's rate: bits per pixel over every decoded version (``bpp`` per version)."""
        versions = len(plan.versions)
        bpp = losses.rate_loss(likelihoods, plan.n * x_in.shape[-2] * x_in.shape[-1] * versions) * versions
        terms["bpp"] = bpp / versions
        return [bpp]

    def _full_terms(self, x_full: Tensor, x: Tensor, plan: "StepPlan", views, ref_logits, terms: Dict[str, Tensor]):
        """The full version's distortion and its semantic guard."""
        mse = F.mse_loss(x_full, x)
        terms["mse_full"] = mse
        addends = [self._distortion_scale() * mse]
        if plan.guard:
            g = self.objective.guard_loss(x_full, views, ref_logits)
            terms["guard"] = g
            addends.append(self.guard_weight * g)
        return addends

    def _encrypted_terms(self, x_enc: Tensor, x: Tensor, views, terms: Dict[str, Tensor]):
        """The encrypted version's weighted distortion and the encryption objective."""
        mse = F.mse_loss(x_enc, x)
        terms["mse_encrypted"] = mse
        enc = self.objective.encryption_loss(x_enc, views)
        terms["encryption"] = enc
        return [self.enc_dist_w * self._distortion_scale() * mse, self.cfg.encryption_weight * enc]

    def _budget_terms(self, x_enc: Tensor, x_ref: Optional[Tensor], x: Tensor, terms: Dict[str, Tensor]):
        """The PSNR budget of the encrypted version under the reference decode: the dual multiplier's term (and
        its ascent step, after it is used), or the hinge on each image's excess; none without ``budget_db``."""
        cfg = self.cfg
        if cfg.budget_db is None:
            return []
        if cfg.budget_control == "dual":
            drop = psnr_drop_db(x_enc, x_ref, x)
            terms["psnr_drop"] = drop.detach()
            terms["budget_lambda"] = torch.tensor(self.budget_lambda)
            addend = self.budget_lambda * drop
            self.budget_lambda = dual_ascent(self.budget_lambda, float(drop.detach()), cfg.resolved_budget_target_db(),
                                             cfg.dual_lr)
            return [addend]
        over = budget_excess(x_enc, x_ref, x, cfg.budget_db)
        terms["budget_excess"] = over
        return [cfg.budget_weight * over]

    def _optimise(self, loss: Tensor, terms: Dict[str, Tensor]) -> None:
        """The optimisers' step on ``loss`` (gradients clipped), the scheduler's, and CompressAI's aux step (stage
        1: the entropy bottleneck's quantiles, gradients averaged across processes)."""
        cfg = self.cfg
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

    @staticmethod
    def _report(terms: Dict[str, Tensor], phase: str) -> Dict[str, Any]:
        """The terms as floats, the phase's name, and the PSNR of each MSE."""
        out: Dict[str, Any] = {k: float(v.detach()) for k, v in terms.items()}
        out["phase"] = phase
        for v in ("full", "encrypted", "base"):
            if f"mse_{v}" in out:
                out[f"psnr_{v}"] = psnr_of_mse(torch.tensor(out[f"mse_{v}"]))
        return out

    def log_fields(self) -> Dict[str, Any]:
        return {"lr": next(g["lr"] for g in self.optimizer.param_groups if g["name"] == "adapter")}

    def validate(self) -> Dict[str, Any]:
        """The validation ASR at the scale of use (``val_every`` steps; see :class:`~.validation.ValidationProbe`)."""
        if not self.cfg.val_every or self.val_dataset is None:
            return {}
        from .validation import ValidationProbe

        if self.probe is None:
            self.probe = ValidationProbe(self.model, self.target, self.val_dataset, images=self.cfg.val_images,
                                         size=self.cfg.val_size, device=self.device, at_db=self.cfg.val_at_db or None)
        return self.probe.measure(self.model, self.target, amp=self.objective.autocast)

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
            "budget_lambda": float(self.budget_lambda),
        }

    def load_checkpoint_state(self, state: Dict[str, Any], path: Path) -> None:
        if "adapter_config" not in state:
            raise PSICError(f"{path} is not a PSIC training checkpoint")
        if state["adapter_config"]["salt"] != self.model.config.salt:
            raise PSICError(f"{path} belongs to another adapter (its salt differs): resume with the same adapter")
        saved_groups = [g.get("name") if isinstance(g, dict) else None for g in state["optimizer"]["param_groups"]]
        if saved_groups != [g["name"] for g in self.optimizer.param_groups]:  # before anything is loaded
            raise PSICError(f"{path} was written with other optimiser groups than this run's "
                            f"({', '.join(g['name'] for g in self.optimizer.param_groups)}; a spatial context learns "
                            "in its own group from 0.1.3): start the run again without --resume")
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
        self.budget_lambda = float(state.get("budget_lambda", 0.0))

    # --------------------------------------------------------------- memory layout
    def use_layout(self) -> None:
        """The codec and target in channels_last where that is the fast path (done at init, and by ``train``)."""
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.target.to(memory_format=torch.channels_last)

    def release_layout(self) -> None:
        """The codec and target back in the standard (contiguous) layout, as callers hold them: a channels_last
        codec decodes the same weights to pixels that differ by 1 here and there."""
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
            self.target.to(memory_format=torch.contiguous_format)

    def train(self, resume: bool = False, force: bool = False) -> Dict[str, Any]:
        """The loop's ``train``; the codec and target leave it in the standard layout, also on an error."""
        self.use_layout()
        try:
            return super().train(resume=resume, force=force)
        finally:
            self.release_layout()

    def finish(self, last: Dict[str, float]) -> Dict[str, Any]:
        """Save the adapter (+ the codec when it trained) and a final checkpoint."""
        from ..codec import fingerprint, save_codec

        self.model.eval()
        self.release_layout()
        result: Dict[str, Any] = {"steps": self.step_count, "last": last}
        if not self.is_main:
            return result
        cfg = self.model.config
        bad = [k for k, v in self.model.adapter_state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise PSICError(f"training left non-finite adapter weights ({', '.join(bad[:3])}): nothing saved (lower the "
                            "learning rates)")
        if self.trains_codec:
            if self.cfg.stage == 1:  # the entropy model trained: its tables follow it
                self.model.base.update(force=True)
            # stage 2: the entropy model is frozen, its tables stay exactly as loaded (recomputing them on
            # this machine can change them, and then the saved codec no longer writes the base codec's bytes)
            if self.bitstream_state is not None:
                now = self.model.base.state_dict()
                moved = [k for k, v in self.bitstream_state.items() if k not in now or not torch.equal(now[k].cpu(), v.cpu())]
                if moved:
                    raise PSICError(f"stage 2 changed what writes the bitstream ({', '.join(moved[:3])}): the codec "
                                    "would no longer write the base codec's bytes; not saved")
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


def check_full_version(adapter_config, config: TrainConfig) -> None:
    """Refuse to train the decoder under an adapter whose full version is the base codec's decode.

    Where the decoder trains, the full version is decoded under the owner's condition (with its guard), which
    an adapter says with ``full_version="condition"``; ``"base"`` (the default, for adapter-only fits) promises
    the base codec's decode bit for bit. The trainer does not change an adapter's ``full_version`` itself: it is
    part of the adapter's fingerprint.
    """
    if config.trains_decoder and adapter_config.full_version == "base":
        run = "stage 1" if config.stage == 1 else "stage 2 without adapter_only"
        raise ConfigError(f"{run} trains the decoder, so the full version is decoded under the owner's condition, "
                          "but this adapter's full version is the base decode (full_version 'base'): build it with "
                          "PSICConfig(full_version=\"condition\"), or train stage 2 with adapter_only")


def checkpoint_adapter_config(out_dir: PathLike):
    """The adapter config (salt, key check, ...) in ``out_dir``'s checkpoint, or ``None``.

    Resuming needs the adapter the checkpoint was made with: a freshly wrapped
    codec draws a new salt (``PSICModel(codec).add_adapter("default", config, key=key)``
    rebuilds it; the trainer then loads its weights from the checkpoint).
    """
    from ..adapter import PSICConfig

    from .checkpoints import load_state

    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    state = load_state(path)
    try:
        return PSICConfig.from_dict(state["adapter_config"])
    except (KeyError, TypeError) as exc:
        raise PSICError(f"{path}: not a PSIC training checkpoint ({exc.__class__.__name__})") from None


def budget_excess(x_enc: Tensor, x_ref: Tensor, x: Tensor, budget_db: float) -> Tensor:
    """Mean over images of ``relu(MSE(x_enc, x) / MSE(x_ref, x) - 10**(budget_db / 10))``.

    Zero while each encrypted decode is within ``budget_db`` of PSNR under the
    reference (base) decode of the same image.
    """
    dims = tuple(range(1, x.dim()))
    mse_enc = (x_enc - x).pow(2).mean(dims)
    mse_ref = (x_ref.detach() - x).pow(2).mean(dims).clamp_min(1e-8)
    return F.relu(mse_enc / mse_ref - 10.0 ** (budget_db / 10.0)).mean()


def psnr_drop_db(x_enc: Tensor, x_ref: Tensor, x: Tensor) -> Tensor:
    """Mean over images of how many dB the encrypted decode's PSNR is under the reference (base) decode's."""
    dims = tuple(range(1, x.dim()))
    mse_enc = (x_enc - x).pow(2).mean(dims).clamp_min(1e-10)
    mse_ref = (x_ref.detach() - x).pow(2).mean(dims).clamp_min(1e-10)
    return (10.0 * torch.log10(mse_enc / mse_ref)).mean()


def dual_ascent(lam: float, drop_db: float, target_db: float, step: float) -> float:
    """One dual-ascent step of the budget's multiplier: up while the drop is over ``target_db``, down (to 0) under."""
    if drop_db != drop_db:  # NaN: keep the multiplier as it is
        return lam
    return min(1e4, max(0.0, lam + step * (drop_db - target_db)))


def lr_scheduler(optimizer, config: TrainConfig):
    """``step``: 10x drops at ``lr_milestones``; ``cosine``: linear warm-up, then a cosine decay to zero."""
    import math

    steps = max(1, int(config.steps))
    if config.lr_schedule == "cosine":
        warm = int(config.warmup * steps)

        def factor(k: int) -> float:
            if k < warm:
                return (k + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (k - warm) / max(1, steps - warm))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    milestones = sorted({max(1, int(f * steps)) for f in config.lr_milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy without forward hooks (no adapter acts on it), eval mode, no gradients."""
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
