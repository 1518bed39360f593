"""Training views at the scale of use, cut from latents encoded once.

In stage 2 the encoder and the entropy models are frozen, so an image's
quantised latent ``y_hat`` never changes during training. :class:`LatentViews`
encodes every training image once per *size* (the image resized so that its
longer side is that many pixels) and then, at each step, cuts square windows
out of those latents. A window of ``p`` pixels is ``p / 16`` latents; decoding
it gives the decode of that part of the image, which the target then sees
through its own preprocessing (shorter side to 256, centre crop 224 for
EfficientNet-Lite0): a window the size of the image's shorter side *is* the
whole image as the target sees it (the target keeps only the central square),
a 224 window is a crop at native scale, and the sizes between are the
downsampling factors between the two.

So one training step costs one decode of ``batch`` windows, never an encode, and
the views cover the scales where a classifier or CLIP meets a served photo.
Draws are seeded by ``(seed, step)``: a resumed run sees the same views.

A window decoded on its own is not the same pixels as that part of the whole
decode: the synthesis transform's receptive field is cut at the window's edges,
and within ~32 px of them the decode is far off (many times the whole decode's
MSE). Both the base and the encrypted decode carry that error, so a distortion
budget measured on such windows is diluted toward a ratio of 1 and does not hold
on whole images. So each window is decoded with ``context`` latents (default 2,
32 px) around it where the image has them, and cropped back (:class:`Windows`):
the window is then the whole decode's pixels, up to float rounding. (Not quite with
a ``spatial_context``: its summary of the block output is the window's, where a whole
decode summarises the photo.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..bitstream.images import resize_longer_side
from ..errors import ConfigError, DataError

#: pixels per latent in every CompressAI image codec (g_a downsamples by 16)
LATENT_STRIDE = 16


@dataclass
class Windows:
    """Square windows of latents, each with the context around it that the image has.

    ``groups``: ``(element indices, y_hat contexts [k, M, h, w], (dy, dx) pixel offset of the window in
    the decode of the context)``; elements whose contexts have one shape and offset decode in one batch.
    """

    groups: List[Tuple[List[int], torch.Tensor, Tuple[int, int]]]
    side: int
    n: int

    def to(self, device, memory_format=None) -> "Windows":
        fmt = {} if memory_format is None else {"memory_format": memory_format}
        return Windows([(i, y.to(device).contiguous(**fmt), o) for i, y, o in self.groups], self.side, self.n)

    def decode(self, fn, condition: Optional[torch.Tensor] = None, repeats: int = 1) -> torch.Tensor:
        """``[repeats * n, 3, side, side]``: ``fn(y_context, condition_rows)`` decoded and cropped per group.

        ``condition``: ``[repeats * n, D]`` (row ``r * n + i`` for element ``i`` of repeat ``r``), or None.
        """
        out: List[Optional[torch.Tensor]] = [None] * (repeats * self.n)
        for idx, y, (dy, dx) in self.groups:
            rows = [r * self.n + i for r in range(repeats) for i in idx]
            cond = None if condition is None else condition[rows]
            x = fn(y.repeat(repeats, 1, 1, 1), cond)[..., dy: dy + self.side, dx: dx + self.side]
            for k, row in enumerate(rows):
                out[row] = x[k]
        return torch.stack(out)


@dataclass
class _Encoded:
    y_hat: torch.Tensor  # [M, H/16, W/16] (of the padded image)
    image: torch.Tensor  # [3, H, W] uint8 (the image at this size, unpadded)
    text: str
    label: int


class LatentViews:
    """Square training windows of latents encoded once (see the module docstring).

    Args:
        model: the :class:`~psic_adapter.PSICModel` (its base codec encodes).
        dataset: items ``{"image": [3, H, W], "text", "label"}`` of any size
            (whole images: build it without a crop).
        sizes: longer sides, in pixels, at which each image is encoded.
        min_view, max_view: window sides in pixels (multiples of 16); each
            batch draws one side, log-uniformly, so that every scale between a
            native crop and a whole image is seen.
        seed: the draws of step ``k`` depend on ``(seed, k)`` only.
    """

    def __init__(self, model, dataset, sizes: Sequence[int] = (384, 512, 768), min_view: int = 224,
                 max_view: int = 512, seed: int = 0, progress: bool = True, pad_multiple: int = 64,
                 context: int = 2):
        sizes = sorted({int(s) for s in sizes})
        if not sizes or sizes[0] < min_view:
            raise ConfigError(f"training sizes {sizes} must be at least the smallest view ({min_view} px)")
        if min_view % LATENT_STRIDE or max_view % LATENT_STRIDE or not 0 < min_view <= max_view:
            raise ConfigError(f"view sides must be multiples of {LATENT_STRIDE} with min <= max, "
                              f"not {min_view}..{max_view}")
        self.sizes, self.min_view, self.max_view, self.seed = sizes, int(min_view), int(max_view), int(seed)
        self.context = int(context)
        self.items: List[List[_Encoded]] = []  # per image, per size
        self._encode(model, dataset, progress, pad_multiple)

    @torch.no_grad()
    def _encode(self, model, dataset, progress: bool, pad_multiple: int) -> None:
        from tqdm.auto import tqdm

        from ..bitstream.images import pad_to_multiple

        if len(dataset) == 0:
            raise DataError("no training images")
        device = next(model.base.parameters()).device
        model.base.eval()
        for i in tqdm(range(len(dataset)), desc="encoding training images", disable=not progress, leave=False):
            item = dataset[i]
            x = item["image"][None].float()
            per_size = []
            for size in self.sizes:
                xs = resize_longer_side(x, size)
                xp, _ = pad_to_multiple(xs, pad_multiple)
                y_hat = model.analyze(xp.to(device))["y_hat"][0].float().cpu()
                per_size.append(_Encoded(y_hat, (xs[0] * 255).round().to(torch.uint8),
                                         str(item.get("text", "")), int(item.get("label", -1))))
            self.items.append(per_size)

    def __len__(self) -> int:
        return len(self.items)

    def _side(self, g: torch.Generator) -> int:
        lo, hi = math.log(self.min_view), math.log(self.max_view)
        side = math.exp(lo + (hi - lo) * float(torch.rand((), generator=g)))
        return max(self.min_view, int(side) // LATENT_STRIDE * LATENT_STRIDE)

    def batch(self, step: int, batch_size: int, rank: int = 0) -> Dict[str, Any]:
        """The views of step ``step``: ``{"windows": Windows, "image": [B, 3, p, p], "text", "label", "view"}``."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 131 + rank)
        side = self._side(g)
        while True:
            fits = [(i, s) for i, per in enumerate(self.items) for s, e in enumerate(per)
                    if min(e.image.shape[-2:]) >= side]
            if fits or side <= LATENT_STRIDE:
                break
            side -= LATENT_STRIDE  # no image holds this window at any size: shrink it
        if not fits:
            raise DataError("the training images are smaller than the smallest view")
        picks = torch.randint(0, len(fits), (batch_size,), generator=g).tolist()
        xs, texts, labels, where = [], [], [], []
        groups: Dict[Tuple, Tuple[List[int], List[torch.Tensor]]] = {}
        w, c = side // LATENT_STRIDE, self.context
        for k, pick in enumerate(picks):
            i, s = fits[pick]
            e = self.items[i][s]
            h, wd = e.image.shape[-2:]
            top = int(torch.randint(0, (h - side) // LATENT_STRIDE + 1, (), generator=g))
            left = int(torch.randint(0, (wd - side) // LATENT_STRIDE + 1, (), generator=g))
            lh, lw = e.y_hat.shape[-2:]
            t0, l0 = max(0, top - c), max(0, left - c)
            t1, l1 = min(lh, top + w + c), min(lw, left + w + c)
            y = e.y_hat[:, t0:t1, l0:l1]
            offset = ((top - t0) * LATENT_STRIDE, (left - l0) * LATENT_STRIDE)
            group = groups.setdefault((tuple(y.shape), offset), ([], []))
            group[0].append(k)
            group[1].append(y)
            px_t, px_l = top * LATENT_STRIDE, left * LATENT_STRIDE
            xs.append(e.image[:, px_t: px_t + side, px_l: px_l + side].float() / 255.0)
            texts.append(e.text)
            labels.append(e.label)
            where.append((i, self.sizes[s], px_t, px_l))
        windows = Windows([(idx, torch.stack(ys), key[1]) for key, (idx, ys) in groups.items()], side, len(picks))
        return {"windows": windows, "image": torch.stack(xs), "text": texts,
                "label": torch.tensor(labels, dtype=torch.long), "view": {"side": side, "windows": where}}
