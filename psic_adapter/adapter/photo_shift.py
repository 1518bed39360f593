"""A per-photo shift, chosen by the owner at compression (issue 15, E3).

A "spatial" adapter's change at each decoder block is ``gate * conv3x3(relu(conv1x1(f)))``: a
function of the block's own output, the same function for every photo. Measured (docs/results.md,
E3), the best *one shift per hidden unit of each branch*, chosen per photo against the target
classifier, flips 80-83 % of unseen whole photos at 512 px where the adapter alone flips 57-60 %,
at the adapter's own cost; no context learnt from the decode found those shifts (runs XC, XCL).

The owner has what that search needs when the photo is compressed: the photo itself and a
classifier. So :class:`ShiftSearch` chooses the shifts there (a few Adam steps on the
classifier's margin, through the decoder the file will be decoded with), then the change's
strength so that this photo's encrypted version is exactly ``budget_db`` under the base decode
(the owner can measure it: a per-photo budget that the decoder alone cannot hold, since it never
sees the original). The result, a :class:`PhotoShift` of ``rank x points + 1`` numbers (25 for
the shipped adapter), travels in the ``.psic`` file's header beside the codec's bytes, which stay
the base codec's, byte for byte. Decoding without a key applies it; the owner's key decodes the
full version, which never reads it.

What it is not: the shift is chosen against one classifier, at compression (seconds to a minute
a photo on a CPU); whoever strips it from the file gets the adapter's own change back; it is
public (it says how this photo's change differs from the adapter's, nothing about the photo).

A :class:`PhotoShift` read from a file is untrusted: :meth:`PhotoShift.from_json` checks its shape,
its numbers (finite, bounded) and its size before anything is built, and :meth:`check_fits` that it
fits the adapter it is applied with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..bitstream.images import served
from ..errors import ConfigError, ContainerError, show
from .strength import MAX_STRENGTH, oracle_strength, strength_of

#: bounds of a stored shift (a branch's hidden units are O(1); the search moves them by tenths)
MAX_SHIFT = 100.0
#: the grids a stored shift and strength lie on: the file holds integers (a header of about 150 bytes for the shipped
#: adapter's 25 numbers, where float32 values written out take about 500, 5 % of a 512 px photo's bitstream). The
#: search rounds its result onto them before it sets the strength, so a file decodes exactly as the search saw it.
SHIFT_STEP = 1 / 256
STRENGTH_STEP = 1 / 4096
MAX_POINTS = 16
MAX_UNITS = 1024
#: the largest photo the search runs on: it differentiates through the decoder at the photo's size (about 3 GB of
#: activations per megapixel on the shipped codec), so a 12-megapixel photo would need tens of GB
MAX_SEARCH_PIXELS = 4_000_000
#: target specs the search can use: classifiers (CLIP's zero-shot logits need prompts, which it does not take)
SEARCHABLE = ("efficientnet-lite", "timm:")


def check_search_target(spec: str) -> None:
    """Refuse, before anything loads, a ``--shift-for`` spec the search cannot use: it needs a classifier's logits
    (``efficientnet-lite0`` .. ``-lite2``, ``timm:NAME``, ensembles of those)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--shift-for needs a target: efficientnet-lite0 (or -lite1, -lite2), timm:NAME, or A+B")
    for part in spec.split("+"):
        if not part.startswith(SEARCHABLE):
            raise ConfigError(f"--shift-for {spec}: the per-photo search needs a classifier (efficientnet-lite0, "
                              f"-lite1, -lite2, timm:NAME, or A+B of those), not {part!r}")


