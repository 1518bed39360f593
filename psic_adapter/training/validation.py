"""The validation ASR read while training: does the run still improve where it is used?

:class:`ValidationProbe` codes a few held-out photos once, at a longer side of
``size`` pixels (the scale of use), with the frozen encoder, and decodes them
every ``val_every`` steps with the encrypted condition. It reports what
``psic eval`` reports for those photos, as 8-bit images: among the photos
whose base decode the target classifies as it classifies the original, the
share whose encrypted decode it classifies otherwise (ASR), and the mean PSNR
drop of the encrypted decode under the base's. A few photos make a noisy
curve: it says whether a run still moves, not what it scores (``psic eval``
does that, with a control).

The ASR follows the dB the adapter spends at each read, which the budget
controller moves from step to step; with ``at_db`` the probe also reads it
with each photo's change rescaled to exactly that drop (``base + a * change``,
``a`` from the original, which only a probe knows:
:func:`~psic_adapter.adapter.strength.oracle_strength`), so that reads at
different steps compare at equal cost.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional

import torch

from ..adapter.strength import oracle_strength
from ..bitstream.images import crop_to, pad_to_multiple, resize_longer_side, served  # noqa: F401 (served: named here too)
from ..errors import DataError


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).pow(2).mean())
    return 100.0 if mse <= 1e-10 else -10.0 * torch.log10(torch.tensor(mse)).item()


class ValidationProbe:
    """Held-out photos coded once; :meth:`measure` decodes them with the encrypted condition."""

    def __init__(self, model, target, dataset, images: int = 12, size: int = 512, device="cpu",
                 pad_multiple: int = 64, at_db: Optional[float] = None):
        self.at_db = at_db
        n = min(int(images), len(dataset))
        if n < 1:
            raise DataError("no validation photos")
        self.device = torch.device(device)
        self.items: List[Dict[str, Any]] = []
        with torch.no_grad():
            for i in range(n):
                x = resize_longer_side(dataset[i]["image"][None].float(), int(size)).to(self.device)
                x = served(x)
                xp, hw = pad_to_multiple(x, pad_multiple)
                y_hat = model.analyze(xp)["y_hat"]
                base = served(crop_to(model.synthesize(y_hat, None), hw))
                self.items.append({"x": x, "y_hat": y_hat, "hw": hw, "base": base,
                                   "psnr_base": _psnr(base, x)})
            originals = [target.predict(it["x"]) for it in self.items]
            bases = [target.predict(it["base"]) for it in self.items]
        for it, o, b in zip(self.items, originals, bases):
            it["right"] = bool((o == b).all())
            it["label"] = o

    @torch.no_grad()
    def measure(self, model, target, amp: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
        """``{"val_asr", "val_flipped", "val_right", "val_images", "val_drop_db"}`` for the adapter as it is now,
        and with ``at_db`` ``{"val_at_db", "val_flipped_at_db", "val_asr_at_db", "val_drop_at_db"}``: the same
        photos with each change rescaled to ``at_db`` under the base (``val_drop_at_db``: the mean drop that
        rescaling reached after 8-bit rounding; a photo whose decode does not change stays at 0)."""
        ctx = amp or contextlib.nullcontext
        was_training = model.training
        model.eval()
        try:
            cond = model.encrypted_condition().to(self.device)
            flipped, flipped_at, right, drops, drops_at = 0, 0, 0, [], []
            for it in self.items:
                with ctx():
                    enc = model.synthesize(it["y_hat"], cond)
                enc = served(crop_to(enc.float(), it["hw"]))
                drops.append(it["psnr_base"] - _psnr(enc, it["x"]))
                if self.at_db is not None:
                    change = enc - it["base"]
                    at = served(it["base"] + oracle_strength(it["base"], change, it["x"], self.at_db) * change)
                    drops_at.append(it["psnr_base"] - _psnr(at, it["x"]))
                if it["right"]:
                    right += 1
                    flipped += int(bool((target.predict(enc) != it["label"]).any()))
                    if self.at_db is not None:
                        flipped_at += int(bool((target.predict(at) != it["label"]).any()))
        finally:
            model.train(was_training)
        out = {"val_asr": flipped / right if right else None, "val_flipped": flipped, "val_right": right,
               "val_images": len(self.items), "val_drop_db": sum(drops) / len(drops)}
        if self.at_db is not None:
            out.update(val_at_db=float(self.at_db), val_flipped_at_db=flipped_at,
                       val_asr_at_db=flipped_at / right if right else None,
                       val_drop_at_db=sum(drops_at) / len(drops_at))
        return out
