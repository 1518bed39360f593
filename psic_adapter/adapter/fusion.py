"""The last spatial branch folded into the decoder's next layer, for decoding (issue 15, part 5).

The "spatial" modulation adds ``gate * conv3x3(relu(conv1x1(f)))`` to a decoder block's output
``f``. At the last injection point of the hyperprior family (``g_s.5``, at half the image's
resolution) the next layer is the decoder's last transposed convolution (128 -> 3 channels), a
linear map: so ``tconv(f' + gate * conv3x3(h))`` is ``tconv(f') + T_gate(h)``, where ``T_gate`` is
one transposed convolution from the branch's ``r`` channels (plus one of ones, for the 3x3's
bias) straight to the 3 image channels, with the 3x3 convolution, the gate and ``tconv``'s kernel
multiplied into one ``(k + 2 s)``-wide kernel (``k``, ``s``: ``tconv``'s kernel and stride). The
3x3 convolution at half resolution into 128 channels (about a quarter of the base decoder's
work, most of the branch's cost) becomes a convolution into 3 channels. The result is the same
function (float rounding apart); decodes without autograd use it (``PSICModel`` decides),
training keeps the plain form.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SPATIAL_RANK
from .surgery import get_submodule


def fusable_next(codec: nn.Module, name: str, rank: int = SPATIAL_RANK) -> Optional[str]:
    """The name of the layer that takes module ``name``'s output, where a branch of ``rank`` hidden channels is
    folded into it: the next child of the same ``nn.Sequential``, a plain transposed convolution (one group, no
    dilation, square kernel and stride, zero padding) into few enough channels that the folded kernel costs
    less than the 3x3 it replaces (the last layer into 3 image channels: about a fifth; a 128-channel layer
    would cost 9x more). None otherwise (the branch then runs as it is)."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = get_submodule(codec, parent_name) if parent_name else codec
    except Exception:  # noqa: BLE001 - any lookup failure: not fusable
        return None
    if not isinstance(parent, nn.Sequential):
        return None
    names = list(parent._modules)
    if child not in names or names.index(child) + 1 >= len(names):
        return None
    nxt_name = names[names.index(child) + 1]
    nxt = parent._modules[nxt_name]
    if not (type(nxt) is nn.ConvTranspose2d and nxt.groups == 1 and nxt.dilation == (1, 1)
            and nxt.padding_mode == "zeros" and nxt.kernel_size[0] == nxt.kernel_size[1]
            and nxt.stride[0] == nxt.stride[1] and nxt.padding[0] == nxt.padding[1]
            and nxt.output_padding[0] == nxt.output_padding[1]):
        return None
    k, st = nxt.kernel_size[0], nxt.stride[0]
    folded_macs = (rank + 1) * nxt.out_channels * (k + 2 * st) ** 2  # per input position
    if folded_macs >= rank * nxt.in_channels * 9:
        return None
    return f"{parent_name}.{nxt_name}" if parent_name else nxt_name


def folded_kernel(expand: nn.Conv2d, tconv: nn.ConvTranspose2d, gate: Tensor) -> Tensor:
    """``[B * (r + 1), out, K, K]``: per image, the kernel of ``tconv(gate * expand(h))`` as one transposed
    convolution of ``[h, 1]`` (``gate``: ``[B, C]``; ``expand``: ``C <- r`` channels, 3x3, padding 1)."""
    gate = gate.float()  # the products summed in float32, whatever the decode's dtype
    w_c = expand.weight.float()  # [C, r, 3, 3]
    b_c = expand.bias.float() if expand.bias is not None else torch.zeros_like(w_c[:, 0, 0, 0])
    w_t = tconv.weight.float()  # [C, out, k, k]
    s, k = tconv.stride[0], tconv.kernel_size[0]
    n, r, out = gate.shape[0], w_c.shape[1], w_t.shape[1]
    kern = gate.new_zeros(n, r + 1, out, k + 2 * s, k + 2 * s)
    for dy in range(3):
        for dx in range(3):
            oy, ox = s * (2 - dy), s * (2 - dx)  # where tap (dy, dx) of the 3x3 lands in the folded kernel
            kern[:, :r, :, oy:oy + k, ox:ox + k] += torch.einsum("bc,ci,cokl->biokl", gate, w_c[:, :, dy, dx], w_t)
    kern[:, r, :, s:s + k, s:s + k] += torch.einsum("bc,c,cokl->bokl", gate, b_c, w_t)  # the bias: centre tap
    return kern.reshape(n * (r + 1), out, k + 2 * s, k + 2 * s)


