"""Evaluation metrics: image quality, real bit rates and attack success rates.

All functions are pure (no state, no I/O except :func:`bpp_from_file`) and work
on CPU or GPU tensors. Images are ``[B, 3, H, W]`` float tensors in ``[0, 1]``.

Conventions worth knowing
-------------------------
* **PSNR is capped at** :data:`PSNR_CAP_DB` (100 dB). Identical images have an
  infinite PSNR; a single ``inf`` would turn every average into ``inf`` and is
  not valid JSON, so each per-image value is clipped to the cap instead.
* **MS-SSIM on small images.** ``pytorch_msssim.ms_ssim`` needs the shorter side
  to exceed ``(win_size - 1) * 2**4 = 160`` pixels for its 5 scales. Below that we
  use as many scales as fit (a scale is usable while the image is at least
  ``win_size`` pixels on its shorter side) with the standard weights truncated
  and renormalised to sum to 1; with a single scale this is plain SSIM. Below
  ``win_size`` pixels the Gaussian window shrinks to the image (odd size).
  Values from different scale counts are not strictly comparable; the
  Kodak/CLIC-sized images of a real evaluation always get all 5 scales.
* **Bit rates come from real bytes** (:func:`bpp_from_strings`,
  :func:`bpp_from_file`), never from the likelihood estimate of a forward pass.
* **Attack Success Rate** (PSIC, ICML 2025, section 4.1): *among the samples the
  base codec's reconstruction gets right, the share that the encrypted
  reconstruction gets wrong.* When the base codec gets no sample right the rate
  is undefined and the functions return ``float('nan')``; report it as "n/a"
  (:func:`summarize` skips nan, the report writes it as JSON ``null``).
* **Every rate has its count and interval**: a rate shown to a person is ``k / n`` with its Wilson
  score interval (:func:`wilson_interval`, 95 %), because the evaluations here are small (a few
  photos: one flip moves a whole-photo ASR by tens of points).
* **Retrieval ties count against the query**: a query's rank is the number of
  wrong candidates that score *at least as high* as its best correct one, so a
  collapsed embedding (every image the same feature) scores no hits rather than
  all of them.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..bitstream.coding import count_bytes

__all__ = [
    "PSNR_CAP_DB",
    "MS_SSIM_WEIGHTS",
    "psnr",
    "ms_ssim",
    "bpp_from_strings",
    "bpp_from_file",
    "count_bytes",
    "accuracy",
    "agreement",
    "attack_success_rate",
    "classification_asr",
    "retrieval_hits",
    "recall_at_k",
    "retrieval_asr",
    "summarize",
    "wilson_interval",
    "count_of_rate",
]

PSNR_CAP_DB = 100.0
"""Upper bound of :func:`psnr` (the value identical images get)."""

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""The standard 5-scale MS-SSIM weights (Wang et al. 2003), as in pytorch_msssim."""


def _check_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: images differ in shape, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() != 4:
        raise ValueError(f"{name}: expected [B, C, H, W] tensors, got shape {tuple(a.shape)}")


# --------------------------------------------------------------------------- quality


