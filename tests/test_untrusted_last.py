"""The last untrusted inputs (issue 17): one test per defect, each failing before its fix.

1. a symbolic link planted at ``log.jsonl``; 2. an output that is one of the command's other
inputs (key file, checkpoint) or not a regular file; 3. KDF parameters that cost minutes and
GiBs; 4. thin images, refused only after padding; 5. file-system failures as tracebacks;
6. a config whose ``base_model`` is empty, a checkpoint without entropy tables; 7. format-1
files (no latent checksum); 8. EXIF orientation of 16-bit PNGs, 32-bit and float TIFFs;
9. ``psic push`` / ``psic info`` on links and bad weights, non-finite training settings and
losses, eval counts, planted resume counters, NaN and integer codec weights.

Small and offline: test_untrusted_cli's files (the tiny random hyperprior, N=32, M=48, saved as a
checkpoint, an image, an adapter and its key) and test_train's tiny trainer fixtures (the tiny random
CLIP of ``conftest``, 64 x 64 crops of the sample photos).
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import pickle
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from psic_adapter import PSICConfig, wrap_model
from psic_adapter.adapter import keys as K
from psic_adapter.adapter.config import CONFIG_NAME, WEIGHTS_NAME
from psic_adapter.bitstream import coding, container
from psic_adapter.bitstream.images import load_image, read_array
from psic_adapter.codec import entropy_tables_hash, load_codec
from psic_adapter.errors import ConfigError, ContainerError, ImageError, PSICError

from .conftest import make_codec, small_trainable_codec
from .psic_files import build_psic, edit_psic, split_psic
from .test_train import base_codec, photos, target  # noqa: F401 - fixtures
from .test_untrusted_cli import env, keyed, one_error_line, run  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

CODEC = "bmshj2018-hyperprior"
KEY = "the owner's key for these tests, 32+ bytes"


@pytest.fixture(scope="module")
def inputs(env, keyed):
    """test_untrusted_cli's files: a checkpoint of the tiny codec, a 40 x 50 PNG and its .psic, an adapter with
    its key file and a .psic for it (treat as read-only)."""
    return types.SimpleNamespace(dir=env["dir"], ckpt=env["ckpt"], png=env["png"], psic=env["psic"],
                                 key_file=keyed["key_file"], adapter=keyed["adapter"], apsic=keyed["psic"],
                                 codec=env["codec"])


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------ trainer helpers
def _trainer(base_codec, target, photos, out, model=None, **overrides):
    from psic_adapter.training import Trainer, TrainConfig

    cfg = dict(stage=2, adapter_only=True, steps=2, batch_size=4, crop=64, log_every=1, num_workers=0)
    cfg.update(overrides)
    model = model or wrap_model(copy.deepcopy(base_codec), PSICConfig(), key=KEY)
    return Trainer(model, target, photos, TrainConfig(**cfg), out, device="cpu", progress=False)


def _again(trainer, base_codec, target, photos, out, **overrides):
    """A trainer for the same adapter (its salt), to resume ``trainer``'s run."""
    from psic_adapter.adapter import PSICModel

    cfg = PSICConfig.from_dict(trainer.model.config.to_dict())
    model = PSICModel(copy.deepcopy(base_codec)).add_adapter("default", cfg, key=KEY)
    return _trainer(base_codec, target, photos, out, model=model, **overrides)


