"""An adversarial review of the per-image strength (issue 15): defects found, one test each.

* a crafted ``strength`` holding an integer too large for a float was a traceback (``OverflowError`` from
  ``math.isfinite``), and a huge string or field name was echoed whole into the "one-line" error;
* a strength also scaled the owner's full version of a ``full_version="condition"`` adapter;
* ``fit_strength`` read the training forward's latent (``analyze``), which for autoregressive codecs
  (mbt2018, cheng2020) is not the latent the decoder sees (``round(y)`` against ``round(y - mean) + mean``):
  the strength was fitted on one quantity and applied on another; and it resized to any ``--size`` before any
  check (a huge one was a traceback, 20000 px gigabytes);
* the latent hook was a bound method, so a deep copy of ``g_s`` (the trainer's frozen reference decoder)
  deep-copied the whole wrapper: codec, adapters and the owner's condition;
* ``psic calibrate`` with an output that is a file failed only after the minutes of fitting;
* ``psic info`` printed a strength's ``fitted_on`` as it was: a line break in it forged rows of the table.
"""

from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
import torch

from psic_adapter.adapter import PSICConfig, load_adapter, wrap_model
from psic_adapter.errors import ConfigError

from .conftest import make_codec, randomize_adapter, small_trainable_codec

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = b"the owner's training key, 32 bytes!"


def spec(**kw):
    return {"proxy": "latent_nonzero", "intercept": 0.0, "slope": 0.0, "min": 0.25, "max": 4.0, **kw}


def run_cli(capsys, *argv):
    from psic_adapter.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_error_line(rc, err, pattern=""):
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("psic: error: "), err[:500]
    assert len(lines[0]) < 600 and re.search(pattern, lines[0]), lines[0][:500]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A public adapter with a strength on the small random hyperprior, and that codec's checkpoint."""
    from psic_adapter.codec import save_codec

    d = tmp_path_factory.mktemp("strength_review")
    ckpt = save_codec(small_trainable_codec(), d / "small.safetensors")
    model = randomize_adapter(wrap_model(small_trainable_codec(), PSICConfig(condition="public")), std=0.05)
    model.config.strength = spec(intercept=0.1, slope=0.1)
    return {"adapter": model.save_pretrained(d / "adapter"), "ckpt": ckpt, "dir": d}