def psnr(a: torch.Tensor, b: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image pair, in dB.

    Args:
        a, b: ``[B, C, H, W]`` tensors (values are not clamped: clamp decoded
            images to ``[0, 1]`` before, as a saved file would be).
        max_val: the peak value (1.0 for images in ``[0, 1]``).

    Returns:
        ``Tensor[B]`` (float32) of ``10 log10(max_val^2 / MSE)``, computed in
        float64 and capped at :data:`PSNR_CAP_DB` (identical images give exactly
        the cap, never ``inf``).
    """
    _check_pair(a, b, "psnr")
    mse = (a.detach().double() - b.detach().double()).pow(2).flatten(1).mean(1)
    val = 10.0 * torch.log10((max_val**2) / mse)  # mse == 0 -> +inf, clipped below
    return val.clamp(max=PSNR_CAP_DB).float()


def _gauss_1d(size: int, sigma: float, dtype, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, data_range: float, K=(0.01, 0.03)):
    """Per-channel SSIM and contrast-structure maps averaged, as pytorch_msssim's ``_ssim``.

    ``win`` is a 1-D Gaussian; filtering is 'valid' (no padding), as in
    pytorch_msssim, so results match it at full size.
    """
    c = x.shape[1]
    k = win.numel()
    wh = win.view(1, 1, 1, k).repeat(c, 1, 1, 1)
    wv = win.view(1, 1, k, 1).repeat(c, 1, 1, 1)

    def filt(t):
        return F.conv2d(F.conv2d(t, wh, groups=c), wv, groups=c)

    c1 = (K[0] * data_range) ** 2
    c2 = (K[1] * data_range) ** 2
    mu_x, mu_y = filt(x), filt(y)
    mu_x2, mu_y2, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    s_xx = filt(x * x) - mu_x2
    s_yy = filt(y * y) - mu_y2
    s_xy = filt(x * y) - mu_xy
    cs_map = (2 * s_xy + c2) / (s_xx + s_yy + c2)
    ssim_map = ((2 * mu_xy + c1) / (mu_x2 + mu_y2 + c1)) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)  # [B, C] each


def _ms_ssim_levels(
    x: torch.Tensor, y: torch.Tensor, levels: int, win_size: int = 11, win_sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """MS-SSIM with ``levels`` scales and the standard weights renormalised; ``Tensor[B]``."""
    w = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    w = w / w.sum()
    win = _gauss_1d(win_size, win_sigma, x.dtype, x.device)
    mcs = []
    for i in range(levels):
        ssim_c, cs = _ssim_cs(x, y, win, data_range)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
    stack = torch.stack(mcs + [torch.relu(ssim_c)], dim=0)  # [L, B, C]
    return torch.prod(stack ** w.view(-1, 1, 1), dim=0).mean(1)


def ms_ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = 11) -> torch.Tensor:
    """Multi-scale SSIM of each image pair (``data_range=1``), ``Tensor[B]`` (float32).

    Images whose shorter side exceeds ``(win_size - 1) * 16`` pixels (161+ for the
    default window) go through ``pytorch_msssim.ms_ssim`` unchanged. Smaller ones
    never raise: they use the largest number of scales ``L < 5`` that keeps the
    coarsest scale at least ``win_size`` pixels, with weights
    ``MS_SSIM_WEIGHTS[:L]`` renormalised to sum to 1 (``L == 1`` is SSIM); images
    under ``win_size`` pixels use one scale with the window shrunk to the largest
    odd size that fits. A 64x64 image gets 3 scales.
    """
    _check_pair(a, b, "ms_ssim")
    if win_size % 2 != 1:
        raise ValueError("win_size must be odd")
    x, y = a.detach().float(), b.detach().float()
    side = min(x.shape[-2:])
    if side > (win_size - 1) * 2**4:
        from pytorch_msssim import ms_ssim as _pm_ms_ssim

        return _pm_ms_ssim(x, y, data_range=1.0, size_average=False, win_size=win_size).float()
    levels = 1
    while levels < 5 and side / 2**levels >= win_size:
        levels += 1
    if side < win_size:
        win_size = side if side % 2 == 1 else side - 1
        levels = 1
    return _ms_ssim_levels(x, y, levels, win_size=win_size).float()


# --------------------------------------------------------------------------- bit rate


def _check_pixels(num_pixels: int) -> int:
    n = int(num_pixels)
    if n <= 0 or n != num_pixels:
        raise ValueError(f"num_pixels must be a positive integer, got {num_pixels!r}")
    return n


def bpp_from_strings(strings, num_pixels: int) -> float:
    """Bits per pixel of real entropy-coded bytes: ``8 * total_bytes / num_pixels``.

    ``num_pixels`` is the pixel count of the *original* image(s) (``H * W``
    summed over the batch the strings hold; not the padded size). Side
    information outside ``strings`` (header, shape) is not counted; use
    :func:`bpp_from_file` for the size of a whole container.
    """
    return 8.0 * count_bytes(strings) / _check_pixels(num_pixels)


def bpp_from_file(path: Union[str, os.PathLike], num_pixels: int) -> float:
    """Bits per pixel of a file on disk (everything in it, headers included)."""
    return 8.0 * os.path.getsize(path) / _check_pixels(num_pixels)


# --------------------------------------------------------------------------- classification


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def _as_bool(x, name: str) -> torch.Tensor:
    t = _as_tensor(x)
    if t.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {t.dtype}")
    return t


def accuracy(pred, labels) -> float:
    """Share of elements where ``pred == labels`` (nan for empty input).

    For multi-label tasks (e.g. 40 CelebA attributes) pass ``[N, A]`` tensors:
    each (image, attribute) pair counts once.
    """
    pred, labels = _as_tensor(pred), _as_tensor(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"shapes differ: {tuple(pred.shape)} vs {tuple(labels.shape)}")
    if pred.numel() == 0:
        return float("nan")
    return (pred == labels).double().mean().item()


def agreement(pred_a, pred_b) -> float:
    """Share of samples on which two prediction tensors agree.

    For unlabeled images, "correct" means "the same as the target model's
    prediction on the original image": ``agreement(pred_on_recon, pred_on_orig)``
    is then the accuracy, and ``classification_asr(base, enc, labels=pred_on_orig)``
    the attack success rate.
    """
    return accuracy(pred_a, pred_b)


def attack_success_rate(base_correct, attacked_correct) -> float:
    """PSIC's Attack Success Rate.

    ``ASR = #(base right and attacked wrong) / #(base right)``: among the
    samples the base codec's reconstruction gets right, the share its attacked
    (encrypted) counterpart gets wrong. Samples the base gets wrong do not count.

    Args:
        base_correct: ``BoolTensor[N]`` (any shape), per sample: is the target
            model right on the base codec's reconstruction.
        attacked_correct: ``BoolTensor`` of the same shape, for the encrypted one.

    Returns:
        A float in ``[0, 1]``; ``float('nan')`` when no sample is right for the
        base (undefined rate; print it as "n/a").
    """
    base = _as_bool(base_correct, "base_correct")
    att = _as_bool(attacked_correct, "attacked_correct")
    if base.shape != att.shape:
        raise ValueError(f"shapes differ: {tuple(base.shape)} vs {tuple(att.shape)}")
    n = int(base.sum().item())
    if n == 0:
        return float("nan")
    flipped = int((base & ~att).sum().item())
    return flipped / n


def classification_asr(base_pred, attacked_pred, labels) -> float:
    """Attack Success Rate of a classifier from predicted class indices.

    ``base_pred``, ``attacked_pred`` and ``labels`` have the same shape
    (``[N]`` class indices, or ``[N, A]`` binary attributes where each pair
    counts as a sample). Take ``argmax`` of logits first. For unlabeled images
    pass the target's predictions on the originals as ``labels``.
    """
    base_pred, attacked_pred, labels = _as_tensor(base_pred), _as_tensor(attacked_pred), _as_tensor(labels)
    if not (base_pred.shape == attacked_pred.shape == labels.shape):
        raise ValueError(
            f"shapes differ: base {tuple(base_pred.shape)}, attacked {tuple(attacked_pred.shape)}, labels {tuple(labels.shape)}"
        )
    return attack_success_rate(base_pred == labels, attacked_pred == labels)


# --------------------------------------------------------------------------- retrieval

HitDict = Dict[str, Dict[int, torch.Tensor]]


def _best_negative_rank(sim: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rank (0-based) of each row's best positive: negatives scoring >= it."""
    best = torch.where(pos, sim, torch.full_like(sim, -math.inf)).amax(1, keepdim=True)
    return ((sim >= best) & ~pos).sum(1)


def retrieval_hits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_index_of_text,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> HitDict:
    """Per-query retrieval hits at each ``k``, in both directions.

    Features are L2-normalised here (cosine similarity, as CLIP); they need not
    be normalised by the caller.

    Args:
        image_features: ``[I, D]`` one row per image.
        text_features: ``[T, D]`` one row per caption (several per image allowed).
        image_index_of_text: ``LongTensor[T]``, the image each caption describes.
            Every image needs at least one caption.
        ks: cut-offs (positive integers).
        chunk: queries scored at a time (bounds memory to ``chunk x max(I, T)``).

    Returns:
        ``{"i2t": {k: BoolTensor[I]}, "t2i": {k: BoolTensor[T]}}`` on the CPU.
        An image query is a hit at ``k`` when any of its captions is among the
        top-``k`` texts; a caption query when its image is among the top-``k``
        images. Ties are pessimistic (see the module notes).
    """
    img = F.normalize(_as_tensor(image_features).detach().float(), dim=-1)
    txt = F.normalize(_as_tensor(text_features).detach().float(), dim=-1)
    idx = _as_tensor(image_index_of_text).to(device=img.device, dtype=torch.long)
    if img.dim() != 2 or txt.dim() != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"expected [I, D] and [T, D] features, got {tuple(img.shape)} and {tuple(txt.shape)}")
    txt = txt.to(img.device)
    n_img, n_txt = img.shape[0], txt.shape[0]
    if idx.shape != (n_txt,):
        raise ValueError(f"image_index_of_text must have shape [{n_txt}], got {tuple(idx.shape)}")
    if n_img == 0 or n_txt == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    if int(idx.min()) < 0 or int(idx.max()) >= n_img:
        raise ValueError(f"image_index_of_text has indices outside [0, {n_img})")
    counts = torch.bincount(idx, minlength=n_img)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"images without a caption (first: {missing}); drop them before retrieval")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")

    i2t_rank = torch.empty(n_img, dtype=torch.long, device=img.device)
    img_ids = torch.arange(n_img, device=img.device)
    for s in range(0, n_img, chunk):
        sim = img[s : s + chunk] @ txt.T  # [c, T]
        pos = idx[None, :] == img_ids[s : s + chunk, None]
        i2t_rank[s : s + chunk] = _best_negative_rank(sim, pos)

    t2i_rank = torch.empty(n_txt, dtype=torch.long, device=img.device)
    for s in range(0, n_txt, chunk):
        sim = txt[s : s + chunk] @ img.T  # [c, I]
        pos = img_ids[None, :] == idx[s : s + chunk, None]
        t2i_rank[s : s + chunk] = _best_negative_rank(sim, pos)

    i2t_rank, t2i_rank = i2t_rank.cpu(), t2i_rank.cpu()
    return {
        "i2t": {k: i2t_rank < k for k in ks},
        "t2i": {k: t2i_rank < k for k in ks},
    }