# ------------------------------------------------------------------ 1. log.jsonl through a link
@pytest.mark.parametrize("dangling", [True, False])
def test_a_log_symlink_is_refused_on_a_fresh_run(dangling, base_codec, target, photos, tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    if not dangling:
        elsewhere.write_text("precious\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.jsonl").symlink_to(elsewhere)
    for force in (False, True):
        with pytest.raises(PSICError, match="log.jsonl is a symbolic link") as info:
            _trainer(base_codec, target, photos, run_dir).train(force=force)
        assert "\n" not in str(info.value)
    assert (elsewhere.read_text() == "precious\n") if not dangling else not elsewhere.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["log.jsonl"]


def test_a_log_symlink_is_refused_on_resume(base_codec, target, photos, tmp_path):
    tr = _trainer(base_codec, target, photos, tmp_path, steps=1)
    tr.train()
    log = tmp_path / "log.jsonl"
    victim = tmp_path.parent / f"{tmp_path.name}-victim.txt"
    victim.write_text('{"step": 1}\n{"step": 9}\n')
    log.unlink()
    log.symlink_to(victim)
    with pytest.raises(PSICError, match="symbolic link"):
        _again(tr, base_codec, target, photos, tmp_path, steps=2).train(resume=True)
    assert victim.read_text() == '{"step": 1}\n{"step": 9}\n'
    log.unlink()
    log.symlink_to(tmp_path / "dangling.txt")
    with pytest.raises(PSICError, match="symbolic link"):
        _again(tr, base_codec, target, photos, tmp_path, steps=2).train(resume=True)
    assert not (tmp_path / "dangling.txt").exists()


def test_the_log_is_opened_without_following_links(tmp_path):
    """Even a link planted after the checks (a race) is not written through, and a pipe is refused."""
    from psic_adapter.fileio import open_append

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "log.jsonl").symlink_to(victim)
    with pytest.raises(PSICError, match="symbolic link"):
        open_append(tmp_path / "log.jsonl", "training log")
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(PSICError, match="not a regular file"):
        open_append(tmp_path / "fifo.jsonl", "training log")
    assert victim.read_text() == "precious"


# ------------------------------------------------------------------ 2. an output is never an input
def test_decompress_never_writes_over_the_key_file(inputs, tmp_path, capsys):
    key = tmp_path / "owner.png"  # a key file that happens to carry an image's name
    key.write_bytes(inputs.key_file.read_bytes())
    before = _sha(key)
    rc, _, err = run(capsys, "decompress", inputs.apsic, key, "--checkpoint", inputs.ckpt, "--adapter", inputs.adapter,
                     "--key-file", key, "--force")
    one_error_line(rc, err, r"owner\.png is the input file")
    assert _sha(key) == before
    (tmp_path / "link.png").symlink_to(key)  # through a link, too
    rc, _, err = run(capsys, "decompress", inputs.apsic, tmp_path / "link.png", "--checkpoint", inputs.ckpt,
                     "--adapter", inputs.adapter, "--key-file", key, "--force")
    one_error_line(rc, err, r"is the input file")
    assert _sha(key) == before


def test_compress_never_writes_over_its_checkpoint_or_adapter(inputs, tmp_path, capsys):
    ckpt = tmp_path / "codec.safetensors"
    ckpt.write_bytes(inputs.ckpt.read_bytes())
    before = _sha(ckpt)
    rc, _, err = run(capsys, "compress", inputs.png, ckpt, "--codec", CODEC, "--checkpoint", ckpt, "--force")
    one_error_line(rc, err, r"codec\.safetensors is the input file")
    assert _sha(ckpt) == before
    weights = inputs.adapter / WEIGHTS_NAME
    before = _sha(weights)
    rc, _, err = run(capsys, "compress", inputs.png, weights, *inputs.codec, "--adapter", inputs.adapter, "--force")
    one_error_line(rc, err, r"is the input file")
    assert _sha(weights) == before


def test_an_output_that_is_not_a_regular_file_is_refused(inputs, tmp_path, capsys):
    fifo = tmp_path / "out.psic"
    os.mkfifo(fifo)  # a device node (as root) or a pipe: never replaced by a regular file
    for argv in (["compress", inputs.png, fifo, *inputs.codec, "--force"],
                 ["decompress", inputs.psic, fifo, "--checkpoint", inputs.ckpt, "--force"],
                 ["keygen", fifo, "--force"]):
        one_error_line(*run(capsys, *argv)[::2], r"not a regular file")
    assert fifo.is_fifo()


def test_rekey_never_writes_over_the_new_key_file(inputs, tmp_path, capsys):
    out = tmp_path / "v2"
    out.mkdir()
    new_key = out / CONFIG_NAME  # the new key, kept (oddly) where the new config is to go
    new_key.write_text("a brand new key, thirty-two bytes or more\n")
    rc, _, err = run(capsys, "rekey", inputs.adapter, out, "--key-file", inputs.key_file, "--new-key-file", new_key,
                     "--force")
    one_error_line(rc, err, r"is the input file")
    assert new_key.read_text() == "a brand new key, thirty-two bytes or more\n"
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME]


