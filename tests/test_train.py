"""The trainer: what trains in each stage, which conditions each step decodes with,
resume, the saved outputs, multi-process (gloo DDP) training and ``psic train``.

Small and offline: a random hyperprior with N=32, M=48, the tiny random CLIP
of ``conftest``, 64 x 64 crops of the bundled sample photos.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import socket
import traceback

import pytest
import torch

from psic_adapter.adapter import load_adapter, wrap_model
from psic_adapter.data import SamplePhotos, collate
from psic_adapter.errors import ConfigError, FingerprintMismatchError, PSICError
from psic_adapter.training import CHECKPOINT_NAME, Trainer, TrainConfig

from .conftest import SHARED_CODEC, small_trainable_codec, tiny_clip

KEY = b"the owner's training key, 32 bytes!"
CROP = 64
BATCH = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base_codec():
    """Deep-copy it before use."""
    return small_trainable_codec()


@pytest.fixture(scope="module")
def target():
    return tiny_clip()


@pytest.fixture(scope="module")
def photos():
    """12 random 64 x 64 crops (2 of each training photo), captioned."""
    return SamplePhotos("train", crop=CROP, repeats=2)


@pytest.fixture(scope="module")
def batch(photos):
    return collate([photos[i] for i in range(BATCH)])


def new_model(base_codec, full_version=None):
    """A new adapter on a copy of ``base_codec``; ``full_version="condition"`` for a run that trains the decoder
    (stage 1, stage 2 without adapter_only: the trainer refuses "base" there), else the default "base"."""
    from psic_adapter.adapter.config import PSICConfig

    return wrap_model(copy.deepcopy(base_codec), PSICConfig(full_version=full_version), key=KEY)


def new_trainer(model, target, data, out_dir, **overrides):
    cfg = dict(steps=2, batch_size=BATCH, crop=CROP, log_every=1, num_workers=0)
    cfg.update(overrides)
    return Trainer(model, target, data, TrainConfig(**cfg), out_dir, device="cpu", progress=False)


def snapshot(named):
    return {n: t.detach().clone() for n, t in named}


def changed(before, module_named):
    now = dict(module_named)
    return {n for n, t in before.items() if not torch.equal(t, now[n].detach())}


def assert_finite(out, *names):
    for name in names:
        assert name in out, (name, out)
        assert math.isfinite(out[name]), (name, out)


def params_by_part(model):
    """Base-codec parameter names grouped by the part of the codec they belong to."""
    parts = {}
    for n, _ in model.base.named_parameters():
        parts.setdefault(n.split(".")[0], set()).add(n)
    return parts


# ------------------------------------------------------------------ stage 1
def test_stage1_steps_train_codec_adapter_and_quantiles(base_codec, target, batch, tmp_path):
    model = new_model(base_codec, "condition")
    tr = Trainer(model, target, [batch], TrainConfig(stage=1, steps=2, batch_size=BATCH, crop=CROP), tmp_path,
                 device="cpu", progress=False)
    quantiles = [p for n, p in model.base.named_parameters() if n.endswith(".quantiles")]
    assert quantiles and all(not any(p is q for q in quantiles) for g in tr.optimizer.param_groups for p in g["params"])
    assert {id(p) for p in tr.aux_optimizer.param_groups[0]["params"]} == {id(q) for q in quantiles}

    base_before = snapshot(model.base.named_parameters())
    adapter_before = snapshot(model.psic_adapters.named_parameters())
    full = tr.step(batch)
    assert full["phase"] == "S1-1"
    assert_finite(full, "loss", "bpp", "mse_full", "guard", "aux", "grad_norm")
    enc = tr.step(batch)
    assert enc["phase"] == "S1-2"
    assert_finite(enc, "loss", "bpp", "mse_encrypted", "encryption", "aux")

    moved = changed(base_before, model.base.named_parameters())
    parts = params_by_part(model)
    for part in ("g_a", "h_a", "h_s", "g_s", "entropy_bottleneck"):
        assert parts[part] & moved, f"no parameter of {part} changed"
    # every parameter of the encoder and decoder trains
    for part in ("g_a", "g_s"):
        assert parts[part] <= moved, parts[part] - moved
    assert {n for n in base_before if n.endswith(".quantiles")} <= moved  # the aux optimiser
    assert changed(adapter_before, model.psic_adapters.named_parameters()) == set(adapter_before)
    assert all(p.grad is None for p in target.parameters())


# ------------------------------------------------------------------ stage 2
def test_stage2_decoder_variant_trains_only_g_s_and_adapter(base_codec, target, batch, tmp_path):
    model = new_model(base_codec, "condition")
    tr = Trainer(model, target, [batch], TrainConfig(stage=2, steps=2, batch_size=BATCH, crop=CROP), tmp_path,
                 device="cpu", progress=False)
    assert tr.aux_optimizer is None
    g_s = {n for n, _ in model.base.named_parameters() if n.startswith("g_s.")}
    frozen = [(n, p) for n, p in model.base.named_parameters() if n not in g_s]
    assert frozen and all(not p.requires_grad for _, p in frozen)
    params_before = snapshot(model.base.named_parameters())
    buffers_before = snapshot(model.base.named_buffers())
    adapter_before = snapshot(model.psic_adapters.named_parameters())
    assert buffers_before  # CDF tables, GDN reparametrisation constants ...

    for phase in ("S2-1", "S2-2"):
        out = tr.step(batch)
        assert out["phase"] == phase
        assert_finite(out, "loss", "grad_norm")
        assert "bpp" not in out  # no rate term in stage 2
        assert all(p.grad is None for _, p in frozen), [n for n, p in frozen if p.grad is not None]
        assert all(p.grad is None for p in target.parameters())
    assert_finite(out, "encryption", "mse_encrypted")

    moved = changed(params_before, model.base.named_parameters())
    assert moved == g_s, (moved ^ g_s)
    assert changed(adapter_before, model.psic_adapters.named_parameters()) == set(adapter_before)
    assert not changed(buffers_before, model.base.named_buffers())
    # the frozen copy the guard decodes with is the decoder as it was
    ref = dict(tr.reference_g_s.named_parameters())
    assert all(torch.equal(ref[n[len("g_s."):]], params_before[n]) for n in g_s)


def test_stage2_adapter_only_leaves_the_base_codec_bit_identical(base_codec, target, photos, tmp_path):
    model = new_model(base_codec)
    state_before = snapshot(model.base.state_dict().items())
    adapter_before = snapshot(model.psic_adapters.named_parameters())
    tr = new_trainer(model, target, photos, tmp_path, stage=2, adapter_only=True, steps=2)
    assert tr.groups["base"] == [] and not tr.trains_codec and tr.reference_g_s is None
    result = tr.train()
    assert_finite(result["last"], "loss", "encryption")
    state_after = model.base.state_dict()
    assert state_before.keys() == state_after.keys()
    assert all(torch.equal(v, state_after[k]) for k, v in state_before.items())
    assert all(p.grad is None for p in model.base.parameters())
    assert changed(adapter_before, model.psic_adapters.named_parameters()) == set(adapter_before)
    assert not (tmp_path / "codec.safetensors").exists()


def test_a_spatial_context_learns_at_a_tenth_of_the_adapters_rate(base_codec, target, batch, tmp_path):
    """Adam at the adapter's rate drove every hidden unit of the context dead in run XCN0 (CONTEXT_LR_SCALE)."""
    from psic_adapter.adapter.cltg import CONTEXT_LR_SCALE, context_parameters
    from psic_adapter.adapter.config import PSICConfig

    plain = new_trainer(new_model(base_codec), target, [batch], tmp_path / "plain", stage=2, adapter_only=True)
    assert [g["name"] for g in plain.optimizer.param_groups] == ["adapter"]

    model = wrap_model(copy.deepcopy(base_codec), PSICConfig(modulation="spatial", spatial_context=8), key=KEY)
    tr = new_trainer(model, target, [batch], tmp_path / "context", stage=2, adapter_only=True, adapter_lr=2e-3)
    groups = {g["name"]: g for g in tr.optimizer.param_groups}
    context = context_parameters(model.psic_adapters[model.resolve_adapter_name()])
    assert context and {id(p) for p in groups["context"]["params"]} == {id(p) for p in context}
    assert {id(p) for g in groups.values() for p in g["params"]} == {id(p) for p in model.adapter_parameters()}
    assert groups["adapter"]["lr"] == 2e-3 and groups["context"]["lr"] == pytest.approx(2e-3 * CONTEXT_LR_SCALE)
    assert tr.log_fields()["lr"] == 2e-3

