"""The owner's per-photo shift: what a ``.psic`` file carries beside the codec's bytes (issue 15, E3).

A "spatial" adapter's change at each decoder block is ``gate * conv3x3(relu(conv1x1(f)))``: a
function of the block's own output, the same function for every photo. Measured (docs/results.md,
E3 and runs PS), one shift per hidden unit of each branch, chosen per photo against the target
classifier, flips many more unseen photos than the adapter alone at the same cost; no context
learnt from the decode found those shifts (runs XC, XCL). The owner has what that search needs
when the photo is compressed (the photo and a classifier): :class:`~psic_adapter.training.shift_search.ShiftSearch`
chooses it there. A :class:`PhotoShift` (``rank x points + 1`` numbers: 25 for the shipped adapter)
travels in the ``.psic`` file's header (container format 3), as integers on fixed grids, beside the
codec's bytes, which stay the base codec's. Decoding without a key applies it
(:meth:`~psic_adapter.adapter.model.PSICModel.synthesize`, ``photo_shift=``); the owner's key decodes the full
version, which never reads it.

Whoever strips it from a file gets the adapter's own change back; it is public (it says how this
photo's change differs from the adapter's, nothing about the photo).

A :class:`PhotoShift` read from a file is untrusted: :meth:`PhotoShift.from_json` checks its shape,
its numbers (integers, bounded) and its size before anything is built, and :meth:`check_fits` that
it fits the adapter it is applied with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from ..errors import ConfigError, ContainerError, show
from .strength import MAX_STRENGTH

#: bounds of a stored shift (a branch's hidden units are O(1); the search moves them by tenths)
MAX_SHIFT = 100.0
#: the grids a stored shift and strength lie on: the file holds integers (a header of about 150 bytes for the shipped
#: adapter's 25 numbers, where float32 values written out take about 500, 5 % of a 512 px photo's bitstream). The
#: search rounds its result onto them before it sets the strength, so a file decodes exactly as the search saw it.
SHIFT_STEP = 1 / 256
STRENGTH_STEP = 1 / 4096
MAX_POINTS = 16
MAX_UNITS = 1024
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


def photo_shift_of(header_field: Any) -> Optional[PhotoShift]:
    """The :class:`PhotoShift` stored in a ``.psic`` header field (``None`` where the file has none)."""
    return None if header_field is None else PhotoShift.from_json(header_field)


def describe(shift: PhotoShift) -> str:
    """One line for ``psic info``."""
    s = "the adapter's own strength" if shift.strength is None else f"strength {shift.strength:.3g}"
    return f"{shift.numbers} numbers ({len(shift.shifts)} branches x {[int(t.numel()) for t in shift.shifts]} units, {s})"


__all__: Sequence[str] = ("PhotoShift", "ShiftSearch", "photo_shift_of", "describe")