def folded_branch(h: Tensor, gate: Tensor, expand: nn.Conv2d, tconv: nn.ConvTranspose2d) -> Tensor:
    """``tconv``'s part of ``gate * expand(h)`` without its bias: ``[B, out, H', W']``, the size of ``tconv``'s
    output on ``h``'s grid (``h``: ``[B, r, H, W]``, the branch's hidden map; ``gate``: ``[B, C, 1, 1]`` or
    ``[1, C, 1, 1]``).

    The folded kernel is ``tconv`` of the 3x3's *full* output (one more row and column on every side, where
    the 3x3 reaches the border of ``h``); the 3x3 of the branch keeps only its ``H x W`` part, so the
    ring around it is taken out again (:func:`_ring_correction`: thin strips, no bias in them)."""
    n = h.shape[0]
    gate = gate.reshape(gate.shape[0], -1).to(h.dtype).expand(n, -1)
    x = torch.cat([h, h.new_ones(n, 1, *h.shape[-2:])], dim=1).reshape(1, -1, *h.shape[-2:])
    s, p, op = tconv.stride[0], tconv.padding[0], tconv.output_padding[0]
    y = F.conv_transpose2d(x, folded_kernel(expand, tconv, gate).to(h.dtype), stride=s, padding=p + s,
                           output_padding=op, groups=n)
    y = y.reshape(n, -1, *y.shape[-2:])
    return y - _ring_correction(h, gate, expand, tconv, y.shape[-2:])


def _ring_correction(h: Tensor, gate: Tensor, expand: nn.Conv2d, tconv: nn.ConvTranspose2d, size) -> Tensor:
    """``tconv`` (no bias) of ``gate *`` the ring of the 3x3's full output around ``h``'s grid, on the output grid
    ``size``: what the folded kernel adds beyond the branch. Computed on the ring's four strips."""
    n, _, hh, ww = h.shape
    w_c = expand.weight.to(h.dtype)
    w_t = tconv.weight.to(h.dtype)
    s, p, k = tconv.stride[0], tconv.padding[0], tconv.kernel_size[0]
    g = gate[:, :, None, None]
    out = h.new_zeros(n, w_t.shape[1], *size)
    # (strip of the full 3x3 output, its top-left position on the 3x3's grid): rows -1 and H over columns
    # -1..W, columns -1 and W over rows 0..H-1; a strip at row -1 takes the 3x3's bottom taps on h's row 0
    strips = [
        (F.conv2d(h[:, :, :1], w_c[:, :, 2:3], padding=(0, 2)), (-1, -1)),
        (F.conv2d(h[:, :, -1:], w_c[:, :, 0:1], padding=(0, 2)), (hh, -1)),
        (F.conv2d(h[..., :1], w_c[..., 2:3], padding=(1, 0)), (0, -1)),
        (F.conv2d(h[..., -1:], w_c[..., 0:1], padding=(1, 0)), (0, ww)),
    ]
    for z, (py, px) in strips:
        t = F.conv_transpose2d(g * z, w_t, stride=s)  # position (i, j) is output (s*py - p + i, s*px - p + j)
        oy, ox = s * py - p, s * px - p
        y0, x0 = max(0, oy), max(0, ox)
        y1, x1 = min(size[0], oy + t.shape[-2]), min(size[1], ox + t.shape[-1])
        if y1 > y0 and x1 > x0:
            out[..., y0:y1, x0:x1] += t[..., y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return out