def recall_at_k(hits: HitDict) -> Dict[str, float]:
    """Recall@k from :func:`retrieval_hits`: ``{"i2t_R@1": ..., "t2i_R@5": ...}``."""
    out = {}
    for direction, per_k in hits.items():
        for k, h in sorted(per_k.items()):
            out[f"{direction}_R@{k}"] = h.double().mean().item() if h.numel() else float("nan")
    return out


def retrieval_asr(base_hits: HitDict, attacked_hits: HitDict) -> Dict[str, float]:
    """PSIC's retrieval ASR for each direction and ``k``: ``{"t2i_ASR@1": ..., ...}``.

    Among the queries hit at ``k`` with the base codec's reconstructions, the
    share not hit with the encrypted ones (nan when the base hits none). Both
    dicts come from :func:`retrieval_hits` on the same captions and ``ks``.
    """
    out = {}
    for direction, per_k in base_hits.items():
        if direction not in attacked_hits:
            raise KeyError(f"attacked hits lack direction {direction!r}")
        for k, h in sorted(per_k.items()):
            if k not in attacked_hits[direction]:
                raise KeyError(f"attacked hits lack {direction}@{k}")
            out[f"{direction}_ASR@{k}"] = attack_success_rate(h, attacked_hits[direction][k])
    return out


