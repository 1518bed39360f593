"""Files a user hands the library are untrusted: each lie is a one-line PSICError, never another exception,
never a huge allocation, never code run, never a write outside the output.

One test (or one parametrised case) per defect. The .psic files are real ones, made with a tiny codec, then
edited with the CRC recomputed exactly as ``container.pack`` does, as a crafted file would be.
"""

from __future__ import annotations

import ast
import collections
import json
import math
import pickle
import re
import shutil
import struct
import tokenize
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from psic_adapter.adapter import PSICConfig, load_adapter, wrap_model
from psic_adapter.adapter.config import CONFIG_NAME, WEIGHTS_NAME
from psic_adapter.adapter.model import check_adapter_name
from psic_adapter.bitstream import coding, container
from psic_adapter.errors import ConfigError, ContainerError, FingerprintMismatchError, KeyMismatchError, PSICError
from psic_adapter.training import checkpoints

from .conftest import randomize_adapter, small_trainable_codec
from .psic_files import (DELETE, KEY, build_psic, nested_json, edit_psic, real_psic, smooth_image, split_psic, tiny_codec,
                         write_png)

PACKAGE = Path(__file__).resolve().parents[1] / "psic_adapter"

# an RGB image of 48 x 80 (padded to 64 x 128) and an RGBA one of 40 x 40 (padded to 64 x 64)
RGB = (48, 80, 3)
RGBA = (40, 40, 4)


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def codec():
    return tiny_codec()


@pytest.fixture(scope="module")
def rgb_file(codec):
    return real_psic(*RGB)


@pytest.fixture(scope="module")
def rgba_file(codec):
    return real_psic(*RGBA)


