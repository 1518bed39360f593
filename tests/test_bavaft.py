"""The BAvAFT baseline: block DCT, the bounded trigger, the two modes, encoder-only
training, the dynamic balance, save/load/resume and the evaluator.

Small and offline: a random hyperprior with N=32, M=48 (as tests/test_train.py),
the tiny random CLIP of ``conftest``, 64 x 64 crops of the bundled photos.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from psic_adapter.baselines.bavaft import (
    BAvAFT,
    BAvAFTConfig,
    BAvAFTDecoder,
    BAvAFTTrainConfig,
    BAvAFTTrainer,
    DynamicBalance,
    TriggerNet,
    bavaft_headline,
    block_dct,
    block_idct,
    dct_matrix,
    train_bavaft,
)
from psic_adapter.baselines.bavaft.model import CONFIG_NAME, WEIGHTS_NAME
from psic_adapter.baselines.bavaft.trigger import candidate_frequencies
from psic_adapter.data import SamplePhotos, collate
from psic_adapter.errors import ConfigError, FingerprintMismatchError, OverwriteError
from psic_adapter.bitstream.images import pad_to_multiple

from .conftest import small_trainable_codec, tiny_clip

CROP = 64
BATCH = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def base_codec():
    return small_trainable_codec()


@pytest.fixture(scope="module")
def target():
    return tiny_clip()


@pytest.fixture(scope="module")
def photos():
    return SamplePhotos("train", crop=CROP, repeats=2)


@pytest.fixture(scope="module")
def batch(photos):
    return collate([photos[i] for i in range(BATCH)])


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _cfg(**kw):
    d = dict(steps=2, batch_size=BATCH, crop=CROP, log_every=1)
    d.update(kw)
    return BAvAFTTrainConfig(**d)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_codec, target, photos):
    """A BAvAFT trained 2 steps (uaeo against the tiny CLIP) into a folder."""
    out = tmp_path_factory.mktemp("bavaft")
    torch.manual_seed(0)
    model = BAvAFT(base_codec)
    res = train_bavaft(model, target, photos, _cfg(), out, device="cpu", progress=False)
    return model, out, res


# ----------------------------------------------------------------------- DCT
@pytest.mark.parametrize("n", [4, 8])
def test_dct_matrix_is_orthonormal(n):
    d = dct_matrix(n, torch.float64)
    assert torch.allclose(d @ d.t(), torch.eye(n, dtype=torch.float64), atol=1e-12)
    # row k is a_k cos(pi (2i+1) k / 2n)
    i = torch.arange(n, dtype=torch.float64)
    assert torch.allclose(d[3 % n], math.sqrt(2 / n) * torch.cos(math.pi * (2 * i + 1) * (3 % n) / (2 * n)))
    assert torch.allclose(d[0], torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64))


def test_block_dct_round_trip_is_exact_and_orthonormal():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 40, generator=g)
    c = block_dct(x)
    assert c.shape == (2, 3, 64, 3, 5)
    assert (block_idct(c) - x).abs().max() < 1e-5
    assert torch.allclose((c**2).sum(), (x**2).sum(), rtol=1e-5)  # Parseval: orthonormal
    # a flat block has only a DC coefficient, 8 x its value
    flat = block_dct(torch.full((1, 1, 8, 8), 0.25))
    assert torch.isclose(flat[0, 0, 0, 0, 0], torch.tensor(2.0))
    assert flat[0, 0, 1:].abs().max() < 1e-6
    # one coefficient -> the separable cosine basis image
    one = torch.zeros(1, 1, 64, 1, 1)
    one[0, 0, 2 * 8 + 3] = 1.0
    d = dct_matrix(8)
    assert torch.allclose(block_idct(one)[0, 0], torch.outer(d[2], d[3]), atol=1e-7)
    with pytest.raises(ConfigError):
        block_dct(torch.rand(1, 3, 10, 16))


# ------------------------------------------------------------------- trigger
def test_trigger_is_bounded_adaptive_and_selects_top_k():
    torch.manual_seed(0)
    cfg = BAvAFTConfig(amplitude=4 / 255, top_k=5, band=(2, 6))
    net = TriggerNet(cfg)
    with torch.no_grad():  # saturate: the bound must hold whatever the network predicts
        net.coef_head.weight.mul_(100.0)
        net.coef_head.bias.add_(3.0)
    x = torch.rand(2, 3, 37, 45)  # not a multiple of 8: padded inside, cropped back
    t = net(x)
    assert t.shape == x.shape
    assert t.abs().max() < cfg.amplitude
    assert t.abs().max() > 0.5 * cfg.amplitude
    coef, mask = net.coefficients(pad_to_multiple(x, 8)[0])
    assert mask.shape == (2, 3, 64)
    assert torch.equal(mask.detach().sum(-1), torch.full((2, 3), 5.0))
    cand = torch.zeros(64, dtype=torch.bool)
    cand[candidate_frequencies(8, (2, 6))] = True
    assert (mask.detach()[..., ~cand] == 0).all()
    assert (coef.detach()[:, :, ~cand] == 0).all()
    # gradients reach the coefficient head and the frequency selection
    net(x).pow(2).sum().backward()
    assert net.coef_head.weight.grad.abs().sum() > 0
    assert net.freq_logits.grad.abs().sum() > 0
    assert net.score_head.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError):
        BAvAFTConfig(top_k=100)


# --------------------------------------------------------------------- modes
def test_clean_mode_is_the_base_codec_before_training_poisoned_differs(base_codec, batch):
    from psic_adapter.codec import fingerprint

    before = fingerprint(base_codec)
    model = BAvAFT(base_codec).eval()
    assert fingerprint(base_codec) == before  # the base is copied, never touched
    assert model.encoder_modules == ["g_a", "h_a"]
    x = batch["image"][:1]
    clean = model.compress(x)
    assert clean["strings"] == base_codec.compress(x)["strings"]
    poisoned = model.compress(x, poisoned=True)
    assert poisoned["strings"] != clean["strings"]
    t = model.make_trigger(x)
    assert t.abs().max() <= model.config.amplitude
    # either bitstream decodes with the unmodified base codec, as with BAvAFT's own decompress
    enc = model.encode(x, poisoned=True)
    assert torch.equal(model.decode(enc), base_codec.decompress(enc["strings"], enc["shape"])["x_hat"][..., :CROP, :CROP])
    # any size (padding inside encode)
    enc = model.encode(torch.rand(1, 3, 50, 70), poisoned=True)
    assert model.decode(enc).shape == (1, 3, 50, 70)
    # g_a alone on request
    assert BAvAFT(base_codec, BAvAFTConfig(train_hyper_encoder=False)).encoder_modules == ["g_a"]


# ------------------------------------------------------------------ training
def test_one_step_changes_only_the_trigger_and_the_encoder(base_codec, target, photos, batch, tmp_path):
    torch.manual_seed(0)
    model = BAvAFT(base_codec)
    codec_before, trigger_before = _state(model.codec), _state(model.trigger)
    trainer = BAvAFTTrainer(model, target, photos, _cfg(steps=1), tmp_path, device="cpu", progress=False)
    rec = trainer.step(batch)
    assert all(math.isfinite(v) for v in rec.values())
    assert {"bpp_clean", "bpp_poisoned", "attack", "w_attack", "w_rate_poisoned", "w_dist_poisoned"} <= set(rec)
    after = model.codec.state_dict()
    changed = {k for k in after if not torch.equal(after[k], codec_before[k])}
    assert changed, "the encoder did not train"
    assert all(k.startswith(("g_a.", "h_a.")) for k in changed), sorted(changed)
    assert any(k.startswith("g_a.") for k in changed) and any(k.startswith("h_a.") for k in changed)
    frozen = [k for k in after if not k.startswith(("g_a.", "h_a."))]
    assert any(k.startswith("entropy_bottleneck.") for k in frozen) and any(k.startswith("g_s.") for k in frozen)
    for k in frozen:  # decoder, hyper-decoder and entropy models: bit-identical
        assert torch.equal(after[k], codec_before[k]), k
    trig = model.trigger.state_dict()
    assert any(not torch.equal(trig[k], trigger_before[k]) for k in trig)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["encoder"]["lr"] == 1e-5 and groups["trigger"]["lr"] == 1e-3


def test_dynamic_balance_is_detached_bounded_and_normalises():
    bal = DynamicBalance({"a": 1.0, "b": 2.0}, anchor="rd", beta=0.5, floor=0.1)
    w = bal.update({"rd": 2.0, "a": 4.0, "b": 1.0})
    assert w == pytest.approx({"a": 0.5, "b": 4.0})  # prior * m_rd / m_k
    assert all(type(v) is float for v in w.values())
    for _ in range(50):  # "a" goes to 0: its weight stops at prior * m_rd / (floor * first)
        w = bal.update({"rd": 2.0, "a": 0.0, "b": -1.0})  # "b" changes sign: its magnitude counts
    assert w["a"] == pytest.approx(1.0 * 2.0 / (0.1 * 4.0))
    assert w["b"] == pytest.approx(4.0)
    w = bal.update({"rd": float("nan"), "a": float("inf"), "b": 1.0})  # non-finite values are skipped
    assert all(math.isfinite(v) for v in w.values())
    state = bal.state_dict()
    other = DynamicBalance({"a": 1.0, "b": 2.0}, anchor="rd", beta=0.5, floor=0.1)
    other.load_state_dict(state)
    assert other.weights() == bal.weights()
    assert DynamicBalance({"a": 3.0}, mode="fixed").update({"rd_clean": 1.0, "a": 100.0}) == {"a": 3.0}
    capped = DynamicBalance({"a": 1.0}, anchor="rd", w_max=10.0)
    assert capped.update({"rd": 1000.0, "a": 1.0}) == {"a": 10.0}


def test_training_writes_a_model_that_loads_back(trained, base_codec, target, batch):
    model, out, res = trained
    assert res["steps"] == 2
    lines = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert {"loss", "psnr_clean", "psnr_poisoned", "w_attack", "lr_encoder", "lr_trigger"} <= set(lines[0])
    meta = json.loads((out / "bavaft" / CONFIG_NAME).read_text())
    assert meta["format"] == "psic-bavaft/1" and meta["encoder_modules"] == ["g_a", "h_a"]
    assert meta["training"]["steps_done"] == 2
    assert (out / "bavaft" / WEIGHTS_NAME).is_file()

    loaded = BAvAFT.from_pretrained(base_codec, out / "bavaft")
    x = batch["image"][:1]
    for poisoned in (False, True):
        assert loaded.compress(x, poisoned)["strings"] == model.compress(x, poisoned)["strings"]
    for k, v in model.bavaft_state_dict().items():
        assert torch.equal(loaded.bavaft_state_dict()[k], v), k
    # trained: clean mode is no longer the base codec's encoder, the decoder still is
    assert loaded.compress(x)["strings"] != base_codec.compress(x)["strings"]
    assert torch.equal(loaded.base_codec().g_a[0].weight, base_codec.g_a[0].weight)
    with pytest.raises(FingerprintMismatchError):
        BAvAFT.from_pretrained(small_trainable_codec(seed=1), out / "bavaft")
    with pytest.raises(OverwriteError):
        BAvAFTTrainer(BAvAFT(base_codec), target, [], _cfg(), out, device="cpu").prepare_out_dir()


def test_resume_continues_where_it_stopped(trained, base_codec, target, photos, tmp_path):
    model2, _, _ = trained
    torch.manual_seed(0)
    model = BAvAFT(base_codec)
    train_bavaft(model, target, photos, _cfg(steps=1), tmp_path, device="cpu", progress=False)
    resumed = BAvAFT(base_codec)
    res = train_bavaft(resumed, target, photos, _cfg(steps=2), tmp_path, resume=True, device="cpu", progress=False)
    assert res["steps"] == 2
    for k, v in model2.bavaft_state_dict().items():  # the same as two steps in one go
        assert torch.allclose(resumed.bavaft_state_dict()[k], v, atol=1e-6), k


# ---------------------------------------------------------------- evaluation
def test_evaluator_measures_both_modes_with_the_runners_metrics(trained, base_codec, target):
    """BAvAFT goes through the same protocol as PSIC: one Evaluator, the same record."""
    from psic_adapter.eval.runner import EvalConfig, Evaluator, load_samples

    model, _, _ = trained
    samples = load_samples("samples", crop=CROP, count=3)
    cfg = EvalConfig(scales=["native"], class_names=["cup", "motorcycle", "woman"],
                     perturbations=("jpeg75", "codec"), grid_images=1)
    decoder = BAvAFTDecoder(model, base_codec)
    ev = Evaluator(decoder, target, config=cfg, progress=False)
    res = ev.run(samples)
    assert res.method == "BAvAFT" and res.wrong_keys is None and res.whitebox is None  # no key to attack
    m = res.main
    assert set(m.quality) == {"base", "full", "encrypted", "control"}
    assert m.bpp["encrypted"].n == 3 and m.bpp["base"].n == 3
    assert set(m.robustness) == {"jpeg75", "codec"}
    assert m.retrieval is not None  # CLIP with distinct captions
    h = bavaft_headline(res)
    assert {"bpp_clean", "bpp_poisoned", "psnr_clean", "psnr_poisoned", "asr_poisoned", "asr_clean",
            "control_asr"} <= set(h)
    d = decoder.decode(samples[0].image)
    assert set(d.images) == {"base", "full", "encrypted"} and d.latent is None

    # untrained: the clean mode is the base codec exactly
    fresh = BAvAFTDecoder(BAvAFT(base_codec))  # base rebuilt from the model
    d = fresh.decode(samples[0].image)
    assert torch.equal(d.images["full"], d.images["base"]) and d.bpp["full"] == d.bpp["base"]
    assert not torch.equal(d.images["encrypted"], d.images["base"])