@dataclass
class PhotoShift:
    """One photo's side information: ``shifts[k]`` (``[rank_k]``) is added to spatial branch ``k``'s hidden
    units before their ReLU, all over the photo; ``strength`` (or ``None``: the adapter's own, e.g. its
    calibrated per-image strength) scales the adapter's modulation as :mod:`.strength` does."""

    shifts: List[Tensor]
    strength: Optional[float] = None
    _strength_tensor: Optional[Tensor] = field(default=None, repr=False, compare=False)

    def strength_tensor(self) -> Tensor:
        if self._strength_tensor is None:
            self._strength_tensor = torch.tensor(float(self.strength)).view(1, 1, 1, 1)
        return self._strength_tensor

    @property
    def numbers(self) -> int:
        return sum(int(s.numel()) for s in self.shifts) + (self.strength is not None)

    # ------------------------------------------------------------------ files
    def to_json(self) -> Dict[str, Any]:
        """Plain JSON: integers, the shifts in steps of :data:`SHIFT_STEP` and the strength in steps of
        :data:`STRENGTH_STEP` (exact for a shift on those grids, as :class:`ShiftSearch` makes them)."""
        out: Dict[str, Any] = {"shifts": [[int(v) for v in torch.round(s.detach().double().flatten() / SHIFT_STEP)]
                                          for s in self.shifts]}
        if self.strength is not None:
            out["strength"] = int(round(float(self.strength) / STRENGTH_STEP))
        return out

    def on_grid(self) -> "PhotoShift":
        """The same shift rounded onto the grids a file stores (:meth:`to_json`)."""
        return PhotoShift([torch.round(s.detach() / SHIFT_STEP) * SHIFT_STEP for s in self.shifts],
                          None if self.strength is None else round(float(self.strength) / STRENGTH_STEP) * STRENGTH_STEP)

    @classmethod
    def from_json(cls, obj: Any) -> "PhotoShift":
        """A shift read from a ``.psic`` header (untrusted): a :class:`ContainerError` naming what is wrong."""
        def bad(what: str) -> ContainerError:
            return ContainerError(f"the file's header is corrupted (bad photo_shift: {what})")

        if not isinstance(obj, dict) or set(obj) - {"shifts", "strength"} or "shifts" not in obj:
            raise bad(f"not an object of shifts and a strength: {show(obj)}")
        shifts = obj["shifts"]
        if not isinstance(shifts, list) or not 1 <= len(shifts) <= MAX_POINTS:
            raise bad(f"{show(shifts)} is not a list of 1 to {MAX_POINTS} lists")
        total = 0
        for s in shifts:
            if not isinstance(s, list) or not s:
                raise bad(f"{show(s)} is not a non-empty list of numbers")
            total += len(s)
            if total > MAX_UNITS:
                raise bad(f"more than {MAX_UNITS} numbers")
            if not all(_integer_in(v, round(MAX_SHIFT / SHIFT_STEP)) for v in s):
                raise bad(f"shifts must be integers in [-{round(MAX_SHIFT / SHIFT_STEP)}, "
                          f"{round(MAX_SHIFT / SHIFT_STEP)}] (steps of {SHIFT_STEP:g})")
        strength = obj.get("strength")
        top = round(MAX_STRENGTH / STRENGTH_STEP)
        if strength is not None and (not _integer_in(strength, top) or strength <= 0):
            raise bad(f"strength must be an integer in [1, {top}] (steps of {STRENGTH_STEP:g}), not {show(strength)}")
        return cls([torch.tensor(s, dtype=torch.float64).mul(SHIFT_STEP).float() for s in shifts],
                   None if strength is None else strength * STRENGTH_STEP)

    def check_fits(self, model, adapter_name: Optional[str] = None) -> None:
        """The shift fits ``model``'s adapter: a "spatial" one, with one shift of its rank per branch."""
        name = model.resolve_adapter_name(adapter_name)
        module = model.psic_adapters[name]
        branches = getattr(module, "branches", None)
        if branches is None:
            raise ConfigError(f"a per-photo shift needs a 'spatial' adapter; {name!r} is "
                              f"{model.psic_configs[name].modulation!r}")
        want = [b.reduce.out_channels for b in branches]
        have = [int(s.numel()) for s in self.shifts]
        if want != have or any(s.dim() != 1 for s in self.shifts):
            raise ConfigError(f"this per-photo shift has {have} units per branch; the adapter's branches have "
                              f"{want}: it was chosen for another adapter")


def _integer_in(v: Any, bound: int) -> bool:
    """``v`` is a JSON integer (not a bool, not a float) with ``|v| <= bound``."""
    return isinstance(v, int) and not isinstance(v, bool) and -bound <= v <= bound


def _number_in(v: Any, lo: float, hi: float) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and lo <= v <= hi  # False for NaN


def check_shiftable(adapter) -> None:
    """Refuse, from its config alone, an adapter folder without spatial branches (a hub id is checked once
    fetched, when the model is built)."""
    from .download import is_hub_id
    from .files import check_adapter_files

    if is_hub_id(str(adapter)):
        return
    config, _ = check_adapter_files(adapter)
    if config.modulation != "spatial":
        raise ConfigError(f"a per-photo shift needs a 'spatial' adapter; {adapter} is {config.modulation!r}")