# ------------------------------------------------------------------ conditions
def capture_conditions(monkeypatch, model):
    """Record the condition of every conditioned decode (forward or synthesize)."""
    seen = []
    real = model.conditioned

    def spy(condition, *args, **kwargs):
        seen.append(condition.detach().clone())
        return real(condition, *args, **kwargs)

    monkeypatch.setattr(model, "conditioned", spy)
    return seen


def check_encrypted(cond, n, fraction, full):
    k = int(round(fraction * n))
    assert cond.shape == (n, full.shape[-1])
    from psic_adapter.adapter.keys import encrypted_condition

    assert torch.equal(cond[: n - k], encrypted_condition(full.shape[-1]).expand(n - k, -1))
    wrong = cond[n - k :]
    assert torch.equal(wrong.abs(), torch.ones_like(wrong))  # random +-1 key conditions
    assert not (wrong == full).all(dim=-1).any()
    return wrong


@pytest.mark.parametrize("stage, full_version", [(1, "condition"), (2, "condition"), (2, "base")])
def test_full_and_encrypted_steps_decode_with_the_right_conditions(stage, full_version, base_codec, target, batch,
                                                                   tmp_path, monkeypatch):
    """Full and encrypted steps alternate, except for an adapter fitted to a frozen codec whose full
    version is the base decode (``full_version="base"``): nothing of it trains, every step is encrypted."""
    from psic_adapter.adapter.config import PSICConfig

    model = wrap_model(copy.deepcopy(base_codec), PSICConfig(full_version=full_version), key=KEY)
    tr = Trainer(model, target, [batch], TrainConfig(stage=stage, adapter_only=stage == 2, steps=4,
                                                     batch_size=BATCH, crop=CROP, wrong_key_fraction=0.5),
                 tmp_path, device="cpu", progress=False)
    bypass = stage == 2 and full_version == "base"
    assert model.config.full_version == full_version  # as built: the trainer does not change it
    full = model.full_condition()
    assert full.abs().eq(1).all()
    seen = capture_conditions(monkeypatch, model)
    wrongs = []
    for step in range(4):
        seen.clear()
        out = tr.step(batch)
        assert len(seen) == 1, f"step {step}: {len(seen)} conditioned decodes"
        cond = seen[0]
        if step % 2 == 0 and not bypass:  # full
            assert torch.equal(cond, full.expand(BATCH, -1))
            assert "mse_full" in out
        else:
            wrongs.append(check_encrypted(cond, BATCH, 0.5, full[0]))
            assert "mse_full" not in out
    assert not torch.equal(wrongs[0], wrongs[1])  # fresh wrong keys every step


