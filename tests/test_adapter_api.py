"""The PEFT-like API of PSICModel: named adapters, saving/loading, conditions, targets, configs."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from safetensors import safe_open
from torch import nn

from psic_adapter import ConfigError, FingerprintMismatchError, OverwriteError, PSICConfig, load_adapter, wrap_model
from psic_adapter.adapter import PSICModel
from psic_adapter.adapter.keys import derive_material, material_to_condition
from psic_adapter.adapter.config import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME

from .conftest import randomize_adapter

def Conditioned(**kwargs) -> PSICConfig:
    """A config whose full version goes through the adapter (the behaviour these tests pin down;
    the default bypass is tested in test_full_version.py)."""
    return PSICConfig(**{"full_version": "condition", **kwargs})


KEY = "owner key A"
KEY_B = "owner key B"
N, M = 32, 48  # a narrow bmshj2018-hyperprior: the API does not depend on the width, and it decodes fast


def small_hyperprior(seed: int = 0) -> nn.Module:
    from psic_adapter.codec import build_codec, prepare_for_coding

    torch.manual_seed(seed)
    return prepare_for_coding(build_codec("bmshj2018-hyperprior", N=N, M=M))


def _clean_copy(codec: nn.Module) -> nn.Module:
    """A deep copy without any forward hook another wrapper may have left."""
    other = copy.deepcopy(codec)
    for m in other.modules():
        m._forward_hooks.clear()
    return other


@pytest.fixture(scope="module")
def pristine():
    """Never wrapped in this module: every test wraps a clean copy of it."""
    return small_hyperprior()


@pytest.fixture()
def codec(pristine):
    return _clean_copy(pristine)


@pytest.fixture(scope="module")
def bitstream(pristine):
    g = torch.Generator().manual_seed(11)
    small = torch.rand(1, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(small, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        enc = pristine.compress(x)
        base = pristine.decompress(enc["strings"], enc["shape"])["x_hat"]
    return {"strings": enc["strings"], "shape": enc["shape"], "base": base}


@torch.no_grad()
def dec(model, bs, **kw):
    return model.decompress(bs["strings"], bs["shape"], **kw)["x_hat"]


# ---------------------------------------------------------------- named adapters
def test_named_adapters_switch_delete_and_disable(codec, bitstream):
    model = wrap_model(codec, Conditioned(), key=KEY)
    model.add_adapter("b", Conditioned(), key=KEY_B)
    randomize_adapter(model)
    assert model.adapter_names == ["default", "b"] and model.active_adapter == "default"
    assert model.config is model.psic_configs["default"]

    full_a, enc_a = dec(model, bitstream, key=KEY), dec(model, bitstream)
    model.set_adapter("b")
    assert model.active_adapter == "b" and model.config is model.psic_configs["b"]
    full_b, enc_b = dec(model, bitstream, key=KEY_B), dec(model, bitstream)
    # each adapter decodes with its own tensors and its own key
    assert not torch.equal(full_a, full_b) and not torch.equal(enc_a, enc_b)
    assert not torch.equal(full_a, bitstream["base"]) and not torch.equal(full_b, bitstream["base"])
    with pytest.warns(UserWarning, match="does not match adapter 'b'"):
        assert torch.equal(dec(model, bitstream, key=KEY), enc_b)  # A's key is a wrong key for b
    assert model.key_matches(KEY_B) and not model.key_matches(KEY)
    assert model.key_matches(KEY, adapter_name="default")

    with model.disable_adapter():
        assert torch.equal(dec(model, bitstream), bitstream["base"])
        assert torch.equal(dec(model, bitstream, key=KEY_B), bitstream["base"])
    assert torch.equal(dec(model, bitstream, key=KEY_B), full_b)  # enabled again on exit

    model.set_adapter("default")
    assert torch.equal(dec(model, bitstream, key=KEY), full_a)

    model.delete_adapter("b")
    assert model.adapter_names == ["default"] and "b" not in model.psic_configs
    assert torch.equal(dec(model, bitstream, key=KEY), full_a)  # b's hooks are gone with it
    with pytest.raises(ConfigError, match=r"no adapter named 'b' \(adapters: default\)"):
        model.set_adapter("b")
    model.delete_adapter("default")  # deleting the active adapter leaves none active
    assert model.active_adapter is None and model.adapter_names == []
    assert all(not m._forward_hooks for m in codec.modules())
    with pytest.raises(ConfigError, match="no adapter named"):
        dec(model, bitstream)


def test_deleting_the_active_adapter_activates_another(codec, bitstream):
    model = randomize_adapter(wrap_model(codec, Conditioned(), key=KEY).add_adapter("b", Conditioned(), key=KEY_B))
    model.set_adapter("b")
    model.delete_adapter("b")
    assert model.active_adapter == "default"
    assert not torch.equal(dec(model, bitstream, key=KEY), bitstream["base"])


def test_adapter_name_errors(codec):
    model = wrap_model(codec, Conditioned(), key=KEY)
    with pytest.raises(ConfigError, match="exists already"):
        model.add_adapter("default", key=KEY)
    with pytest.raises(ConfigError, match="not allowed"):
        model.add_adapter("", key=KEY)
    with pytest.raises(ConfigError, match="already wrapped"):
        wrap_model(model, Conditioned(), key=KEY)
    with pytest.raises(ConfigError, match="already fitted"):
        wrap_model(_clean_copy(codec), model.config, key=KEY)


# ---------------------------------------------------------------- saving / loading
def test_save_two_adapters_peft_layout_and_load_each(codec, pristine, bitstream, tmp_path):
    model = randomize_adapter(wrap_model(codec, Conditioned(), key=KEY).add_adapter("b", Conditioned(), key=KEY_B))
    want_a = (dec(model, bitstream), dec(model, bitstream, key=KEY))
    model.set_adapter("b")
    want_b = (dec(model, bitstream), dec(model, bitstream, key=KEY_B))

    root = model.save_pretrained(tmp_path / "adapters")
    assert (root / CONFIG_NAME).is_file() and (root / WEIGHTS_NAME).is_file()  # default at the root
    assert (root / "b" / CONFIG_NAME).is_file() and (root / "b" / WEIGHTS_NAME).is_file()
    assert sorted(p.name for p in root.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, "b"])

    loaded = load_adapter(_clean_copy(pristine), root)
    assert loaded.adapter_names == ["default"]
    assert torch.equal(dec(loaded, bitstream), want_a[0])
    assert torch.equal(dec(loaded, bitstream, key=KEY), want_a[1])
    assert loaded.adapter_fingerprint() == model.adapter_fingerprint("default")
    assert not any(p.requires_grad for p in loaded.adapter_parameters())  # frozen unless is_trainable

    loaded.load_adapter(root / "b", adapter_name="b")  # a second adapter onto the same model
    loaded.set_adapter("b")
    assert torch.equal(dec(loaded, bitstream), want_b[0])
    assert torch.equal(dec(loaded, bitstream, key=KEY_B), want_b[1])

    only_b = PSICModel.from_pretrained(_clean_copy(pristine), root / "b", adapter_name="b", is_trainable=True)
    assert only_b.adapter_names == ["b"] and all(p.requires_grad for p in only_b.adapter_parameters())
    assert torch.equal(dec(only_b, bitstream, key=KEY_B), want_b[1])


def test_load_with_the_key_checks_it(codec, pristine, tmp_path):
    model = wrap_model(codec, Conditioned(), key=KEY)
    model.save_pretrained(tmp_path / "a")
    with_key = load_adapter(_clean_copy(pristine), tmp_path / "a", key=KEY)
    assert torch.equal(with_key.full_condition(), model.full_condition())
    with pytest.raises(ConfigError, match="does not match"):
        load_adapter(_clean_copy(pristine), tmp_path / "a", key="not the key")
    without = load_adapter(_clean_copy(pristine), tmp_path / "a")
    with pytest.raises(ConfigError, match="loaded without its key"):
        without.full_condition()


def test_save_pretrained_refuses_to_overwrite(codec, tmp_path):
    model = randomize_adapter(wrap_model(codec, Conditioned(), key=KEY))
    model.save_pretrained(tmp_path / "a")
    before = {n: (tmp_path / "a" / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME)}
    randomize_adapter(model, seed=5)
    with pytest.raises(OverwriteError, match="exists"):
        model.save_pretrained(tmp_path / "a")
    assert {n: (tmp_path / "a" / n).read_bytes() for n in before} == before
    model.save_pretrained(tmp_path / "a", force=True)
    assert (tmp_path / "a" / WEIGHTS_NAME).read_bytes() != before[WEIGHTS_NAME]
    assert not list((tmp_path / "a").glob("*.part"))


def test_adapter_files_hold_only_the_adapter_and_never_the_key(codec, tmp_path):
    model = randomize_adapter(wrap_model(codec, Conditioned(), key=KEY))
    path = model.save_pretrained(tmp_path / "a")
    with safe_open(str(path / WEIGHTS_NAME), framework="pt") as f:
        names = set(f.keys())
        meta = f.metadata()
        numel = sum(f.get_tensor(n).numel() for n in names)
    assert names == set(model.psic_adapters["default"].state_dict())
    assert not names & set(codec.state_dict())  # no codec tensor, under any name
    assert not any(n.startswith(("g_s", "g_a", "h_a", "h_s", "entropy", "gaussian", "base.")) for n in names)
    assert numel == model.num_adapter_parameters()
    assert meta["adapter_fingerprint"] == model.adapter_fingerprint()

    cfg = model.config
    material = derive_material(KEY, cfg.salt, cfg.kdf)
    condition = material_to_condition(material, cfg.cond_dim)
    assert torch.equal(condition, model.full_condition()[0])
    text = (path / CONFIG_NAME).read_text()
    blob = (path / CONFIG_NAME).read_bytes() + (path / WEIGHTS_NAME).read_bytes()
    bits = "".join("1" if v > 0 else "0" for v in condition.tolist())
    assert KEY not in text and KEY.encode() not in blob
    assert material.hex() not in text and material not in blob
    assert bits not in text and bits[::-1] not in text
    assert json.dumps(condition.tolist()) not in text
    assert json.dumps([int(v) for v in condition.tolist()]) not in text
    assert condition.numpy().tobytes() not in blob
    # what is there: enough to check a key, nothing to rebuild it
    data = json.loads(text)
    assert set(data) >= {"salt", "key_check", "kdf", "injection_points", "base_model"}
    assert len(data["key_check"]) == 16


# ---------------------------------------------------------------- conditions
def test_public_condition_mode(codec, bitstream):
    with pytest.raises(ConfigError, match="takes no key"):
        wrap_model(_clean_copy(codec), Conditioned(condition="public"), key=KEY)
    model = randomize_adapter(wrap_model(codec, Conditioned(condition="public")))
    full, encrypted = dec(model, bitstream, mode="full"), dec(model, bitstream)
    assert not torch.equal(full, encrypted)
    assert torch.equal(dec(model, bitstream, mode="encrypted"), encrypted)
    enc = model.encrypted_condition()
    assert enc.shape == (1, model.config.cond_dim) and set(enc.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(model.full_condition(), -enc)
    with pytest.raises(ConfigError, match="public mode bit and no key"):
        dec(model, bitstream, key=KEY)
    assert model.key_matches(KEY) is False
    assert "NOT access-controlled" in model.config.modes["full"]
    assert model.config.key_check is None


def test_keyed_condition_mode(codec, bitstream):
    with pytest.raises(ConfigError, match="needs the owner's key"):
        wrap_model(_clean_copy(codec), Conditioned())
    model = randomize_adapter(wrap_model(codec, Conditioned(), key=KEY))
    with pytest.raises(ConfigError, match="needs the owner's key"):
        dec(model, bitstream, mode="full")
    with pytest.raises(ConfigError, match="mode must be"):
        dec(model, bitstream, mode="FULL")
    with pytest.raises(ConfigError, match="not both"):
        dec(model, bitstream, key=KEY, mode="encrypted")
    with pytest.raises(ConfigError, match="not several"):
        dec(model, bitstream, key=KEY, condition=model.encrypted_condition())
    full = dec(model, bitstream, key=KEY)
    assert torch.equal(dec(model, bitstream, key=KEY.encode()), full)  # str and bytes keys agree
    assert torch.equal(dec(model, bitstream, condition=model.full_condition()), full)
    with pytest.raises(ConfigError, match="empty"):
        dec(model, bitstream, key="")


# ---------------------------------------------------------------- targets
@pytest.mark.parametrize(
    "targets, points",
    [
        (None, ["g_s.1", "g_s.3", "g_s.5"]),
        (["g_s.3"], ["g_s.3"]),  # exact name
        (["3"], ["g_s.3"]),  # name suffix
        (["GDN"], ["g_s.1", "g_s.3", "g_s.5"]),  # class name
        ([r"g_s\.[15]"], ["g_s.1", "g_s.5"]),  # regular expression
        (["g_s.5", "g_s.1"], ["g_s.1", "g_s.5"]),  # in the order g_s runs them
        ("g_s.2", ["g_s.2"]),  # a single string; a conv layer
    ],
)
def test_target_modules(codec, bitstream, targets, points):
    model = wrap_model(codec, Conditioned(target_modules=targets), key=KEY)
    got = [p["module"] for p in model.config.injection_points]
    assert got == points
    assert [p["channels"] for p in model.config.injection_points] == [N] * len(points)
    hooked = {name for name, m in codec.named_modules() if m._forward_hooks}
    assert hooked == set(points)
    assert torch.equal(dec(model, bitstream, key=KEY), bitstream["base"])  # fresh: adds zero
    randomize_adapter(model)
    assert not torch.equal(dec(model, bitstream, key=KEY), bitstream["base"])


@pytest.mark.parametrize("bad", ["g_s.99", "NoSuchBlock", "g_a.0"])
def test_bad_target_lists_the_decoder_blocks(codec, bad):
    with pytest.raises(ConfigError, match=r"matches nothing in g_s \(decoder blocks: g_s.1, g_s.3, g_s.5\)"):
        wrap_model(codec, Conditioned(target_modules=[bad]), key=KEY)
    assert all(not m._forward_hooks for m in codec.modules())  # nothing half-attached


def test_target_that_is_not_a_feature_map(codec):
    with pytest.raises(ConfigError, match="feature map"):
        wrap_model(codec, Conditioned(target_modules=["beta_reparam"]), key=KEY)


# ---------------------------------------------------------------- presets and configs
def test_official_preset(codec, bitstream):
    model = wrap_model(codec, Conditioned(preset="official"), key=KEY)
    assert model.config.resolved_hidden_dim == 512
    assert torch.equal(dec(model, bitstream, key=KEY), bitstream["base"])
    assert torch.equal(dec(model, bitstream), bitstream["base"])
    randomize_adapter(model, std=0.05)
    full, encrypted = dec(model, bitstream, key=KEY), dec(model, bitstream)
    assert not torch.equal(full, bitstream["base"]) and not torch.equal(full, encrypted)


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_film_modulation(codec, bitstream, preset):
    """A gain and a bias per channel: a fresh adapter is still the base; trained, the
    in-place (no-grad) decode equals the autograd synthesis."""
    model = wrap_model(codec, Conditioned(preset=preset, modulation="film"), key=KEY)
    plain = wrap_model(_clean_copy(codec), Conditioned(preset=preset), key=KEY)
    assert model.num_adapter_parameters() > plain.num_adapter_parameters()
    assert torch.equal(dec(model, bitstream), bitstream["base"])
    randomize_adapter(model, std=0.05)
    encrypted = dec(model, bitstream)
    assert not torch.equal(encrypted, bitstream["base"])
    y_hat = model.decode_latent(bitstream["strings"], bitstream["shape"])
    with torch.enable_grad():
        synth = model.synthesize(y_hat, model.encrypted_condition()).clamp(0, 1)
    assert torch.allclose(synth, encrypted, atol=1e-6)
    with pytest.raises(ConfigError, match="modulation"):
        Conditioned(modulation="gain")


def test_config_json_round_trip(codec, tmp_path):
    model = wrap_model(codec, Conditioned(preset="official", cond_dim=32, hidden_dim=16, description="d"), key=KEY)
    cfg = model.config
    again = PSICConfig.from_dict(json.loads(cfg.to_json_string()))
    assert again == cfg and again.is_bound
    cfg.save(tmp_path)
    assert PSICConfig.load(tmp_path) == cfg
    assert PSICConfig.load(tmp_path / CONFIG_NAME) == cfg
    assert again.base_model["fingerprint"] == model.config.base_model["fingerprint"]
    assert again.base_model["N"] == N and again.base_model["M"] == M
    assert again.base_model["architecture"] == "bmshj2018-hyperprior"


def test_format_1_adapters_keep_their_conditions(codec, tmp_path):
    """Format-1 adapters were trained with zeros as the encrypted condition (ones for the public
    full mode); loading one must decode as it was trained, and saving it must keep format 1."""
    model = wrap_model(codec, Conditioned(condition="public", format_version=1))
    assert torch.equal(model.encrypted_condition(), torch.zeros(1, model.config.cond_dim))
    assert torch.equal(model.full_condition(), torch.ones(1, model.config.cond_dim))
    model.save_pretrained(tmp_path / "v1")
    again = load_adapter(_clean_copy(codec), tmp_path / "v1")
    assert again.config.format_version == 1
    assert torch.equal(again.encrypted_condition(), torch.zeros(1, model.config.cond_dim))
    current = wrap_model(_clean_copy(codec), Conditioned(condition="public"))
    assert current.config.format_version == FORMAT_VERSION >= 2
    assert not torch.equal(current.encrypted_condition(), model.encrypted_condition())


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown adapter config field.*: 'colour'"):
        PSICConfig.from_dict({**Conditioned().to_dict(), "colour": "blue"})
    with pytest.raises(ConfigError, match=rf"format {FORMAT_VERSION + 1} is newer.*upgrade"):
        PSICConfig.from_dict({**Conditioned().to_dict(), "format_version": FORMAT_VERSION + 1})
    # a newer format will have new fields: the message must still say "upgrade", not "unknown field"
    with pytest.raises(ConfigError, match="newer.*upgrade"):
        PSICConfig.from_dict({**Conditioned().to_dict(), "format_version": FORMAT_VERSION + 1, "new_thing": 1})
    with pytest.raises(ConfigError, match="preset"):
        Conditioned(preset="lora")
    with pytest.raises(ConfigError, match="cond_dim >= 16"):
        Conditioned(cond_dim=8)
    with pytest.raises(ConfigError, match="JSON object"):
        PSICConfig.from_dict([1, 2])
    (tmp_path / CONFIG_NAME).write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        PSICConfig.load(tmp_path)
    with pytest.raises(ConfigError, match="no adapter config"):
        PSICConfig.load(tmp_path / "missing")


def test_loading_a_config_whose_channels_do_not_fit(codec, pristine, tmp_path):
    model = wrap_model(codec, Conditioned(), key=KEY)
    path = model.save_pretrained(tmp_path / "a")
    data = json.loads((path / CONFIG_NAME).read_text())
    data["injection_points"][1]["channels"] = 64
    (path / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"expects channels \[32, 64, 32\].*has \[32, 32, 32\]"):
        load_adapter(_clean_copy(pristine), path)
    # an adapter for a wider codec of the same architecture (quality 8: N=192)
    from psic_adapter.codec import build_codec

    big = build_codec("bmshj2018-hyperprior", 8)
    good = tmp_path / "good"
    model.save_pretrained(good)
    with pytest.raises(FingerprintMismatchError):
        load_adapter(big, good)
    with pytest.raises(ConfigError, match=r"expects channels \[32, 32, 32\].*\[192, 192, 192\]"):
        load_adapter(big, good, ignore_fingerprint=True)


def test_parameter_ratio_on_hyperprior_quality_3():
    from psic_adapter.codec import build_codec

    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", 3)
    model = wrap_model(codec, Conditioned(), key=KEY, quality=3)
    ratio = model.num_adapter_parameters() / model.num_base_parameters()
    assert model.num_base_parameters() == sum(p.numel() for p in codec.parameters())
    assert 0 < ratio <= 0.02, ratio
    assert model.config.base_model["quality"] == 3


# ---------------------------------------------------------------- the base codec stays a codec
def test_base_state_dict_is_the_codecs_and_loads_strictly(codec, pristine, bitstream):
    model = randomize_adapter(wrap_model(codec, Conditioned(), key=KEY))
    full = dec(model, bitstream, key=KEY)
    fresh = small_hyperprior(seed=3)
    assert list(model.base.state_dict()) == list(fresh.state_dict())
    assert set(model.state_dict()) == {f"base.{k}" for k in fresh.state_dict()} | {
        f"psic_adapters.default.{k}" for k in model.psic_adapters["default"].state_dict()
    }
    # a zoo-style state_dict (another codec's) loads strictly into the wrapped codec ...
    zoo = {k: v.clone() for k, v in fresh.state_dict().items()}
    model.base.load_state_dict(zoo, strict=True)
    with torch.no_grad():
        x = torch.full((1, 3, 64, 64), 0.5)
        enc = fresh.compress(x)
        plain = fresh.decompress(enc["strings"], enc["shape"])["x_hat"]
        with model.disable_adapter():
            assert torch.equal(model.decompress(enc["strings"], enc["shape"])["x_hat"], plain)
        # ... and the adapter still acts on the new weights
        assert not torch.equal(model.decompress(enc["strings"], enc["shape"], key=KEY)["x_hat"], plain)
    # back to the original weights: the original decode again
    model.base.load_state_dict(pristine.state_dict(), strict=True)
    assert torch.equal(dec(model, bitstream, key=KEY), full)


@pytest.mark.shared
def test_the_shared_zoo_checkpoint_loads_strictly_into_a_wrapped_codec(shared_codec_path):
    from safetensors.torch import load_file

    from psic_adapter.codec import build_codec

    sd = {}
    for f in sorted(shared_codec_path.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    model = wrap_model(build_codec("bmshj2018-hyperprior", 3), Conditioned(), key=KEY)
    model.base.load_state_dict(sd, strict=True)
    model.eval()
    assert all(torch.equal(model.base.state_dict()[k], v) for k, v in sd.items())


# ---------------------------------------------------------------- a codec of one's own
class TinyCodec(nn.Module):
    """A minimal codec outside CompressAI's zoo: g_a, an entropy bottleneck, a g_s Sequential."""

    def __init__(self, n: int = 16):
        super().__init__()
        from compressai.entropy_models import EntropyBottleneck

        self.entropy_bottleneck = EntropyBottleneck(n)
        self.g_a = nn.Sequential(nn.Conv2d(3, n, 5, 2, 2), nn.ReLU(), nn.Conv2d(n, n, 5, 2, 2))
        self.g_s = nn.Sequential(
            nn.ConvTranspose2d(n, n, 5, 2, 2, output_padding=1),
            nn.ReLU(),
            nn.Conv2d(n, 24, 3, padding=1),
            nn.LeakyReLU(),
            nn.ConvTranspose2d(24, 3, 5, 2, 2, output_padding=1),
        )

    def forward(self, x):
        y_hat, lik = self.entropy_bottleneck(self.g_a(x))
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": lik}}

    def compress(self, x):
        y = self.g_a(x)
        return {"strings": [self.entropy_bottleneck.compress(y)], "shape": y.size()[-2:]}

    def decompress(self, strings, shape):
        y_hat = self.entropy_bottleneck.decompress(strings[0], shape)
        return {"x_hat": self.g_s(y_hat).clamp(0, 1)}


