"""Tests of psic_adapter.training.losses (UAEO, its ablations, margin, guard, rate-distortion).

The UAEO reference below is a loop-by-loop reading of Eqs. 5-9 of the paper in
plain Python (math.exp, math.tanh), independent of the torch implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from psic_adapter.errors import ConfigError
from psic_adapter.training.losses import (
    authors_uaeo_loss,
    distortion_loss,
    feature_similarity_loss,
    naive_cosine_loss,
    rate_distortion,
    rate_loss,
    semantic_guard_loss,
    uaeo_loss,
    uaeo_targets,
    untargeted_margin_loss,
)

# --------------------------------------------------------------------------- references


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n > 0 else [0.0 for _ in v]


def _cos(a, b):
    a, b = _unit(a), _unit(b)
    return sum(x * y for x, y in zip(a, b))


def reference_uaeo(recon, text, clean, s):
    """Eqs. 5-9, written out with loops. Inputs are lists of lists (K x D)."""
    k = len(text)
    # Eq. 5: e_ij = exp(tanh(Clip(x_i, t_j) / s)), from the clean images
    e = [[math.exp(math.tanh(_cos(clean[i], text[j]) / s)) for j in range(k)] for i in range(k)]
    losses, targets = [], []
    for i in range(k):
        # Eq. 6: e^b_i = e_i^{i2t} + e_i^{t2i}, with e_i^{t2i} = [e_1i, ..., e_Ki]
        eb = [e[i][j] + e[j][i] for j in range(k)]
        # Eq. 7: u_ij = e^b_ij / sum_j (e^b_ij + 1)
        strength = sum(eb[j] + 1.0 for j in range(k))
        u = [eb[j] / strength for j in range(k)]
        # Eq. 8: n = argmin_n u_in (first index on ties)
        n = 0
        for j in range(1, k):
            if u[j] < u[n]:
                n = j
        targets.append(n)
        # Eq. 9: -log( exp(cos(f(x_i), g(t_n))/s) / sum_j exp(cos(f(x_i), g(t_j))/s) )
        logits = [_cos(recon[i], text[j]) / s for j in range(k)]
        denom = sum(math.exp(z) for z in logits)
        losses.append(-math.log(math.exp(logits[n]) / denom))
    return sum(losses) / k, losses, targets


def _rows(t):
    return t.double().tolist()


def _simplex(k):
    """k unit vectors in R^k with pairwise cosine -1/(k-1) (a regular simplex)."""
    eye = torch.eye(k, dtype=torch.float64)
    v = eye - eye.mean(dim=0, keepdim=True)
    return F.normalize(v, dim=1)


# --------------------------------------------------------------------------- uaeo


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k,d", [(2, 3), (3, 5), (4, 8), (5, 4), (6, 7)])
@pytest.mark.parametrize("s", [0.1, 0.5])
def test_uaeo_matches_loop_reference(seed, k, d, s):
    g = torch.Generator().manual_seed(seed * 100 + k * 10 + d)
    recon = torch.randn(k, d, generator=g)
    text = torch.randn(k, d, generator=g) * 3.0  # scale must not matter
    clean = torch.randn(k, d, generator=g)

    loss, targets = uaeo_loss(recon, text, clean, s=s, return_targets=True)
    per_sample = uaeo_loss(recon, text, clean, s=s, reduction="none")
    ref_mean, ref_losses, ref_targets = reference_uaeo(_rows(recon), _rows(text), _rows(clean), s)

    assert targets.dtype == torch.long
    assert targets.tolist() == ref_targets
    assert uaeo_targets(text, clean, s=s).tolist() == ref_targets
    assert loss.item() == pytest.approx(ref_mean, rel=1e-5, abs=1e-5)
    assert per_sample.shape == (k,)
    assert per_sample.tolist() == pytest.approx(ref_losses, rel=1e-5, abs=1e-5)
    assert uaeo_loss(recon, text, clean, s=s, reduction="sum").item() == pytest.approx(
        sum(ref_losses), rel=1e-5, abs=1e-5
    )


def test_uaeo_clip_like_regime_targets_a_wrong_caption():
    # Captions close to their images (as CLIP pairs are): the own caption has
    # the most evidence, so the least-evidence caption is always another one.
    g = torch.Generator().manual_seed(7)
    k, d = 6, 16
    clean = torch.randn(k, d, generator=g)
    text = clean + 0.3 * torch.randn(k, d, generator=g)
    recon = clean.clone()
    loss, targets = uaeo_loss(recon, text, clean, return_targets=True)
    _, _, ref_targets = reference_uaeo(_rows(recon), _rows(text), _rows(clean), 0.1)
    assert targets.tolist() == ref_targets
    assert all(n != i for i, n in enumerate(targets.tolist()))
    # the reconstruction still matches its own caption, so the loss is large
    assert loss.item() > 1.0


def test_uaeo_batch_of_one_is_zero_and_finite():
    recon = torch.randn(1, 5, requires_grad=True)
    text, clean = torch.randn(1, 5), torch.randn(1, 5)
    loss, targets = uaeo_loss(recon, text, clean, return_targets=True)
    assert targets.tolist() == [0]
    assert torch.isfinite(loss)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(recon.grad).all()
    assert recon.grad.abs().max().item() == 0.0


def test_uaeo_identical_pairs_tie_to_lowest_index():
    k = 4
    recon = torch.randn(k, 6)
    text = torch.randn(1, 6).repeat(k, 1)  # identical captions
    clean = torch.randn(1, 6).repeat(k, 1)  # identical images
    loss, targets = uaeo_loss(recon, text, clean, return_targets=True)
    assert targets.tolist() == [0, 0, 0, 0]
    assert torch.isfinite(loss)
    # every caption is the same, so each row's softmax is uniform: CE = log K
    assert loss.item() == pytest.approx(math.log(k), rel=1e-6)
    # and deterministic
    assert uaeo_targets(text, clean).tolist() == [0, 0, 0, 0]


def test_uaeo_saturated_tanh_ties_are_deterministic():
    # Pairs on a regular simplex: every off-diagonal cosine is -1/3, so at
    # s=1e-3 tanh saturates to -1 exactly and all wrong captions tie. The
    # argmin must be the lowest wrong index: 1 for image 0, 0 for the others.
    k = 4
    v = _simplex(k)
    targets = uaeo_targets(v, v, s=1e-3)
    assert targets.tolist() == [1, 0, 0, 0]
    assert uaeo_targets(v.clone(), v.clone(), s=1e-3).tolist() == [1, 0, 0, 0]
    loss = uaeo_loss(v.float(), v.float(), v.float(), s=1e-3)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("zero", ["recon", "text", "clean", "all"])
def test_uaeo_zero_vectors_are_finite(zero):
    g = torch.Generator().manual_seed(3)
    feats = {name: torch.randn(3, 4, generator=g) for name in ("recon", "text", "clean")}
    for name in feats:
        if zero in (name, "all"):
            feats[name] = torch.zeros(3, 4)
    feats["recon"][0].zero_()  # a single zero row as well
    recon = feats["recon"].requires_grad_(True)
    loss, targets = uaeo_loss(recon, feats["text"], feats["clean"], return_targets=True)
    assert torch.isfinite(loss)
    assert ((targets >= 0) & (targets < 3)).all()
    loss.backward()
    assert torch.isfinite(recon.grad).all()


def test_uaeo_gradient_reaches_recon_only():
    g = torch.Generator().manual_seed(11)
    recon = torch.randn(5, 8, generator=g, requires_grad=True)
    text = torch.randn(5, 8, generator=g, requires_grad=True)
    clean = torch.randn(5, 8, generator=g, requires_grad=True)
    loss = uaeo_loss(recon, text, clean)
    loss.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert text.grad is None
    assert clean.grad is None
    assert uaeo_targets(text, clean).requires_grad is False


def test_uaeo_descent_moves_recon_toward_target_caption():
    g = torch.Generator().manual_seed(5)
    clean = torch.randn(4, 8, generator=g)
    text = clean + 0.2 * torch.randn(4, 8, generator=g)
    recon = clean.clone().requires_grad_(True)
    loss, targets = uaeo_loss(recon, text, clean, return_targets=True)
    loss.backward()
    with torch.no_grad():
        stepped = recon - 0.5 * recon.grad
        before = F.cosine_similarity(recon, text[targets])
        after = F.cosine_similarity(stepped, text[targets])
        assert uaeo_loss(stepped, text, clean).item() < loss.item()
        assert (after > before).all()


def test_uaeo_half_precision_features():
    g = torch.Generator().manual_seed(2)
    recon, text, clean = (torch.randn(4, 8, generator=g).half() for _ in range(3))
    loss, targets = uaeo_loss(recon, text, clean, return_targets=True)
    ref_mean, _, ref_targets = reference_uaeo(_rows(recon), _rows(text), _rows(clean), 0.1)
    assert loss.dtype == torch.float32
    assert targets.tolist() == ref_targets
    assert loss.item() == pytest.approx(ref_mean, rel=1e-4)


def test_uaeo_rejects_bad_arguments():
    a = torch.randn(3, 4)
    with pytest.raises(ValueError):
        uaeo_loss(a, torch.randn(4, 4), a)  # non-square: 4 captions for 3 images
    with pytest.raises(ValueError):
        uaeo_loss(a, a, torch.randn(3, 5))
    with pytest.raises(ValueError):
        uaeo_loss(a, a, a, reduction="avg")
    with pytest.raises(ConfigError):
        uaeo_targets(a, a, s=0.0)
    with pytest.raises(ValueError):
        uaeo_loss(a[0], a[0], a[0])  # 1-D


def test_uaeo_empty_batch():
    e = torch.zeros(0, 4, requires_grad=True)
    assert uaeo_loss(e, e, e).item() == 0.0
    assert uaeo_loss(e, e, e, reduction="none").shape == (0,)
    assert uaeo_targets(e, e).shape == (0,)


# --------------------------------------------------------------------------- naive


def test_naive_cosine_is_mean_diagonal_cosine():
    recon = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    text = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    # cosines 1, 0, -1 -> mean 0
    assert naive_cosine_loss(recon, text).item() == pytest.approx(0.0, abs=1e-7)
    per = naive_cosine_loss(recon, text, reduction="none")
    assert per.tolist() == pytest.approx([1.0, 0.0, -1.0])

    g = torch.Generator().manual_seed(4)
    r, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = F.cosine_similarity(r, t, dim=1).mean()
    assert naive_cosine_loss(r, t).item() == pytest.approx(expected.item(), rel=1e-6)
    # it uses the own caption only: permuting the other rows changes nothing for row 0
    t2 = t.clone()
    t2[1:] = t[1:].flip(0)
    assert naive_cosine_loss(r, t2, reduction="none")[0].item() == pytest.approx(
        naive_cosine_loss(r, t, reduction="none")[0].item()
    )


def test_naive_cosine_gradient_pushes_apart_and_skips_text():
    g = torch.Generator().manual_seed(9)
    recon = torch.randn(3, 6, generator=g, requires_grad=True)
    text = torch.randn(3, 6, generator=g, requires_grad=True)
    loss = naive_cosine_loss(recon, text)
    loss.backward()
    assert text.grad is None
    with torch.no_grad():
        assert naive_cosine_loss(recon - 0.1 * recon.grad, text).item() < loss.item()


# --------------------------------------------------------------------------- authors' variant


def test_authors_all_matched_gives_finite_naive_term():
    # text == clean on a simplex: CLIP matches every image, the unmatched subset
    # is empty (their code: NaN). Loss = 10 * mean cos(recon_i, t_i).
    v = _simplex(4).float()
    g = torch.Generator().manual_seed(0)
    recon = torch.randn(4, 4, generator=g, requires_grad=True)
    loss, parts = authors_uaeo_loss(recon, v, v, return_parts=True)
    assert parts["matched"].tolist() == [True] * 4
    assert torch.isfinite(loss)
    assert parts["ce_i2t"].item() == 0.0 and parts["ce_t2i"].item() == 0.0
    expected = 10.0 * F.cosine_similarity(recon, v, dim=1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(recon.grad).all()


def test_authors_none_matched_gives_finite_ce_term():
    # caption i is image i+1's: no image is matched, the matched subset is empty
    v = _simplex(4).float()
    text = v.roll(-1, dims=0)
    g = torch.Generator().manual_seed(1)
    recon = torch.randn(4, 4, generator=g, requires_grad=True)
    loss, parts = authors_uaeo_loss(recon, text, v, return_parts=True)
    assert parts["matched"].tolist() == [False] * 4
    assert parts["matched_cos"].item() == 0.0
    assert torch.isfinite(loss) and loss.item() > 0
    assert loss.item() == pytest.approx(0.5 * (parts["ce_i2t"] + parts["ce_t2i"]).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(recon.grad).all()


def test_authors_single_element_keeps_batch_dim():
    recon = torch.randn(1, 5, requires_grad=True)
    text, clean = torch.randn(1, 5), torch.randn(1, 5)
    loss, parts = authors_uaeo_loss(recon, text, clean, return_parts=True)
    assert parts["matched"].shape == (1,) and parts["matched"].item() is True
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(10.0 * F.cosine_similarity(recon, text).item(), rel=1e-5)
    loss.backward()
    assert recon.grad.shape == (1, 5) and torch.isfinite(recon.grad).all()


def _reference_authors(recon, text, clean, scale=1 / 0.07, tau=0.1):
    k = recon.shape[0]
    r, t, c = (F.normalize(x.double(), dim=1) for x in (recon, text, clean))
    sim = scale * c @ t.T
    sim = 0.5 * (sim + sim.T)
    e = torch.exp(torch.tanh(sim) / tau)
    cos = r @ t.T
    matched_cos, ce_i2t, ce_t2i, n_matched, n_un = 0.0, 0.0, 0.0, 0, 0
    for i in range(k):
        row = (e + e.T)[i].tolist()
        if max(range(k), key=lambda j: (row[j], -j)) == i:
            matched_cos += cos[i, i].item()
            n_matched += 1
        else:
            ti = min(range(k), key=lambda j: (e[i, j].item(), j))
            tt = min(range(k), key=lambda j: (e[j, i].item(), j))
            li = [scale * cos[i, j].item() for j in range(k)]
            lt = [scale * cos[j, i].item() for j in range(k)]
            ce_i2t += math.log(sum(math.exp(z) for z in li)) - li[ti]
            ce_t2i += math.log(sum(math.exp(z) for z in lt)) - lt[tt]
            n_un += 1
    m = matched_cos / n_matched if n_matched else 0.0
    a = ce_i2t / n_un if n_un else 0.0
    b = ce_t2i / n_un if n_un else 0.0
    return 10.0 * m + 0.5 * (a + b), n_matched


def test_authors_mixed_batch_matches_reference():
    # one matched subset of size one (their code squeezed it to 0-D)
    v = _simplex(3).float()
    text = torch.stack([v[0], v[2], v[1]])  # image 0 matched, images 1 and 2 swapped
    g = torch.Generator().manual_seed(2)
    recon = torch.randn(3, 3, generator=g)
    loss, parts = authors_uaeo_loss(recon, text, v, return_parts=True)
    assert parts["matched"].tolist() == [True, False, False]
    ref, n_matched = _reference_authors(recon, text, v)
    assert n_matched == 1
    assert loss.item() == pytest.approx(ref, rel=1e-5)

    g = torch.Generator().manual_seed(12)
    for _ in range(3):
        recon, text, clean = (torch.randn(5, 6, generator=g) for _ in range(3))
        ref, _ = _reference_authors(recon, text, clean)
        assert authors_uaeo_loss(recon, text, clean).item() == pytest.approx(ref, rel=1e-5)


# --------------------------------------------------------------------------- margin


def test_margin_loss_hand_computed():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0], [1.5, 1.0, -4.0]], requires_grad=True)
    labels = torch.tensor([1, 0, 1])
    # relu(3-1+1)=3, relu(2-0+1)=3, relu(1-1.5+1)=0.5
    per = untargeted_margin_loss(logits, labels, margin=1.0, reduction="none")
    assert per.tolist() == pytest.approx([3.0, 3.0, 0.5])
    loss = untargeted_margin_loss(logits, labels, margin=1.0)
    assert loss.item() == pytest.approx(6.5 / 3)
    loss.backward()
    # d/d true = +1/3, d/d best other = -1/3, the rest 0
    expected = torch.tensor([[0.0, 1.0, -1.0], [1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]) / 3
    # sample 1 has a tie between classes 1 and 2; max picks one of them
    assert logits.grad[0].tolist() == pytest.approx(expected[0].tolist())
    assert logits.grad[2].tolist() == pytest.approx(expected[2].tolist())
    assert logits.grad[1, 0].item() == pytest.approx(1 / 3)
    assert logits.grad[1, 1:].sum().item() == pytest.approx(-1 / 3)


def test_margin_loss_zero_once_flipped_by_margin():
    logits = torch.tensor([[5.0, 0.0, 1.0], [0.0, 0.0, 9.0]], requires_grad=True)
    labels = torch.tensor([1, 0])
    loss = untargeted_margin_loss(logits, labels, margin=1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad.abs().max().item() == 0.0
    # flipped, but by less than the margin: still pushes
    assert untargeted_margin_loss(logits.detach(), labels, margin=6.0).item() == pytest.approx(0.5)


def test_margin_loss_rejects_bad_shapes():
    with pytest.raises(ValueError):
        untargeted_margin_loss(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        untargeted_margin_loss(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))


def test_feature_similarity_is_the_mean_cosine_over_stages():
    ref = [torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]]), torch.tensor([[1.0, 1.0], [1.0, -1.0]])]
    maps = [torch.tensor([[[[1.0, 0.0]]], [[[1.0, 0.0]]]]), torch.tensor([[2.0, 2.0], [-1.0, 1.0]])]
    per = feature_similarity_loss(maps, ref, reduction="none")
    # sample 0: cos 1 and 1; sample 1: cos 0 (orthogonal) and -1 (opposite)
    assert per.tolist() == pytest.approx([1.0, -0.5])
    assert feature_similarity_loss(maps, ref).item() == pytest.approx(0.25)
    # an unchanged decode scores 1, and a batch of repeats is compared with its reference row by row
    assert feature_similarity_loss([torch.cat([r, r]) for r in ref], ref).item() == pytest.approx(1.0)


def test_feature_similarity_pushes_only_the_encrypted_maps():
    ref = [torch.randn(2, 3, 4, 4, requires_grad=True)]
    maps = [torch.randn(2, 3, 4, 4, requires_grad=True)]
    feature_similarity_loss(maps, ref).backward()
    assert maps[0].grad.abs().sum() > 0 and ref[0].grad is None  # the original's maps are a fixed reference


def test_feature_similarity_rejects_maps_that_do_not_pair():
    with pytest.raises(ConfigError, match="one reference per feature map"):
        feature_similarity_loss([torch.randn(2, 3)], [])
    with pytest.raises(ConfigError, match="does not match"):
        feature_similarity_loss([torch.randn(2, 3, 4, 4)], [torch.randn(2, 3, 2, 2)])
    with pytest.raises(ConfigError, match="does not match"):
        feature_similarity_loss([torch.randn(3, 5)], [torch.randn(2, 5)])


# --------------------------------------------------------------------------- guard


def test_semantic_guard_kl():
    base = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    full = torch.tensor([[0.0, 0.0]], requires_grad=True)  # softmax = [1/2, 1/2]
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert semantic_guard_loss(full, base, kind="kl").item() == pytest.approx(expected, rel=1e-6)
    # temperature 2 on base logits [0, 2 ln 3] gives the same distribution
    base2 = torch.tensor([[0.0, 2 * math.log(3.0)]], requires_grad=True)
    loss = semantic_guard_loss(full, base2, kind="kl", temperature=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert base2.grad is None and full.grad is not None
    same = torch.randn(4, 10)
    assert semantic_guard_loss(same.clone(), same, kind="kl").item() == pytest.approx(0.0, abs=1e-6)


def test_semantic_guard_cos():
    full = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    base = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # 1 - cos: 0 and 1 -> mean 0.5
    assert semantic_guard_loss(full, base, kind="cos").item() == pytest.approx(0.5)
    f = torch.randn(3, 2, 4, requires_grad=True)
    same_direction = semantic_guard_loss(f, f.detach() * 2.0, kind="cos")
    assert same_direction.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        semantic_guard_loss(full, base, kind="l2")
    with pytest.raises(ValueError):
        semantic_guard_loss(full, base[:1], kind="cos")


# --------------------------------------------------------------------------- rate-distortion


def test_rate_loss_nested_dict():
    likelihoods = {
        "y": torch.full((1, 2, 2, 2), 0.5),  # 8 x 1 bit
        "z": {"z": torch.full((1, 1, 2, 2), 0.25)},  # 4 x 2 bits
        "extra": [torch.full((2,), 0.125)],  # 2 x 3 bits
    }
    # 8 + 8 + 6 = 22 bits over 11 pixels = 2 bpp
    assert rate_loss(likelihoods, num_pixels=11).item() == pytest.approx(2.0, rel=1e-6)
    assert rate_loss(torch.full((4,), 0.5), num_pixels=2).item() == pytest.approx(2.0)
    with pytest.raises(ValueError):
        rate_loss({}, num_pixels=4)
    with pytest.raises(ValueError):
        rate_loss({"y": torch.full((2,), 0.5)}, num_pixels=0)


def test_rate_distortion_hand_computed():
    x = torch.zeros(2, 3, 4, 4)
    x_hat = torch.full_like(x, 0.1)
    likelihoods = {"y": torch.full((2, 4, 1, 1), 0.5), "z": {"z": torch.full((2, 2), 0.25)}}
    out = {"x_hat": x_hat, "likelihoods": likelihoods}
    # bits: 8 * 1 + 4 * 2 = 16 over 2*4*4 = 32 pixels -> 0.5 bpp
    res = rate_distortion(out, x, lmbda=0.01)
    assert set(res) == {"bpp", "mse", "loss"}
    assert res["bpp"].item() == pytest.approx(0.5, rel=1e-6)
    assert res["mse"].item() == pytest.approx(0.01, rel=1e-5)
    assert distortion_loss(x_hat, x).item() == pytest.approx(0.01, rel=1e-5)
    assert res["loss"].item() == pytest.approx(0.01 * 255**2 * 0.01 + 0.5, rel=1e-5)
