"""The per-image strength of an adapter's change (issue 15): absent, it changes nothing (decodes,
configs, fingerprints); present, it scales each image's modulation by what its latent holds, is
part of the fingerprint, survives save/load, and a crafted spec is a one-line error."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from psic_adapter.adapter import PSICConfig, load_adapter, wrap_model
from psic_adapter.adapter.strength import latent_activity, oracle_strength, strength_of
from psic_adapter.errors import ConfigError

from .conftest import small_trainable_codec

KEY = b"the owner's training key, 32 bytes!"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def model():
    """A small codec with a spatial adapter whose weights are not zero (a fresh one changes nothing)."""
    torch.manual_seed(0)
    m = wrap_model(small_trainable_codec(), PSICConfig(modulation="spatial"), key=KEY).eval()
    with torch.no_grad():
        for p in m.adapter_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


@pytest.fixture
def fresh(saved):
    """Copies of ``model`` with a strength (a deep copy of a wrapped model would share its hooks)."""
    def make(strength=None):
        m = load_adapter(small_trainable_codec(), saved).eval()
        m.config.strength = strength
        return m
    return make


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=64, mode="bilinear")
    busy = torch.rand(1, 3, 64, 64, generator=g)
    return torch.cat([smooth, busy])


def spec(**kw):
    return {"proxy": "latent_nonzero", "intercept": 0.0, "slope": 0.0, "min": 0.25, "max": 4.0, **kw}


def decode(m, x):
    with torch.no_grad():
        y = m.analyze(x)["y_hat"]
        return m.synthesize(y, None), m.synthesize(y, m.encrypted_condition())


def test_without_a_strength_configs_and_fingerprints_are_as_before(model, fresh):
    assert "strength" not in model.config.to_dict()  # older releases read it
    fp = model.adapter_fingerprint()
    assert fresh().adapter_fingerprint() == fp
    same = fresh(spec())  # strength 1 everywhere: the same decodes, another adapter on paper
    assert same.adapter_fingerprint() != fp


def test_a_constant_strength_scales_the_change(model, fresh, images):
    base, enc1 = decode(model, images)
    m = fresh(spec())
    _, same = decode(m, images)
    assert torch.equal(same, enc1)  # exp(0) = 1
    m.config.strength = spec(intercept=math.log(0.25))
    _, small = decode(m, images)
    m.config.strength = spec(intercept=math.log(2.0))
    _, large = decode(m, images)
    d1, d_small, d_large = ((e - base).norm() for e in (enc1, small, large))
    assert d_small < d1 < d_large
    assert float(d_small / d1) == pytest.approx(0.25, rel=0.3)  # about linear at small changes


def test_the_strength_follows_each_images_latent_and_not_its_batch(fresh, images):
    m = fresh(spec(slope=1.0, intercept=1.0))
    with torch.no_grad():
        y = m.analyze(images)["y_hat"]
    act = latent_activity(y)
    assert act[0] != act[1]  # (an untrained codec: which one holds more is arbitrary)
    s = strength_of(m.config.strength, y).flatten()
    torch.testing.assert_close(s, (1.0 + act.log()).exp().clamp(0.25, 4.0))
    _, together = decode(m, images)
    _, alone0 = decode(m, images[:1])
    _, alone1 = decode(m, images[1:])
    torch.testing.assert_close(together, torch.cat([alone0, alone1]), rtol=1e-4, atol=1e-5)


def test_a_strength_survives_save_and_load(fresh, images, tmp_path):
    m = fresh(spec(slope=0.7, intercept=0.4, target_db=0.8, fitted_on="two test images"))
    m.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["strength"]["slope"] == 0.7
    again = load_adapter(small_trainable_codec(), tmp_path)
    assert again.config.strength == m.config.strength
    assert again.adapter_fingerprint() == m.adapter_fingerprint()
    torch.testing.assert_close(decode(again, images)[1], decode(m, images)[1])


@pytest.mark.parametrize("bad, message", [
    ("strong", "JSON object"),
    ({**spec(), "proxy": "bpp"}, "proxy"),
    ({**spec(), "slope": float("nan")}, "slope"),
    ({**spec(), "min": 0.0}, "min"),
    ({**spec(), "min": 2.0, "max": 1.0}, "min <= max"),
    ({**spec(), "max": 1e9}, "max"),
    ({**spec(), "intercept": True}, "intercept"),
    ({**spec(), "code": "import os"}, "unknown strength field"),
    ({**spec(), "target_db": -1}, "target_db"),
    ({**spec(), "size_slope": float("inf")}, "size_slope"),
    ({**spec(), "size_slope": "0.3"}, "size_slope"),
])
def test_a_crafted_strength_is_one_clear_error(model, bad, message):
    d = model.config.to_dict()
    d["strength"] = bad
    with pytest.raises(ConfigError, match=message) as err:
        PSICConfig.from_dict(d)
    assert "\n" not in str(err.value)


def test_the_oracle_puts_an_image_exactly_at_its_drop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g)
    base = x + 0.05 * torch.randn(x.shape, generator=g)
    change = 0.02 * torch.randn(x.shape, generator=g)
    a = oracle_strength(base, change, x, 1.0)
    drop = 10 * math.log10(float((base + a * change - x).pow(2).mean()) / float((base - x).pow(2).mean()))
    assert drop == pytest.approx(1.0, abs=1e-6)


def test_fit_strength_returns_a_spec_that_loads(model):
    from psic_adapter.training.calibrate import fit_strength

    g = torch.Generator().manual_seed(2)
    photos = [torch.nn.functional.interpolate(torch.rand(1, 3, k, k, generator=g), size=64, mode="bilinear")[0]
              for k in (2, 4, 8, 16, 32, 64)]
    out = fit_strength(model, photos, target_db=0.8, sizes=[None])
    assert out["photos"] == 6 and math.isfinite(out["r2"])
    fitted = PSICConfig.from_dict({**model.config.to_dict(), "strength": out["strength"]})
    assert fitted.strength["target_db"] == 0.8 and model.config.strength is None  # the model untouched
    with pytest.raises(ConfigError, match="target_db"):
        fit_strength(model, photos, target_db=0)


def test_a_size_slope_follows_the_latents_size_and_is_absent_by_default():
    small, large = torch.ones(2, 4, 4, 4), torch.ones(2, 4, 8, 8)  # the same non-zero share, 4x the positions
    assert torch.equal(strength_of(spec(), small), strength_of(spec(), large))
    torch.testing.assert_close(strength_of(spec(intercept=-2.0, size_slope=0.5), large)
                               / strength_of(spec(intercept=-2.0, size_slope=0.5), small),
                               torch.full((2, 1, 1, 1), 2.0))  # (64 / 16) ** 0.5


def test_fit_strength_at_several_sizes_fits_a_size_slope_that_loads(model):
    from psic_adapter.training.calibrate import fit_strength

    g = torch.Generator().manual_seed(3)
    photos = [torch.nn.functional.interpolate(torch.rand(1, 3, k, k, generator=g), size=128, mode="bilinear")[0]
              for k in (2, 4, 8, 16, 32, 64)]
    one = fit_strength(model, photos, target_db=0.1, sizes=64)  # one size may be given alone
    both = fit_strength(model, photos, target_db=0.1, sizes=[64, None, 0])  # 0 is None: counted once
    assert "size_slope" not in one["strength"] and one["fits"] == 6
    assert both["photos"] == 6 and both["fits"] == 12 and both["strength"]["size_slope"] != 0
    fitted = PSICConfig.from_dict({**model.config.to_dict(), "strength": both["strength"]})
    assert fitted.strength["size_slope"] == both["strength"]["size_slope"]
    with pytest.raises(ConfigError, match="one latent size"):  # 64 and 60 px pad to the same latent
        fit_strength(model, photos, target_db=0.1, sizes=[64, 60])
    with pytest.raises(ConfigError, match="two photos"):  # one photo at two sizes: 2 fits for 3 numbers
        fit_strength(model, photos[:1], target_db=0.1, sizes=[64, None])


def test_training_refuses_a_strength_that_reads_the_photos_size(model):
    from psic_adapter.training import TrainConfig, Trainer

    before = model.config.strength
    model.config.strength = spec(size_slope=0.2)
    try:
        with pytest.raises(ConfigError, match="size"):
            Trainer(model, None, None, TrainConfig(stage=2, adapter_only=True), "unused-out", device="cpu",
                    progress=False)
    finally:
        model.config.strength = before


def test_unwrap_leaves_no_hook_on_the_codec(saved):
    codec = small_trainable_codec()
    load_adapter(codec, saved).unwrap()
    assert not codec.g_s._forward_pre_hooks and not any(m._forward_hooks for m in codec.modules())


# ------------------------------------------------------------------ psic calibrate
@pytest.fixture(scope="module")
def cli_setup(hyperprior, tmp_path_factory):
    """A keyed adapter with random weights on conftest's random hyperprior, its checkpoint, and 4 photos."""
    from PIL import Image

    from psic_adapter.codec import save_codec
    from psic_adapter.data import SamplePhotos

    from .conftest import randomize_adapter

    folder = tmp_path_factory.mktemp("calibrate")
    ckpt = save_codec(hyperprior, folder / "hp.safetensors")
    model = randomize_adapter(wrap_model(copy.deepcopy(hyperprior), PSICConfig(modulation="spatial"), key=KEY), std=0.05)
    adapter = model.save_pretrained(folder / "adapter")
    photos = folder / "photos"
    photos.mkdir()
    train = SamplePhotos("train")
    for i in range(4):
        arr = (train[i]["image"].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).resize((96, 64)).save(photos / f"p{i}.png")
    return {"ckpt": ckpt, "adapter": adapter, "photos": photos}


