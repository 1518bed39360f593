"""The budget controller (dual ascent on the PSNR drop), the learning-rate schedule and the
validation probe read while training (issue 15). Tiny models, seconds."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from psic_adapter.adapter import wrap_model
from psic_adapter.data import SamplePhotos, collate
from psic_adapter.errors import ConfigError, DataError
from psic_adapter.training import Trainer, TrainConfig
from psic_adapter.training.trainer import dual_ascent, lr_scheduler, psnr_drop_db

from .conftest import small_trainable_codec, tiny_clip

KEY = b"the owner's training key, 32 bytes!"
CROP = 64


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


def new_model(base_codec):
    return wrap_model(copy.deepcopy(base_codec), key=KEY)


# ------------------------------------------------------------------ the arithmetic
def test_psnr_drop_is_the_mean_per_image_gap_in_db():
    x = torch.zeros(2, 3, 8, 8)
    ref = torch.full_like(x, 0.1)
    enc = ref.clone()
    enc[0] *= 10 ** (1.0 / 20)  # image 0: 1 dB worse; image 1: 3 dB worse
    enc[1] *= 10 ** (3.0 / 20)
    assert float(psnr_drop_db(enc, ref, x)) == pytest.approx(2.0, abs=1e-5)
    assert float(psnr_drop_db(ref * 10 ** (-0.5 / 20), ref, x)) == pytest.approx(-0.5, abs=1e-5)  # better: negative


def test_dual_ascent_rises_over_the_target_falls_under_it_and_never_goes_negative():
    assert dual_ascent(1.0, drop_db=1.4, target_db=0.9, step=0.5) == pytest.approx(1.25)
    assert dual_ascent(1.0, drop_db=0.5, target_db=0.9, step=0.5) == pytest.approx(0.8)
    assert dual_ascent(0.1, drop_db=0.0, target_db=0.9, step=0.5) == 0.0
    assert dual_ascent(0.7, drop_db=float("nan"), target_db=0.9, step=0.5) == 0.7  # a NaN drop changes nothing
    assert dual_ascent(9999.0, drop_db=1e9, target_db=0.9, step=1.0) == 1e4  # bounded


def test_the_controller_settles_a_toy_drop_near_its_target():
    """A drop that falls as the multiplier rises (what the loss does): the multiplier finds the target."""
    lam = 0.0
    drops = []
    for _ in range(400):
        drop = 2.5 / (1.0 + lam)  # 2.5 dB without a penalty
        drops.append(drop)
        lam = dual_ascent(lam, drop, target_db=0.9, step=0.5)
    assert sum(drops[-50:]) / 50 == pytest.approx(0.9, abs=0.05)
    assert lam == pytest.approx(2.5 / 0.9 - 1, rel=0.1)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = lr_scheduler(opt, TrainConfig(stage=2, adapter_only=True, steps=100, lr_schedule="cosine", warmup=0.1))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then only down
    assert lrs[55] == pytest.approx(0.5, abs=0.03) and lrs[-1] < 0.01


def test_step_schedule_drops_tenfold_at_its_milestones():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = lr_scheduler(opt, TrainConfig(stage=2, adapter_only=True, steps=10, lr_schedule="step",
                                          lr_milestones=(0.5,)))
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == [1.0] * 5 and all(v == pytest.approx(0.1) for v in lrs[5:])


def test_budget_settings_are_checked():
    with pytest.raises(ConfigError, match="budget_control"):
        TrainConfig(stage=2, adapter_only=True, budget_control="pid")
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(stage=2, adapter_only=True, lr_schedule="linear")
    cfg = TrainConfig(stage=2, adapter_only=True, budget_db=1.0)
    assert cfg.resolved_budget_target_db() == pytest.approx(0.9)  # 90 % of the budget by default
    assert TrainConfig(stage=2, adapter_only=True, budget_db=1.0,
                       budget_target_db=0.6).resolved_budget_target_db() == pytest.approx(0.6)


# ------------------------------------------------------------------ in the trainer
def test_a_dual_step_logs_the_drop_and_moves_the_multiplier(base_codec, target, photos, tmp_path):
    model = new_model(base_codec)
    cfg = TrainConfig(stage=2, adapter_only=True, steps=1, batch_size=4, crop=CROP, objective="margin",
                      budget_db=1.0, budget_control="dual", budget_target_db=0.5, dual_lr=2.0, log_every=1,
                      num_workers=0)
    tr = Trainer(model, target, photos, cfg, tmp_path, device="cpu", progress=False)
    tr.budget_lambda = 3.0
    out = tr.step(collate([photos[i] for i in range(4)]))
    assert math.isfinite(out["psnr_drop"]) and out["budget_lambda"] == 3.0  # the multiplier the step used
    assert tr.budget_lambda == pytest.approx(max(0.0, 3.0 + 2.0 * (out["psnr_drop"] - 0.5)), rel=1e-4)


def test_the_multiplier_survives_a_resume(base_codec, target, photos, tmp_path):
    cfg = dict(stage=2, adapter_only=True, batch_size=4, crop=CROP, objective="margin", budget_db=1.0,
               budget_control="dual", dual_lr=5.0, log_every=1, num_workers=0, checkpoint_every=2)
    model = new_model(base_codec)
    first = Trainer(model, target, photos, TrainConfig(steps=2, **cfg), tmp_path, device="cpu", progress=False)
    first.train()
    saved = first.budget_lambda
    again = Trainer(model, target, photos, TrainConfig(steps=3, **cfg), tmp_path, device="cpu", progress=False)
    again.train(resume=True)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    step3 = next(r for r in records if r["step"] == 3 and "budget_lambda" in r)
    assert step3["budget_lambda"] == pytest.approx(saved, rel=1e-5)  # step 3 starts from step 2's multiplier


@pytest.fixture(scope="module")
def classifier():
    """The tiny CLIP deciding zero-shot among three class prompts (validation needs labels)."""
    return tiny_clip(class_names=["cup", "motorcycle", "woman"])


def test_validation_is_logged_every_val_every_steps(base_codec, classifier, tmp_path):
    target = classifier
    model = new_model(base_codec)
    cfg = TrainConfig(stage=2, adapter_only=True, steps=2, batch_size=2, crop=CROP, objective="margin",
                      log_every=1, num_workers=0, val_data="samples", val_every=1, val_images=2, val_size=64)
    Trainer(model, target, SamplePhotos("train", crop=CROP), cfg, tmp_path, device="cpu", progress=False,
            val_dataset=SamplePhotos("test")).train()
    val = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()
           if json.loads(line).get("validation")]
    assert [r["step"] for r in val] == [1, 2]
    for r in val:
        assert r["val_images"] == 2 and 0 <= r["val_flipped"] <= r["val_right"] <= 2
        assert math.isfinite(r["val_drop_db"])
        assert (r["val_asr"] is None) == (r["val_right"] == 0)
        assert r["val_at_db"] == 0.8 and 0 <= r["val_flipped_at_db"] <= r["val_right"]  # the default read at 0.8 dB
    off = Trainer(model, target, SamplePhotos("train", crop=CROP), TrainConfig(**{**cfg.to_dict(), "val_at_db": 0}),
                  tmp_path / "off", device="cpu", progress=False, val_dataset=SamplePhotos("test"))
    assert "val_at_db" not in off.validate() and "val_flipped" in off.validate()  # 0: read as decoded only


def test_validation_needs_a_target_that_classifies(base_codec, target, tmp_path):
    cfg = TrainConfig(stage=2, adapter_only=True, steps=1, batch_size=2, crop=CROP, num_workers=0,
                      val_data="samples", val_every=1)
    with pytest.raises(ConfigError, match="validation reads a classifier's labels"):  # before any step, not at step 1
        Trainer(new_model(base_codec), target, SamplePhotos("train", crop=CROP), cfg, tmp_path, device="cpu",
                progress=False, val_dataset=SamplePhotos("test"))


def test_the_probe_measures_what_it_decodes(base_codec, classifier):
    target = classifier
    from psic_adapter.training.validation import ValidationProbe

    model = new_model(base_codec).eval()
    probe = ValidationProbe(model, target, SamplePhotos("test"), images=2, size=64)
    out = probe.measure(model, target)
    assert out["val_images"] == 2 and math.isfinite(out["val_drop_db"])
    # an adapter that does nothing (its condition decoded as the base) drops nothing and flips nothing
    with model.disable_adapter():
        none = probe.measure(model, target)
    assert none["val_drop_db"] == pytest.approx(0.0, abs=1e-6) and none["val_flipped"] == 0
    with pytest.raises(DataError, match="no validation photos"):
        ValidationProbe(model, target, [], images=2)


def test_the_probe_reads_each_change_rescaled_to_one_cost(base_codec, classifier):
    target = classifier
    from psic_adapter.training.validation import ValidationProbe

    model = new_model(base_codec).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # an adapter that changes the decode (a new one starts as the identity)
        for p in model.adapter_parameters():
            p.add_(0.3 * torch.randn_like(p))
    probe = ValidationProbe(model, target, SamplePhotos("test"), images=2, size=64, at_db=0.7)
    out = probe.measure(model, target)
    assert out["val_drop_db"] > 0.05  # the change as decoded costs something, and not 0.7 dB by chance
    assert abs(out["val_drop_db"] - 0.7) > 0.05
    assert out["val_at_db"] == 0.7 and out["val_drop_at_db"] == pytest.approx(0.7, abs=0.05)  # 8-bit rounding
    assert 0 <= out["val_flipped_at_db"] <= out["val_right"]
    assert (out["val_asr_at_db"] is None) == (out["val_right"] == 0)
    plain = ValidationProbe(model, target, SamplePhotos("test"), images=2, size=64).measure(model, target)
    assert "val_at_db" not in plain and plain["val_flipped"] == out["val_flipped"]  # the read as decoded is the same
    with pytest.raises(ConfigError, match="val_at_db"):
        TrainConfig(stage=2, adapter_only=True, val_at_db=-1.0)
    assert TrainConfig(stage=2, adapter_only=True, val_at_db=0).val_at_db == 0  # 0: not read (the trainer's probe)