# ------------------------------------------------------------------ the search
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
    the strength that puts the encrypted version at ``budget_db`` under the base decode (``None``: the
    adapter's own cost on this photo, so the shift changes where the change goes, not what it costs). It
    stops early once the answer has changed with a margin of ``stop_margin``, room for the 8-bit rounding.

    ``target``: a :class:`~psic_adapter.targets.Target` (``logits``, ``predict``), frozen."""

    target: Any
    steps: int = 40
    lr: float = 0.05
    budget_db: Optional[float] = None
    stop_margin: float = 1.0

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= 10_000:
            raise ConfigError(f"the shift search's steps must be 1 to 10000, not {show(self.steps)}")
        if not _number_in(self.stop_margin, 0, 100):
            raise ConfigError(f"the shift search's stop margin must be in [0, 100], not {show(self.stop_margin)}")
        if not _number_in(self.lr, 0, 10) or self.lr == 0:
            raise ConfigError(f"the shift search's learning rate must be in (0, 10], not {show(self.lr)}")
        if self.budget_db is not None and (not _number_in(self.budget_db, 0, 20) or self.budget_db == 0):
            raise ConfigError(f"the per-photo budget must be in (0, 20] dB, not {show(self.budget_db)}")

    def __call__(self, model, y_hat: Tensor, original: Tensor) -> Tuple[PhotoShift, Dict[str, Any]]:
        """The shift for the photo ``original`` (``[1, 3, H, W]`` in [0, 1]) whose decoded latent is ``y_hat``
        (what its file decodes to: the entropy decoder's, not the encoder's forward). Returns it and what the
        search saw: ``label``, ``steps`` taken, the target's margin on the served encrypted version without and
        with the shift (below 0: the answer changed), the ``drop_db`` it costs, the ``strength`` and whether
        the budget was out of reach (``capped``)."""
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
        with torch.enable_grad():
            for taken in range(1, self.steps + 1):
                d = crop_to(model.synthesize(y_hat, cond, photo_shift=PhotoShift(shifts)), hw) - raw
                scaled = d * (energy / d.pow(2).sum().clamp_min(1e-20)).sqrt()
                loss = margin(self.target.logits((base + scaled).clamp(0, 1)), label).sum()
                if float(loss.detach()) < -self.stop_margin:
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
                       "capped": capped}

    @torch.no_grad()
    def _strength_for(self, model, y_hat, cond, shifts, raw, base, original, hw, drop_db: float,
                      own: float) -> Tuple[float, bool]:
        """The largest strength at which the shifted change, served, is at most ``drop_db`` (> 0) under ``base``:
        a first guess from the change's energy at the adapter's own strength (:func:`~.strength.oracle_strength`,
        linear in the strength), then bisection on real decodes (the change is not quite linear in the
        strength). Also whether even :data:`~.strength.MAX_STRENGTH` stays under the budget (out of reach)."""
        from ..codec.padding import crop_to

        def drop(s: float) -> float:
            x = served(crop_to(model.synthesize(y_hat, cond, photo_shift=PhotoShift(shifts, s)), hw))
            return psnr_drop(x, base, original)

        d = crop_to(model.synthesize(y_hat, cond, photo_shift=PhotoShift(shifts, own)), hw) - raw
        guess = min(max(own * oracle_strength(base, d, original, drop_db), 1e-3), MAX_STRENGTH)
        # on the grid a file stores (steps of STRENGTH_STEP): lo at or under the budget, hi over it
        lo, hi = 0, max(1, round(guess / STRENGTH_STEP))
        top = round(MAX_STRENGTH / STRENGTH_STEP)
        while drop(hi * STRENGTH_STEP) <= drop_db:
            if hi >= top:
                return MAX_STRENGTH, True
            lo, hi = hi, min(2 * hi, top)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if drop(mid * STRENGTH_STEP) <= drop_db else (lo, mid)
        return max(lo, 1) * STRENGTH_STEP, False  # the last strength at or under the budget


def photo_shift_of(header_field: Any) -> Optional[PhotoShift]:
    """The :class:`PhotoShift` stored in a ``.psic`` header field (``None`` where the file has none)."""
    return None if header_field is None else PhotoShift.from_json(header_field)


def describe(shift: PhotoShift) -> str:
    """One line for ``psic info``."""
    s = "the adapter's own strength" if shift.strength is None else f"strength {shift.strength:.3g}"
    return f"{shift.numbers} numbers ({len(shift.shifts)} branches x {[int(t.numel()) for t in shift.shifts]} units, {s})"


__all__: Sequence[str] = ("PhotoShift", "ShiftSearch", "photo_shift_of", "describe")
