"""Choosing the owner's per-photo shift at compression (``psic compress --shift-for``; issue 15, E3).

:class:`ShiftSearch` runs, on the photo being compressed, a few Adam steps on a classifier's margin
through the decoder the file will be decoded with, for one shift per hidden unit of each spatial
branch (:class:`~psic_adapter.adapter.photo_shift.PhotoShift`); then it sets the change's strength so
that this photo's encrypted version is at most ``budget_db`` under the base decode, which the owner
can measure (a per-photo budget that the decoder alone cannot hold, since it never sees the
original). It is an owner's batch job: seconds to a minute a photo on a CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..adapter.photo_shift import STRENGTH_STEP, PhotoShift
from ..adapter.strength import MAX_STRENGTH, oracle_strength, strength_of
from ..bitstream.images import served
from ..errors import ConfigError, show

#: the largest photo the search runs on: it differentiates through the decoder at the photo's size (about 3 GB of
#: activations per megapixel on the shipped codec), so a 12-megapixel photo would need tens of GB
MAX_SEARCH_PIXELS = 4_000_000
#: target specs the search can use: classifiers (CLIP's zero-shot logits need prompts, which it does not take)
SEARCHABLE = ("efficientnet-lite", "timm:")
#: secant steps at most on the served drop before the strength's grid is searched
STRENGTH_ITERATIONS = 4
#: the search may give up (``ShiftSearch.give_up``) once it has taken this many steps, judging its pace over the last
#: GIVE_UP_WINDOW of them
GIVE_UP_AFTER = 10
GIVE_UP_WINDOW = 5


def check_search_target(spec: str) -> None:
    """Refuse, before anything loads, a ``--shift-for`` spec the search cannot use: it needs a classifier's logits
    (``efficientnet-lite0`` .. ``-lite2``, ``timm:NAME``, ensembles of those)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--shift-for needs a target: efficientnet-lite0 (or -lite1, -lite2), timm:NAME, or A+B")
    for part in spec.split("+"):
        if not part.startswith(SEARCHABLE):
            raise ConfigError(f"--shift-for {spec}: the per-photo search needs a classifier (efficientnet-lite0, "
                              f"-lite1, -lite2, timm:NAME, or A+B of those), not {part!r}")


def _number_in(v: Any, lo: float, hi: float) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and lo <= v <= hi  # False for NaN


def margin(logits: Tensor, label: int) -> Tensor:
    """The target's logit for ``label`` minus its best other logit (below zero: the answer changed)."""
    other = logits.clone()
    other[:, label] = -float("inf")
    return logits[:, label] - other.max(dim=1).values


def psnr_drop(x: Tensor, base: Tensor, original: Tensor) -> float:
    """How many dB ``x`` is under ``base`` in PSNR against ``original``."""
    mse = lambda a: float((a.double() - original.double()).pow(2).mean())  # noqa: E731
    return 10 * math.log10(max(mse(x), 1e-20) / max(mse(base), 1e-20))


