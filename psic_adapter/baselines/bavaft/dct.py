"""The 8x8 block DCT in torch (differentiable), and JPEG's YCbCr, for BAvAFT's frequency trigger."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ...errors import ConfigError

#: JPEG's full-range BT.601 RGB -> YCbCr matrix (offsets 0, 0.5, 0.5)
RGB_TO_YCC = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)




def dct_matrix(n: int = 8, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``n x n``): ``coef = D @ block @ D.T``.

    ``D[k, i] = a_k cos(pi (2i + 1) k / (2n))`` with ``a_0 = sqrt(1/n)`` and
    ``a_k = sqrt(2/n)``; ``D @ D.T = I``, so the inverse is ``D.T @ coef @ D``.
    Computed in float64, then cast.
    """
    if n < 1:
        raise ConfigError(f"DCT size must be >= 1, not {n}")
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def block_dct(x: Tensor, block: int = 8, matrix: Optional[Tensor] = None) -> Tensor:
    """Blockwise 2-D DCT: ``[B, C, H, W]`` -> ``[B, C, block*block, H/block, W/block]``.

    Frequency ``(u, v)`` (vertical, horizontal) is channel ``u * block + v``.
    ``H`` and ``W`` must be multiples of ``block``. Differentiable.
    """
    b = block
    n, c, h, w = x.shape
    if h % b or w % b:
        raise ConfigError(f"block_dct needs H, W multiples of {b}, got {h}x{w}")
    d = dct_matrix(b, x.dtype, x.device) if matrix is None else matrix.to(x.dtype)
    blocks = x.reshape(n, c, h // b, b, w // b, b).permute(0, 1, 2, 4, 3, 5)  # n c Hb Wb b b
    coef = d @ blocks @ d.t()
    return coef.reshape(n, c, h // b, w // b, b * b).permute(0, 1, 4, 2, 3)


def block_idct(coef: Tensor, block: int = 8, matrix: Optional[Tensor] = None) -> Tensor:
    """Inverse of :func:`block_dct`: ``[B, C, block*block, Hb, Wb]`` -> ``[B, C, Hb*block, Wb*block]``."""
    b = block
    n, c, f, hb, wb = coef.shape
    if f != b * b:
        raise ConfigError(f"block_idct expects {b * b} frequency channels, got {f}")
    d = dct_matrix(b, coef.dtype, coef.device) if matrix is None else matrix.to(coef.dtype)
    blocks = coef.permute(0, 1, 3, 4, 2).reshape(n, c, hb, wb, b, b)
    pix = d.t() @ blocks @ d
    return pix.permute(0, 1, 2, 4, 3, 5).reshape(n, c, hb * b, wb * b)