def test_joint_schedule_decodes_both_versions_in_one_synthesis(base_codec, target, batch, tmp_path, monkeypatch):
    model = new_model(base_codec, "condition")
    tr = Trainer(model, target, [batch], TrainConfig(stage=2, schedule="joint", steps=1, batch_size=BATCH, crop=CROP,
                                                     wrong_key_fraction=0.25), tmp_path, device="cpu", progress=False)
    calls = []
    real = model.synthesize
    monkeypatch.setattr(model, "synthesize", lambda y, c: calls.append((y.shape, c.clone())) or real(y, c))
    out = tr.step(batch)
    assert out["phase"] == "S2-joint"
    assert_finite(out, "loss", "mse_full", "mse_encrypted", "encryption", "guard")
    assert len(calls) == 1
    shape, cond = calls[0]
    assert shape[0] == 2 * BATCH
    assert torch.equal(cond[:BATCH], model.full_condition().expand(BATCH, -1))
    check_encrypted(cond[BATCH:], BATCH, 0.25, model.full_condition()[0])


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_wrong_key_fraction_extremes(fraction, base_codec, target, batch, tmp_path, monkeypatch):
    model = new_model(base_codec)
    tr = Trainer(model, target, [batch], TrainConfig(stage=2, adapter_only=True, steps=2, batch_size=BATCH, crop=CROP,
                                                     wrong_key_fraction=fraction), tmp_path, device="cpu",
                 progress=False)
    seen = capture_conditions(monkeypatch, model)
    tr.step(batch)
    tr.step(batch)
    check_encrypted(seen[-1], BATCH, fraction, model.full_condition()[0])


@pytest.mark.parametrize("stage", [1, 2])
def test_training_the_decoder_refuses_an_adapter_whose_full_version_is_the_base_decode(stage, base_codec, target,
                                                                                        batch, tmp_path):
    """The trainer does not rewrite ``full_version`` (it is part of the fingerprint): where the decoder trains, an
    adapter built with the default "base" is refused in one line that names the fix; adapter-only takes it."""
    model = new_model(base_codec)
    before = model.adapter_fingerprint()
    with pytest.raises(ConfigError, match=r'trains the decoder.*PSICConfig\(full_version="condition"\)') as err:
        new_trainer(model, target, [batch], tmp_path, stage=stage)
    assert "\n" not in str(err.value)
    assert model.config.full_version == "base" and model.adapter_fingerprint() == before  # untouched
    assert not any(tmp_path.iterdir())  # refused before anything was written
    if stage == 2:
        tr = new_trainer(model, target, [batch], tmp_path, stage=2, adapter_only=True)
        assert tr.full_bypass and tr.step(batch)["phase"] == "S2-2"
        assert model.config.full_version == "base"


def test_trainer_refuses_a_model_loaded_without_its_key(base_codec, target, photos, tmp_path):
    saved = new_model(base_codec, "condition").save_pretrained(tmp_path / "adapter")
    keyless = load_adapter(copy.deepcopy(base_codec), saved, is_trainable=True)
    with pytest.raises(ConfigError, match="without its key"):
        new_trainer(keyless, target, photos, tmp_path / "run")
    with pytest.raises(ConfigError, match="PSICModel"):
        new_trainer(copy.deepcopy(base_codec), target, photos, tmp_path / "run")


@pytest.mark.parametrize("stage", [1, 2])
def test_each_step_runs_the_target_twice_and_the_text_tower_once_per_caption(stage, base_codec, batch, tmp_path,
                                                                               monkeypatch):
    target = tiny_clip()  # a fresh text cache
    model = new_model(base_codec, "condition" if stage == 1 else None)
    tr = Trainer(model, target, [batch], TrainConfig(stage=stage, adapter_only=stage == 2, steps=4, batch_size=BATCH,
                                                     crop=CROP), tmp_path, device="cpu", progress=False)
    images, texts = [], []
    real_images, real_texts = target.image_features, target._encode_texts
    monkeypatch.setattr(target, "image_features", lambda x: images.append(x.shape[0]) or real_images(x))
    monkeypatch.setattr(target, "_encode_texts", lambda t: texts.append(list(t)) or real_texts(t))
    for _ in range(4):
        images.clear()
        phase = tr.step(batch)["phase"]
        # full: reference view (clean logits / base decode) + the full decode with grad, when
        # the guard is on (it is off for adapter-only training: nothing else needs the target);
        # encrypted: clean features + the encrypted decode with grad
        guarded = tr.guard_weight > 0
        assert images == ([BATCH, BATCH] if phase.endswith("-2") or guarded else [])
    assert sorted(t for chunk in texts for t in chunk) == sorted(set(batch["text"]))


