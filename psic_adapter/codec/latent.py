"""A bitstream decoded to its latent, once, without the synthesis transform."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..errors import PSICError


class _StopDecoding(Exception):
    """Raised inside ``g_s``'s pre-hook to stop a decode once ``y_hat`` is known."""


def decode_latent(codec: nn.Module, strings, shape, **kwargs) -> torch.Tensor:
    """Entropy-decode a bitstream to ``y_hat`` (the input of ``g_s``) without running ``g_s``.

    ``codec.g_s(y_hat).clamp(0, 1)`` then equals ``codec.decompress(...)["x_hat"]``:
    a bitstream is decoded once and synthesised as often as needed.
    """
    captured: Dict[str, torch.Tensor] = {}

    def grab(_module, args):
        captured["y_hat"] = args[0]
        raise _StopDecoding

    handle = codec.g_s.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():  # entropy decoding is not differentiable (and ELIC's decoder fails under autograd)
            codec.decompress(strings, shape, **kwargs)
    except _StopDecoding:
        pass
    finally:
        handle.remove()
    if "y_hat" not in captured:
        raise PSICError(f"{type(codec).__name__}.decompress did not call g_s")
    return captured["y_hat"]