@dataclass
class ShiftSearch:
    """How an owner chooses a photo's :class:`PhotoShift` at compression: ``steps`` of Adam (rate ``lr``) on
    ``target``'s margin for the answer it gives on the base decode, the change held at the energy of the
    adapter's own change on this photo while it searches (and differentiated through that rescaling); then
    the strength that puts the encrypted version at most ``budget_db`` under the base decode (``None``: the
    adapter's own cost on this photo, so the shift changes where the change goes, not what it costs). It
    stops early once the answer has changed with a margin of ``stop_margin``, room for the 8-bit rounding.
    ``amp``: the steps (the decoder and the target, forward and backward) in bf16 autocast: ``"off"`` (fp32, the
    default), ``"bf16"``, ``"auto"`` (bf16 on CUDA and on CPUs with bf16 units, as the trainer). On this project's
    Zen 4 bf16 steps take 0.45x the time, and a step moves the margin less: over 40 steps on one photo -4.9
    against fp32's -5.9, and on 51 unseen photos one fewer flipped at native size (22/30 against 23/30), the same
    at 512 px (docs/results.md, run PS-bf16). The shift is then rounded onto the file's grid and everything after
    it (the strength, the margins reported, the file's decode) is fp32.
    ``give_up``: after :data:`GIVE_UP_AFTER` steps the search stops on a photo whose margin, falling at the pace of
    its last :data:`GIVE_UP_WINDOW` steps, would still be above ``give_up`` after the last one (the shift found so
    far is kept; ``None``: every photo takes all ``steps``). Most of a search's time goes to photos whose answer
    never changes: replayed on the traces of 102 full searches (an adapter fitted from scratch, IS1) the rule keeps
    every photo they turn for 0.6x their steps (docs/results.md, "where the search's steps go").

    ``target``: a :class:`~psic_adapter.targets.Target` (``logits``, ``predict``), frozen."""

    target: Any
    steps: int = 40
    lr: float = 0.05
    budget_db: Optional[float] = None
    stop_margin: float = 1.0
    amp: str = "off"
    give_up: Optional[float] = 0.5

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 10_000:
            raise ConfigError(f"the shift search's steps must be 1 to 10000, not {show(self.steps)}")
        if not _number_in(self.stop_margin, 0, 100):
            raise ConfigError(f"the shift search's stop margin must be in [0, 100], not {show(self.stop_margin)}")
        if not _number_in(self.lr, 0, 10) or self.lr == 0:
            raise ConfigError(f"the shift search's learning rate must be in (0, 10], not {show(self.lr)}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ConfigError(f"the shift search's amp must be auto, bf16 or off, not {show(self.amp)}")
        if self.give_up is not None and not _number_in(self.give_up, -100, 100):
            raise ConfigError(f"the shift search's give-up margin must be in [-100, 100] or None, not {show(self.give_up)}")
        if self.budget_db is not None and (not _number_in(self.budget_db, 0, 20) or self.budget_db == 0):
            raise ConfigError(f"the per-photo budget must be in (0, 20] dB, not {show(self.budget_db)}")

    def __call__(self, model, y_hat: Tensor, original: Tensor) -> Tuple[PhotoShift, Dict[str, Any]]:
        """The shift for the photo ``original`` (``[1, 3, H, W]`` in [0, 1]) whose decoded latent is ``y_hat``
        (what its file decodes to: the entropy decoder's, not the encoder's forward). Returns it and what the
        search saw: ``label``, ``steps`` taken, the target's margin on the served encrypted version without and
        with the shift (below 0: the answer changed), the ``drop_db`` it costs, the ``strength`` and whether
        the budget was out of reach (``capped``), and ``trace``: the margin before each step, at the adapter's energy
        before the file's grid and the strength (the search's own view, in its precision; a search that stopped
        early ends with the margin that stopped it, so it holds ``steps + 1`` entries, else ``steps``)."""
        training = model.training
        model.eval()
        try:
            return self._search(model, y_hat, original)
        finally:
            model.train(training)

    def _search(self, model, y_hat: Tensor, original: Tensor) -> Tuple[PhotoShift, Dict[str, Any]]:
        from ..codec.padding import crop_to

        if original.dim() != 4 or original.shape[0] != 1 or y_hat.shape[0] != 1:
            raise ConfigError("the per-photo shift is chosen for one photo at a time (a batch of 1)")
        hw = tuple(original.shape[-2:])
        if hw[0] * hw[1] > MAX_SEARCH_PIXELS:
            raise ConfigError(f"the photo is {hw[1]}x{hw[0]}: the per-photo search runs on photos of at most "
                              f"{MAX_SEARCH_PIXELS:,} pixels (it differentiates through the decoder at full size); "
                              "resize it, or compress it without --shift-for")
        name = model.resolve_adapter_name()
        cond = model.encrypted_condition(name)
        branches = getattr(model.psic_adapters[name], "branches", None)
        if branches is None:
            raise ConfigError(f"a per-photo shift needs a 'spatial' adapter; {name!r} is "
                              f"{model.psic_configs[name].modulation!r}")
        with torch.no_grad():
            raw = crop_to(model.synthesize(y_hat, None), hw)  # the change is against the unrounded base decode
            base = served(raw)
            adapter = crop_to(model.synthesize(y_hat, cond), hw)
            energy = (adapter - raw).pow(2).sum()
            label = int(self.target.predict(base))
        spec = model.psic_configs[name].strength
        own = float(strength_of(spec, y_hat).flatten()[0]) if spec is not None else 1.0
        own_drop = psnr_drop(served(adapter), base, original)
        drop_db = self.budget_db if self.budget_db is not None else own_drop
        with torch.no_grad():
            before = float(margin(self.target.logits(served(adapter)), label))
        shifts = [torch.zeros(b.reduce.out_channels, device=y_hat.device, requires_grad=True) for b in branches]
        opt = torch.optim.Adam(shifts, lr=self.lr)
        taken = 0
        gave_up = False
        trace: List[Optional[float]] = []
        amp = self.uses_amp(y_hat.device)
        precision = (lambda: torch.autocast(y_hat.device.type, dtype=torch.bfloat16)) if amp else nullcontext

        def shifted_margin() -> Tensor:  # the margin of the change at the adapter's energy, with the shifts now
            d = crop_to(model.synthesize(y_hat, cond, photo_shift=PhotoShift(shifts)).float(), hw) - raw
            scaled = d * (energy / d.pow(2).sum().clamp_min(1e-20)).sqrt()
            return margin(self.target.logits((base + scaled).clamp(0, 1)).float(), label).sum()

        with torch.enable_grad():
            for taken in range(1, self.steps + 1):
                with precision():
                    loss = shifted_margin()
                now = float(loss.detach())
                trace.append(round(now, 4) if math.isfinite(now) else None)  # None: JSON has no NaN
                if now < -self.stop_margin:
                    if amp:  # bf16 logits are off by a tenth or so: stop only where fp32 agrees
                        with torch.no_grad():
                            stop = float(shifted_margin()) < -self.stop_margin
                    else:
                        stop = True
                    if stop:
                        taken -= 1
                        break
                if self._hopeless(trace, taken - 1):
                    gave_up = True
                    taken -= 1
                    break
                grads = torch.autograd.grad(loss, shifts)  # into the shifts only: not the codec, not the target
                for s, g in zip(shifts, grads):
                    s.grad = g
                opt.step()
        found = PhotoShift(shifts).on_grid().shifts  # what a file can hold, before the strength is set on it
        capped = False
        if drop_db <= 0:  # the adapter's change costs nothing on this photo (it happens to undo some codec error):
            # no budget to hold it to, so the adapter's own strength (a strength of ~0 would undo it)
            strength = max(round(own / STRENGTH_STEP), 1) * STRENGTH_STEP
        else:
            strength, capped = self._strength_for(model, y_hat, cond, found, raw, base, original, hw, drop_db, own)
        shift = PhotoShift(found, strength)
        with torch.no_grad():
            out = served(crop_to(model.synthesize(y_hat, cond, photo_shift=shift), hw))
            after = float(margin(self.target.logits(out), label))
        return shift, {"label": label, "steps": taken, "margin_before": before, "margin_after": after,
                       "drop_db": psnr_drop(out, base, original), "budget_db": drop_db, "strength": strength,
                       "capped": capped, "gave_up": gave_up, "trace": trace}

    def _hopeless(self, trace: List[Optional[float]], done: int) -> bool:
        """Whether to give up after ``done`` steps: at the pace of the last :data:`GIVE_UP_WINDOW` steps, the margin
        would still be above ``give_up`` after the last step (a pace that is not falling counts as none)."""
        if self.give_up is None or done < GIVE_UP_AFTER:
            return False
        now, then = trace[done], trace[done - GIVE_UP_WINDOW]
        if now is None or then is None:
            return False
        pace = min((now - then) / GIVE_UP_WINDOW, 0.0)
        return now + pace * (self.steps - done) > self.give_up

    def uses_amp(self, device) -> bool:
        """Whether the steps run in bf16 autocast on ``device`` (``amp="auto"`` decides by the device)."""
        if self.amp != "auto":
            return self.amp == "bf16"
        from .loop import bf16_pays_off

        return bf16_pays_off(torch.device(device))

    @torch.no_grad()
    def _strength_for(self, model, y_hat, cond, shifts, raw, base, original, hw, drop_db: float,
                      own: float) -> Tuple[float, bool]:
        """The largest strength on the file's grid (steps of :data:`STRENGTH_STEP`) at which the shifted change,
        served, is at most ``drop_db`` (> 0) under ``base`` (where the drop rises with the strength, as it does
        but for the 8-bit rounding; else a grid point within the budget whose next is over it), and whether even :data:`~.strength.MAX_STRENGTH`
        stays under it (out of reach). The change is nearly linear in the strength, so the energy model of
        :func:`~.strength.oracle_strength`, read off a real decode at the adapter's own strength, lands close;
        secant steps on the served drop (at most ``STRENGTH_ITERATIONS``) bring it within a step of the grid;
        real served decodes then bracket the grid point, galloping out from there, and bisect the bracket.
        About six decodes a photo where a bisection from the first guess took about fifteen, to the same
        strength (docs/benchmarks.md)."""
        from ..codec.padding import crop_to

        def decode(s: float) -> Tensor:
            return crop_to(model.synthesize(y_hat, cond, photo_shift=PhotoShift(shifts, s)), hw)

        seen: Dict[int, bool] = {0: True}  # strength 0 is the base decode: 0 dB, under any budget

        def under(k: int) -> bool:
            if k not in seen:
                seen[k] = psnr_drop(served(decode(k * STRENGTH_STEP)), base, original) <= drop_db
            return seen[k]

        def over(s: float) -> float:  # the served drop at strength s, minus the budget
            return psnr_drop(served(decode(s)), base, original) - drop_db

        def clamp(s: float) -> Optional[float]:
            return min(max(s, 1e-3), MAX_STRENGTH) if math.isfinite(s) else None

        # the root of over(s) in s: the energy model's answer from a decode at the adapter's strength, then secant
        # steps on the served drop (which the model misses by the 8-bit rounding and the change's non-linearity)
        x0 = decode(own)
        s0, f0 = own, psnr_drop(served(x0), base, original) - drop_db
        s = clamp(own * oracle_strength(base, x0 - raw, original, drop_db)) or own
        for _ in range(STRENGTH_ITERATIONS):
            if abs(s - s0) < STRENGTH_STEP / 2:  # converged onto the grid: the bracket below takes it from here
                break
            f = over(s)
            if f == f0 or not math.isfinite(f):
                break
            nxt = clamp(s - f * (s - s0) / (f - f0))
            if nxt is None or not s / 4 <= nxt <= 4 * s:  # a wild step (a drop the rounding flattens): keep s
                break
            s0, f0, s = s, f, nxt
        top = round(MAX_STRENGTH / STRENGTH_STEP)
        k = min(max(1, round(s / STRENGTH_STEP)), top)
        # a bracket on the grid, lo at or under the budget, hi over it, galloping out from k
        step = 1
        if under(k):
            lo = k
            while True:
                hi = min(lo + step, top)
                if not under(hi):
                    break
                if hi == top:
                    return MAX_STRENGTH, True
                lo, step = hi, 2 * step
        else:
            hi = k
            while True:
                lo = max(hi - step, 0)
                if under(lo):
                    break
                hi, step = lo, 2 * step
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if under(mid) else (lo, mid)
        # the last strength at or under the budget (one grid step where even that one is over: the least change)
        return max(lo, 1) * STRENGTH_STEP, False