@pytest.fixture(scope="module")
def tiny():
    from compressai.models import CompressionModel

    cls = type("TinyCompressionModel", (TinyCodec, CompressionModel), {})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codec = cls()
        codec.update(force=True)
    codec.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        enc = codec.compress(x)
        base = codec.decompress(enc["strings"], enc["shape"])["x_hat"]
    return codec, {"strings": enc["strings"], "shape": enc["shape"], "base": base}


def test_a_codec_of_ones_own(tiny, tmp_path):
    codec, bs = tiny
    default = wrap_model(codec, Conditioned(), key=KEY)  # no zoo blocks: its activations are the targets
    try:
        assert [p["module"] for p in default.config.injection_points] == ["g_s.1", "g_s.3"]
        assert [p["channels"] for p in default.config.injection_points] == [16, 24]
        assert default.config.base_model["class"] == "TinyCompressionModel"
        assert default.config.base_model["N"] == 16 and default.config.base_model["M"] == 16
    finally:
        default.unwrap()

    model = wrap_model(codec, Conditioned(target_modules=["ConvTranspose2d", "g_s.2"]), key=KEY)
    try:
        points = model.config.injection_points
        assert [(p["module"], p["channels"]) for p in points] == [("g_s.0", 16), ("g_s.2", 24), ("g_s.4", 3)]
        assert torch.equal(dec(model, bs, key=KEY), bs["base"])
        randomize_adapter(model, std=0.1)
        full, encrypted = dec(model, bs, key=KEY), dec(model, bs)
        assert not torch.equal(full, bs["base"]) and not torch.equal(full, encrypted)
        path = model.save_pretrained(tmp_path / "tiny")
    finally:
        model.unwrap()
    assert all(not m._forward_hooks for m in codec.modules())
    loaded = load_adapter(codec, path)
    try:
        assert torch.equal(dec(loaded, bs, key=KEY), full)
        assert torch.equal(dec(loaded, bs), encrypted)
    finally:
        loaded.unwrap()

    with pytest.raises(ConfigError, match=r"matches nothing in g_s \(decoder blocks: g_s.1, g_s.3\)"):
        wrap_model(codec, Conditioned(target_modules=["GDN"]), key=KEY)


