"""Conditional Latent Trigger Generation (CLTG) modules, paper section 3.2.

A CLTG adapter turns a batch of condition vectors ``[B, cond_dim]`` into one
channel bias ``[B, C_k, 1, 1]`` per injection point ``k``; the surgery adds
bias ``k`` to the output of decoder block ``k`` (``f_CLTG = f_beta W_d + f_dec``,
eq. 4). Other modulations (``PSICConfig(modulation=...)``):

* ``"film"``: each point gets ``[B, 2 C_k, 1, 1]``, a gain and a bias, applied as
  ``f_dec * (1 + gain) + bias``;
* ``"spatial"``: FiLM plus a per-channel gate ``g`` on a small convolutional
  branch of the block's own output, ``+ g * conv3x3(relu(conv1x1(f_dec)))``: a
  change that varies across the image with its content, still switched by
  the condition. With ``spatial_context`` set, the branch's hidden units also
  get a per-image shift read from the whole decode, ``MLP(summary(f_dec))``
  (each channel's mean and spread; zero-initialised): each place's change may then depend on what the whole
  image holds, not only on its neighbourhood (issue 15, runs XC).

Both presets zero-initialise the last factor (``W_d``), so that a fresh
adapter adds exactly zero: the wrapped codec decodes exactly as the base codec.
:meth:`CLTGAdapter.apply` is what the decoder hooks call.

* :class:`PaperCLTG` ("paper"): independent CLTGs, one per decoder block, each
  a 2-layer MLP ``cond -> hidden -> C`` giving ``f_beta``, times an
  element-wise weight ``W_d`` of ``C`` entries.
* :class:`OfficialCLTG` ("official"): as the authors' code, one shared MLP on a
  Fourier embedding of the condition (the raw value plus sin/cos at
  log-spaced frequencies), ``Linear -> ReLU -> Linear -> ReLU``, and a
  bias-free ``Linear(hidden -> C)`` (a full matrix ``W_d``) per injection point.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .config import SPATIAL_RANK, PSICConfig

#: the learning rate of a spatial branch's context MLP, as a share of the adapter's. Adam moves every weight by
#: about the learning rate per step whatever its gradient; at the adapter's 1e-3 that is up to 0.5 in 500 steps,
#: 8x the MLP's ``1/sqrt(fan_in)`` weights (about 0.06), and in run XCN0 it drove every hidden unit dead (a
#: constant shift, the same for every image). A tenth keeps the drift near the weights' own scale.
CONTEXT_LR_SCALE = 0.1


def context_parameters(adapter: nn.Module) -> List[nn.Parameter]:
    """The parameters of every spatial branch's context MLP in ``adapter`` (none without ``spatial_context``)."""
    return [p for m in adapter.modules() if isinstance(m, SpatialBranch) and m.context is not None
            for p in m.context.parameters()]

#: outputs per channel of each modulation: bias; gain and bias; gain, bias and gate
FACTORS = {"bias": 1, "film": 2, "spatial": 3}