# ------------------------------------------------------------------ crafted configs
@pytest.mark.parametrize("field, value, message", [
    ("intercept", 10 ** 400, "intercept"),
    ("slope", -10 ** 1000, "slope"),
    ("min", 10 ** 400, "min"),
    ("target_db", 10 ** 400, "target_db"),
    ("proxy", "x" * 1_000_000, "proxy"),
    ("y" * 100_000, 1, "unknown strength field"),
], ids=["huge-int-intercept", "huge-int-slope", "huge-int-min", "huge-int-target", "huge-proxy", "huge-field-name"])
def test_a_crafted_strength_is_one_short_line_from_psic_info(field, value, message, adapter_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir["adapter"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["strength"] = {**cfg["strength"], field: value}
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    one_error_line(*run_cli(capsys, "info", bad), message)
    with pytest.raises(ConfigError, match=message):
        PSICConfig.from_dict(cfg)


def test_psic_info_shows_a_crafted_fitted_on_on_its_own_row(adapter_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(adapter_dir["adapter"], bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    cfg["strength"]["fitted_on"] = "x\nfull version  the base codec's decode\x1b[2K"
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    from psic_adapter.cli import main

    capsys.readouterr()
    assert main(["info", str(bad)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and len([ln for ln in out.splitlines() if ln.startswith("full version")]) == 1


def test_a_strength_needs_a_full_version_that_is_the_base_decode(hyperprior):
    with pytest.raises(ConfigError, match="full_version"):
        PSICConfig(full_version="condition", strength=spec())
    PSICConfig(full_version="base", strength=spec())  # the default: fine

    from psic_adapter.training.calibrate import fit_strength

    model = randomize_adapter(wrap_model(copy.deepcopy(hyperprior), PSICConfig(full_version="condition"), key=KEY))
    photos = [torch.rand(3, 64, 64) for _ in range(2)]
    with pytest.raises(ConfigError, match="full version"):
        fit_strength(model, photos, target_db=0.8, sizes=[None])


# ------------------------------------------------------------------ the fit reads the decoder's latent
def test_fit_strength_reads_the_latent_that_the_decoder_sees(monkeypatch):
    """mbt2018 (autoregressive): the training forward's latent is round(y), the decoded one round(y - mu) + mu."""
    import psic_adapter.training.calibrate as calibrate
    from psic_adapter.adapter.strength import latent_activity

    model = randomize_adapter(wrap_model(make_codec("mbt2018"), PSICConfig(condition="public")), std=0.05).eval()
    seen = []
    monkeypatch.setattr(calibrate, "latent_activity", lambda y: seen.append(y) or latent_activity(y))
    g = torch.Generator().manual_seed(3)
    photos = [torch.nn.functional.interpolate(torch.rand(1, 3, k, k, generator=g), size=64, mode="bilinear")[0]
              for k in (4, 64)]
    calibrate.fit_strength(model, photos, target_db=0.8, sizes=[None])
    assert len(seen) == 2
    for photo, y in zip(photos, seen):
        out = model.compress(calibrate.served(photo[None]))
        decoded = model.decode_latent(out["strings"], out["shape"])
        assert torch.equal(y, decoded)


# ------------------------------------------------------------------ copies
def test_a_deep_copy_of_g_s_does_not_copy_the_wrapped_model(hyperprior):
    model = wrap_model(copy.deepcopy(hyperprior), PSICConfig(condition="public"))
    model.config.strength = spec()
    memo = {}
    copy.deepcopy(model.base.g_s, memo)
    assert id(model) not in memo and id(model.psic_adapters) not in memo and id(model.keyring) not in memo
    from psic_adapter.training.trainer import frozen_copy

    ref = frozen_copy(model.base.g_s)  # the trainer's reference decoder: the base decode, no hook
    y = torch.zeros(1, 192, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(ref(y), model.synthesize(y, None))


def test_the_latent_hook_still_scales_after_the_change(adapter_dir):
    """(the hook is now a function: decodes still read each image's own latent)"""
    model = load_adapter(small_trainable_codec(), adapter_dir["adapter"]).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=64, mode="bilinear"),
                   torch.rand(1, 3, 64, 64, generator=g)])
    out = model.compress(x)
    with torch.no_grad():
        dec = model.decompress(out["strings"], out["shape"])["x_hat"]
        y = model.decode_latent(out["strings"], out["shape"])
        torch.testing.assert_close(dec, model.synthesize(y, model.encrypted_condition()).clamp(0, 1), rtol=0, atol=0)
        strength = model.config.strength
        model.config.strength = None
        plain = model.decompress(out["strings"], out["shape"])["x_hat"]
        model.config.strength = strength
    assert not torch.equal(dec, plain)


# ------------------------------------------------------------------ psic calibrate
@pytest.fixture(scope="module")
def photos(adapter_dir):
    import numpy as np
    from PIL import Image

    folder = adapter_dir["dir"] / "photos"
    folder.mkdir(exist_ok=True)
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((64, 64, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("size", [10 ** 30, 256], ids=["huge", "over-a-small-pixel-limit"])
def test_psic_calibrate_at_a_size_the_codec_cannot_code_is_one_line(size, adapter_dir, photos, tmp_path, capsys,
                                                                  monkeypatch):
    """(checked before resizing: before the fix --size 20000 allocated gigabytes and was killed)"""
    monkeypatch.setenv("PSIC_MAX_PIXELS", "10000")
    rc, err = run_cli(capsys, "calibrate", adapter_dir["adapter"], tmp_path / "out", "--data", photos,
                      "--checkpoint", adapter_dir["ckpt"], "--size", size)
    one_error_line(rc, err, "px|pixel")
    assert not (tmp_path / "out").exists()


def test_psic_calibrate_onto_a_file_is_refused_before_fitting(adapter_dir, photos, tmp_path, capsys, monkeypatch):
    import psic_adapter.training.calibrate as calibrate

    monkeypatch.setattr(calibrate, "fit_strength", lambda *a, **k: pytest.fail("fitted before refusing"))
    target = tmp_path / "a file"
    target.write_text("mine")
    before = (adapter_dir["adapter"] / "adapter_config.json").read_bytes()
    for force in ([], ["--force"]):
        rc, err = run_cli(capsys, "calibrate", adapter_dir["adapter"], target, "--data", photos, "--checkpoint",
                          adapter_dir["ckpt"], "--size", 64, *force)
        one_error_line(rc, err, "is a file")
    assert target.read_text() == "mine"
    assert (adapter_dir["adapter"] / "adapter_config.json").read_bytes() == before