def test_a_module_without_g_s_is_refused():
    with pytest.raises(ConfigError, match="no synthesis transform `g_s`"):
        wrap_model(nn.Sequential(nn.Conv2d(3, 3, 1)), Conditioned(), key=KEY)


# ---------------------------------------------------------------- how the bias is added
class _IdentityFirst(nn.Module):
    """g_s whose first block returns its input itself (as nn.Identity and in-place activations do)."""

    def __init__(self):
        super().__init__()
        self.g_s = nn.Sequential(nn.Identity(), nn.ConvTranspose2d(8, 8, 4, 2, 1), nn.ReLU(inplace=True),
                                 nn.ConvTranspose2d(8, 3, 4, 2, 1))


def test_inference_decode_equals_the_autograd_decode(codec):
    """Without autograd the bias is added in place (no new feature map per block): same numbers."""
    model = randomize_adapter(wrap_model(codec, Conditioned(), key=KEY), std=0.1)
    y = torch.randn(1, M, 4, 6, generator=torch.Generator().manual_seed(0))
    cond = model.full_condition()
    with torch.enable_grad():
        reference = model.synthesize(y, cond).detach()
    with torch.no_grad():
        assert torch.equal(model.synthesize(y, cond), reference)
    with torch.inference_mode():
        assert torch.equal(model.synthesize(y, cond), reference)
        # a batch of conditions on one latent broadcasts (no in-place add there; a batch of 2
        # may take other conv kernels than a batch of 1, hence allclose)
        both = model.synthesize(y, torch.cat([cond, model.encrypted_condition()]))
        assert both.shape[0] == 2
        assert torch.allclose(both[:1], reference, atol=1e-5)
        assert torch.allclose(both[1:], model.synthesize(y, model.encrypted_condition()), atol=1e-5)
        assert not torch.allclose(both[:1], both[1:], atol=1e-3)


