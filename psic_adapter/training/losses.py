"""Training objectives of PSIC: the UAEO encryption loss, its ablations, and rate-distortion.

Everything here is a plain function of tensors; nothing holds parameters or state.

Encryption objectives (what the *encrypted* decode should do to a target model)
-------------------------------------------------------------------------------
:func:`uaeo_targets`
    Equations 5-8 of the paper (Sec. 3.3): from the target model's features of
    the CLEAN images and their captions, pick for each image ``i`` the caption
    ``n_i`` of the batch with the least bidirectional evidence, i.e. the highest
    matching uncertainty. No gradient.
:func:`uaeo_loss`
    Equation 9: cross-entropy, over the batch's captions, of the encrypted
    reconstruction's features toward caption ``n_i`` (the selection is done by
    :func:`uaeo_targets`).
:func:`naive_cosine_loss`
    The paper's ablation (Sec. 4.4): mean cosine between the encrypted
    reconstruction and its own caption; minimising it pushes them apart.
:func:`authors_uaeo_loss`
    The variant found in the authors' public code (DECL style), with its bugs
    fixed. For comparison only.
:func:`untargeted_margin_loss`
    A Carlini-Wagner style margin loss for classifier targets (not in the
    paper; an optional stronger objective when the target is a classifier).

Fidelity objectives
-------------------
:func:`semantic_guard_loss`
    Keeps the target model's view of the FULL decode at its view of the base
    codec's decode (KL of softmaxes, or 1 - cosine of features).
:func:`rate_loss`, :func:`distortion_loss`, :func:`rate_distortion`
    The usual CompressAI rate-distortion terms (the ``R`` and ``L2`` of the
    paper's training criteria, Sec. 3.4).

Conventions
-----------
* Feature batches are ``[K, D]``: row ``i`` of the reconstruction, caption
  (text) and clean-image features is image/caption pair ``i``.
* Features are L2-normalised inside (``F.normalize`` with ``eps``), so zero
  vectors give cosine 0, never NaN.
* Only the reconstruction's features receive gradient: text and clean-image
  features (and the base decode in :func:`semantic_guard_loss`) are detached.
* ``reduction`` is ``"mean"`` (default), ``"sum"`` or ``"none"`` (per sample).

How the paper's equations were read
-----------------------------------
* ``Clip(x_i, t_j)`` in Eq. 5 and ``CLIP(f(x_i), g(t_j))`` in Eq. 9 are the
  cosine similarities of the L2-normalised embeddings (not CLIP's
  logit-scaled score); the same temperature ``s`` is used in both.
* Eq. 5's ``x_i`` is the original (clean) image: the evidence describes the
  target model's prior knowledge of the training pair, not the reconstruction.
  Eq. 9's ``x_i`` is the encrypted reconstruction (the loss is applied to
  ``D(y_hat, beta_e)`` in criterion S2-2).
* Eq. 6 adds image ``i``'s image-to-text row ``[e_i1, ..., e_iK]`` and the
  text-to-image vector of *text* ``i``, ``[e_1i, ..., e_Ki]``, so
  ``e^b_ij = e_ij + e_ji``. This needs a square batch; see :func:`uaeo_targets`.
* Eq. 7's ``u_ij`` (the paper calls it the uncertainty mass) is the belief mass
  of caption ``j``; Eq. 8 takes its argmin, the caption with the least evidence
  ("the prompt with the highest uncertainty"). The argmin ranges over ALL
  captions, the image's own included, exactly as written; in practice CLIP
  gives the own caption the most evidence, so ``n_i != i`` whenever ``K > 1``
  and CLIP is not badly wrong. The denominator of Eq. 7 is shared by the row,
  so ``argmin_j u_ij == argmin_j e^b_ij``; it is computed anyway, as written.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, Mapping, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "uaeo_targets",
    "uaeo_loss",
    "naive_cosine_loss",
    "authors_uaeo_loss",
    "untargeted_margin_loss",
    "feature_similarity_loss",
    "semantic_guard_loss",
    "rate_loss",
    "distortion_loss",
    "rate_distortion",
]

_REDUCTIONS = ("mean", "sum", "none")
_NORM_EPS = 1e-12


# --------------------------------------------------------------------------- helpers


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ConfigError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    """Reduce per-sample values; the mean of an empty batch is 0 (not NaN)."""
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    if values.numel() == 0:
        return values.sum()  # 0, keeps the graph
    return values.mean()


def _check_pairs(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Both are 2-D ``[K, D]`` with the same shape."""
    for name, t in ((name_a, a), (name_b, b)):
        if t.dim() != 2:
            raise ConfigError(f"{name} must be 2-D [K, D], got shape {tuple(t.shape)}")
    if a.shape != b.shape:
        raise ConfigError(
            f"{name_a} and {name_b} must have the same shape [K, D] (row i is pair i), "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _compute_dtype(t: Tensor) -> torch.dtype:
    """At least float32 for the loss itself (CLIP features may be fp16/bf16)."""
    return torch.promote_types(t.dtype, torch.float32)


def _selection_dtype(t: Tensor) -> torch.dtype:
    """float64 for the discrete target selection, so near-ties are not decided by
    float32 rounding; float32 on backends without float64 (Apple MPS)."""
    return torch.float32 if t.device.type == "mps" else torch.float64


def _normalize(t: Tensor, dtype: torch.dtype) -> Tensor:
    return F.normalize(t.to(dtype), p=2.0, dim=-1, eps=_NORM_EPS)


def _first_argmin(values: Tensor) -> Tensor:
    """Row-wise argmin of a ``[K, M]`` tensor that is deterministic on every device.

    Ties go to the lowest index; NaN counts as ``+inf`` (never chosen unless
    the whole row is NaN/inf, then index 0).
    """
    values = torch.nan_to_num(values, nan=math.inf)
    row_min = values.min(dim=1, keepdim=True).values
    index = torch.arange(values.shape[1], device=values.device).expand_as(values)
    sentinel = torch.full_like(index, values.shape[1])
    first = torch.where(values == row_min, index, sentinel).min(dim=1).values
    return first.clamp_max(values.shape[1] - 1)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values[mask]``; 0 (with a graph) when nothing is selected."""
    picked = torch.where(mask, values, torch.zeros_like(values))
    return picked.sum() / mask.sum().clamp_min(1).to(values.dtype)


# --------------------------------------------------------------------------- UAEO (paper)


@torch.no_grad()
def uaeo_targets(text_features: Tensor, clean_features: Tensor, s: float = 0.1) -> Tensor:
    """Caption index ``n_i`` of highest matching uncertainty for each image (Eqs. 5-8).

    Args:
        text_features: ``[K, D]`` target-model features of the batch's captions;
            row ``i`` is the caption of image ``i``.
        clean_features: ``[K, D]`` target-model features of the ORIGINAL
            (clean) images, row ``i`` being image ``i``.
        s: temperature of the evidence extractor (Eq. 5), > 0.

    Returns:
        LongTensor ``[K]``: ``n_i = argmin_j u_ij`` with

        * ``e_ij = exp(tanh(cos(clean_i, t_j) / s))``            (Eq. 5)
        * ``e^b_ij = e_ij + e_ji``                               (Eq. 6)
        * ``u_ij = e^b_ij / sum_j (e^b_ij + 1)``                 (Eq. 7)
        * ``n_i = argmin_j u_ij``                                (Eq. 8)

    Only the square, pairwise batch is supported: Eq. 6 adds the text-to-image
    evidence of *text* ``i`` to image ``i``'s image-to-text evidence, which
    needs caption ``i`` to belong to image ``i``. (A batch with several captions
    per image, or shared captions, is not what the paper describes and is not
    accepted in another shape; duplicate rows are allowed and are handled by the
    tie rule.)

    Ties in ``u`` (e.g. duplicate captions and images, or ``tanh`` saturating
    at small ``s``) go to the lowest index, on every device. The selection is
    computed in float64 (float32 on MPS) and never produces NaN: zero vectors
    give cosine 0, and evidence lies in ``[1/e, e]``. With ``K = 1`` the only
    candidate is the image's own caption, so ``n_0 = 0``. No gradient flows.
    """
    _check_pairs("text_features", text_features, "clean_features", clean_features)
    if not s > 0:
        raise ConfigError(f"temperature s must be > 0, got {s!r}")
    k = text_features.shape[0]
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=text_features.device)

    dtype = _selection_dtype(text_features)
    clean = _normalize(clean_features.detach(), dtype)
    text = _normalize(text_features.detach(), dtype)

    cos = clean @ text.t()  # [K images, K texts]
    evidence = torch.exp(torch.tanh(cos / s))  # Eq. 5
    evidence_b = evidence + evidence.t()  # Eq. 6: e^b_ij = e_ij + e_ji
    strength = (evidence_b + 1.0).sum(dim=1, keepdim=True)  # Dirichlet strength
    belief = evidence_b / strength  # Eq. 7
    return _first_argmin(belief)  # Eq. 8


def uaeo_loss(
    recon_features: Tensor,
    text_features: Tensor,
    clean_features: Tensor,
    s: float = 0.1,
    reduction: str = "mean",
    return_targets: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """The paper's Uncertainty-Aware Encryption-Oriented loss ``L_UC`` (Eq. 9).

    ``L_UC(x_i) = -log softmax_j(cos(recon_i, t_j) / s)[n_i]``, with ``n_i``
    chosen from the clean images by :func:`uaeo_targets` (Eqs. 5-8): the
    encrypted reconstruction of image ``i`` is pulled toward the batch caption
    the target model is least sure belongs to image ``i``, and (through the
    softmax) away from the others, its own caption included.

    Args:
        recon_features: ``[K, D]`` target-model features of the ENCRYPTED
            reconstructions; the only input that receives gradient.
        text_features: ``[K, D]`` features of the captions (row ``i`` belongs to
            image ``i``); detached.
        clean_features: ``[K, D]`` features of the original images; detached,
            used only to choose the targets.
        s: temperature of both the evidence (Eq. 5) and the softmax (Eq. 9).
        reduction: ``"mean"`` over the batch (default), ``"sum"``, or
            ``"none"`` for the ``[K]`` per-sample losses.
        return_targets: also return the ``[K]`` LongTensor of ``n_i``.

    Returns:
        The loss (scalar, or ``[K]`` with ``reduction="none"``), and with
        ``return_targets=True`` the tuple ``(loss, targets)``.

    Edge cases: with ``K = 1`` the softmax has a single entry, ``n_0 = 0`` and
    the loss is exactly 0 (with zero gradient): a batch of one carries no
    encryption signal under Eq. 9, so use batches of several pairs. An empty
    batch gives 0 (``"mean"``/``"sum"``) or an empty tensor. Zero feature
    vectors give cosine 0, not NaN.

    Only the square pairwise batch (``K`` images, their ``K`` captions) is
    supported, as in the paper; there is no separate candidate-caption set.
    """
    _check_reduction(reduction)
    _check_pairs("recon_features", recon_features, "text_features", text_features)
    _check_pairs("recon_features", recon_features, "clean_features", clean_features)

    targets = uaeo_targets(text_features, clean_features, s=s)

    dtype = _compute_dtype(recon_features)
    recon = _normalize(recon_features, dtype)
    text = _normalize(text_features.detach(), dtype)
    logits = recon @ text.t() / s  # [K images, K texts]
    per_sample = F.cross_entropy(logits, targets, reduction="none")  # Eq. 9
    loss = _reduce(per_sample, reduction)
    if return_targets:
        return loss, targets
    return loss


def naive_cosine_loss(
    recon_features: Tensor, text_features: Tensor, reduction: str = "mean"
) -> Tensor:
    """The paper's naive encryption objective (the UAEO ablation, Sec. 4.4).

    ``mean_i cos(recon_i, t_i)``: the cosine between the encrypted
    reconstruction of image ``i`` and ITS OWN caption. Minimising it pushes
    them apart, with no specific wrong target. Range ``[-1, 1]``.

    Args:
        recon_features: ``[K, D]`` features of the encrypted reconstructions
            (receive gradient).
        text_features: ``[K, D]`` features of their captions (detached).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    _check_reduction(reduction)
    _check_pairs("recon_features", recon_features, "text_features", text_features)
    dtype = _compute_dtype(recon_features)
    recon = _normalize(recon_features, dtype)
    text = _normalize(text_features.detach(), dtype)
    return _reduce((recon * text).sum(dim=-1), reduction)


# --------------------------------------------------------------------------- authors' variant


def authors_uaeo_loss(
    recon_features: Tensor,
    text_features: Tensor,
    clean_features: Tensor,
    *,
    logit_scale: float = 1.0 / 0.07,
    evidence_tau: float = 0.1,
    matched_weight: float = 10.0,
    ce_weight: float = 0.5,
    return_parts: bool = False,
) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
    """The UAEO variant of the authors' public code, bugs fixed. FOR COMPARISON ONLY.

    This is not the paper's Eq. 5-9 (use :func:`uaeo_loss` for that). It is
    the DECL-style loss (Qin et al., 2022) the published training scripts use,
    re-implemented from its description so the two can be compared:

    1. On the clean images, ``S = logit_scale * cos(clean_i, t_j)``,
       symmetrised ``S' = 0.5 (S + S^T)``; evidence
       ``E = exp(tanh(S') / evidence_tau)``.
    2. Image ``i`` is *matched* when ``argmax_j (E + E^T)_ij == i`` (CLIP
       already pairs it with its own caption; ties to the lowest index).
    3. Matched samples get the naive loss ``cos(recon_i, t_i)``, averaged over
       the matched subset, times ``matched_weight`` (10).
    4. The other samples get, with weight ``ce_weight`` (0.5) each, the
       cross-entropy (logits ``logit_scale * cos``) of image ``i`` over the
       batch's captions toward ``argmin_j E_ij`` (image to text), and of
       caption ``i`` over the batch's reconstructions toward ``argmin_j E_ji``
       (text to image), averaged over the unmatched subset.

    Bugs of the published code that are fixed here: the image-to-text logits
    are taken against the captions of the SAME batch the targets index (theirs
    used a larger batch, so labels pointed at the wrong captions); an empty
    matched or unmatched subset contributes 0, not NaN; a subset of one keeps
    its batch dimension (subsets are masks, never squeezed index tensors).

    Args:
        recon_features, text_features, clean_features: ``[K, D]`` as in
            :func:`uaeo_loss`; only ``recon_features`` receives gradient.
        logit_scale: scale of the cosine in the similarity and the
            cross-entropies (``1/0.07``, fixed in their code).
        evidence_tau: temperature of the evidence (0.1).
        matched_weight: weight of the naive cosine term on matched samples.
        ce_weight: weight of each of the two cross-entropies.
        return_parts: also return a dict with ``"matched"`` (bool ``[K]``),
            ``"i2t_targets"``, ``"t2i_targets"`` (long ``[K]``), and the scalar
            terms ``"matched_cos"``, ``"ce_i2t"``, ``"ce_t2i"``.

    Returns:
        A scalar loss, or ``(loss, parts)``.
    """
    _check_pairs("recon_features", recon_features, "text_features", text_features)
    _check_pairs("recon_features", recon_features, "clean_features", clean_features)
    if not evidence_tau > 0:
        raise ConfigError(f"evidence_tau must be > 0, got {evidence_tau!r}")
    k = recon_features.shape[0]
    dtype = _compute_dtype(recon_features)
    device = recon_features.device

    with torch.no_grad():
        sel = _selection_dtype(recon_features)
        clean = _normalize(clean_features.detach(), sel)
        text_sel = _normalize(text_features.detach(), sel)
        sim = logit_scale * (clean @ text_sel.t())
        sim = 0.5 * (sim + sim.t())
        evidence = torch.exp(torch.tanh(sim) / evidence_tau)
        arange = torch.arange(k, device=device)
        if k > 0:
            matched = _first_argmin(-(evidence + evidence.t())) == arange
            i2t_targets = _first_argmin(evidence)  # argmin_j E_ij
            t2i_targets = _first_argmin(evidence.t())  # argmin_j E_ji
        else:
            matched = torch.zeros(0, dtype=torch.bool, device=device)
            i2t_targets = t2i_targets = torch.zeros(0, dtype=torch.long, device=device)
        unmatched = ~matched

    recon = _normalize(recon_features, dtype)
    text = _normalize(text_features.detach(), dtype)
    cos = recon @ text.t()  # [K images, K texts]

    matched_cos = _masked_mean(cos.diagonal(), matched)
    ce_i2t_all = F.cross_entropy(logit_scale * cos, i2t_targets, reduction="none")
    ce_t2i_all = F.cross_entropy(logit_scale * cos.t(), t2i_targets, reduction="none")
    ce_i2t = _masked_mean(ce_i2t_all, unmatched)
    ce_t2i = _masked_mean(ce_t2i_all, unmatched)
    loss = matched_weight * matched_cos + ce_weight * (ce_i2t + ce_t2i)

    if return_parts:
        parts = {
            "matched": matched,
            "i2t_targets": i2t_targets,
            "t2i_targets": t2i_targets,
            "matched_cos": matched_cos.detach(),
            "ce_i2t": ce_i2t.detach(),
            "ce_t2i": ce_t2i.detach(),
        }
        return loss, parts
    return loss


# --------------------------------------------------------------------------- classifiers


def untargeted_margin_loss(
    logits: Tensor, labels: Tensor, margin: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """Carlini-Wagner style untargeted margin loss for classifier targets.

    ``relu(z[label_i] - max_{j != label_i} z[j] + margin)`` per sample: positive
    while the true class is not beaten by at least ``margin``, exactly 0 (and
    no gradient) once the sample is flipped by ``margin``, so it stops pushing
    samples that are already misclassified and concentrates on the rest.
    Not in the paper; an optional objective for classifier targets.

    Args:
        logits: ``[B, C]`` with ``C >= 2``.
        labels: ``[B]`` integer true classes.
        margin: required lead of the best wrong class, in logit units (so scale
            it with the target's logits, e.g. CLIP zero-shot logits are
            ``100 * cos``). ``margin >= 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    _check_reduction(reduction)
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ConfigError(f"logits must be [B, C] with C >= 2, got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ConfigError(
            f"labels must be [B] = [{logits.shape[0]}], got shape {tuple(labels.shape)}"
        )
    if margin < 0:
        raise ConfigError(f"margin must be >= 0, got {margin!r}")
    labels = labels.long()
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    is_true = F.one_hot(labels, logits.shape[1]).bool()
    best_other = logits.masked_fill(is_true, -math.inf).max(dim=1).values
    return _reduce(F.relu(true_logit - best_other + margin), reduction)


def feature_similarity_loss(maps: Sequence[Tensor], reference: Sequence[Tensor], reduction: str = "mean") -> Tensor:
    """Feature-level attack term: how much the target's inner feature maps still look like the original's.

    Per sample, the cosine similarity of each stage's flattened map with the
    original's (detached), averaged over the stages; minimising it moves what the
    target *computes*, not only its last decision (feature-level attacks: they
    converge faster than a logit loss and transfer better to other
    classifiers). In ``[-1, 1]``, 1 while nothing changed. ``maps`` may be a
    whole multiple of the reference batch (repeats of it, in order).
    """
    _check_reduction(reduction)
    if len(maps) == 0 or len(maps) != len(reference):
        raise ConfigError(f"need one reference per feature map: {len(maps)} maps, {len(reference)} references")
    per = []
    for m, r in zip(maps, reference):
        if m.shape[1:] != r.shape[1:] or m.shape[0] % max(r.shape[0], 1):
            raise ConfigError(f"feature map {tuple(m.shape)} does not match its reference {tuple(r.shape)}")
        r = r.detach().repeat(m.shape[0] // r.shape[0], *([1] * (r.dim() - 1)))
        per.append(F.cosine_similarity(m.flatten(1).float(), r.flatten(1).float(), dim=1))
    return _reduce(torch.stack(per).mean(0), reduction)


# --------------------------------------------------------------------------- fidelity


def semantic_guard_loss(
    full: Tensor, base: Tensor, kind: str = "kl", temperature: float = 1.0
) -> Tensor:
    """Keep the target model's view of the FULL decode at that of the base decode.

    ``base`` (the target's logits or features on the unmodified codec's decode)
    is detached; only ``full`` receives gradient.

    * ``kind="kl"``: ``full``/``base`` are logits ``[..., C]``; returns
      ``KL(softmax(base/T) || softmax(full/T))`` summed over the last
      dimension and averaged over the others (no ``T**2`` factor).
    * ``kind="cos"``: ``full``/``base`` are features ``[B, ...]`` (flattened
      per sample); returns the mean of ``1 - cos(full_i, base_i)``, in
      ``[0, 2]``.

    Both are 0 when ``full == base``.
    """
    if full.shape != base.shape:
        raise ConfigError(
            "full and base must have the same shape, "
            f"got {tuple(full.shape)} and {tuple(base.shape)}"
        )
    base = base.detach()
    dtype = _compute_dtype(full)
    if kind == "kl":
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        log_p_full = F.log_softmax(full.to(dtype) / temperature, dim=-1)
        log_p_base = F.log_softmax(base.to(dtype) / temperature, dim=-1)
        kl = F.kl_div(log_p_full, log_p_base, reduction="none", log_target=True).sum(dim=-1)
        return kl.mean()
    if kind == "cos":
        f = full.to(dtype).reshape(full.shape[0], -1) if full.dim() > 1 else full.to(dtype)[None]
        b = base.to(dtype).reshape(base.shape[0], -1) if base.dim() > 1 else base.to(dtype)[None]
        f = F.normalize(f, dim=-1, eps=_NORM_EPS)
        b = F.normalize(b, dim=-1, eps=_NORM_EPS)
        cos = (f * b).sum(dim=-1)
        return (1.0 - cos).mean()
    raise ConfigError(f"kind must be 'kl' or 'cos', got {kind!r}")


def _iter_likelihoods(likelihoods: Any) -> Iterable[Tensor]:
    if isinstance(likelihoods, Tensor):
        yield likelihoods
    elif isinstance(likelihoods, Mapping):
        for value in likelihoods.values():
            yield from _iter_likelihoods(value)
    elif isinstance(likelihoods, (list, tuple)):
        for value in likelihoods:
            yield from _iter_likelihoods(value)
    else:
        raise ConfigError(
            "likelihoods must be tensors or (nested) dicts/lists of tensors, "
            f"got {type(likelihoods).__name__}"
        )


def rate_loss(likelihoods: Union[Tensor, Mapping[str, Any]], num_pixels: int) -> Tensor:
    """Estimated bits per pixel from CompressAI likelihoods.

    ``sum(log(l)) / (-ln 2 * num_pixels)`` over every likelihood tensor in
    ``likelihoods``: a tensor, or a dict as in ``model(x)["likelihoods"]``
    whose values may themselves be dicts (as latent codecs nest them) or
    lists/tuples of tensors.

    Args:
        likelihoods: the likelihoods (each entry in ``(0, 1]``).
        num_pixels: ``N * H * W`` of the batch, so the result is the mean bpp
            per image (as CompressAI's ``RateDistortionLoss``).
    """
    if num_pixels <= 0:
        raise ConfigError(f"num_pixels must be > 0, got {num_pixels!r}")
    tensors = list(_iter_likelihoods(likelihoods))
    if not tensors:
        raise ConfigError("likelihoods holds no tensor")
    total = sum(torch.log(t).sum() for t in tensors)
    return total / (-math.log(2) * num_pixels)


def distortion_loss(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean squared error between the decode and the original (images in [0, 1])."""
    if x_hat.shape != x.shape:
        raise ConfigError(
            f"x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}"
        )
    return F.mse_loss(x_hat, x)


def rate_distortion(out: Mapping[str, Any], x: Tensor, lmbda: float) -> Dict[str, Tensor]:
    """Rate-distortion loss as CompressAI's ``RateDistortionLoss`` (MSE metric).

    Args:
        out: a codec's forward output with ``"x_hat"`` and ``"likelihoods"``.
        x: the original batch ``[N, C, H, W]``.
        lmbda: the Lagrange multiplier.

    Returns:
        ``{"bpp": bpp, "mse": mse, "loss": lmbda * 255**2 * mse + bpp}``.
    """
    if x.dim() != 4:
        raise ConfigError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    bpp = rate_loss(out["likelihoods"], n * h * w)
    mse = distortion_loss(out["x_hat"], x)
    return {"bpp": bpp, "mse": mse, "loss": lmbda * 255**2 * mse + bpp}
