"""psic_adapter.eval.metrics and psic_adapter.perturbations."""

import math

import pytest
import torch

from psic_adapter.eval import metrics as M
from psic_adapter import perturbations as R


@pytest.fixture(scope="module")
def codec():
    from compressai.zoo import bmshj2018_hyperprior

    torch.manual_seed(0)
    net = bmshj2018_hyperprior(quality=1, pretrained=False).eval()
    net.update(force=True)
    return net


def smooth_image(b=1, h=64, w=64):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.2 + 0.6 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * torch.sin(3 * xx) * torch.cos(2 * yy)])
    return img[None].repeat(b, 1, 1, 1)


# --------------------------------------------------------------------------- psnr / ms-ssim


def test_psnr_constant_offset_is_20db():
    a = torch.full((2, 3, 8, 8), 0.5)
    b = a + 0.1
    p = M.psnr(a, b)
    assert p.shape == (2,)
    assert torch.allclose(p, torch.full((2,), 20.0), atol=1e-4)


def test_psnr_per_image_and_max_val():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.1  # 20 dB
    b[1] += 0.01  # 40 dB
    assert torch.allclose(M.psnr(a, b), torch.tensor([20.0, 40.0]), atol=1e-3)
    # same error on a 0..255 scale with peak 255
    assert torch.allclose(M.psnr(a * 255, b * 255, max_val=255.0), torch.tensor([20.0, 40.0]), atol=1e-3)


def test_psnr_identical_is_capped_not_inf():
    a = torch.rand(3, 3, 8, 8)
    b = a.clone()
    b[1] = 1 - b[1]
    p = M.psnr(a, b)
    assert p[0].item() == M.PSNR_CAP_DB == 100.0
    assert p[2].item() == 100.0
    assert p[1].item() < 20
    assert torch.isfinite(p).all()


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError):
        M.psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_ms_ssim_identical_is_one_full_and_small():
    big = torch.rand(1, 3, 168, 168)
    small = torch.rand(2, 3, 64, 64)
    assert torch.allclose(M.ms_ssim(big, big), torch.ones(1), atol=1e-5)
    assert torch.allclose(M.ms_ssim(small, small), torch.ones(2), atol=1e-5)


def test_ms_ssim_small_images_do_not_crash_and_order_by_noise():
    torch.manual_seed(0)
    x = smooth_image(1, 64, 64)
    light = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    heavy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    v_light, v_heavy = M.ms_ssim(x, light), M.ms_ssim(x, heavy)
    assert v_light.shape == (1,)
    assert 0 < v_heavy.item() < v_light.item() < 1
    for side in (100, 20, 8, 3, 1):  # fewer scales, then a shrunk window
        t = torch.rand(1, 3, side, side)
        v = M.ms_ssim(t, t * 0.9)
        assert v.shape == (1,) and torch.isfinite(v).all()


def test_own_multiscale_matches_pytorch_msssim_at_five_scales():
    from pytorch_msssim import ms_ssim as pm

    torch.manual_seed(1)
    a = torch.rand(2, 3, 168, 176)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    ref = pm(a, b, data_range=1.0, size_average=False)
    assert torch.allclose(M._ms_ssim_levels(a, b, 5), ref, atol=1e-5)
    assert torch.allclose(M.ms_ssim(a, b), ref, atol=1e-6)


# --------------------------------------------------------------------------- bpp


def test_bpp_from_nested_strings():
    strings = [[b"abc", b"de"], [[b"f"], b""], (bytearray(b"gh"),)]
    assert M.count_bytes(strings) == 8
    assert M.bpp_from_strings(strings, 100) == pytest.approx(8 * 8 / 100)
    assert M.bpp_from_strings({"strings": strings, "shape": (1, 1)}, 64) == pytest.approx(1.0)
    with pytest.raises(TypeError):
        M.bpp_from_strings([["not bytes"]], 10)
    with pytest.raises(ValueError):
        M.bpp_from_strings(strings, 0)