class SpatialBranch(nn.Module):
    """``conv3x3(relu(conv1x1(f)))``: the content-dependent part of the "spatial" modulation.

    ``context`` > 0 adds a global context: ``relu(conv1x1(f) + MLP(s))``, where ``s`` is each channel's mean and
    standard deviation over the image, scaled to unit RMS (:meth:`summary`), and the MLP has ``context`` hidden
    units and a last layer that starts at zero (the branch then computes what it did without).
    """

    def __init__(self, channels: int, rank: int = SPATIAL_RANK, context: int = 0):
        super().__init__()
        self.reduce = nn.Conv2d(channels, rank, 1)
        self.expand = nn.Conv2d(rank, channels, 3, padding=1)
        self.context = None
        if context:
            self.context = nn.Sequential(nn.Linear(2 * channels, context), nn.ReLU(), nn.Linear(context, rank))
            nn.init.zeros_(self.context[2].weight)
            nn.init.zeros_(self.context[2].bias)

    @staticmethod
    def summary(f: Tensor) -> Tensor:
        """``[B, 2 C]``: each channel's mean and standard deviation over the image, the vector scaled to unit RMS.

        A decoder block's pooled output is small (about 0.05 per channel on the shipped codec) and the part that
        differs between images smaller still: fed raw to an MLP at its default initialisation it leaves most
        hidden units dead and the rest nearly constant, so the context cannot learn to tell images apart (runs
        XC, docs/results.md). The scale of the vector is the codec's, not the image's: dividing it out keeps
        what distinguishes one image from another at the MLP's own scale. Training decodes windows of photos
        (``training/views.py``), so there it summarises the window, which a whole decode does not: a 224-512 px
        window reads like a smaller photo of the same scene."""
        x = f.float()
        mean = x.mean(dim=(2, 3))  # mean and norm: one cheap pass each (var_mean costs 15x more on a CPU)
        mean_square = torch.linalg.vector_norm(x, dim=(2, 3)).square() / (x.shape[2] * x.shape[3])
        # E[x^2] - E[x]^2 loses the spread where |mean| >> spread: decoder features sit near zero (about 0.05 and
        # 0.1-0.5 here), where float32 keeps it; a flat map gets spread 1e-6, and the epsilon keeps it near zero
        stats = torch.cat([mean, (mean_square - mean.square()).clamp_min(1e-12).sqrt()], dim=1)
        return stats * stats.square().mean(dim=1, keepdim=True).add(1e-6).rsqrt()

    def context_shift(self, f: Tensor) -> Tensor:
        """``[B, rank]``: the shift the context adds to the hidden units for each image (``None`` without one)."""
        if self.context is None:
            return None
        return self.context(self.summary(f).to(self.context[0].weight.dtype))

    def pre_activation(self, f: Tensor) -> Tensor:
        """``conv1x1(f)``, plus the image's context where the branch has one: ``[B, rank, H, W]``."""
        h = self.reduce(f)
        c = self.context_shift(f)
        return h if c is None else h + c[:, :, None, None].to(h.dtype)

    def hidden(self, f: Tensor, shift: Optional[Tensor] = None) -> Tensor:
        """``relu(pre_activation(f) + shift)``: the branch's hidden units. ``shift`` (``[rank]``, or none): one
        number per hidden unit for the whole image, the per-photo shift an owner may choose at compression
        (:mod:`psic_adapter.adapter.photo_shift`)."""
        h = self.pre_activation(f)
        if shift is not None:
            h = h + shift.to(h.device, h.dtype)[None, :, None, None]
        return torch.relu(h)

    def forward(self, f: Tensor, shift: Optional[Tensor] = None) -> Tensor:
        return self.expand(self.hidden(f, shift))