# ------------------------------------------------------------------ resume
def _state_equal(a, b, path="state"):
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _state_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _state_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_resume_is_bit_identical_to_an_uninterrupted_run(base_codec, target, photos, tmp_path):
    init = new_model(base_codec, "condition").save_pretrained(tmp_path / "init")

    def model():  # the same adapter (salt, weights) every time
        return load_adapter(copy.deepcopy(base_codec), init, key=KEY, is_trainable=True)

    cfg = dict(stage=1, wrong_key_fraction=0.5)
    # 12 items, batch 4: 3 batches an epoch, so step 4 starts a new epoch
    straight = new_trainer(model(), target, photos, tmp_path / "a", steps=4, checkpoint_every=2, **cfg)
    straight.train()

    first = new_trainer(model(), target, photos, tmp_path / "b", steps=2, **cfg)
    first.train()
    assert (tmp_path / "b" / CHECKPOINT_NAME).is_file()
    resumed = new_trainer(model(), target, photos, tmp_path / "b", steps=4, **cfg)
    resumed.train(resume=True)

    assert resumed.step_count == straight.step_count == 4
    assert (resumed.epoch, resumed.batch_in_epoch) == (straight.epoch, straight.batch_in_epoch) == (1, 1)
    _state_equal(straight.model.adapter_state_dict(), resumed.model.adapter_state_dict(), "adapter")
    _state_equal(dict(straight.model.base.named_parameters()), dict(resumed.model.base.named_parameters()), "base")
    _state_equal(straight.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")
    _state_equal(straight.aux_optimizer.state_dict(), resumed.aux_optimizer.state_dict(), "aux_optimizer")
    # ... and not trivially: training moved them
    fresh = model().adapter_state_dict()
    assert any(not torch.equal(v, straight.model.adapter_state_dict()[k]) for k, v in fresh.items())
    # the log goes on where it stopped
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_refuses_another_adapter(base_codec, target, photos, tmp_path):
    new_trainer(new_model(base_codec), target, photos, tmp_path, stage=2, adapter_only=True, steps=1).train()
    other = new_trainer(new_model(base_codec), target, photos, tmp_path, stage=2, adapter_only=True, steps=2)
    with pytest.raises(PSICError, match="another adapter"):
        other.train(resume=True)


def test_a_run_with_a_context_resumes_and_one_from_before_its_own_group_is_refused(base_codec, target, photos,
                                                                                   tmp_path):
    from psic_adapter.adapter.config import PSICConfig
    from psic_adapter.training.checkpoints import load_state, save_state

    init = wrap_model(copy.deepcopy(base_codec), PSICConfig(modulation="spatial", spatial_rank=4, spatial_context=4),
                      key=KEY).save_pretrained(tmp_path / "init")

    def trainer(steps):
        model = load_adapter(copy.deepcopy(base_codec), init, key=KEY, is_trainable=True)
        return new_trainer(model, target, photos, tmp_path / "run", stage=2, adapter_only=True, steps=steps)

    trainer(1).train()
    resumed = trainer(2)
    resumed.train(resume=True)
    assert resumed.step_count == 2 and [g["name"] for g in resumed.optimizer.param_groups] == ["adapter", "context"]

    # a checkpoint of 0.1.2, where the context learnt in the adapter's group
    state = load_state(tmp_path / "run" / CHECKPOINT_NAME)
    groups = state["optimizer"]["param_groups"]
    groups[0]["params"] = groups[0]["params"] + groups[1]["params"]
    state["optimizer"]["param_groups"] = groups[:1]
    save_state(tmp_path / "run" / CHECKPOINT_NAME, state)
    again = trainer(3)
    before = copy.deepcopy(again.model.adapter_state_dict())
    with pytest.raises(PSICError, match="optimiser groups"):
        again.train(resume=True)
    _state_equal(before, again.model.adapter_state_dict(), "adapter")  # refused before anything was loaded


# ------------------------------------------------------------------ objectives
@pytest.mark.parametrize("objective", ["uaeo", "naive", "authors", "margin"])
def test_every_objective_gives_a_finite_loss(objective, base_codec, target, batch, tmp_path):
    model = new_model(base_codec, full_version="condition")  # full steps too: the guard's loss
    tr = Trainer(model, target, [batch], TrainConfig(stage=2, adapter_only=True, schedule="joint", steps=1,
                                                     batch_size=BATCH, crop=CROP, objective=objective, guard_weight=1.0),
                 tmp_path, device="cpu", progress=False)
    out = tr.step(batch)
    assert_finite(out, "loss", "encryption", "mse_full", "mse_encrypted", "guard")


def test_the_guard_is_off_by_default_only_for_adapter_only_training(base_codec, target, batch, tmp_path):
    for adapter_only, expected in ((True, 0.0), (False, 1.0)):
        tr = Trainer(new_model(base_codec, None if adapter_only else "condition"), target, [batch],
                     TrainConfig(stage=2, adapter_only=adapter_only, steps=1, batch_size=BATCH, crop=CROP),
                     tmp_path, device="cpu", progress=False)
        assert tr.guard_weight == expected
        out = tr.step(batch)  # step 0: a full step
        assert ("guard" in out) == (expected > 0)


def test_joint_schedule_in_stage1(base_codec, target, batch, tmp_path):
    model = new_model(base_codec, "condition")
    tr = Trainer(model, target, [batch], TrainConfig(stage=1, schedule="joint", steps=1, batch_size=BATCH, crop=CROP),
                 tmp_path, device="cpu", progress=False)
    out = tr.step(batch)
    assert out["phase"] == "S1-joint"
    assert_finite(out, "loss", "bpp", "mse_full", "mse_encrypted", "encryption", "guard", "aux")


# ------------------------------------------------------------------ outputs
def test_finish_writes_a_loadable_adapter_and_the_log(base_codec, target, photos, tmp_path, image64):
    model = new_model(base_codec)
    result = new_trainer(model, target, photos, tmp_path, stage=2, adapter_only=True, steps=3).train()
    assert result["steps"] == 3 and "codec" not in result
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert_finite(r, "loss", "lr", "img_per_s", "mse_encrypted", "encryption")
        assert "mse_full" not in r and "guard" not in r  # the full version is the base decode: nothing to train

    loaded = load_adapter(copy.deepcopy(base_codec), tmp_path / "adapter", key=KEY)
    assert loaded.config.training["steps_done"] == 3
    assert loaded.config.full_version == "base"
    model.eval()
    with torch.no_grad():
        enc = model.compress(image64)
        for kw in ({"key": KEY}, {}):
            a = model.decompress(enc["strings"], enc["shape"], **kw)["x_hat"]
            b = loaded.decompress(enc["strings"], enc["shape"], **kw)["x_hat"]
            assert torch.equal(a, b)
        full = model.decompress(enc["strings"], enc["shape"], key=KEY)["x_hat"]
        encrypted = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        assert torch.equal(full, base_codec.decompress(enc["strings"], enc["shape"])["x_hat"])  # bit for bit
        assert not torch.equal(full, encrypted)  # the trained adapter acts on the encrypted version


def test_finish_saves_the_trained_codec_that_the_adapter_fits(base_codec, target, photos, tmp_path, image64):
    from psic_adapter.codec import fingerprint, load_codec

    model = new_model(base_codec, "condition")
    result = new_trainer(model, target, photos, tmp_path, stage=1, steps=2).train()
    codec_file = tmp_path / "codec.safetensors"
    assert result["codec"] == str(codec_file) and codec_file.is_file()
    trained = load_codec("bmshj2018-hyperprior", checkpoint=codec_file)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model"]["fingerprint"] == fingerprint(trained) == fingerprint(model.base)
    loaded = load_adapter(trained, tmp_path / "adapter", key=KEY)
    with pytest.raises(FingerprintMismatchError):
        load_adapter(copy.deepcopy(base_codec), tmp_path / "adapter")
    model.eval()
    with torch.no_grad():
        enc = model.compress(image64)
        enc2 = loaded.compress(image64)
        assert enc["strings"] == enc2["strings"]
        a = model.decompress(enc["strings"], enc["shape"], key=KEY)["x_hat"]
        b = loaded.decompress(enc["strings"], enc["shape"], key=KEY)["x_hat"]
        assert torch.allclose(a, b, atol=1e-6)


def test_stage2_with_the_decoder_saves_a_codec_that_writes_the_base_codecs_bytes(base_codec, target, photos, tmp_path,
                                                                                image64):
    """Stage 2 trains g_s only: the saved codec keeps the entropy tables exactly as loaded, even where recomputing
    them here would give others (a checkpoint's tables come from another machine), so its bytes are the base's."""
    from psic_adapter.codec import load_codec

    codec = copy.deepcopy(base_codec)
    cdf = codec.gaussian_conditional._quantized_cdf
    cdf[0, 1] += 1  # tables as another machine might have computed them: consistent, but not what update() gives
    tables = {k: v.clone() for k, v in codec.named_buffers() if "cdf" in k or "offset" in k}
    before = copy.deepcopy(codec)
    model = new_model(codec, "condition")
    new_trainer(model, target, photos, tmp_path, stage=2, steps=2).train()
    saved = load_codec("bmshj2018-hyperprior", checkpoint=tmp_path / "codec.safetensors")
    assert all(torch.equal(dict(saved.named_buffers())[k], v) for k, v in tables.items())
    with torch.no_grad():
        assert saved.compress(image64)["strings"] == before.compress(image64)["strings"]

    # and the trainer checks it before saving: a stage-2 run that moved the encoder saves nothing
    other = new_model(copy.deepcopy(before), "condition")
    tr = new_trainer(other, target, photos, tmp_path / "moved", stage=2, steps=2)
    with torch.no_grad():
        other.base.h_a[0].weight.add_(0.01)
    with pytest.raises(PSICError, match="changed what writes the bitstream"):
        tr.finish({})
    assert not (tmp_path / "moved" / "codec.safetensors").exists()


# ------------------------------------------------------------------ DDP
class _Recorded(torch.utils.data.Dataset):
    """A dataset that remembers which indices this process read."""

    def __init__(self, data):
        self.data, self.seen = data, []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.seen.append(int(i))
        return self.data[i]

    def set_epoch(self, epoch):
        self.data.set_epoch(epoch)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir, base_codec, target, photos, stage):
    """One rank of a gloo run (forked: the parent's imports and fixtures come along).

    Writes ``rank<r>.pt`` (what the test checks) or ``rank<r>.err`` (a traceback)."""
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
        try:
            torch.manual_seed(100 + rank)  # each rank wraps its own adapter (own salt), as `psic train` does
            model = new_model(base_codec, "condition")  # both stages train the decoder here
            data = _Recorded(photos)
            tr = Trainer(model, target, data, TrainConfig(stage=stage, steps=2, batch_size=2, crop=CROP, log_every=1),
                         os.path.join(out_dir, "run"), device="cpu", progress=False)
            assert tr.world == world and tr.rank == rank

            def params():
                return {**{"adapter." + k: v.clone() for k, v in model.adapter_state_dict().items()},
                        **{k: v.detach().clone() for k, v in model.base.named_parameters()}}

            start = params()
            tr.train()
            result = {"start": start, "end": params(), "seen": data.seen, "salt": model.config.salt,
                      "full": tr.full_cond.cpu(), "model_full": model.full_condition().cpu()}
            torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        finally:
            dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as fh:
            fh.write(traceback.format_exc())
        os._exit(1)
    os._exit(0)  # no atexit handlers of the parent (pytest) in a forked child