# ------------------------------------------------------------------ 3. KDF cost
@pytest.mark.parametrize("n, r, p", [(2**19, 15, 16), (2**20, 8, 1), (2**14, 32, 16)])
def test_a_kdf_that_costs_too_much_is_refused(n, r, p):
    with pytest.raises(ConfigError, match=r"MiB"):
        K.check_kdf({"name": "scrypt", "n": n, "r": r, "p": p, "dklen": 32})
    with pytest.raises(ConfigError, match=r"MiB"):
        PSICConfig(kdf={"name": "scrypt", "n": n, "r": r, "p": p, "dklen": 32})


def test_every_admitted_kdf_derives_within_its_maxmem(monkeypatch):
    """The costliest settings a config may hold derive (no maxmem ValueError): 256 MiB at most."""
    seen = []
    real = K.hashlib.scrypt

    def spy(*a, **kw):
        seen.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(K.hashlib, "scrypt", spy)
    for n, r, p in ((2**16, 32, 1), (2**14, 8, 16)):
        kdf = K.check_kdf({"name": "scrypt", "n": n, "r": r, "p": p, "dklen": 32})
        assert len(K.derive_material(KEY, "00" * 16, kdf)) == 32
    for kw in seen:
        need = 128 * kw["r"] * (kw["n"] + kw["p"] + 2)
        assert need <= kw["maxmem"] <= K.MAX_SCRYPT_BYTES + (2 << 20) < 2**31 - 1
    # the bound itself: n * r * p at most 2**21
    for n, r, p in ((2**18, 8, 1), (2**17, 16, 1), (2**14, 32, 4)):
        K.check_kdf({"name": "scrypt", "n": n, "r": r, "p": p, "dklen": 32})


# ------------------------------------------------------------------ 4. thin images
def test_an_image_wider_than_a_psic_file_holds_is_refused(inputs, tmp_path, capsys):
    thin = tmp_path / "thin.png"
    Image.fromarray(np.full((1, 70_000), 128, np.uint8)).save(thin)
    out = tmp_path / "thin.psic"
    one_error_line(*run(capsys, "compress", thin, out, *inputs.codec)[::2], r"width of 70,000 px.*65,536")
    assert not out.exists()


def test_the_pixel_limit_counts_the_padded_image(inputs, tmp_path, capsys, monkeypatch):
    """A 1 x W image is 64 x W once padded: 1 x 2,000,000 asked for 16 GB. Here the same with a lower limit."""
    from psic_adapter.bitstream import images

    monkeypatch.setattr(images, "_max_pixels", None)
    monkeypatch.setenv("PSIC_MAX_PIXELS", "100000")
    thin = tmp_path / "thin.png"
    Image.fromarray(np.full((1, 20_000), 128, np.uint8)).save(thin)  # 20,000 pixels, 1,282,048 padded
    assert thin.stat().st_size < 2000
    out = tmp_path / "thin.psic"
    one_error_line(*run(capsys, "compress", thin, out, *inputs.codec)[::2],
                   r"20032x64 = 1,282,048 pixels once padded.*pixel limit \(100,000")
    assert not out.exists()
    with pytest.raises(ContainerError, match="once padded"):
        coding.encode(load_codec(CODEC, checkpoint=inputs.ckpt), torch.zeros(1, 3, 1, 20_000))