def _decode_refused(data: bytes, tmp_path: Path, codec, match: str):
    """``container.read`` then ``coding.decode_file`` of ``data``: a PSICError (ContainerError / ImageError /
    FingerprintMismatchError) matching ``match``, with little memory (nothing sized by the header's claims),
    no output file. (No wall-clock bound: these machines are shared; the memory bound is what catches a
    decoder that believes a lying header.)"""
    src, dst = tmp_path / "lie.psic", tmp_path / "out.png"
    src.write_bytes(data)
    tracemalloc.start()
    try:
        try:
            container.read(src)
        except ContainerError as exc:  # refused by the container alone: fine, and decode_file must agree
            _one_line(exc)
        with pytest.raises(PSICError, match=match) as info:
            coding.decode_file(src, dst, codec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _one_line(info.value)
    assert peak < 16 << 20, f"allocated {peak / 2**20:.1f} MiB to refuse a {len(data)}-byte file"
    assert not dst.exists()
    return info.value


# ------------------------------------------------------------------ the control cases
def test_the_real_files_decode(codec, rgb_file, rgba_file, tmp_path):
    """The files every lie below starts from decode, to their own size, with the alpha plane back."""
    from PIL import Image

    for name, data, (h, w, c) in (("rgb", rgb_file, RGB), ("rgba", rgba_file, RGBA)):
        src = tmp_path / f"{name}.psic"
        src.write_bytes(data)
        out = coding.decode_file(src, tmp_path / f"{name}.png", codec)
        with Image.open(out["path"]) as im:
            assert im.size == (w, h) and im.mode == ("RGBA" if c == 4 else "RGB")
            if c == 4:
                assert np.array_equal(np.asarray(im)[..., 3], smooth_image(h, w, 4)[..., 3])
        # the rebuilt file (same header, recomputed CRC) is byte for byte the original: the helper is faithful
        assert edit_psic(data) == data


# ------------------------------------------------------------------ lying headers (CRC recomputed)
def _flip_payload(data: bytes, at: int = 10) -> bytes:
    _, _, payload = split_psic(data)
    pl = bytearray(payload)
    pl[at] ^= 0xFF
    return edit_psic(data, payload=bytes(pl))


def _alpha(data: bytes, alpha: bytes) -> bytes:
    """The RGBA file with its alpha plane replaced (alpha_len updated, so that only the plane lies)."""
    _, header, payload = split_psic(data)
    strings = payload[: len(payload) - header["alpha_len"]]
    return edit_psic(data, payload=strings + alpha, alpha_len=len(alpha))


LIES = {
    # name: (which file, how to lie, what the error says)
    "shape -2": ("rgb", lambda d: edit_psic(d, shape=[-2, 2]), "bad shape"),
    "shape text": ("rgb", lambda d: edit_psic(d, shape="abc"), "bad shape"),
    "shape 3000x3000": ("rgb", lambda d: edit_psic(d, shape=[3000, 3000]), "latent shape"),
    # json.loads itself gives up on 1000 levels (RecursionError, caught); 50 reach the header's own depth bound
    "shape 1000 deep": ("rgb", lambda d: edit_psic(d, shape=nested_json(1000)), "unreadable|bad shape"),
    "shape 50 deep": ("rgb", lambda d: edit_psic(d, shape=nested_json(50, "2")), "bad shape"),
    "height 100000": ("rgb", lambda d: edit_psic(d, height=100000), "bad height"),
    "height over the pixel limit": ("rgb", lambda d: edit_psic(d, height=65536, width=65536,
                                                               padded=[65536, 65536]), "pixel limit"),
    "width 10, padded as it was": ("rgb", lambda d: edit_psic(d, width=10), "padded size"),
    "padded shrunk": ("rgb", lambda d: edit_psic(d, padded=[64, 64]), "padded size"),
    "payload byte flipped": ("rgb", _flip_payload, "latent checksum"),
    "hyperprior byte flipped": ("rgb", lambda d: _flip_payload(d, at=-1 - 4), "latent checksum"),
    "no latent check": ("rgb", lambda d: edit_psic(d, latent_check=DELETE), "no latent checksum"),
    "latent check wrong": ("rgb", lambda d: edit_psic(d, latent_check=[1.0, 2.0, 3.0, 4.0]), "latent checksum"),
    "latent check text": ("rgb", lambda d: edit_psic(d, latent_check="abc"), "bad latent_check"),
    "unknown fields": ("rgb", lambda d: edit_psic(d, surprise=1, exec="rm -rf /"), "unknown field"),
    "layout 1000 deep": ("rgb", lambda d: edit_psic(d, layout=nested_json(1000)), "unreadable|string layout"),
    "layout 50 deep": ("rgb", lambda d: edit_psic(d, layout=nested_json(50)), "string layout"),
    "layout 5000 strings": ("rgb", lambda d: edit_psic(d, layout=[[0] * 5000]), "too many strings"),
    "layout negative": ("rgb", lambda d: edit_psic(d, layout=[[-5], [10]]), "string length"),
    "alpha in an RGB image": ("rgb", lambda d: edit_psic(d, alpha_raw_len=100), "alpha plane"),
    "mode CMYK": ("rgb", lambda d: edit_psic(d, mode="CMYK"), "bad mode"),
    "other codec's tables": ("rgb", lambda d: edit_psic(d, tables_hash="00" * 8), "entropy tables"),
    "other codec": ("rgb", lambda d: edit_psic(d, base_fingerprint="00" * 16), "compressed with another"),
    "alpha not zlib": ("rgba", lambda d: _alpha(d, b"\x00not zlib at all" * 8), "not zlib"),
    "alpha zlib bomb": ("rgba", lambda d: _alpha(d, zlib.compress(b"\0" * 20_000_000, 9)), "wrong size"),
    "alpha too short": ("rgba", lambda d: _alpha(d, zlib.compress(b"\0" * 100)), "wrong size"),
    "alpha_len 200 KB": ("rgba", lambda d: edit_psic(d, alpha_len=200_000), "payload length"),
    "alpha_raw_len 200 KB": ("rgba", lambda d: edit_psic(d, alpha_raw_len=200_000), "alpha plane"),
    "RGBA without alpha": ("rgb", lambda d: edit_psic(d, mode="RGBA"), "alpha plane"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_lying_header_is_refused(lie, codec, rgb_file, rgba_file, tmp_path):
    which, make, match = LIES[lie]
    data = make(rgb_file if which == "rgb" else rgba_file)
    _decode_refused(data, tmp_path, codec, match)


def test_a_header_length_of_2_31_is_refused(codec, rgb_file, tmp_path):
    _, header, payload = split_psic(rgb_file)
    data = build_psic(header, payload, hlen=2**31)
    _decode_refused(data, tmp_path, codec, "claims 2147483648 bytes")
    for hlen in (2**32 - 1, len(rgb_file)):  # the largest field, and one inside the file but past its end
        _decode_refused(build_psic(header, payload, hlen=hlen), tmp_path, codec, "claims|truncated|checksum")


def test_a_width_that_keeps_the_padded_size_decodes_to_the_header_size(codec, rgb_file, tmp_path):
    """The other outcome the container allows: a header that fits everything decodes to exactly its size."""
    from PIL import Image

    src = tmp_path / "narrow.psic"
    src.write_bytes(edit_psic(rgb_file, width=70))  # 70 still pads to 128
    out = coding.decode_file(src, tmp_path / "narrow.png", codec)
    with Image.open(out["path"]) as im:
        assert im.size == (70, 48)


def test_a_nan_latent_check_does_not_switch_the_checksum_off(codec, rgb_file, tmp_path):
    flipped = _flip_payload(rgb_file)
    data = edit_psic(flipped, latent_check=[float("nan")] * 4)  # json writes NaN, json.loads reads it back
    _decode_refused(data, tmp_path, codec, "latent")


def test_a_huge_integer_latent_check_is_a_container_error(codec, rgb_file, tmp_path):
    _decode_refused(edit_psic(rgb_file, latent_check=[10**400] * 4), tmp_path, codec, "latent")


# ------------------------------------------------------------------ container format 1
def _format1(data: bytes) -> bytes:
    """A file as psic-adapter 0.1 wrote it: version byte 1, ``padded`` the unpadded size, no alpha size,
    no latent checksum."""
    _, header, payload = split_psic(data)
    header["padded"] = [header["height"], header["width"]]
    del header["latent_check"], header["alpha_raw_len"]
    return build_psic(header, payload, version=1)


@pytest.mark.parametrize("which", ["rgb", "rgba"])
def test_a_format_1_file_still_decodes_when_asked(which, codec, rgb_file, rgba_file, tmp_path):
    from PIL import Image

    data = rgb_file if which == "rgb" else rgba_file
    old = _format1(data)
    assert old[4] == 1 and "latent_check" not in split_psic(old)[1]
    (tmp_path / "new.psic").write_bytes(data)
    (tmp_path / "old.psic").write_bytes(old)
    _, header, _ = container.read(tmp_path / "old.psic")
    assert header.version == 1 and header.latent_check is None
    coding.decode_file(tmp_path / "new.psic", tmp_path / "new.png", codec)
    with pytest.warns(coding.UncheckedFormatWarning, match="no latent checksum"):
        coding.decode_file(tmp_path / "old.psic", tmp_path / "old.png", codec, allow_format_1=True)
    with Image.open(tmp_path / "new.png") as a, Image.open(tmp_path / "old.png") as b:
        assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def test_format_1_leniency_is_for_format_1_only(rgb_file):
    """The unpadded ``padded`` size and the missing checksum of format 1 are errors in a format-2 file."""
    old = _format1(rgb_file)
    with pytest.raises(ContainerError, match="padded size"):
        container.unpack(edit_psic(old, version=2))
    with pytest.raises(ContainerError, match="no latent checksum"):
        container.unpack(edit_psic(old, version=2, padded=[64, 128]))


# ------------------------------------------------------------------ adapters on disk
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved, trained-looking adapter of a tiny codec, an image and a .psic file made for the adapter."""
    root = tmp_path_factory.mktemp("adapter")
    model = randomize_adapter(wrap_model(small_trainable_codec(), PSICConfig(), key=KEY), std=0.05)
    model.save_pretrained(root / "adapter")
    src = write_png(root / "in.png", smooth_image(*RGB))
    coding.encode_file(src, root / "made.psic", model)
    return {"dir": root / "adapter", "psic": root / "made.psic", "config": json.loads(
        (root / "adapter" / CONFIG_NAME).read_text()), "fingerprint": model.adapter_fingerprint(), "key": KEY}


def _adapter_copy(saved, tmp_path, edit=None, config=None) -> Path:
    """A copy of the saved adapter whose config is edited by ``edit`` or replaced by ``config`` (text or bytes)."""
    d = tmp_path / "edited"
    shutil.copytree(saved["dir"], d)
    cfg = json.loads(json.dumps(saved["config"])) if config is None else config
    if edit is not None:
        edit(cfg)
    if isinstance(cfg, str):
        cfg = cfg.encode("utf-8")
    elif not isinstance(cfg, bytes):
        cfg = json.dumps(cfg).encode("utf-8")
    (d / CONFIG_NAME).write_bytes(cfg)
    return d


def test_the_saved_adapter_loads_and_decodes(saved, tmp_path):
    """The control case: the unedited copy loads and decodes the file made for it."""
    d = _adapter_copy(saved, tmp_path)
    model = load_adapter(small_trainable_codec(), d)
    assert model.adapter_fingerprint() == saved["fingerprint"]
    out = coding.decode_file(saved["psic"], tmp_path / "out.png", model, key=KEY)
    assert out["version"] == "full"


def _deep(depth: int):
    obj = {}
    for _ in range(depth):
        obj = {"x": obj}
    return obj


def _set(path, value):
    def edit(cfg):
        target = cfg
        for k in path[:-1]:
            target = target[k]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return edit


def _many(*edits):
    def edit(cfg):
        for e in edits:
            e(cfg)
    return edit


BAD_CONFIGS = {
    "cond_dim 10**9": (_set(["cond_dim"], 10**9), "cond_dim"),
    "hidden_dim 10**9": (_set(["hidden_dim"], 10**9), "hidden_dim"),
    "fourier_freqs 10**9": (_set(["fourier_freqs"], 10**9), "fourier_freqs"),
    "injection_points a string": (_set(["injection_points"], "g_s.1"), "injection_points"),
    "injection point a string": (_set(["injection_points", 0], "g_s.1"), "injection point"),
    "channels 10**9": (_set(["injection_points", 0, "channels"], 10**9), "channels of g_s.1"),
    "channels a float": (_set(["injection_points", 0, "channels"], 32.0), "channels of g_s.1"),
    "2000 injection points": (_set(["injection_points"], [{"module": "g_s.1", "channels": 8}] * 2000),
                              "injection_points"),
    "50M parameters": (_many(_set(["hidden_dim"], 8192), _set(["injection_points", 0, "channels"], 8192)),
                       "parameters"),
    "training 10000 deep": (lambda cfg: None, "nested"),  # written as text below
    "base_model 40 deep": (_set(["base_model"], _deep(40)), "nested"),
    "kdf null": (_set(["kdf"], None), "kdf"),
    "kdf empty": (_set(["kdf"], {}), "kdf"),
    "kdf without n": (_set(["kdf", "n"], DELETE), "missing 'n'"),
    "kdf n 2**10": (_set(["kdf", "n"], 2**10), "kdf n"),
    "kdf n not a power of 2": (_set(["kdf", "n"], 2**14 + 1), "power of two"),
    "kdf dklen 4": (_set(["kdf", "dklen"], 4), "dklen"),
    "kdf md5": (_set(["kdf"], {"name": "md5", "dklen": 32}), "unknown KDF"),
    "kdf pbkdf2 1000 iterations": (_set(["kdf"], {"name": "pbkdf2_sha256", "iterations": 1000, "dklen": 32}),
                                   "iterations"),
    "kdf extra field": (_set(["kdf", "maxmem"], 1), "unknown kdf field"),
    "format 1 with full_version base": (_set(["format_version"], 1), "full version"),
    "format 1 with spatial": (_many(_set(["format_version"], 1), _set(["full_version"], "condition"),
                                    _set(["modulation"], "spatial")), "spatial"),
    "format -7": (_set(["format_version"], -7), "unknown adapter format"),
    "format '2'": (_set(["format_version"], "2"), "integer"),
    "format True": (_set(["format_version"], True), "integer"),
    "format 4": (_set(["format_version"], 4), "newer"),
    "unknown field": (_set(["run_this"], "os.system"), "unknown adapter config field"),
    "salt not hex": (_set(["salt"], "zz" * 16), "salt"),
    "modulation unknown": (_set(["modulation"], "xor"), "modulation"),
    "cond_dim 8 with a key": (_set(["cond_dim"], 8), "cond_dim >= 16"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_adapter_config_is_a_config_error(case, saved, tmp_path):
    edit, match = BAD_CONFIGS[case]
    if case == "training 10000 deep":
        text = json.dumps(saved["config"])
        text = text.replace('"training": {}', '"training": ' + '{"x": ' * 10000 + "{}" + "}" * 10000)
        d = _adapter_copy(saved, tmp_path, config=text)
    else:
        d = _adapter_copy(saved, tmp_path, edit)
    with pytest.raises(ConfigError, match=match) as info:
        PSICConfig.load(d)
    assert len(_one_line(info.value)) < 1000
    # loading the adapter onto a codec stops at the same error, before anything is built
    with pytest.raises(ConfigError, match=match):
        load_adapter(tiny_codec(), d)


@pytest.mark.parametrize("text, match", [("{not json", "not valid JSON"), (b"\xff\xfe{}", "not valid JSON"),
                                         ("[1, 2]", "JSON object"), (" " * (2 << 20), "larger than")],
                         ids=["not json", "not utf-8", "a list", "2 MB"])
def test_an_adapter_config_that_is_not_a_config(text, match, saved, tmp_path):
    d = _adapter_copy(saved, tmp_path, config=text)
    with pytest.raises(ConfigError, match=match) as info:
        PSICConfig.load(d)
    _one_line(info.value)


def test_a_bound_config_without_its_kdf_is_refused(saved, tmp_path):
    d = _adapter_copy(saved, tmp_path, _set(["kdf"], DELETE))
    with pytest.raises(ConfigError, match="kdf"):
        PSICConfig.load(d)


def test_a_config_error_stays_short_for_a_huge_value(saved, tmp_path):
    d = _adapter_copy(saved, tmp_path, _set(["cond_dim"], "9" * 100_000))
    with pytest.raises(ConfigError) as info:
        PSICConfig.load(d)
    assert len(_one_line(info.value)) < 1000


def test_a_config_integer_of_5000_digits_is_a_config_error(saved, tmp_path):
    text = json.dumps(saved["config"]).replace('"cond_dim": 64', '"cond_dim": 1' + "0" * 5000)
    d = _adapter_copy(saved, tmp_path, config=text)
    with pytest.raises(ConfigError, match="cond_dim|JSON"):
        PSICConfig.load(d)


def test_from_dict_with_a_5000_digit_integer_is_a_config_error(saved):
    with pytest.raises(ConfigError, match="cond_dim"):
        PSICConfig.from_dict({**saved["config"], "cond_dim": 10**5000})


def test_an_oversized_weights_file_is_refused_before_loading(saved, tmp_path, monkeypatch):
    import safetensors.torch

    d = _adapter_copy(saved, tmp_path)
    with open(d / WEIGHTS_NAME, "r+b") as fh:  # sparse: 64 MiB on paper, nothing on disk
        fh.truncate(64 << 20)

    def never(*a, **k):
        raise AssertionError("the oversized weights file was opened")

    monkeypatch.setattr(safetensors.torch, "load_file", never)
    with pytest.raises(ConfigError, match="far more than") as info:
        load_adapter(small_trainable_codec(), d)
    _one_line(info.value)


def _weights_edit(kind: str):
    def edit(state):
        name = sorted(state)[0]
        if kind == "missing":
            del state[name]
        elif kind == "extra":
            state["smuggled.weight"] = torch.zeros(3)
        elif kind == "shape":
            state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
        elif kind == "integer":
            state[name] = torch.zeros(state[name].shape, dtype=torch.int64)
        return "smuggled.weight" if kind == "extra" else name
    return edit


@pytest.mark.parametrize("kind", ["missing", "extra", "shape", "integer"])
def test_weights_that_do_not_fit_name_the_tensor(kind, saved, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _adapter_copy(saved, tmp_path)
    state = load_file(str(d / WEIGHTS_NAME))
    name = _weights_edit(kind)(state)
    save_file(state, str(d / WEIGHTS_NAME))
    host = wrap_model(small_trainable_codec(), PSICConfig(condition="public", cond_dim=8), adapter_name="other")
    what = {"missing": "missing", "extra": "unexpected", "shape": "of another shape", "integer": "not floating point"}[kind]
    with pytest.raises(ConfigError, match=rf"{re.escape(str(d / WEIGHTS_NAME))}: .*1 {what} \({re.escape(name)}") as info:
        load_adapter(host, d, adapter_name="loaded")
    _one_line(info.value)
    assert host.adapter_names == ["other"]  # nothing half-added


def test_a_pickle_as_adapter_weights_is_never_unpickled(saved, tmp_path):
    marker = tmp_path / "PWNED"
    d = _adapter_copy(saved, tmp_path)
    (d / WEIGHTS_NAME).write_bytes(pickle.dumps({"x": _Evil(marker)}))
    with pytest.raises(ConfigError, match="cannot read adapter weights"):
        load_adapter(small_trainable_codec(), d)
    assert not marker.exists()


# ------------------------------------------------------------------ the adapter fingerprint covers the config
FINGERPRINT_EDITS = {
    "format 3 -> 2": _many(_set(["format_version"], 2), _set(["full_version"], "condition")),
    "full_version": _set(["full_version"], "condition"),
    "fourier_freqs": _set(["fourier_freqs"], 11),
    "condition": _set(["condition"], "public"),
}


@pytest.mark.parametrize("edit", list(FINGERPRINT_EDITS))
def test_an_edited_config_no_longer_decodes_the_adapters_files(edit, saved, tmp_path):
    d = _adapter_copy(saved, tmp_path, FINGERPRINT_EDITS[edit])
    model = load_adapter(small_trainable_codec(), d)  # the tensors still fit: it loads
    assert model.adapter_fingerprint() != saved["fingerprint"]
    with pytest.raises(FingerprintMismatchError, match="made for adapter") as info:
        coding.decode_file(saved["psic"], tmp_path / "out.png", model)
    _one_line(info.value)
    assert not (tmp_path / "out.png").exists()


def test_an_edited_kdf_locks_the_key_out_but_keeps_the_files(saved, tmp_path):
    """The key check and the KDF say who gets the full version (the base decode), not what a decode is: they are
    outside the fingerprint (so ``psic rekey`` keeps the files), and an edit to them only stops the owner's key."""
    d = _adapter_copy(saved, tmp_path, _set(["kdf", "n"], 2**15))
    model = load_adapter(small_trainable_codec(), d)
    assert model.adapter_fingerprint() == saved["fingerprint"]
    assert not model.key_matches(saved["key"])
    with pytest.raises(KeyMismatchError):
        coding.decode_file(saved["psic"], tmp_path / "out.png", model, key=saved["key"])
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("modulation", ["film", "spatial"])
def test_an_edited_modulation_no_longer_loads(modulation, saved, tmp_path):
    """A modulation edit changes the tensors the adapter needs: the weights no longer fit, named."""
    d = _adapter_copy(saved, tmp_path, _set(["modulation"], modulation))
    with pytest.raises(ConfigError, match="tensors do not fit"):
        load_adapter(small_trainable_codec(), d)


# ------------------------------------------------------------------ adapter names
BAD_NAMES = ["/abs/path", "../x", "a/b", "", "x" * 65, "..", ".", "a\\b", "a\x00b", " a", "-x", "é", None, 5,
             "a..b"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_bad_adapter_name_is_refused(name, saved, tmp_path):
    with pytest.raises(ConfigError, match="adapter name"):
        check_adapter_name(name)
    model = wrap_model(tiny_codec(), PSICConfig(condition="public", cond_dim=8))
    with pytest.raises(ConfigError, match="adapter name"):
        model.add_adapter(name, PSICConfig(condition="public", cond_dim=8))
    assert model.adapter_names == ["default"]
    with pytest.raises(ConfigError, match="adapter name"):
        load_adapter(tiny_codec(), saved["dir"], adapter_name=name)
    model.unwrap()


@pytest.mark.parametrize("name", ["a", "v1-2", "A_b", "x" * 64])
def test_good_adapter_names_are_accepted(name):
    assert check_adapter_name(name) == name


def test_a_dotted_adapter_name_is_accepted_or_refused_cleanly():
    model = wrap_model(small_trainable_codec(), PSICConfig(condition="public", cond_dim=8))
    try:
        model.add_adapter("v1.2", PSICConfig(condition="public", cond_dim=8))
    except ConfigError:
        assert model.adapter_names == ["default"]
    else:
        assert "v1.2" in model.adapter_names


def test_save_pretrained_writes_only_under_its_root(tmp_path):
    model = wrap_model(tiny_codec(), PSICConfig(condition="public", cond_dim=8))
    model.add_adapter("second", PSICConfig(condition="public", cond_dim=8))
    root = tmp_path / "out" / "root"
    model.save_pretrained(root)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["out/root/" + n for n in (CONFIG_NAME, WEIGHTS_NAME)] + \
        ["out/root/second/" + n for n in (CONFIG_NAME, WEIGHTS_NAME)]
    for bad in (["../../escape"], ["/tmp/escape"], ["second/../../x"]):
        with pytest.raises(ConfigError):
            model.save_pretrained(tmp_path / "other", adapter_names=bad)
    assert not (tmp_path / "other").exists() and not (tmp_path / "escape").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    model.unwrap()


def test_save_pretrained_rechecks_names_it_did_not_add(tmp_path):
    outside = tmp_path / "outside"
    if "." in str(outside):
        pytest.skip("torch refuses module names with '.'")
    model = wrap_model(tiny_codec(), PSICConfig(condition="public", cond_dim=8))
    model.add_adapter("second", PSICConfig(condition="public", cond_dim=8))
    model.psic_adapters[str(outside)] = model.psic_adapters["second"]  # bypasses add_adapter's name check
    model.psic_configs[str(outside)] = model.psic_configs["second"]
    try:
        with pytest.raises(ConfigError):
            model.save_pretrained(tmp_path / "root")
    finally:
        model.unwrap()
        assert not outside.exists()


# ------------------------------------------------------------------ run checkpoints
class _Evil:
    """Unpickling this creates ``marker``: the proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save", "pickle after a safetensors-like size"])
def test_a_pickle_checkpoint_is_never_unpickled(how, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint.safetensors"
    obj = {"step": 1, "x": _Evil(marker)}
    if how == "pickle":
        path.write_bytes(pickle.dumps(obj))
    elif how == "torch.save":
        torch.save(obj, path)
    else:
        raw = pickle.dumps(obj)
        path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    assert not marker.exists()
    with pytest.raises(PSICError, match="not a psic checkpoint") as info:
        checkpoints.load_state(path)
    _one_line(info.value)
    assert not marker.exists()


def _checkpoint_with(path: Path, meta, tensors=None) -> Path:
    from safetensors.torch import save

    raw = meta if isinstance(meta, str) else json.dumps(meta)
    path.write_bytes(save(tensors or {}, metadata={"psic_checkpoint": raw}))
    return path


@pytest.mark.parametrize("meta, match", [
    ({"format": 1, "state": {"w": {"__tensor__": "t9"}}}, "missing tensor"),
    ({"format": 1, "state": {"w": {"__ndarray__": ["t0"]}}}, "missing tensor"),
    ({"format": 1, "state": {"f": {"__float__": "1e999"}}}, "bad float"),
    ({"format": 1, "state": {"m": {"__items__": [[1, 2, 3]]}}}, "malformed mapping"),
    ({"format": 1, "state": {"m": {"__items__": [[{"a": 1}, 2]]}}}, "unhashable"),
    ({"format": 1, "state": {"m": {"__tuple__": "abc"}}}, "malformed"),
    ({"format": 2, "state": {}}, "format 1"),
    ({"format": 1, "state": [1]}, "format 1"),
    ("{not json", "not valid JSON"),
    ('{"format": 1, "state": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON|nested"),
    ({"format": 1, "state": {"deep": json.loads("[" * 200 + "]" * 200)}}, "nested too deeply"),
])
def test_a_checkpoint_with_bad_metadata_is_a_psic_error(meta, match, tmp_path):
    path = _checkpoint_with(tmp_path / "checkpoint.safetensors", meta, {"t0": torch.zeros(2)})
    with pytest.raises(PSICError, match=match) as info:
        checkpoints.load_state(path)
    _one_line(info.value)


def test_a_safetensors_file_without_checkpoint_metadata(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(PSICError, match="no psic_checkpoint metadata"):
        checkpoints.load_state(tmp_path / "c.safetensors")


def test_a_checkpoint_key_tuple_holding_a_list_is_a_psic_error(tmp_path):
    meta = {"format": 1, "state": {"m": {"__items__": [[{"__tuple__": [[1]]}, 2]]}}}
    with pytest.raises(PSICError):
        checkpoints.load_state(_checkpoint_with(tmp_path / "c.safetensors", meta))


def _same(a, b) -> bool:
    """Equal values of exactly the same types, all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):  # Counter too: same keys in the same order, same values
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_checkpoint_round_trip_is_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 3, generator=g)
    state = {
        "step": 12, "flag": True, "none": None, "name": "run", "big": 2**80,
        "floats": [0.1, float("nan"), float("inf"), float("-inf"), -0.0],
        "tuples": (1, (2.5, "x"), ()),
        "int_keys": {0: "a", 7: [1, 2], -3: {"k": (None,)}},
        "mixed_keys": {(1, "a"): 1, 2.5: "f", None: 0, False: "b"},
        "counter": collections.Counter({"cat": 3, "dog": 1}),
        "dunder": {"__tensor__": "t0", "__float__": "nan"},  # user data that looks like a tag
        "arrays": [np.arange(6, dtype=np.int64).reshape(2, 3), np.linspace(0, 1, 5, dtype=np.float32)],
        "tensors": {"w": t, "w_t": t.t(), "half": t.half(), "ints": torch.arange(5), "mask": t > 0},
        "optimizer": {"state": {0: {"exp_avg": torch.ones(2), "step": torch.tensor(3.0)}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
        "rng": torch.get_rng_state(),
    }
    path = checkpoints.save_state(tmp_path / "checkpoint.safetensors", state)
    back = checkpoints.load_state(path)
    assert _same(state, back), back
    assert math.copysign(1.0, back["floats"][4]) == -1.0


# ------------------------------------------------------------------ no unpickling anywhere in the package
def _code_tokens(path: Path) -> str:
    """The file's code without comments and strings (docstrings mention torch.load(weights_only=False))."""
    out = []
    with open(path, "rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER):
                out.append(tok.string)
    return "".join(out)


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def test_no_unpickling_in_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    problems = []
    for path in files:
        code = _code_tokens(path)
        rel = path.relative_to(PACKAGE.parent)
        for bad in ("weights_only=False", "pickle.load", "pickle.Unpickler", "allow_pickle=True", "importcloudpickle",
                    "importdill", "importjoblib", "importshelve", "importmarshal", "frompickleimport",
                    "importpickle"):
            if bad in code:
                problems.append(f"{rel}: {bad}")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if name == "load" and owner == "torch":
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{rel}:{node.lineno}: torch.load without weights_only=True")
            if name in ("load", "loads") and owner in ("pickle", "cPickle", "dill", "cloudpickle", "joblib"):
                problems.append(f"{rel}:{node.lineno}: {owner}.{name}")
    assert not problems, problems


def test_the_unpickling_guard_sees_what_it_looks_for(tmp_path):
    """The control case of the scan: it flags the calls it must flag, and not their mention in a docstring."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""torch.load(weights_only=False) in a docstring is fine."""\n'
                   "import torch\nx = torch.load(p, weights_only=False)\n")
    assert "weights_only=False" in _code_tokens(bad)
    ok = tmp_path / "ok.py"
    ok.write_text('"""torch.load(weights_only=False) in a docstring is fine."""\n# pickle.load(f)\n')
    assert "weights_only=False" not in _code_tokens(ok) and "pickle.load" not in _code_tokens(ok)
