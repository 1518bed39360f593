"""A dynamic balance of loss terms (BAvAFT's; the paper's "adaptive multi-objective" weights).

Each term's weight follows the ratio of an anchor loss to that term, smoothed,
floored and clipped, so that no term runs away or vanishes. Shared by the
BAvAFT baseline; available to any trainer.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping

from ..errors import ConfigError


class DynamicBalance:
    """Loss weights from the running magnitudes of the terms (see the module docstring).

    ``update(values)`` takes every term's current value (floats, the anchor
    included) and returns the weights of the non-anchor terms as Python floats:
    ``prior_k * clip(m_anchor / max(m_k, floor * m_k(0)), w_min, w_max)`` with
    ``m`` the EMA of ``|value|``. ``mode="fixed"`` returns the priors.
    """

    def __init__(self, priors: Mapping[str, float], anchor: str = "rd_clean", mode: str = "dynamic",
                 beta: float = 0.9, floor: float = 0.1, w_min: float = 1e-3, w_max: float = 1e3):
        if mode not in ("dynamic", "fixed"):
            raise ConfigError(f"balance must be 'dynamic' or 'fixed', not {mode!r}")
        if not 0.0 <= beta < 1.0 or not 0.0 < floor <= 1.0 or not 0.0 < w_min <= w_max:
            raise ConfigError("need 0 <= beta < 1, 0 < floor <= 1 and 0 < w_min <= w_max")
        self.priors = {k: float(v) for k, v in priors.items()}
        self.anchor, self.mode = anchor, mode
        self.beta, self.floor, self.w_min, self.w_max = beta, floor, w_min, w_max
        self.ema: Dict[str, float] = {}
        self.first: Dict[str, float] = {}

    def update(self, values: Mapping[str, float]) -> Dict[str, float]:
        for k, v in values.items():
            v = abs(float(v))
            if not math.isfinite(v):
                continue  # a bad batch does not poison the running magnitude
            if k not in self.ema:
                self.ema[k] = v
                self.first[k] = max(v, 1e-8)
            else:
                self.ema[k] = self.beta * self.ema[k] + (1.0 - self.beta) * v
        return self.weights()

    def weights(self) -> Dict[str, float]:
        if self.mode == "fixed" or self.anchor not in self.ema:
            return dict(self.priors)
        ref = max(self.ema[self.anchor], 1e-8)
        out = {}
        for k, p in self.priors.items():
            if k not in self.ema:
                out[k] = p
                continue
            m = max(self.ema[k], self.floor * self.first[k], 1e-12)
            out[k] = p * min(max(ref / m, self.w_min), self.w_max)
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"ema": dict(self.ema), "first": dict(self.first)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema = dict(state.get("ema", {}))
        self.first = dict(state.get("first", {}))
