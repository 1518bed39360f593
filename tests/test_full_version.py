"""The default full version (adapter format 3, ``full_version="base"``) and changing an adapter's key.

An adapter fitted to a frozen codec decodes the full version as the base codec's
own decode, bit for bit: the key selects it, the adapter plays no part. So the
key is only a gate, and it can be changed without retraining (``psic rekey``).
"""

from __future__ import annotations

import json

import pytest
import torch

from psic_adapter import ConfigError, KeyMismatchError, OverwriteError, PSICConfig, load_adapter, wrap_model
from psic_adapter.adapter import change_adapter_key
from psic_adapter.adapter.config import CONFIG_NAME, WEIGHTS_NAME
from psic_adapter.bitstream import coding
from psic_adapter.cli import main

from .conftest import randomize_adapter
from .test_adapter_api import _clean_copy, small_hyperprior

KEY, NEW_KEY, OTHER = "owner key, first " * 2, "owner key, second " * 2, "somebody else's key " * 2


@pytest.fixture(scope="module")
def pristine():
    return small_hyperprior(seed=3)


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(5)
    small = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(small, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture()
def saved(pristine, tmp_path):
    """A default (format 3) adapter with non-zero weights, saved, and the base codec's decode."""
    model = randomize_adapter(wrap_model(_clean_copy(pristine), key=KEY))
    assert model.config.full_version == "base"
    folder = model.save_pretrained(tmp_path / "adapter")
    model.unwrap()
    return folder


@torch.no_grad()
def decodes(codec, folder, x, key=None):
    model = load_adapter(_clean_copy(codec), folder)
    enc = model.compress(x)
    out = model.decompress(enc["strings"], enc["shape"], key=key)["x_hat"]
    with model.disable_adapter():
        base = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    encrypted = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    model.unwrap()
    return out, base, encrypted


def test_the_full_version_is_the_base_decode_bit_for_bit(pristine, saved, x):
    full, base, encrypted = decodes(pristine, saved, x, key=KEY)
    assert torch.equal(full, base)
    assert not torch.equal(encrypted, base)  # the adapter does change the keyless decode
    wrong, _, _ = decodes(pristine, saved, x, key=OTHER)
    assert torch.equal(wrong, encrypted)  # a wrong key decodes as no key (with a warning)


def test_an_older_format_cannot_claim_the_bypass(saved):
    cfg = json.loads((saved / CONFIG_NAME).read_text())
    assert cfg["format_version"] >= 3 and cfg["full_version"] == "base"
    cfg["format_version"] = 2
    (saved / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="full_version"):
        PSICConfig.load(saved)
    del cfg["full_version"]  # format 2 without the field: its full version went through the adapter
    (saved / CONFIG_NAME).write_text(json.dumps(cfg))
    assert PSICConfig.load(saved).full_version == "condition"


# ------------------------------------------------------------------ changing the key
def test_change_key_keeps_the_adapter_and_its_files(pristine, saved, x, tmp_path):
    psic = tmp_path / "x.psic"
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(png)
    model = load_adapter(_clean_copy(pristine), saved)
    coding.encode_file(png, psic, model)
    old_fp = model.adapter_fingerprint()
    model.unwrap()

    out = change_adapter_key(saved, tmp_path / "rekeyed", KEY, NEW_KEY)
    assert (out / WEIGHTS_NAME).read_bytes() == (saved / WEIGHTS_NAME).read_bytes()
    old_cfg, new_cfg = (json.loads((d / CONFIG_NAME).read_text()) for d in (saved, out))
    assert new_cfg["key_check"] != old_cfg["key_check"]
    assert {k: v for k, v in new_cfg.items() if k != "key_check"} == {k: v for k, v in old_cfg.items() if k != "key_check"}

    rekeyed = load_adapter(_clean_copy(pristine), out)
    assert rekeyed.adapter_fingerprint() == old_fp  # so the .psic files made for the adapter still decode
    assert rekeyed.key_matches(NEW_KEY) and not rekeyed.key_matches(KEY)
    with pytest.raises(KeyMismatchError):
        coding.decode_file(psic, tmp_path / "old.png", rekeyed, key=KEY)
    coding.decode_file(psic, tmp_path / "new.png", rekeyed, key=NEW_KEY)
    coding.decode_file(psic, tmp_path / "plain.png", rekeyed, plain=True)
    assert (tmp_path / "new.png").read_bytes() == (tmp_path / "plain.png").read_bytes()
    rekeyed.unwrap()


def test_change_key_in_memory(pristine, x):
    model = randomize_adapter(wrap_model(_clean_copy(pristine), key=KEY))
    model.change_key(KEY, NEW_KEY)
    assert model.key_matches(NEW_KEY) and not model.key_matches(KEY)
    assert not torch.equal(model.full_condition(), torch.zeros_like(model.full_condition()))
    model.unwrap()


def test_change_key_refusals(pristine, saved, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyMismatchError, match="old key"):
        change_adapter_key(saved, out, OTHER, NEW_KEY)
    assert not out.exists()
    with pytest.raises(OverwriteError, match="exists"):
        change_adapter_key(saved, saved, KEY, NEW_KEY)
    assert load_adapter(_clean_copy(pristine), saved).key_matches(KEY)  # untouched
    change_adapter_key(saved, saved, KEY, NEW_KEY, force=True)  # in place, asked for
    assert load_adapter(_clean_copy(pristine), saved).key_matches(NEW_KEY)

    learnt = wrap_model(_clean_copy(pristine), PSICConfig(full_version="condition"), key=KEY)
    folder = learnt.save_pretrained(tmp_path / "learnt")
    with pytest.raises(ConfigError, match="retrained"):
        change_adapter_key(folder, tmp_path / "learnt2", KEY, NEW_KEY)
    with pytest.raises(ConfigError, match="retrained"):
        learnt.change_key(KEY, NEW_KEY)
    public = wrap_model(_clean_copy(pristine), PSICConfig(condition="public"))
    with pytest.raises(ConfigError, match="no key"):
        public.change_key(KEY, NEW_KEY)


def test_psic_rekey(pristine, saved, tmp_path, capsys):
    old, new = tmp_path / "old.key", tmp_path / "new.key"
    old.write_text(KEY + "\n")
    assert main(["keygen", str(new)]) == 0
    out = tmp_path / "rekeyed"
    assert main(["rekey", str(saved), str(out), "--key-file", str(old), "--new-key-file", str(new)]) == 0
    assert "old key no longer" in capsys.readouterr().out
    assert load_adapter(_clean_copy(pristine), out).key_matches(new.read_text())

    capsys.readouterr()
    assert main(["rekey", str(saved), str(tmp_path / "x"), "--key-file", str(new), "--new-key-file", str(old)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("psic: error: ") and "old key" in err[0]
    assert not (tmp_path / "x").exists()