class CLTGAdapter(nn.Module):
    """Base class: ``forward(condition [B, D]) -> list of [B, factor * C_k, 1, 1]`` per point,
    and :meth:`apply` to put one point's output onto a decoder block's feature map."""

    def __init__(self, cond_dim: int, channels: Sequence[int], modulation: str = "bias",
                 spatial_rank: int = SPATIAL_RANK, spatial_context: int = 0):
        super().__init__()
        if modulation not in FACTORS:
            raise ValueError(f"unknown modulation {modulation!r}")
        self.cond_dim = int(cond_dim)
        self.channels = [int(c) for c in channels]
        self.modulation = modulation
        self._factor = FACTORS[modulation]
        self.branches = (nn.ModuleList(SpatialBranch(c, spatial_rank, spatial_context) for c in self.channels)
                         if modulation == "spatial" else None)

    @property
    def film(self) -> bool:
        return self.modulation != "bias"

    def apply(self, index: int, out: Tensor, t: Tensor, in_place: bool = False,
              shift: Optional[Tensor] = None) -> Tensor:
        """Block ``index``'s output ``out`` modulated by ``t`` (that point's part of :meth:`forward`).

        ``in_place``: the caller owns ``out`` and no autograd graph is recorded, so
        it may be changed in place (saves one feature-map allocation per block).
        ``shift``: the spatial branch's per-photo shift of its hidden units (:meth:`SpatialBranch.hidden`).
        """
        gain, bias, gate = self._parts(t.to(out.dtype))
        extra = gate * self.branches[index](out, shift) if gate is not None else None
        return self._modulate(out, gain, bias, extra, in_place and t.shape[0] in (1, out.shape[0]))

    def apply_deferred(self, index: int, out: Tensor, t: Tensor, in_place: bool = False,
                       shift: Optional[Tensor] = None):
        """:meth:`apply` but for the spatial branch's last convolution: ``(out modulated by its gain and bias,
        (the branch's hidden map relu(conv1x1(out)), the gate))``, for the caller to fold the rest into the
        decoder's next layer (:mod:`psic_adapter.adapter.fusion`). Spatial modulation only."""
        gain, bias, gate = self._parts(t.to(out.dtype))
        branch = self.branches[index]
        hidden = branch.hidden(out, shift)  # before ``out`` is modulated in place
        return self._modulate(out, gain, bias, None, in_place and t.shape[0] in (1, out.shape[0])), (hidden, gate)

    def _parts(self, t: Tensor):
        """``(gain, bias, gate)`` of one point's output (None where the modulation has none)."""
        if self.modulation == "bias":
            return None, t, None
        if self.modulation == "film":
            gain, bias = t.chunk(2, dim=1)
            return gain, bias, None
        return t.chunk(3, dim=1)

    @staticmethod
    def _modulate(out: Tensor, gain, bias: Tensor, extra, in_place: bool) -> Tensor:
        if in_place:
            try:
                if gain is not None:
                    out.mul_(gain + 1)
                out.add_(bias)
                return out.add_(extra) if extra is not None else out
            except RuntimeError:  # e.g. an expanded (self-overlapping) output
                pass
        y = (out * (gain + 1) if gain is not None else out) + bias
        return y + extra if extra is not None else y

    def _check(self, condition: Tensor) -> Tensor:
        if condition.dim() == 1:
            condition = condition[None]
        if condition.dim() != 2 or condition.shape[1] != self.cond_dim:
            raise ValueError(f"condition must be [B, {self.cond_dim}], got {tuple(condition.shape)}")
        return condition

    def forward(self, condition: Tensor) -> List[Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class _BlockCLTG(nn.Module):
    """One paper-style CLTG: ``f_beta = MLP(cond)``, bias = ``f_beta * W_d``."""

    def __init__(self, cond_dim: int, hidden: int, channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.weight = nn.Parameter(torch.zeros(channels))  # W_d, element-wise, zero-init

    def forward(self, condition: Tensor) -> Tensor:
        return self.mlp(condition) * self.weight


class PaperCLTG(CLTGAdapter):
    """One independent CLTG per decoder block (paper fig. 2b, eq. 4)."""

    def __init__(self, cond_dim: int, channels: Sequence[int], hidden: int = 64, modulation: str = "bias",
                 spatial_rank: int = SPATIAL_RANK, spatial_context: int = 0):
        super().__init__(cond_dim, channels, modulation, spatial_rank, spatial_context)
        self.blocks = nn.ModuleList(_BlockCLTG(cond_dim, hidden, c * self._factor) for c in self.channels)

    def forward(self, condition: Tensor) -> List[Tensor]:
        condition = self._check(condition)
        return [blk(condition)[:, :, None, None] for blk in self.blocks]


def fourier_embed(condition: Tensor, num_freqs: int) -> Tensor:
    """``[B, D] -> [B, D * (2 F + 1)]``: the raw values plus sin/cos at F log-spaced frequencies."""
    if num_freqs == 0:
        return condition
    freqs = torch.logspace(0, math.log10(1000.0), num_freqs, device=condition.device, dtype=condition.dtype)
    angles = condition[:, :, None] * freqs * math.pi  # B, D, F
    return torch.cat([condition, angles.sin().flatten(1), angles.cos().flatten(1)], dim=1)


class OfficialCLTG(CLTGAdapter):
    """The authors' variant: one shared Fourier-feature MLP, a bias-free projection per point."""

    def __init__(self, cond_dim: int, channels: Sequence[int], hidden: int = 512, fourier_freqs: int = 10,
                 modulation: str = "bias", spatial_rank: int = SPATIAL_RANK, spatial_context: int = 0):
        super().__init__(cond_dim, channels, modulation, spatial_rank, spatial_context)
        self.fourier_freqs = int(fourier_freqs)
        in_dim = cond_dim * (2 * self.fourier_freqs + 1)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True)
        )
        self.proj = nn.ModuleList(nn.Linear(hidden, c * self._factor, bias=False) for c in self.channels)
        for p in self.proj:
            nn.init.zeros_(p.weight)

    def forward(self, condition: Tensor) -> List[Tensor]:
        condition = self._check(condition)
        h = self.mlp(fourier_embed(condition, self.fourier_freqs))
        return [p(h)[:, :, None, None] for p in self.proj]


def build_cltg(config: PSICConfig, channels: Sequence[int]) -> CLTGAdapter:
    """The one factory: a CLTG adapter for ``config`` with these per-point channel counts."""
    if config.preset == "paper":
        return PaperCLTG(config.cond_dim, channels, hidden=config.resolved_hidden_dim, modulation=config.modulation,
                         spatial_rank=config.resolved_spatial_rank, spatial_context=config.spatial_context or 0)
    if config.preset == "official":
        return OfficialCLTG(config.cond_dim, channels, hidden=config.resolved_hidden_dim,
                            fourier_freqs=config.fourier_freqs, modulation=config.modulation,
                            spatial_rank=config.resolved_spatial_rank, spatial_context=config.spatial_context or 0)
    raise ValueError(f"unknown preset {config.preset!r}")  # PSICConfig.validate rules this out