# ------------------------------------------------------------------ 5. file-system failures
def test_a_parent_that_is_a_file_is_one_error_line(inputs, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for argv in (["compress", inputs.png, afile / "o.psic", *inputs.codec],
                 ["decompress", inputs.psic, afile / "o.png", "--checkpoint", inputs.ckpt],
                 ["keygen", afile / "k.key"],
                 ["rekey", inputs.adapter, afile / "v2", "--key-file", inputs.key_file, "--new-key-file", inputs.key_file],
                 ["demo", "--out", afile],
                 ["demo", "--out", afile / "sub"]):
        one_error_line(*run(capsys, *argv)[::2], r"afile")
    assert afile.read_text() == "not a folder"


def test_save_pretrained_and_train_out_under_a_file_are_psic_errors(base_codec, target, photos, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    model = wrap_model(copy.deepcopy(base_codec), PSICConfig(), key=KEY)
    with pytest.raises(PSICError, match="afile"):
        model.save_pretrained(afile / "adapter")
    for out in (afile, afile / "run"):
        with pytest.raises(PSICError, match="afile"):
            _trainer(base_codec, target, photos, out, model=model).train()
    assert afile.read_text() == "x"


@pytest.mark.parametrize("where, exc", [
    ("mkstemp", PermissionError(errno.EACCES, "Permission denied")),  # a read-only folder (root ignores modes)
    ("fsync", OSError(errno.ENOSPC, "No space left on device")),  # a full disk
])
def test_a_read_only_folder_or_a_full_disk_is_one_error_line(where, exc, inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.psic"
    out.write_bytes(b"the old output")
    key = tmp_path / "k.key"

    def fail(*a, **kw):
        raise exc

    monkeypatch.setattr(tempfile if where == "mkstemp" else os, where, fail)
    one_error_line(*run(capsys, "compress", inputs.png, out, *inputs.codec, "--force")[::2],
                   rf"x\.psic: cannot write \({exc.strerror}.*nothing was replaced")
    one_error_line(*run(capsys, "keygen", key)[::2], rf"k\.key: cannot write \({exc.strerror}")
    assert out.read_bytes() == b"the old output" and not key.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.psic"]  # no temporary file left


# ------------------------------------------------------------------ 6. base_model, entropy tables
def test_an_empty_base_model_is_a_config_error(inputs, tmp_path, capsys):
    import shutil

    bad = tmp_path / "adapter"
    shutil.copytree(inputs.adapter, bad)
    cfg = json.loads((bad / CONFIG_NAME).read_text())
    for base_model, match in (({}, "base_model lacks architecture and fingerprint"),
                              ({**cfg["base_model"], "architecture": 7}, "architecture"),
                              ({**cfg["base_model"], "quality": "3"}, "quality")):
        (bad / CONFIG_NAME).write_text(json.dumps({**cfg, "base_model": base_model}))
        for argv in (["decompress", inputs.apsic, tmp_path / "o.png", "--adapter", bad],
                     ["compress", inputs.png, tmp_path / "o.psic", "--adapter", bad],
                     ["info", bad]):
            one_error_line(*run(capsys, *argv)[::2], match)
        from psic_adapter.adapter import codec_for_adapter

        with pytest.raises(ConfigError, match=match):
            codec_for_adapter(bad)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.psic").exists()


@pytest.mark.parametrize("name, quality", [("hyperprior-q1", 1), ("small", None)])
def test_a_checkpoint_without_entropy_tables_gets_them_computed(name, quality, inputs, tmp_path, capsys):
    codec = make_codec("bmshj2018-hyperprior") if quality else small_trainable_codec()
    old = {k: v.contiguous() for k, v in codec.state_dict().items()
           if k.rsplit(".", 1)[-1] not in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")}
    save_file(old, tmp_path / "old.safetensors")  # as older CompressAI versions saved them
    loaded = load_codec(CODEC, quality=quality, checkpoint=tmp_path / "old.safetensors")
    assert entropy_tables_hash(loaded) == entropy_tables_hash(codec)
    q = ["--quality", "1"] if quality else []
    rc, _, err = run(capsys, "compress", inputs.png, tmp_path / "x.psic", "--codec", CODEC, *q,
                     "--checkpoint", tmp_path / "old.safetensors")
    assert rc == 0, err


# ------------------------------------------------------------------ 7. format 1 has no latent checksum
def _downgraded(data: bytes, flip: bool) -> bytes:
    """A format-2 file turned into format 1 (version byte 1, no checksum), one payload bit flipped or not."""
    _, header, payload = split_psic(data)
    header["padded"] = [header["height"], header["width"]]
    del header["latent_check"], header["alpha_raw_len"]
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x10 if flip else 0
    return build_psic(header, bytes(flipped), version=1)


def test_a_format_1_file_is_refused_unless_asked_for(inputs, tmp_path, capsys):
    bad, old = tmp_path / "bad.psic", tmp_path / "old.psic"
    bad.write_bytes(_downgraded(inputs.psic.read_bytes(), flip=True))
    old.write_bytes(_downgraded(inputs.psic.read_bytes(), flip=False))
    assert container.read(bad)[1].version == 1  # psic info still describes it
    out = tmp_path / "old.png"
    for src in (bad, old):  # a corrupted payload cannot be told from a good one: both refused
        with pytest.raises(ContainerError, match="format-1.*no latent checksum.*--allow-format-1"):
            coding.decode_file(src, out, load_codec(CODEC, checkpoint=inputs.ckpt))
        one_error_line(*run(capsys, "decompress", src, out, "--checkpoint", inputs.ckpt)[::2], r"no latent checksum")
    assert not out.exists()
    rc, _, err = run(capsys, "decompress", old, out, "--checkpoint", inputs.ckpt, "--allow-format-1")
    assert rc == 0 and out.exists()
    assert err.startswith("psic: warning: ") and "unchecked" in err and len(err.strip().splitlines()) == 1
    rc, stdout, _ = run(capsys, "info", old)
    assert rc == 0 and "no (format 1)" in stdout


def test_a_version_byte_of_1_keeps_a_checksum_that_is_there(inputs, tmp_path):
    """Only the byte changed: the checksum in the header still catches the flipped payload."""
    _, header, payload = split_psic(inputs.psic.read_bytes())
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0x10
    bad = tmp_path / "b.psic"
    bad.write_bytes(edit_psic(inputs.psic.read_bytes(), version=1, payload=bytes(flipped)))
    with pytest.raises(ContainerError, match="latent|not finite"):
        coding.decode_file(bad, tmp_path / "b.png", load_codec(CODEC, checkpoint=inputs.ckpt), allow_format_1=True)


# ------------------------------------------------------------------ 8. images
@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied_to_16_bit_pngs(orientation, tmp_path):
    a16 = np.random.default_rng(orientation).integers(0, 65536, (5, 7), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a16).save(tmp_path / "g16.png", exif=exif)
    Image.fromarray((a16 >> 8).astype(np.uint8)).save(tmp_path / "g8.png", exif=exif)
    r16, r8 = read_array(tmp_path / "g16.png"), read_array(tmp_path / "g8.png")
    assert r16.dtype == np.uint16 and r16.shape == r8.shape
    assert np.array_equal((r16 >> 8).astype(np.uint8), r8)  # turned as PIL turns the 8-bit one


def test_32_bit_integer_tiffs_are_read_exactly_or_refused(tmp_path):
    ok = np.arange(0, 65536, 1024, dtype=np.int32).reshape(8, 8)
    Image.fromarray(ok).save(tmp_path / "ok.tif")
    assert np.array_equal(read_array(tmp_path / "ok.tif"), ok.astype(np.uint16))
    wide = ok * 4 + 70_000  # wrapped modulo 65536 before
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    with pytest.raises(ImageError, match=r"32-bit integer pixels from 70000 to"):
        load_image(tmp_path / "wide.tif")


def test_float_tiffs_are_read_in_0_1_or_refused(inputs, tmp_path, capsys):
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")
    x, info = load_image(tmp_path / "ramp.tif")  # black before
    assert info.bit_depth == 16 and torch.allclose(x[0, 0], torch.from_numpy(ramp), atol=1e-4)
    for name, arr in (("hdr", ramp * 300), ("nan", np.where(ramp > 0.5, np.nan, ramp).astype(np.float32))):
        Image.fromarray(arr).save(tmp_path / f"{name}.tif")
        one_error_line(*run(capsys, "compress", tmp_path / f"{name}.tif", tmp_path / f"{name}.psic", *inputs.codec)[::2],
                       r"floating-point pixels")


# ------------------------------------------------------------------ 9. push, info
class _Api:
    def __init__(self):
        self.uploaded = {}

    def create_repo(self, *a, **kw):
        pass

    def create_branch(self, *a, **kw):
        pass

    def upload_folder(self, **kw):
        folder = Path(kw["folder_path"])
        self.uploaded = {p.name: p.read_bytes() for p in folder.iterdir()}
        return types.SimpleNamespace(commit_url="https://huggingface.co/x/commit/c", pr_url=None)


def _adapter_folder(inputs, tmp_path, weights=None, link_weights_to=None) -> Path:
    d = tmp_path / "adapter"
    d.mkdir(parents=True)
    (d / CONFIG_NAME).write_bytes((inputs.adapter / CONFIG_NAME).read_bytes())
    if link_weights_to is not None:
        (d / WEIGHTS_NAME).symlink_to(link_weights_to)
    elif weights is not None:
        (d / WEIGHTS_NAME).write_bytes(weights)
    return d


def _pickle_weights() -> bytes:
    return pickle.dumps({"w": [1, 2, 3]})


def test_push_never_follows_a_link_to_the_key(inputs, tmp_path):
    from psic_adapter import hub

    for target in (inputs.key_file, inputs.adapter / WEIGHTS_NAME):  # even a link to good weights: regular files only
        d = _adapter_folder(inputs, tmp_path / target.name, link_weights_to=target)
        api = _Api()
        with pytest.raises(PSICError, match="symbolic link"):
            hub.push_to_hub(d, "org/adapter", token="hf_test", api=api)
        assert api.uploaded == {}


@pytest.mark.parametrize("weights", [b"these are not weights\n", _pickle_weights(), None])
def test_push_and_info_check_the_weights(weights, inputs, tmp_path, capsys):
    from psic_adapter import hub

    d = _adapter_folder(inputs, tmp_path, weights=weights)
    api = _Api()
    with pytest.raises(PSICError, match="adapter_model.safetensors|weights"):
        hub.push_to_hub(d, "org/adapter", token="hf_test", api=api)
    assert api.uploaded == {}
    one_error_line(*run(capsys, "info", d)[::2], r"adapter_model\.safetensors|weights")


def test_push_and_info_refuse_weights_that_do_not_fit_or_are_not_finite(inputs, tmp_path, capsys):
    from safetensors.torch import load_file

    from psic_adapter import hub

    state = load_file(str(inputs.adapter / WEIGHTS_NAME))
    for name, edit in (("nan", lambda s: {**s, next(iter(s)): torch.full_like(next(iter(s.values())), float("nan"))}),
                       ("missing", lambda s: dict(list(s.items())[1:]))):
        d = _adapter_folder(inputs, tmp_path / name)
        save_file(edit(dict(state)), d / WEIGHTS_NAME)
        api = _Api()
        with pytest.raises(ConfigError, match="tensors do not fit"):
            hub.push_to_hub(d, "org/adapter", token="hf_test", api=api)
        assert api.uploaded == {}
        one_error_line(*run(capsys, "info", d)[::2], r"not finite|missing")
    api = _Api()  # the control: the real adapter goes up, as is
    hub.push_to_hub(inputs.adapter, "org/adapter", token="hf_test", api=api)
    assert api.uploaded[WEIGHTS_NAME] == (inputs.adapter / WEIGHTS_NAME).read_bytes()


# ------------------------------------------------------------------ 9. training settings and losses
@pytest.mark.parametrize("field, value", [
    ("adapter_lr", float("nan")), ("lr", float("inf")), ("lr", -1e-4), ("adapter_lr", 1e39), ("margin", -1.0),
    ("encryption_weight", float("nan")),
    ("lr_milestones", (0.5, float("nan"))), ("log_every", 0), ("checkpoint_every", -1), ("steps", 2.5), ("seed", -3),
])
def test_a_non_finite_or_negative_training_setting_is_refused(field, value):
    from psic_adapter.training import TrainConfig

    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_psic_train_refuses_a_nan_learning_rate_before_loading_anything(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    for flag in (["--adapter-lr", "nan"], ["--log-every", "0"]):
        rc, _, err = run(capsys, "train", "--checkpoint", inputs.ckpt, "--codec", CODEC, "--target", "no-such-target",
                         "--data", "samples", "--key-file", inputs.key_file, "--out", out, *flag)
        one_error_line(rc, err, flag[0][2:].replace("-", "_"))
    assert not out.exists()


class _Poisoned(torch.utils.data.Dataset):
    """The photos with NaN pixels: every loss is NaN."""

    def __init__(self, photos):
        self.photos = photos

    def __len__(self):
        return len(self.photos)

    def __getitem__(self, i):
        item = dict(self.photos[i])
        item["image"] = torch.full_like(item["image"], float("nan"))
        return item


def test_training_stops_when_the_loss_is_not_finite(base_codec, target, photos, tmp_path):
    with pytest.raises(PSICError, match=r"loss became nan at step 1: training stopped"):
        _trainer(base_codec, target, _Poisoned(photos), tmp_path, steps=3, checkpoint_every=1).train()
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "checkpoint.safetensors").exists()


def test_training_never_saves_non_finite_weights(base_codec, target, photos, tmp_path):
    tr = _trainer(base_codec, target, photos, tmp_path, steps=1)
    step = tr.step

    def poisoned(batch):  # a last step whose update overflowed (its loss, computed before, was finite)
        out = step(batch)
        with torch.no_grad():
            next(tr.model.psic_adapters.parameters()).fill_(float("inf"))
        return out

    tr.step = poisoned
    with pytest.raises(PSICError, match="non-finite adapter weights"):
        tr.train()
    assert not (tmp_path / "adapter").exists()


def _at(step):
    """The counters of a run at ``step``, every one of them (a planted count that agrees with the rest)."""
    def edit(state):
        state["step"] = step
        state["scheduler"]["last_epoch"] = step
    return edit


@pytest.mark.parametrize("edit, match", [
    (_at(5), r"step 5, past the 4 steps"),
    (dict(step=-1), r"step -1 is not a count"),
    (dict(step=True), r"step True is not a count"),
    (dict(step=1), r"counts disagree"),
    (dict(epoch=9), r"counts disagree"),
])
def test_a_planted_step_count_in_a_checkpoint_is_refused(edit, match, base_codec, target, photos, tmp_path):
    from psic_adapter.training import checkpoints

    tr = _trainer(base_codec, target, photos, tmp_path, steps=2)
    tr.train()
    ckpt = tmp_path / "checkpoint.safetensors"
    state = checkpoints.load_state(ckpt)
    state.update(edit) if isinstance(edit, dict) else edit(state)
    checkpoints.save_state(ckpt, state)
    adapter_before = _sha(tmp_path / "adapter" / WEIGHTS_NAME)
    with pytest.raises(PSICError, match=match):
        _again(tr, base_codec, target, photos, tmp_path, steps=4).train(resume=True)
    assert _sha(tmp_path / "adapter" / WEIGHTS_NAME) == adapter_before


# ------------------------------------------------------------------ 9. eval counts
@pytest.mark.parametrize("field, value", [("crops", 0), ("wrong_keys", -1), ("attack_images", 0), ("crop", 0),
                                          ("attack_steps", -5), ("attack_lr", float("nan"))])
def test_eval_counts_are_what_the_user_said(field, value):
    from psic_adapter.eval.runner import EvalConfig

    with pytest.raises(ConfigError, match=field):
        EvalConfig(**{field: value})
    assert EvalConfig(wrong_keys=0, attack_steps=0).wrong_keys == 0  # 0: skip the check, as documented


@pytest.mark.parametrize("flag, match", [(["--crops", "0"], "crops"), (["--wrong-keys", "-1"], "wrong_keys"),
                                         (["--count", "0"], "count"), (["--crop", "0"], "crop")])
def test_psic_eval_refuses_bad_counts_before_loading_anything(flag, match, inputs, tmp_path, capsys):
    out = tmp_path / "report"
    rc, _, err = run(capsys, "eval", "--adapter", inputs.adapter, "--target", "no-such-target", "--out", out, *flag)
    one_error_line(rc, err, match)
    assert not out.exists()


# ------------------------------------------------------------------ 9. codec weights
@pytest.mark.parametrize("kind", ["nan", "int64"])
def test_nan_or_integer_codec_weights_are_refused_on_load(kind, inputs, tmp_path, capsys):
    state = {k: v.contiguous() for k, v in small_trainable_codec().state_dict().items()}
    if kind == "nan":
        state["g_a.0.weight"] = state["g_a.0.weight"].clone()
        state["g_a.0.weight"][0, 0, 0, 0] = float("nan")
        match = r"1 not finite \(g_a\.0\.weight\)"
    else:
        state = {k: v.to(torch.int64) for k, v in state.items()}
        match = r"not floating point.*of another type"
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(PSICError, match=match):
        load_codec(CODEC, checkpoint=tmp_path / "bad.safetensors")
    rc, _, err = run(capsys, "compress", inputs.png, tmp_path / "x.psic", "--codec", CODEC,
                     "--checkpoint", tmp_path / "bad.safetensors")
    one_error_line(rc, err, match)
    assert not (tmp_path / "x.psic").exists()