@pytest.mark.parametrize("stage", [1, 2])
def test_ddp_two_gloo_processes_train_one_model(stage, base_codec, target, photos, tmp_path):
    from psic_adapter.codec import load_codec

    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, str(tmp_path), base_codec, target, photos, stage))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=150)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
    finally:
        for p in procs:  # never leave a rank behind
            if p.is_alive():
                p.kill()
                p.join()
    errors = {r: (tmp_path / f"rank{r}.err").read_text() for r in range(2) if (tmp_path / f"rank{r}.err").exists()}
    assert not errors, "\n".join(f"rank {r}:\n{e}" for r, e in errors.items())
    assert not hung, f"ranks {hung} did not finish in time"
    assert [p.exitcode for p in procs] == [0, 0]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    # rank 0's adapter everywhere: parameters (DDP broadcast), salt and owner's condition
    _state_equal(r0["start"], r1["start"], "start")
    assert r0["salt"] == r1["salt"]
    assert torch.equal(r0["full"], r1["full"]) and torch.equal(r1["full"], r1["model_full"])
    # trained in step, identically, and actually trained
    _state_equal(r0["end"], r1["end"], "end")
    moved = [k for k in r0["start"] if not torch.equal(r0["start"][k], r0["end"][k])]
    assert any(k.startswith("adapter.") for k in moved) and any(k.startswith("g_s.") for k in moved)
    if stage == 1:
        assert any(k.startswith("g_a.") for k in moved)
        assert any(k.endswith(".quantiles") for k in moved)  # the aux step, all-reduced
    else:
        assert all(k.startswith(("adapter.", "g_s.")) for k in moved)
    # the sampler shards: two batches of 2 per rank, disjoint within an epoch
    assert len(r0["seen"]) == len(r1["seen"]) == 4
    assert not set(r0["seen"][:2]) & set(r1["seen"][:2]) and not set(r0["seen"][2:]) & set(r1["seen"][2:])
    # only rank 0 writes
    run = tmp_path / "run"
    saved = load_adapter(load_codec("bmshj2018-hyperprior", checkpoint=run / "codec.safetensors"), run / "adapter",
                         key=KEY)
    assert saved.config.salt == r0["salt"]
    assert len((run / "log.jsonl").read_text().splitlines()) == 2


