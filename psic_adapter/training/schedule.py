"""The two-stage schedule of paper section 3.4: which parameters train, and the phases.

Stage 1 trains everything, alternating

* ``S1-1``: rate + distortion of the **full** version,
* ``S1-2``: rate + distortion of the **encrypted** version + the encryption loss.

Stage 2 freezes the encoder, hyper-encoder/decoder and entropy models (eval
mode: rounding, no gradients, not even computed) and trains the decoder side,
alternating

* ``S2-1``: distortion of the full version,
* ``S2-2``: the encryption loss on the encrypted version (plus, here, a
  weighted distortion term that keeps it looking like the image).

Stage 2 alone fits an adapter onto an existing pretrained codec.
``adapter_only=True`` trains the CLTG parameters alone (the base decoder stays
frozen), so that the adapter never has to ship decoder weights and the base
codec stays byte-for-byte the published one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class Phase:
    """One of the alternating steps of a stage."""

    name: str  # "S1-1", "S1-2", "S2-1", "S2-2"
    version: str  # "full" | "encrypted"
    rate: bool  # the rate term is in the loss (stage 1)

    @property
    def encrypted(self) -> bool:
        return self.version == "encrypted"


PHASES = {
    1: (Phase("S1-1", "full", rate=True), Phase("S1-2", "encrypted", rate=True)),
    2: (Phase("S2-1", "full", rate=False), Phase("S2-2", "encrypted", rate=False)),
}


def phase_at(stage: int, step: int) -> Phase:
    """Phases alternate step by step: even steps full, odd steps encrypted."""
    if stage not in PHASES:
        raise ConfigError(f"stage must be 1 or 2, not {stage!r}")
    return PHASES[stage][step % 2]


def _is_aux(name: str) -> bool:
    return name.endswith(".quantiles")


def configure_trainable(model, stage: int, adapter_only: bool = False) -> Dict[str, List[nn.Parameter]]:
    """Set ``requires_grad`` and train/eval modes for a stage; return the parameter groups.

    Returns ``{"base": [...], "adapter": [...], "aux": [...]}``: base-codec
    parameters that train (excluding the entropy bottleneck's quantiles), the
    active adapter's parameters, and the quantiles that CompressAI's auxiliary
    loss trains (stage 1 only).
    """
    if stage not in (1, 2):
        raise ConfigError(f"stage must be 1 or 2, not {stage!r}")
    if stage == 1 and adapter_only:
        raise ConfigError("adapter_only is a stage-2 option (stage 1 trains the whole codec)")
    base = model.base
    base.requires_grad_(False)
    model.psic_adapters.requires_grad_(False)
    adapter = list(model.adapter_parameters())
    for p in adapter:
        p.requires_grad_(True)
    if stage == 1:
        base.train()
        named = list(base.named_parameters())
        for _, p in named:
            p.requires_grad_(True)
        return {
            "base": [p for n, p in named if not _is_aux(n)],
            "adapter": adapter,
            "aux": [p for n, p in named if _is_aux(n)],
        }
    base.eval()  # encoder and entropy models: rounding, fixed statistics
    if adapter_only:
        return {"base": [], "adapter": adapter, "aux": []}
    g_s = base.g_s
    g_s.train()
    params = list(g_s.parameters())
    for p in params:
        p.requires_grad_(True)
    return {"base": params, "adapter": adapter, "aux": []}