def test_bpp_from_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"\0" * 50)
    assert M.bpp_from_file(p, 400) == pytest.approx(1.0)


def test_bpp_from_real_compressai_bitstream(codec):
    torch.manual_seed(0)
    x = smooth_image(1, 64, 64)
    with torch.no_grad():
        out = codec.compress(x)
    total = sum(len(s) for per_latent in out["strings"] for s in per_latent)
    assert total > 0
    assert M.bpp_from_strings(out["strings"], 64 * 64) == 8 * total / (64 * 64)
    assert M.bpp_from_strings(out, 64 * 64) == 8 * total / (64 * 64)


# --------------------------------------------------------------------------- attack success rate


def test_asr_zero_when_attack_changes_nothing():
    base = torch.tensor([True, False, True, True, False])
    assert M.attack_success_rate(base, base.clone()) == 0.0


def test_asr_one_when_every_right_prediction_flips():
    base = torch.tensor([True, False, True, True, False])
    attacked = torch.tensor([False, True, False, False, True])  # base-wrong ones may go right
    assert M.attack_success_rate(base, attacked) == 1.0


def test_asr_nan_when_base_never_right():
    base = torch.zeros(4, dtype=torch.bool)
    assert math.isnan(M.attack_success_rate(base, torch.ones(4, dtype=torch.bool)))
    assert math.isnan(M.attack_success_rate(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool)))


def test_asr_mixed_case():
    base = torch.tensor([True, True, True, False, False])
    attacked = torch.tensor([False, True, True, False, True])
    # base right on 0,1,2; attacked wrong on 0 only; sample 4 (base wrong) does not count
    assert M.attack_success_rate(base, attacked) == pytest.approx(1 / 3)
    with pytest.raises(TypeError):
        M.attack_success_rate(base.long(), attacked)
    with pytest.raises(ValueError):
        M.attack_success_rate(base, attacked[:4])