def test_a_block_that_returns_its_input_is_not_changed_in_place():
    model = randomize_adapter(wrap_model(_IdentityFirst(), Conditioned(target_modules=["g_s.0", "g_s.2"]), key=KEY))
    y = torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(1))
    y0 = y.clone()
    with torch.no_grad():
        a = model.synthesize(y, model.full_condition())
        b = model.synthesize(y, model.full_condition())
    assert torch.equal(y, y0)  # the caller's latent is untouched
    assert torch.equal(a, b)
    with torch.enable_grad():
        assert torch.equal(model.synthesize(y, model.full_condition()).detach(), a)


@pytest.mark.parametrize("bad", ["2", 1.5, None, True])
def test_config_format_version_must_be_an_integer(bad):
    from psic_adapter.errors import ConfigError

    data = Conditioned().to_dict()
    data["format_version"] = bad
    with pytest.raises(ConfigError, match="format_version must be an integer"):
        PSICConfig.from_dict(data)


def test_the_documented_api_codes_an_image_of_any_size(codec, pristine, tmp_path):
    """README's example on an ordinary 720x477 JPEG (CompressAI's codecs need multiples of 64): compress pads
    as `psic compress` does and returns the size; decompress crops back; the full version is the codec's own
    decode of the padded image, cropped; a multiple of 64 is coded byte for byte as the codec codes it."""
    import numpy as np
    from PIL import Image

    from psic_adapter.bitstream.images import load_image, pad_to_multiple

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(small).resize((720, 477), Image.BICUBIC).save(tmp_path / "photo.jpg", quality=90)
    x, _ = load_image(tmp_path / "photo.jpg")
    assert tuple(x.shape) == (1, 3, 477, 720)
    model = wrap_model(codec, PSICConfig(modulation="spatial"), key=KEY)
    randomize_adapter(model)
    enc = model.compress(x)
    assert enc["size"] == (477, 720)
    x_enc = model.decompress(enc["strings"], enc["shape"], size=enc["size"])["x_hat"]
    x_full = model.decompress(enc["strings"], enc["shape"], key=KEY, size=enc["size"])["x_hat"]
    assert x_enc.shape == x_full.shape == x.shape
    with torch.no_grad():
        plain = pristine.compress(pad_to_multiple(x, 64)[0])
        want = pristine.decompress(plain["strings"], plain["shape"])["x_hat"][..., :477, :720]
    assert enc["strings"] == plain["strings"]
    assert torch.equal(x_full, want) and not torch.equal(x_enc, want)
    assert model.decompress(enc["strings"], enc["shape"])["x_hat"].shape[-2:] == (512, 768)  # no size: padded

    square = x[..., :448, :640]
    with torch.no_grad():
        assert model.compress(square)["strings"] == pristine.compress(square)["strings"]