def test_psic_calibrate_writes_an_adapter_with_its_strength(cli_setup, tmp_path, capsys):
    from psic_adapter.cli import main

    s = cli_setup
    out = tmp_path / "calibrated"
    rc = main(["calibrate", str(s["adapter"]), str(out), "--data", str(s["photos"]), "--checkpoint", str(s["ckpt"]),
               "--size", "0", "--target-db", "0.5"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "fitted on 4 photos" in printed.out and "latent positions" not in printed.out
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["strength"]["target_db"] == 0.5 and "size_slope" not in cfg["strength"] and cfg["salt"] == json.loads(
        (s["adapter"] / "adapter_config.json").read_text())["salt"]  # the same adapter and key, with a strength
    assert "strength" not in json.loads((s["adapter"] / "adapter_config.json").read_text())  # the input untouched


def test_psic_calibrate_at_two_sizes_fits_the_size_term(cli_setup, tmp_path, capsys):
    from psic_adapter.cli import main

    s = cli_setup
    out = tmp_path / "calibrated"
    rc = main(["calibrate", str(s["adapter"]), str(out), "--data", str(s["photos"]), "--checkpoint", str(s["ckpt"]),
               "--size", "64", "0", "--target-db", "0.02"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "log(latent positions)" in printed.out and "at 64 px and their own size" in printed.out
    strength = json.loads((out / "adapter_config.json").read_text())["strength"]
    assert math.isfinite(strength["size_slope"]) and "64 px and their own size" in strength["fitted_on"]
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["strength"].startswith("per image, from the latent and its size")


@pytest.mark.parametrize("case, message", [
    ("same folder", "exist|--force"),
    ("zero dB", "target_db"),
    ("no photos", "photos|image|found|exist"),
])
def test_psic_calibrate_refusals_are_one_line(case, message, cli_setup, tmp_path, capsys):
    from psic_adapter.cli import main

    s = cli_setup
    argv = ["calibrate", str(s["adapter"]), str(tmp_path / "out"), "--data", str(s["photos"]), "--checkpoint",
            str(s["ckpt"]), "--size", "0"]
    if case == "same folder":
        argv[2] = str(s["adapter"])
    elif case == "zero dB":
        argv += ["--target-db", "0"]
    else:
        argv[4] = str(tmp_path / "nothing")
    before = (s["adapter"] / "adapter_config.json").read_bytes()
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and err.startswith("psic: error: "), err
    import re

    assert re.search(message, err), err
    assert (s["adapter"] / "adapter_config.json").read_bytes() == before
