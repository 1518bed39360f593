"""BAvAFT's trigger injection network: an adaptive, DCT-domain trigger added to the input image."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from ...codec.padding import crop_to, pad_to_multiple
from ...errors import ConfigError
from .dct import RGB_TO_YCC, block_dct, block_idct, dct_matrix


@dataclass
class BAvAFTConfig:
    """Architecture of the trigger and what of the codec trains.

    Args:
        block: DCT block size (8, as JPEG).
        hidden: width of the trigger network.
        top_k: frequencies kept per image and colour channel (paper: K = 16).
        band: candidate frequencies, as the range of ``u + v`` (inclusive).
        amplitude: bound of the trigger in pixels (images in [0, 1]).
        coef_gain: scale of the predicted coefficients relative to ``amplitude``
            (with 16 frequencies of unit size the pixel trigger has a standard
            deviation of about 0.5, so 2 makes it about ``amplitude``).
        color_space: "ycbcr" (JPEG's) or "rgb": where the DCT is taken.
        train_hyper_encoder: fine-tune ``h_a`` as well as ``g_a``.
    """

    block: int = 8
    hidden: int = 64
    top_k: int = 16
    band: Tuple[int, int] = (1, 9)
    amplitude: float = 8.0 / 255.0
    coef_gain: float = 2.0
    color_space: str = "ycbcr"
    train_hyper_encoder: bool = True

    def __post_init__(self):
        self.band = tuple(int(b) for b in self.band)
        if len(self.band) != 2 or not 0 <= self.band[0] <= self.band[1]:
            raise ConfigError(f"band must be (lo, hi) with 0 <= lo <= hi, not {self.band}")
        if self.block < 2 or self.hidden < 1:
            raise ConfigError("block must be >= 2 and hidden >= 1")
        n_cand = len(candidate_frequencies(self.block, self.band))
        if not 1 <= self.top_k <= n_cand:
            raise ConfigError(f"top_k must be in [1, {n_cand}] (the band {self.band} has {n_cand} frequencies)")
        if not self.amplitude > 0:
            raise ConfigError("amplitude must be > 0")
        if self.color_space not in ("ycbcr", "rgb"):
            raise ConfigError(f"color_space must be 'ycbcr' or 'rgb', not {self.color_space!r}")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["band"] = list(self.band)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BAvAFTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "band" else v) for k, v in d.items() if k in names})


def candidate_frequencies(block: int, band: Tuple[int, int]) -> List[int]:
    """Channel indices ``u * block + v`` of the frequencies with ``band[0] <= u + v <= band[1]``."""
    return [u * block + v for u in range(block) for v in range(block) if band[0] <= u + v <= band[1]]


class TriggerNet(nn.Module):
    """The image-adaptive trigger in the DCT domain (see the module docstring).

    ``forward(x)`` returns the trigger ``t`` (same shape as ``x``, ``|t| <
    amplitude``); :meth:`coefficients` the masked DCT coefficients and the mask.
    """

    def __init__(self, config: Optional[BAvAFTConfig] = None):
        super().__init__()
        self.config = cfg = config or BAvAFTConfig()
        b, h = cfg.block, cfg.hidden
        self.nfreq = b * b
        ch = 3 * self.nfreq
        self.register_buffer("dct", dct_matrix(b), persistent=False)
        m = torch.tensor(RGB_TO_YCC, dtype=torch.float64)
        self.register_buffer("to_ycc", m.float(), persistent=False)
        self.register_buffer("from_ycc", torch.linalg.inv(m).float(), persistent=False)
        cand = torch.zeros(self.nfreq, dtype=torch.bool)
        cand[candidate_frequencies(b, cfg.band)] = True
        self.register_buffer("candidates", cand, persistent=False)
        self.trunk = nn.Sequential(
            nn.Conv2d(ch, h, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(h, h, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(h, h, 3, padding=1), nn.LeakyReLU(0.2),
        )
        self.coef_head = nn.Conv2d(h, ch, 1)
        # a fresh trigger is a random DCT pattern (rms ~0.4 amplitude), not ~0: from the
        # first step the encoder has a trigger to tell apart (the default init gave ~49 dB)
        nn.init.normal_(self.coef_head.bias, std=0.5)
        # adaptive frequency selection: global learnable logits + image-dependent ones
        self.freq_logits = nn.Parameter(0.1 * torch.randn(3, self.nfreq))
        self.score_head = nn.Linear(h, ch)
        nn.init.zeros_(self.score_head.weight)
        nn.init.zeros_(self.score_head.bias)

    # ------------------------------------------------------------------ colour
    def _color(self, x: Tensor, matrix: Tensor, offset: bool) -> Tensor:
        y = torch.einsum("ij,bjhw->bihw", matrix.to(x.dtype), x)
        if offset:
            y = y + x.new_tensor([0.0, 0.5, 0.5]).view(1, 3, 1, 1)
        return y

    def _pad(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        return pad_to_multiple(x, self.config.block)

    # ---------------------------------------------------------------- pieces
    def coefficients(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(coef [B, 3, F, Hb, Wb], mask [B, 3, F])``: the trigger in the DCT domain.

        ``x`` must have ``H, W`` multiples of ``block`` (``forward`` pads).
        ``mask`` is 1 on the ``top_k`` selected frequencies of each image and
        colour channel (forward value; its gradient is the sigmoid's).
        """
        cfg = self.config
        n = x.shape[0]
        xc = self._color(x, self.to_ycc, True) if cfg.color_space == "ycbcr" else x
        feats_in = block_dct(xc - 0.5, cfg.block, self.dct) / cfg.block  # DC in [-0.5, 0.5]
        feats_in = feats_in.reshape(n, 3 * self.nfreq, *feats_in.shape[-2:])
        feats = self.trunk(feats_in)
        raw = self.coef_head(feats).reshape(n, 3, self.nfreq, *feats.shape[-2:])
        scores = self.freq_logits[None] + self.score_head(feats.mean(dim=(-2, -1))).reshape(n, 3, self.nfreq)
        cand = self.candidates.view(1, 1, -1)
        with torch.no_grad():
            idx = scores.masked_fill(~cand, -math.inf).topk(cfg.top_k, dim=-1).indices
            hard = torch.zeros_like(scores).scatter_(-1, idx, 1.0)
        soft = torch.sigmoid(scores) * cand
        mask = hard + soft - soft.detach()
        coef = cfg.amplitude * cfg.coef_gain * torch.tanh(raw) * mask[..., None, None]
        return coef, mask

    def forward(self, x: Tensor) -> Tensor:
        cfg = self.config
        xp, size = self._pad(x)
        coef, _ = self.coefficients(xp)
        t = block_idct(coef, cfg.block, self.dct)
        if cfg.color_space == "ycbcr":
            t = self._color(t, self.from_ycc, False)  # a difference: no offset
        t = crop_to(t, size)
        return cfg.amplitude * torch.tanh(t / cfg.amplitude)