def test_classification_asr_and_agreement():
    labels = torch.tensor([0, 1, 2, 3])
    base = torch.tensor([0, 1, 2, 0])
    attacked = torch.tensor([0, 2, 1, 3])
    assert M.classification_asr(base, attacked, labels) == pytest.approx(2 / 3)
    assert M.agreement(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    assert M.accuracy(base, labels) == 0.75
    # multi-label attributes: each (image, attribute) pair is a sample
    lab = torch.tensor([[1, 0], [0, 1]])
    assert M.classification_asr(lab, torch.tensor([[0, 0], [0, 0]]), lab) == 0.5


# --------------------------------------------------------------------------- retrieval


def test_retrieval_identity_features_recall_one():
    feats = torch.eye(3)
    hits = M.retrieval_hits(feats, feats * 5, torch.arange(3), ks=(1, 2))  # norms do not matter
    assert set(hits) == {"i2t", "t2i"}
    assert hits["i2t"][1].dtype == torch.bool and hits["t2i"][1].shape == (3,)
    rec = M.recall_at_k(hits)
    assert rec == {"i2t_R@1": 1.0, "i2t_R@2": 1.0, "t2i_R@1": 1.0, "t2i_R@2": 1.0}


def test_retrieval_permuted_known_values_ties_pessimistic():
    img = torch.eye(3)
    perm = [0, 2, 1]  # caption t describes image t but looks like image perm[t]
    txt = torch.eye(3)[perm]
    rec = M.recall_at_k(M.retrieval_hits(img, txt, torch.arange(3), ks=(1, 2, 3)))
    # wrong queries have their target tied (score 0) with another wrong one: rank 2
    assert rec["i2t_R@1"] == pytest.approx(1 / 3)
    assert rec["i2t_R@2"] == pytest.approx(1 / 3)
    assert rec["i2t_R@3"] == 1.0
    assert rec["t2i_R@1"] == pytest.approx(1 / 3)
    assert rec["t2i_R@2"] == pytest.approx(1 / 3)
    assert rec["t2i_R@3"] == 1.0


def test_retrieval_several_captions_per_image():
    img = torch.eye(3)
    txt = torch.tensor(
        [
            [0.0, 1.0, 0.0],  # c0 -> image 0, looks like image 1
            [0.96, 0.28, 0.0],  # c1 -> image 0
            [0.0, 0.6, 0.8],  # c2 -> image 1, image 2 scores higher
            [0.0, 0.0, 1.0],  # c3 -> image 2
            [0.6, 0.0, 0.8],  # c4 -> image 2
        ]
    )
    idx = torch.tensor([0, 0, 1, 2, 2])
    hits = M.retrieval_hits(img, txt, idx, ks=(1, 2, 3), chunk=2)  # chunking must not matter
    assert hits["t2i"][1].tolist() == [False, True, False, True, True]
    assert hits["t2i"][2].tolist() == [False, True, True, True, True]
    assert hits["i2t"][1].tolist() == [True, False, True]  # image 1's caption is behind c0
    assert hits["i2t"][2].tolist() == [True, True, True]
    rec = M.recall_at_k(hits)
    assert rec["t2i_R@1"] == pytest.approx(0.6) and rec["i2t_R@1"] == pytest.approx(2 / 3)


def test_retrieval_collapsed_features_score_no_hits():
    img = torch.ones(4, 8)  # every image the same embedding
    txt = torch.randn(4, 8)
    hits = M.retrieval_hits(img, txt, torch.arange(4), ks=(1, 3, 4))
    assert not hits["t2i"][1].any() and not hits["t2i"][3].any()
    assert hits["t2i"][4].all()


def test_retrieval_rejects_bad_indices():
    with pytest.raises(ValueError):
        M.retrieval_hits(torch.eye(3), torch.eye(3)[:2], torch.tensor([0, 1]))  # image 2 has no caption
    with pytest.raises(ValueError):
        M.retrieval_hits(torch.eye(3), torch.eye(3), torch.tensor([0, 1, 3]))


def test_retrieval_asr_hand_case():
    base = {"i2t": {1: torch.tensor([True, True, False, True])}, "t2i": {1: torch.tensor([False, False])}}
    att = {"i2t": {1: torch.tensor([False, True, True, False])}, "t2i": {1: torch.tensor([True, False])}}
    asr = M.retrieval_asr(base, att)
    assert set(asr) == {"i2t_ASR@1", "t2i_ASR@1"}
    assert asr["i2t_ASR@1"] == pytest.approx(2 / 3)
    assert math.isnan(asr["t2i_ASR@1"])


def test_retrieval_asr_end_to_end():
    img = torch.eye(3)
    base = M.retrieval_hits(img, img, torch.arange(3), ks=(1,))
    att = M.retrieval_hits(img[[1, 0, 2]], img, torch.arange(3), ks=(1,))  # images 0 and 1 swapped
    asr = M.retrieval_asr(base, att)
    assert asr["i2t_ASR@1"] == pytest.approx(2 / 3) and asr["t2i_ASR@1"] == pytest.approx(2 / 3)


def test_summarize_skips_nan():
    s = M.summarize([1.0, float("nan"), 3.0])
    assert s["mean"] == 2.0 and s["n"] == 2 and s["std"] == pytest.approx(math.sqrt(2))
    assert M.summarize(torch.tensor([5.0])) == {"mean": 5.0, "std": 0.0, "n": 1}
    empty = M.summarize([float("nan")])
    assert empty["n"] == 0 and math.isnan(empty["mean"])


# --------------------------------------------------------------------------- robustness


def test_jpeg_changes_pixels_but_keeps_quality():
    x = smooth_image(2, 64, 64)
    y = R.jpeg(x, quality=75)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, x)
    assert (M.psnr(x, y) > 25).all()
    torch.manual_seed(0)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert M.psnr(noisy, R.jpeg(noisy, 10)).mean() < M.psnr(noisy, R.jpeg(noisy, 95)).mean()


