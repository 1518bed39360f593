"""The size a codec codes: every CompressAI image codec downsamples by 16 in g_a and by 4 more in h_a, so an
image is padded to a multiple of :data:`PAD_MULTIPLE` before coding (replicating its border) and the decode is
cropped back. The container, the coding of files, the adapter and training read the padding from here."""

from __future__ import annotations

from typing import Tuple

#: the image side a codec codes a multiple of (g_a / h_a downsample by 16 x 4 in every CompressAI image codec)
PAD_MULTIPLE = 64


def padded_size(height: int, width: int, multiple: int = PAD_MULTIPLE) -> Tuple[int, int]:
    """The size an image of ``height x width`` is padded to before coding."""
    return (-(-height // multiple) * multiple, -(-width // multiple) * multiple)


def pad_to_multiple(x, multiple: int = PAD_MULTIPLE):
    """Pad right/bottom (replicating the border) to a multiple of ``multiple``.

    Returns the padded tensor and the original (H, W) for :func:`crop_to`.
    Replicated borders cost fewer bits than zeros and do not bleed dark edges in.
    """
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def crop_to(x, size: Tuple[int, int]):
    """``x`` cropped back to ``size`` (H, W): the inverse of :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]