# ------------------------------------------------------------------ CLI
@pytest.mark.skipif(not SHARED_CODEC.is_dir(), reason="../shared/codecs/bmshj2018-hyperprior-q3 is not available")
def test_psic_train_on_the_shared_codec(tmp_path, capsys):
    from psic_adapter.cli import main
    from psic_adapter.codec import load_codec
    from psic_adapter.bitstream.images import save_image
    from psic_adapter.data import sample_photo

    key_file = tmp_path / "owner.key"
    assert main(["keygen", str(key_file)]) == 0
    ckpt = str(SHARED_CODEC)
    out = tmp_path / "run"
    train = ["train", "--codec", "bmshj2018-hyperprior", "--quality", "3", "--checkpoint", ckpt,
             "--target", "efficientnet-lite0", "--data", "samples", "--stage", "2", "--adapter-only",
             "--modulation", "film", "--batch", "4", "--crop", "96", "--key-file", str(key_file), "--out", str(out),
             "--device", "cpu", "--log-every", "2"]
    rc = main(train + ["--steps", "4"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "adapter:" in printed.out
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert not (out / "codec.safetensors").exists()

    from psic_adapter.adapter.keys import read_key_file

    key = read_key_file(key_file)
    model = load_adapter(load_codec("bmshj2018-hyperprior", quality=3, checkpoint=ckpt), out / "adapter", key=key)
    assert model.config.training["steps_done"] == 4
    assert model.config.modulation == "film"
    salt = model.config.salt

    # --resume continues the same adapter (its salt) from OUT/checkpoint.pt
    rc = main(train + ["--steps", "5", "--resume"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [2, 4, 5]
    model = load_adapter(load_codec("bmshj2018-hyperprior", quality=3, checkpoint=ckpt), out / "adapter", key=key)
    assert model.config.training["steps_done"] == 5 and model.config.salt == salt

    x, _ = sample_photo("coffee")
    img = tmp_path / "coffee.png"
    save_image(x[..., :128, :192], img)
    psic = tmp_path / "coffee.psic"
    assert main(["compress", str(img), str(psic), "--codec", "bmshj2018-hyperprior", "--quality", "3",
                 "--checkpoint", ckpt, "--adapter", str(out / "adapter")]) == 0
    for extra, version in (([], "encrypted"), (["--key-file", str(key_file)], "full")):
        capsys.readouterr()
        rc = main(["decompress", str(psic), str(tmp_path / f"{version}.png"), "--checkpoint", ckpt,
                   "--adapter", str(out / "adapter"), *extra])
        printed = capsys.readouterr()
        assert rc == 0, printed.err
        assert f"{version} version" in printed.out


def test_budget_hinge_is_zero_within_budget_and_grows_beyond():
    from psic_adapter.training.trainer import budget_excess as _budget_excess

    x = torch.zeros(2, 3, 8, 8)
    ref = torch.full_like(x, 0.1)  # MSE 0.01 per image
    within = torch.full_like(x, 0.1 * 10 ** (0.5 / 20))  # 0.5 dB worse than the reference
    assert float(_budget_excess(within, ref, x, budget_db=1.0)) == 0.0
    beyond = torch.full_like(x, 0.1 * 10 ** (2.0 / 20))  # 2 dB worse
    expected = 10 ** 0.2 - 10 ** 0.1
    assert float(_budget_excess(beyond, ref, x, budget_db=1.0)) == pytest.approx(expected, rel=1e-5)


def test_budget_and_eot_steps(base_codec, target, batch, tmp_path):
    model = new_model(base_codec)
    tr = Trainer(model, target, [batch], TrainConfig(stage=2, adapter_only=True, schedule="joint", steps=1,
                                                     batch_size=BATCH, crop=CROP, objective="margin",
                                                     budget_db=0.5, eot=True),
                 tmp_path, device="cpu", progress=False)
    out = tr.step(batch)
    assert_finite(out, "loss", "encryption", "budget_excess")
    with pytest.raises(ConfigError, match="budget_db"):
        TrainConfig(stage=1, budget_db=1.0)


def test_the_feature_term_adds_to_the_margin():
    from psic_adapter.targets import TimmClassifierTarget
    from psic_adapter.training import losses
    from psic_adapter.training.objectives import EncryptionObjective

    torch.manual_seed(0)
    clf = TimmClassifierTarget("test_efficientnet", pretrained=False)
    x = torch.rand(2, 3, 48, 48)
    enc = (x + 0.05 * torch.randn_like(x)).clamp(0, 1).requires_grad_()
    plain = EncryptionObjective(clf, "margin")
    with_maps = EncryptionObjective(clf, "margin", feature_weight=3.0)
    views = with_maps.view_for_encryption(x, [])
    assert views[0]["maps"] is not None and plain.view_for_encryption(x, [])[0]["maps"] is None
    margin = plain.encryption_loss(enc, plain.view_for_encryption(x, []))
    with torch.no_grad():
        _, maps = clf.logits_and_maps(enc.detach())
    expected = margin + 3.0 * losses.feature_similarity_loss(maps, views[0]["maps"])
    total = with_maps.encryption_loss(enc, views)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    assert enc.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="feature_weight adds to the margin objective"):
        TrainConfig(stage=2, adapter_only=True, objective="uaeo", feature_weight=1.0)
    with pytest.raises(ConfigError, match="feature_weight adds to the margin objective"):
        EncryptionObjective(clf, "naive", feature_weight=1.0)


def test_the_feature_term_reads_only_members_that_have_feature_maps():
    from psic_adapter.targets import TimmClassifierTarget
    from psic_adapter.targets.ensemble import EnsembleTarget
    from psic_adapter.training.objectives import EncryptionObjective

    torch.manual_seed(0)
    clf, clip = TimmClassifierTarget("test_efficientnet", pretrained=False), tiny_clip()
    assert clf.has_maps and not clip.has_maps
    with pytest.raises(ConfigError, match="has none"):  # at construction, not at the first step
        EncryptionObjective(clip, "margin", feature_weight=1.0)
    obj = EncryptionObjective(EnsembleTarget([clf, clip]), "margin", feature_weight=1.0)
    x = torch.rand(2, 3, 48, 48)
    views = obj.view_for_encryption(x, ["a cup", "a dog"])
    assert views[0]["maps"] is not None and views[1]["maps"] is None  # the CLIP member: its margin alone
    loss = obj.encryption_loss((x + 0.05 * torch.randn_like(x)).clamp(0, 1), views)
    assert torch.isfinite(loss)


def test_random_transform_is_differentiable_and_keeps_the_batch():
    from psic_adapter.training.objectives import random_transform

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    kinds = set()
    for _ in range(24):
        y = random_transform(x, g)
        assert y.shape[:2] == (2, 3)
        y.sum().backward()
        kinds.add((tuple(y.shape[-2:]) != (32, 32), bool(torch.equal(y, x))))
    assert x.grad is not None and len(kinds) >= 2


# ------------------------------------------------------------------ speed paths on the CPU
def test_bf16_and_channels_last_on_the_cpu(base_codec, target, batch, tmp_path):
    model = new_model(base_codec)
    tr = Trainer(model, target, [batch], TrainConfig(stage=2, adapter_only=True, steps=1, batch_size=BATCH, crop=CROP,
                                                     objective="margin", amp="bf16", channels_last="on"),
                 tmp_path, device="cpu", progress=False)
    assert tr.amp and tr.channels_last
    assert model.base.g_s[0].weight.is_contiguous(memory_format=torch.channels_last)
    out = tr.step(batch)
    assert_finite(out, "loss", "encryption", "mse_encrypted")
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter_parameters())
    tr.finish({})  # the codec goes back to the caller in its own layout (its decodes would otherwise move by 1)
    assert not model.base.g_s[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.base.g_s[0].weight.is_contiguous()
    conv = next(m for m in target.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    # and when training fails half way
    tr.cfg.steps = tr.step_count + 2
    tr._batches = lambda: iter([batch] * 4)
    tr.step = lambda batch: (_ for _ in ()).throw(RuntimeError("interrupted"))
    with pytest.raises(RuntimeError, match="interrupted"):
        tr.train(force=True)
    assert model.base.g_s[0].weight.is_contiguous() and conv.weight.is_contiguous()


@pytest.mark.slow
def test_torch_compile_on_the_cpu(base_codec, batch, tmp_path):
    """torch.compile of the decoder and the target (inductor on the CPU: a C++ compiler): a step runs."""
    model = new_model(base_codec)
    target = tiny_clip()  # its own: compiling rebinds the target's image_features
    tr = Trainer(model, target, [batch], TrainConfig(stage=2, adapter_only=True, steps=1, batch_size=BATCH, crop=CROP,
                                                     objective="margin", compile=True, amp="off",
                                                     channels_last="off"), tmp_path, device="cpu", progress=False)
    assert_finite(tr.step(batch), "loss", "encryption")


# ------------------------------------------------------------------ scale-of-use views
def test_latent_views_cut_windows_of_latents_encoded_once(base_codec):
    from psic_adapter.training.views import LatentViews

    model = new_model(base_codec)
    photos = SamplePhotos("test")  # whole photos of different sizes
    calls = []
    real = model.analyze
    model.analyze = lambda x: calls.append(tuple(x.shape)) or real(x)
    views = LatentViews(model, photos, sizes=(160, 224), min_view=48, max_view=96, seed=0, progress=False)
    assert len(calls) == 2 * len(photos)  # each image encoded once per size, never again
    b = views.batch(step=3, batch_size=4)
    side = b["image"].shape[-1]
    assert b["image"].shape == (4, 3, side, side) and 48 <= side <= 96 and side % 16 == 0
    again = views.batch(step=3, batch_size=4)
    assert torch.equal(again["image"], b["image"])  # seeded by the step
    assert len(calls) == 2 * len(photos)
    # each window is the image's pixels, and its decode (with context) the whole decode's pixels there
    with torch.no_grad():
        decoded = b["windows"].decode(lambda y, c: model.base.g_s(y))
        assert decoded.shape == (4, 3, side, side)
        for k, (i, size, top, left) in enumerate(b["view"]["windows"]):
            enc = views.items[i][views.sizes.index(size)]
            assert torch.equal(b["image"][k], enc.image[:, top:top + side, left:left + side].float() / 255)
            whole = model.base.g_s(enc.y_hat[None])[..., top:top + side, left:left + side]
            assert float((decoded[k] - whole[0]).abs().mean()) < 0.01  # not the window's own border artifacts


def test_the_default_recipe_and_the_papers_both_train(base_codec, target, tmp_path):
    """robust: scale views, served-image EOT, margin, a budget; paper: crops, UAEO. Both run and save an adapter."""
    from psic_adapter.adapter import PSICConfig
    from psic_adapter.training import RECIPES, default_recipe

    assert default_recipe(2, True) == "robust" and default_recipe(2, False) == "paper" and default_recipe(1, False) == "paper"
    robust = TrainConfig.from_recipe("robust", steps=2, batch_size=2, view_sizes=(48, 64), train_sizes=(64,),
                                     log_every=1)
    assert (robust.views, robust.eot, robust.objective, robust.budget_db) == ("scale", "real", "margin", 1.0)
    paper = TrainConfig.from_recipe("paper", stage=2, adapter_only=True, steps=2, batch_size=2, crop=CROP, log_every=1)
    assert (paper.views, paper.eot, paper.objective, paper.budget_db) == ("crops", "none", "uaeo", None)
    for name, cfg in (("robust", robust), ("paper", paper)):
        model = wrap_model(copy.deepcopy(base_codec), PSICConfig(**RECIPES[name]["adapter"]), key=KEY)
        data = SamplePhotos("test") if name == "robust" else SamplePhotos("train", crop=CROP)
        res = Trainer(model, target, data, cfg, tmp_path / name, device="cpu", progress=False).train()
        records = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
        assert load_adapter(copy.deepcopy(base_codec), res["adapter"]).config.modulation == \
            RECIPES[name]["adapter"]["modulation"]


def test_resume_refuses_a_changed_recipe_and_keeps_the_log_free_of_repeats(base_codec, target, photos, tmp_path):
    model = new_model(base_codec)
    salt = model.config.salt
    new_trainer(model, target, photos, tmp_path, stage=2, adapter_only=True, steps=2).train()  # checkpoint at step 2
    log = tmp_path / "log.jsonl"
    with open(log, "a") as fh:  # a crash after step 3 was logged, before its checkpoint
        fh.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')

    def again(**kw):
        from psic_adapter import PSICConfig
        from psic_adapter.adapter import PSICModel

        cfg = PSICConfig.from_dict({**model.config.to_dict()})
        m = PSICModel(copy.deepcopy(base_codec)).add_adapter("default", cfg, key=KEY)
        assert m.config.salt == salt
        return new_trainer(m, target, photos, tmp_path, stage=2, adapter_only=True, **kw)

    with pytest.raises(PSICError, match=r"another recipe.*crop 64 -> 80"):
        again(steps=4, crop=CROP + 16).train(resume=True)
    assert log.read_text().count('"step": 3') == 1  # refused before touching anything
    again(steps=4).train(resume=True)  # more steps: allowed
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