def test_resize_shapes_and_range():
    x = torch.rand(2, 3, 64, 48)
    y = R.resize(x, 0.5)
    assert y.shape == (2, 3, 32, 24)
    assert y.min() >= 0 and y.max() <= 1
    back = R.resize(x, 0.5, restore=True)
    assert back.shape == x.shape
    assert not torch.allclose(back, x, atol=1e-3)  # detail is lost


def test_blur_constant_image_unchanged_and_noise_smoothed():
    c = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(R.gaussian_blur(c, 1.0), c, atol=1e-6)
    torch.manual_seed(0)
    n = torch.rand(2, 3, 32, 32)
    b = R.gaussian_blur(n, 1.0)
    assert b.shape == n.shape and b.min() >= 0 and b.max() <= 1
    assert b.std() < 0.5 * n.std()
    assert R.gaussian_blur(torch.rand(1, 3, 2, 2), 3.0).shape == (1, 3, 2, 2)  # kernel shrunk


def test_codec_roundtrip_returns_original_size(codec):
    x = smooth_image(2, 40, 70)
    y = R.codec_roundtrip(x, codec)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    assert torch.isfinite(y).all()


def test_perturbation_registry():
    assert set(R.PERTURBATIONS) == {"jpeg75", "resize0.5", "blur1"}
    x = smooth_image(1, 32, 32)
    for name, fn in R.get_perturbations().items():
        y = fn(x)
        assert y.shape[:2] == x.shape[:2], name
    sentinel = object()
    p = R.get_perturbations(codec=sentinel)
    assert set(p) == {"jpeg75", "resize0.5", "blur1", "codec"}
    assert p["codec"].keywords["codec"] is sentinel
    assert "codec" not in R.PERTURBATIONS  # the registry is not modified


# --------------------------------------------------------------------------- intervals and how rates are shown
def test_wilson_interval_against_published_values():
    # Brown, Cai & DasGupta (2001) / Newcombe (1998), 95 %: 0/10 -> [0, 0.2775]; 1/4 -> [0.0456, 0.6994]
    assert M.wilson_interval(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-4))
    assert M.wilson_interval(1, 4) == (pytest.approx(0.04559, abs=1e-4), pytest.approx(0.69936, abs=1e-4))
    assert M.wilson_interval(10, 10) == (pytest.approx(1 - 0.27753, abs=1e-4), 1.0)
    lo, hi = M.wilson_interval(15, 50)
    assert lo == pytest.approx(0.1910, abs=1e-3) and hi == pytest.approx(0.4375, abs=1e-3)
    assert all(math.isnan(v) for v in M.wilson_interval(0, 0))
    with pytest.raises(ValueError):
        M.wilson_interval(5, 4)
    assert M.count_of_rate(7 / 9, 9) == 7 and M.count_of_rate(float("nan"), 9) == 0


def test_rates_are_shown_with_their_count_interval_and_verdict():
    from psic_adapter.eval import table as T

    assert T.rate(0.25, 4) == "25.0 % (1/4) [4.6-69.9]"
    assert T.rate(0.25, 4, label=True) == "25.0 % (1/4) [95% CI 4.6-69.9]"
    assert T.rate(0.0, 1) == "0.0 % (0/1) [0.0-79.3]"  # one image: the interval says how little it means
    assert T.rate(float("nan"), 0) == "n/a (0 to count)"
    assert T.share(1.0, 9) == "100.0 % (9/9)"
    # the rule: above noise only where the intervals do not overlap
    assert T.verdict(0.5, 0.25, 4) == T.NOISE  # the 50 % vs 25 % on 4 photos
    assert T.verdict(16 / 40, 1 / 40, 40) == T.ABOVE
    assert T.verdict(1 / 40, 16 / 40, 40) == T.BELOW
    assert T.verdict(float("nan"), 0.0, 0) == "n/a"
    assert T.overlap(0.5, 4, 0.25, 4) and not T.overlap(0.9, 50, 0.1, 50)