# --------------------------------------------------------------------------- aggregation


def summarize(values: Union[Iterable[float], torch.Tensor]) -> Dict[str, float]:
    """``{"mean", "std", "n"}`` of the non-nan values.

    ``std`` is the sample standard deviation (``ddof=1``; 0.0 for one value).
    With no non-nan value, mean and std are nan and ``n`` is 0.
    """
    if isinstance(values, torch.Tensor):
        vals: List[float] = [float(v) for v in values.detach().flatten().tolist()]
    else:
        vals = [float(v.item() if isinstance(v, torch.Tensor) else v) for v in values]
    vals = [v for v in vals if not math.isnan(v)]
    n = len(vals)
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    mean = math.fsum(vals) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


# --------------------------------------------------------------------------- intervals


def wilson_interval(k: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95 % for the default ``z``), as ``(low, high)``
    in ``[0, 1]``; ``(nan, nan)`` for ``n == 0``. Unlike the normal approximation it stays inside [0, 1]
    and is not empty at 0 or n successes (Wilson 1927; Brown, Cai and DasGupta 2001)."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def count_of_rate(rate: float, n: int) -> int:
    """The count ``k`` behind a rate ``k / n`` that was stored as a float (exact: ``round(rate * n)``)."""
    if n <= 0 or rate is None or math.isnan(rate):
        return 0
    return int(round(rate * n))
