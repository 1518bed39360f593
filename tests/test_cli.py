"""The `psic` command line, run in-process (``psic_adapter.cli.main``) on real files.

Every decode is compared with what the codec's own ``compress``/``decompress`` give
on the same (padded, then cropped) pixels: the CLI must add nothing but file
handling. Every bad input must give exit status 1 and one ``psic: error:`` line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import png
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from psic_adapter import PSICConfig, load_adapter, wrap_model
from psic_adapter.bitstream import container
from psic_adapter.cli import main
from psic_adapter.codec import load_codec, save_codec

from .conftest import make_codec, randomize_adapter

CODEC = "bmshj2018-hyperprior"
QUALITY = 1  # conftest's random-weight hyperprior
PAD = 64


# ------------------------------------------------------------------ helpers
def run(capsys, *argv):
    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_error_line(rc, err, pattern):
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("psic: error: "), err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


def write_png16(path, arr):
    planes = 1 if arr.ndim == 2 else arr.shape[2]
    writer = png.Writer(arr.shape[1], arr.shape[0], bitdepth=16, greyscale=planes in (1, 2), alpha=planes in (2, 4))
    with open(path, "wb") as fh:
        writer.write(fh, arr.reshape(arr.shape[0], -1).tolist())


def read_png(path):
    """(array, bit depth) read with pypng: independent of the library's reader."""
    w, h, rows, meta = png.Reader(filename=str(path)).asDirect()
    dtype = np.uint16 if meta["bitdepth"] == 16 else np.uint8
    arr = np.vstack([np.asarray(r, dtype=dtype) for r in rows]).reshape(h, w, meta["planes"])
    return (arr[..., 0] if meta["planes"] == 1 else arr), meta["bitdepth"]


@torch.no_grad()
def reference(codec, arr, bit_depth, **decode_kwargs):
    """The codec alone on ``arr``: pad (replicate) to 64, compress, decompress, crop, quantise.

    Returns (the decoded array in the input's layout, the compress output).
    """
    scale = 65535.0 if bit_depth == 16 else 255.0
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    grey = arr.ndim == 2
    rgb = np.repeat(arr[..., None], 3, axis=2) if grey else arr[..., :3]
    x = torch.from_numpy(rgb.astype(np.float32) / scale).permute(2, 0, 1)[None]
    h, w = arr.shape[:2]
    xp = F.pad(x, (0, (-w) % PAD, 0, (-h) % PAD), mode="replicate")
    enc = codec.compress(xp)
    x_hat = codec.decompress(enc["strings"], enc["shape"], **decode_kwargs)["x_hat"][..., :h, :w].clamp(0, 1)
    if grey:
        out = (x_hat[0].mean(0).numpy() * scale).round().astype(dtype)
    else:
        out = (x_hat[0].permute(1, 2, 0).numpy() * scale).round().astype(dtype)
        if arr.ndim == 3 and arr.shape[2] == 4:
            out = np.concatenate([out, arr[..., 3:]], axis=2)
    return out, enc


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ckpt(hyperprior, tmp_path_factory):
    return save_codec(hyperprior, tmp_path_factory.mktemp("ckpt") / "hp.safetensors")


@pytest.fixture(scope="module")
def ref_codec(ckpt):
    """The codec exactly as the CLI loads it."""
    return load_codec(CODEC, quality=QUALITY, checkpoint=ckpt)


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    return save_codec(make_codec(CODEC, seed=1), tmp_path_factory.mktemp("other") / "hp-other.safetensors")


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    return {"rgb": data.astronaut()[100:137, 200:250], "grey": data.camera()[200:233, 300:345]}


def _make_input(kind, photos, folder):
    rng = np.random.default_rng(7)
    rgb, grey = photos["rgb"], photos["grey"]
    if kind == "rgb8":  # odd size 50x37
        arr, path = rgb.copy(), folder / "rgb8.png"
        Image.fromarray(arr).save(path)
    elif kind == "grey8":
        arr, path = grey.copy(), folder / "grey8.png"
        Image.fromarray(arr).save(path)
    elif kind == "rgba8":
        alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
        arr, path = np.concatenate([rgb, alpha[..., None]], axis=2), folder / "rgba8.png"
        Image.fromarray(arr).save(path)
    elif kind == "rgb16":
        arr = rgb.astype(np.uint16) * 257 + rng.integers(0, 200, rgb.shape, dtype=np.uint16)
        path = folder / "rgb16.png"
        write_png16(path, arr)
    elif kind == "grey16":
        arr = grey.astype(np.uint16) * 256 + rng.integers(0, 256, grey.shape, dtype=np.uint16)
        path = folder / "grey16.png"
        write_png16(path, arr)
    elif kind == "jpeg":
        path = folder / "photo.jpg"
        Image.fromarray(rgb).save(path, quality=90)
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))  # the pixels a JPEG decoder gives
    else:
        raise AssertionError(kind)
    return path, arr


@pytest.fixture(scope="module")
def rgb_png(photos, tmp_path_factory):
    return _make_input("rgb8", photos, tmp_path_factory.mktemp("in"))


# ------------------------------------------------------------------ round trips
LAYOUTS = {  # kind -> (PIL mode of the output, bit depth, channels)
    "rgb8": ("RGB", 8, 3),
    "grey8": ("L", 8, 1),
    "rgba8": ("RGBA", 8, 4),
    "rgb16": (None, 16, 3),
    "grey16": (None, 16, 1),
    "jpeg": ("RGB", 8, 3),
}


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_round_trip_adds_nothing_to_the_codec(kind, photos, ckpt, ref_codec, tmp_path, capsys):
    src, arr = _make_input(kind, photos, tmp_path)
    psic, out = tmp_path / "x.psic", tmp_path / "x.png"
    rc, stdout, err = run(capsys, "compress", src, psic, "--codec", CODEC, "--quality", QUALITY, "--checkpoint", ckpt)
    assert rc == 0, err
    assert "bpp" in stdout

    bit_depth = LAYOUTS[kind][1]
    want, enc = reference(ref_codec, arr, bit_depth)
    got_enc, header, _ = container.read(psic)
    assert got_enc["strings"] == enc["strings"]  # the codec's own bitstream, byte for byte
    assert (header.height, header.width) == arr.shape[:2]
    assert header.bit_depth == bit_depth

    rc, stdout, err = run(capsys, "decompress", psic, out, "--checkpoint", ckpt)
    assert rc == 0, err
    assert "plain version" in stdout

    mode, depth, channels = LAYOUTS[kind]
    got, got_depth = read_png(out)
    assert got_depth == depth
    assert got.shape == want.shape == arr.shape
    assert (1 if got.ndim == 2 else got.shape[2]) == channels
    if mode is not None:
        with Image.open(out) as im:
            assert im.mode == mode and im.size == (arr.shape[1], arr.shape[0])
    assert np.array_equal(got, want)
    if kind == "rgba8":
        assert np.array_equal(got[..., 3], arr[..., 3])  # alpha comes back exactly
    if bit_depth == 16:
        assert got.dtype == np.uint16 and int(got.max()) > 255  # not an 8-bit image scaled up
        assert np.any(got % 257 != 0)


def _table(stdout):
    """``psic info``'s table as {key: value}; every value starts in one column."""
    lines = stdout.rstrip("\n").splitlines()
    starts = {re.search(r"\S  +(?=\S)", line).end() for line in lines}
    assert len(starts) == 1, stdout  # aligned
    col = starts.pop()
    return {line[:col].strip(): line[col:] for line in lines}


def test_info_prints_the_header_with_bpp(rgb_png, ckpt, tmp_path, capsys):
    src = rgb_png[0]
    psic = tmp_path / "x.psic"
    assert run(capsys, "compress", src, psic, "--codec", CODEC, "--quality", QUALITY, "--checkpoint", ckpt)[0] == 0
    rc, stdout, err = run(capsys, "info", psic, "--json")
    assert rc == 0, err
    info = json.loads(stdout)
    enc, header, _ = container.read(psic)
    nbytes = sum(len(s) for part in enc["strings"] for s in part)
    assert info["kind"] == ".psic file"
    assert info["bitstream bytes"] == nbytes
    assert info["file bytes"] == psic.stat().st_size
    assert info["bpp"] == pytest.approx(8 * nbytes / (37 * 50), abs=1e-5)
    assert (info["codec"], info["quality"], info["image"]) == (CODEC, QUALITY, "50x37, RGB, 8-bit")
    assert info["base fingerprint"] == header.base_fingerprint and info["adapter"].startswith("none")
    assert info["latent checksum"] == "yes"
    assert "layout" not in info

    rc, table_out, err = run(capsys, "info", psic)  # the default: an aligned "key  value" table
    assert rc == 0, err
    with pytest.raises(json.JSONDecodeError):
        json.loads(table_out)
    table = _table(table_out)
    assert list(table) == list(info)  # the same facts, in the same order
    assert table == {k: str(v) for k, v in info.items()}


def test_info_on_an_adapter_folder(owner, capsys):
    rc, stdout, err = run(capsys, "info", owner["adapter"], "--json")
    assert rc == 0, err
    info = json.loads(stdout)
    model = owner["model"]
    assert info["kind"] == "adapter folder"
    assert info["adapter fingerprint"] == model.adapter_fingerprint()
    assert info["base fingerprint"] == model.psic_configs["default"].base_model["fingerprint"]
    n = sum(p.numel() for p in model.psic_adapters.parameters())
    assert info["parameters"] == n
    assert info["condition"].startswith("key") and info["full version"] == "decoded with the owner's condition"
    assert owner["key"].decode() not in stdout  # the key is never stored, never shown
    rc, table_out, err = run(capsys, "info", owner["adapter"])
    assert rc == 0, err
    assert _table(table_out) == {k: str(v) for k, v in info.items()}


def test_keygen_makes_a_private_key_file(tmp_path, capsys):
    path = tmp_path / "owner.key"
    rc, out, err = run(capsys, "keygen", path)
    assert rc == 0, err
    # it says what the key does and does not do: it is no cipher, the bitstream decodes in full with --plain
    # (test_full_version checks that claim: the plain decode is the full version, bit for bit)
    assert "not a cipher" in out and "--plain" in out and "lost" not in out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    key = path.read_text().strip()
    assert len(key) == 64 and int(key, 16) >= 0
    rc, _, err = run(capsys, "keygen", path)  # never overwrites a key silently
    assert_one_error_line(rc, err, "exists")
    assert path.read_text().strip() == key
    rc, _, _ = run(capsys, "keygen", path, "--force")
    assert rc == 0 and path.read_text().strip() != key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# ------------------------------------------------------------------ adapters
@pytest.fixture(scope="module")
def owner(ckpt, rgb_png, tmp_path_factory):
    """A keyed adapter (key from `psic keygen`), a .psic made for it, and the library's own decodes."""
    folder = tmp_path_factory.mktemp("owner")
    key_file = folder / "owner.key"
    assert main(["keygen", str(key_file)]) == 0
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = key_file.read_bytes().strip()

    codec = load_codec(CODEC, quality=QUALITY, checkpoint=ckpt)
    # full_version="condition": the full version goes through the adapter, so that full, encrypted
    # and plain differ and each decode below shows which one the CLI chose
    model = randomize_adapter(wrap_model(codec, PSICConfig(full_version="condition"), key=key), std=0.5)
    adapter_dir = model.save_pretrained(folder / "adapter")

    src, arr = rgb_png
    psic = folder / "x.psic"
    assert main(["compress", str(src), str(psic), "--codec", CODEC, "--quality", str(QUALITY),
                 "--checkpoint", str(ckpt), "--adapter", str(adapter_dir)]) == 0
    encrypted, enc = reference(model, arr, 8)
    full, _ = reference(model, arr, 8, key=key)
    plain, plain_enc = reference(codec, arr, 8)  # outside a wrapper call: the base codec
    assert enc["strings"] == plain_enc["strings"]
    assert not np.array_equal(encrypted, full) and not np.array_equal(full, plain)
    wrong_file = folder / "wrong.key"
    wrong_file.write_text("f" * 64 + "\n")
    yield {"key": key, "key_file": key_file, "wrong_file": wrong_file, "adapter": adapter_dir, "psic": psic,
           "model": model, "encrypted": encrypted, "full": full, "plain": plain, "strings": enc["strings"]}
    model.unwrap()


def test_compress_with_an_adapter_records_it(owner):
    enc, header, _ = container.read(owner["psic"])
    assert header.adapter_fingerprint == owner["model"].adapter_fingerprint()
    assert enc["strings"] == owner["strings"]  # the bitstream is the base codec's


def test_decompress_without_the_adapter_is_refused(owner, ckpt, tmp_path, capsys):
    out = tmp_path / "x.png"
    rc, _, err = run(capsys, "decompress", owner["psic"], out, "--checkpoint", ckpt)
    assert_one_error_line(rc, err, rf"adapter {owner['model'].adapter_fingerprint()}.*--adapter")
    assert not out.exists()


def test_decompress_plain_is_the_base_codec(owner, ckpt, tmp_path, capsys):
    out = tmp_path / "x.png"
    rc, stdout, err = run(capsys, "decompress", owner["psic"], out, "--checkpoint", ckpt, "--plain")
    assert rc == 0, err
    assert "plain version" in stdout
    assert np.array_equal(read_png(out)[0], owner["plain"])


def test_the_adapters_codec_is_found_for_plain_decodes_and_for_compress(owner, ckpt, rgb_png, tmp_path, capsys):
    """With --adapter, the codec is the one the adapter fits: codec.safetensors beside it (a stage-1 adapter's
    layout) even with --plain, and --checkpoint without --codec for compress."""
    run_dir = tmp_path / "run"
    shutil.copytree(owner["adapter"], run_dir / "adapter")
    shutil.copy(ckpt, run_dir / "codec.safetensors")
    out = tmp_path / "plain.png"
    rc, stdout, err = run(capsys, "decompress", owner["psic"], out, "--adapter", run_dir / "adapter", "--plain")
    assert rc == 0, err
    assert "plain version" in stdout
    assert np.array_equal(read_png(out)[0], owner["plain"])

    again = tmp_path / "again.psic"
    rc, _, err = run(capsys, "compress", rgb_png[0], again, "--adapter", owner["adapter"], "--checkpoint", ckpt)
    assert rc == 0, err
    assert container.read(again)[0]["strings"] == owner["strings"]


def test_decompress_with_adapter_and_no_key_is_encrypted(owner, ckpt, tmp_path, capsys):
    out = tmp_path / "x.png"
    rc, stdout, err = run(capsys, "decompress", owner["psic"], out, "--checkpoint", ckpt, "--adapter", owner["adapter"])
    assert rc == 0, err
    assert "encrypted version" in stdout and err == ""
    assert np.array_equal(read_png(out)[0], owner["encrypted"])


def test_decompress_with_the_key_file_is_full(owner, ckpt, tmp_path, capsys):
    out = tmp_path / "x.png"
    rc, stdout, err = run(capsys, "decompress", owner["psic"], out, "--checkpoint", ckpt, "--adapter", owner["adapter"],
                          "--key-file", owner["key_file"])
    assert rc == 0, err
    assert "full version" in stdout and err == ""
    assert np.array_equal(read_png(out)[0], owner["full"])


def test_decompress_with_a_wrong_key_is_an_error(owner, ckpt, tmp_path, capsys):
    out = tmp_path / "x.png"
    rc, stdout, err = run(capsys, "decompress", owner["psic"], out, "--checkpoint", ckpt, "--adapter", owner["adapter"],
                          "--key-file", owner["wrong_file"])
    assert_one_error_line(rc, err, r"key does not match.*nothing written")
    assert stdout == ""
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left either


def test_decompress_with_the_key_in_an_env_variable(owner, ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PSIC_TEST_OWNER_KEY", owner["key"].decode())
    out = tmp_path / "x.png"
    rc, stdout, err = run(capsys, "decompress", owner["psic"], out, "--checkpoint", ckpt, "--adapter", owner["adapter"],
                          "--key-env", "PSIC_TEST_OWNER_KEY")
    assert rc == 0, err
    assert "full version" in stdout
    assert np.array_equal(read_png(out)[0], owner["full"])


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def other_adapter(tmp_path_factory):
    """An adapter fitted to another hyperprior (other weights)."""
    model = wrap_model(make_codec(CODEC, seed=1), PSICConfig(), key="someone else")
    path = model.save_pretrained(tmp_path_factory.mktemp("other-adapter") / "adapter")
    model.unwrap()
    return path


@pytest.fixture(scope="module")
def same_codec_adapter(ckpt, tmp_path_factory):
    """Another adapter for the very same codec (not the one owner's file was made for)."""
    model = wrap_model(load_codec(CODEC, quality=QUALITY, checkpoint=ckpt), PSICConfig(), key="another owner")
    path = model.save_pretrained(tmp_path_factory.mktemp("same-codec-adapter") / "adapter")
    model.unwrap()
    return path


@pytest.fixture(scope="module")
def good_psic(rgb_png, ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.psic"
    assert main(["compress", str(rgb_png[0]), str(path), "--codec", CODEC, "--quality", str(QUALITY),
                 "--checkpoint", str(ckpt)]) == 0
    return path


def _bad_case(case, tmp_path, rgb_png, ckpt, other_ckpt, good_psic, owner, other_adapter, monkeypatch):
    """(argv, message pattern, a file that must stay untouched or None)."""
    compress = ["--codec", CODEC, "--quality", QUALITY, "--checkpoint", ckpt]
    out_psic, out_png = tmp_path / "out.psic", tmp_path / "out.png"
    data = good_psic.read_bytes()
    if case == "missing input image":
        return ["compress", tmp_path / "nope.png", out_psic, *compress], r"nope\.png: no such image file", None
    if case == "text file named .png":
        p = tmp_path / "notes.png"
        p.write_text("this is not an image\n")
        return ["compress", p, out_psic, *compress], r"notes\.png: cannot read image", None
    if case == "empty image file":
        p = tmp_path / "empty.png"
        p.write_bytes(b"")
        return ["compress", p, out_psic, *compress], r"empty\.png: cannot read image", None
    if case == "empty .psic":
        p = tmp_path / "empty.psic"
        p.write_bytes(b"")
        return ["decompress", p, out_png, "--checkpoint", ckpt], r"empty\.psic: the file is empty", None
    if case == "truncated .psic":
        p = tmp_path / "cut.psic"
        p.write_bytes(data[: len(data) // 2])
        return ["decompress", p, out_png, "--checkpoint", ckpt], r"cut\.psic: .*truncated", None
    if case == "corrupted .psic":
        flipped = bytearray(data)
        flipped[len(data) - 20] ^= 0x10
        p = tmp_path / "bad.psic"
        p.write_bytes(bytes(flipped))
        return ["decompress", p, out_png, "--checkpoint", ckpt], r"bad\.psic: .*corrupted", None
    if case == "info on a corrupted .psic":
        flipped = bytearray(data)
        flipped[len(data) - 20] ^= 0x10
        p = tmp_path / "bad.psic"
        p.write_bytes(bytes(flipped))
        return ["info", p], r"bad\.psic: .*corrupted", None
    if case == "a .png given as the .psic":
        return ["decompress", rgb_png[0], out_png, "--checkpoint", ckpt], r"not a \.psic file", None
    if case == "other checkpoint":
        return ["decompress", good_psic, out_png, "--checkpoint", other_ckpt], r"compressed with another .*--checkpoint", None
    if case == "adapter for another codec":
        return (["compress", rgb_png[0], out_psic, *compress, "--adapter", other_adapter],
                r"fitted to another base codec", None)
    if case == "adapter for another codec (decompress)":
        return (["decompress", good_psic, out_png, "--checkpoint", ckpt, "--adapter", other_adapter],
                r"fitted to another base codec", None)
    if case == "another adapter of the same codec":
        return (["decompress", owner["psic"], out_png, "--checkpoint", ckpt, "--adapter", other_adapter],
                rf"made for adapter {owner['model'].adapter_fingerprint()}, not ", None)
    if case == "a key without an adapter":
        return (["decompress", good_psic, out_png, "--checkpoint", ckpt, "--key-file", owner["key_file"]],
                r"a key needs an adapter", None)
    if case == "missing adapter folder":
        return (["decompress", owner["psic"], out_png, "--checkpoint", ckpt, "--adapter", tmp_path / "no-such-adapter"],
                r"no-such-adapter: no such adapter folder", None)
    if case == "missing key file":
        return (["decompress", owner["psic"], out_png, "--checkpoint", ckpt, "--adapter", owner["adapter"],
                 "--key-file", tmp_path / "lost.key"], r"lost\.key: no such key file", None)
    if case == "unset key variable":
        monkeypatch.delenv("PSIC_TEST_UNSET_KEY", raising=False)
        return (["decompress", owner["psic"], out_png, "--checkpoint", ckpt, "--adapter", owner["adapter"],
                 "--key-env", "PSIC_TEST_UNSET_KEY"], r"PSIC_TEST_UNSET_KEY is not set", None)
    if case == "existing output (compress)":
        out_psic.write_bytes(b"keep me \x00\x01")
        return ["compress", rgb_png[0], out_psic, *compress], r"out\.psic exists.*--force", out_psic
    if case == "existing output (decompress)":
        out_png.write_bytes(b"keep me too")
        return ["decompress", good_psic, out_png, "--checkpoint", ckpt], r"out\.png exists.*--force", out_png
    if case == "wrong key file":
        return (["decompress", owner["psic"], out_png, "--checkpoint", ckpt, "--adapter", owner["adapter"],
                 "--key-file", owner["wrong_file"]], r"the key does not match this adapter: nothing written", None)
    if case == "output is the input (compress)":
        src = tmp_path / "in.png"
        shutil.copyfile(rgb_png[0], src)
        return ["compress", src, src, *compress, "--force"], r"in\.png is the input file", src
    if case == "output links to the input (compress)":
        src, link = tmp_path / "in.png", tmp_path / "link.png"
        shutil.copyfile(rgb_png[0], src)
        link.symlink_to(src)
        return ["compress", src, link, *compress, "--force"], r"link\.png is the input file", src
    if case == "output is the input (decompress)":
        src = tmp_path / "in.psic"
        shutil.copyfile(good_psic, src)
        return ["decompress", src, src, "--checkpoint", ckpt, "--force"], r"in\.psic is the input file", src
    if case == "compress to a non-.psic name":
        return ["compress", rgb_png[0], out_png, *compress], r"out\.png: a \.psic file needs a \.psic name.*--force", None
    if case == "output is a folder":
        out_psic.mkdir()
        return ["compress", rgb_png[0], out_psic, *compress, "--force"], r"out\.psic is a folder", None
    if case == "unknown codec":
        return (["compress", rgb_png[0], out_psic, "--codec", "nosuch2099-codec", "--quality", QUALITY,
                 "--checkpoint", ckpt], r"unknown codec 'nosuch2099-codec'", None)
    if case == "checkpoint of another size":
        return (["compress", rgb_png[0], out_psic, "--codec", CODEC, "--quality", 8, "--checkpoint", ckpt],
                r"checkpoint does not fit", None)
    raise AssertionError(case)


BAD_CASES = [
    "missing input image",
    "text file named .png",
    "empty image file",
    "empty .psic",
    "truncated .psic",
    "corrupted .psic",
    "info on a corrupted .psic",
    "a .png given as the .psic",
    "other checkpoint",
    "adapter for another codec",
    "adapter for another codec (decompress)",
    "another adapter of the same codec",
    "a key without an adapter",
    "missing adapter folder",
    "missing key file",
    "unset key variable",
    "existing output (compress)",
    "existing output (decompress)",
    "wrong key file",
    "output is the input (compress)",
    "output links to the input (compress)",
    "output is the input (decompress)",
    "compress to a non-.psic name",
    "output is a folder",
    "unknown codec",
    "checkpoint of another size",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_error_line(case, tmp_path, rgb_png, ckpt, other_ckpt, good_psic, owner, other_adapter,
                                     same_codec_adapter, monkeypatch, capsys):
    adapter = same_codec_adapter if case == "another adapter of the same codec" else other_adapter
    argv, pattern, keep = _bad_case(case, tmp_path, rgb_png, ckpt, other_ckpt, good_psic, owner, adapter, monkeypatch)
    before = keep.read_bytes() if keep is not None else None
    outputs_before = {p.name for p in tmp_path.iterdir()}
    rc, stdout, err = run(capsys, *argv)
    assert_one_error_line(rc, err, pattern)
    assert stdout == ""
    if keep is not None:
        assert keep.read_bytes() == before  # untouched, byte for byte
    # nothing new written (no output, no stray .part file)
    assert {p.name for p in tmp_path.iterdir()} == outputs_before


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["compress", "a.png"])  # OUTPUT is required
    assert info.value.code == 2
    assert "output" in capsys.readouterr().err


def test_compress_without_a_codec_is_one_error_line(rgb_png, tmp_path, capsys):
    """--codec may be left out only with --checkpoint shipped."""
    rc, stdout, err = run(capsys, "compress", rgb_png[0], tmp_path / "x.psic")
    assert_one_error_line(rc, err, r"--codec")
    assert stdout == "" and not (tmp_path / "x.psic").exists()


def test_the_real_console_script(good_psic, tmp_path):
    """The installed `psic` entry point: exit status 1 and one clean line on a bad file."""
    exe = shutil.which("psic")
    cmd = [exe] if exe else [sys.executable, "-m", "psic_adapter.cli"]
    data = good_psic.read_bytes()
    bad = tmp_path / "cut.psic"
    bad.write_bytes(data[: len(data) - 7])
    proc = subprocess.run([*cmd, "info", str(bad)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("psic: error: ") and "cut.psic" in lines[0] and "truncated" in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


# ------------------------------------------------------------------ the real codec
@pytest.mark.shared
def test_shared_checkpoint_reproduces_the_documented_rate_and_quality(shared_codec_path, tmp_path, capsys):
    """../shared/codecs/README.md: chelsea at 0.316 bpp / 30.70 dB with this checkpoint on the CPU."""
    from skimage import data

    arr = data.chelsea()
    src, psic, out = tmp_path / "chelsea.png", tmp_path / "chelsea.psic", tmp_path / "chelsea-dec.png"
    Image.fromarray(arr).save(src)
    rc, _, err = run(capsys, "compress", src, psic, "--codec", CODEC, "--quality", 3, "--checkpoint", shared_codec_path)
    assert rc == 0, err
    rc, stdout, err = run(capsys, "info", psic, "--json")
    assert rc == 0, err
    bpp = json.loads(stdout)["bpp"]
    rc, _, err = run(capsys, "decompress", psic, out, "--checkpoint", shared_codec_path)
    assert rc == 0, err
    dec = np.asarray(Image.open(out)).astype(np.float64)
    assert dec.shape == arr.shape
    mse = np.mean((dec - arr.astype(np.float64)) ** 2)
    psnr = 10 * np.log10(255.0**2 / mse)
    assert bpp == pytest.approx(0.316, abs=0.01)
    assert psnr == pytest.approx(30.70, abs=0.05)


def test_the_shipped_codec_codes_like_the_checkpoint_it_was_made_from(tmp_path, capsys):
    """The codec in the wheel (float16 parameters, exact tables): chelsea within 0.01 bpp / 0.05 dB of the
    original checkpoint's documented 0.316 bpp / 30.70 dB, offline, no --codec needed."""
    from skimage import data

    from psic_adapter.codec import SHIPPED_CODEC, fingerprint

    arr = data.chelsea()
    src, psic, out = tmp_path / "chelsea.png", tmp_path / "chelsea.psic", tmp_path / "chelsea-dec.png"
    Image.fromarray(arr).save(src)
    rc, _, err = run(capsys, "compress", src, psic, "--checkpoint", "shipped")
    assert rc == 0, err
    _, header, _ = container.read(psic)
    assert (header.codec, header.quality) == (SHIPPED_CODEC["name"], SHIPPED_CODEC["quality"])
    rc, stdout, err = run(capsys, "info", psic, "--json")
    bpp = json.loads(stdout)["bpp"]
    rc, _, err = run(capsys, "decompress", psic, out)  # the file names the shipped codec: nothing to pass
    assert rc == 0, err
    dec = np.asarray(Image.open(out)).astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean((dec - arr.astype(np.float64)) ** 2))
    assert bpp == pytest.approx(0.316, abs=0.01)
    assert psnr == pytest.approx(30.70, abs=0.05)
    assert fingerprint(load_codec(CODEC, 3, checkpoint="shipped")) == SHIPPED_CODEC["fingerprint"]


def test_the_shipped_demo_adapter_opens_with_its_key_and_changes_only_the_keyless_decode(tmp_path, capsys):
    """The adapter in the wheel fits the shipped codec; its public demo key gives the base decode bit for bit,
    no key gives a different (encrypted) image from the same file, and a wrong key is refused."""
    from psic_adapter.adapter.pretrained import DEMO_ADAPTER, DEMO_KEY, PublicKeyWarning

    copy = tmp_path / "copied-adapter"  # a copy elsewhere is still the demo adapter: loading it warns
    shutil.copytree(DEMO_ADAPTER, copy)
    with pytest.warns(PublicKeyWarning, match="demo adapter"):
        load_adapter(load_codec(CODEC, 3, checkpoint="shipped"), copy)

    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((96, 80)).save(photo)
    psic = tmp_path / "photo.psic"
    rc, _, err = run(capsys, "compress", photo, psic, "--adapter", DEMO_ADAPTER)
    assert rc == 0 and "psic: warning:" in err and "demo adapter" in err  # on the command line: one line
    assert run(capsys, "decompress", psic, tmp_path / "full.png", "--adapter", DEMO_ADAPTER, "--key-file",
               DEMO_KEY)[0] == 0
    assert run(capsys, "decompress", psic, tmp_path / "enc.png", "--adapter", DEMO_ADAPTER)[0] == 0
    assert run(capsys, "decompress", psic, tmp_path / "plain.png", "--plain")[0] == 0
    full, enc, plain = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("full", "enc", "plain"))
    assert np.array_equal(full, plain)
    assert not np.array_equal(enc, plain)
    wrong = tmp_path / "wrong.key"
    assert run(capsys, "keygen", wrong)[0] == 0
    rc, _, err = run(capsys, "decompress", psic, tmp_path / "w.png", "--adapter", DEMO_ADAPTER, "--key-file", wrong)
    assert rc != 0 and "key" in err and not (tmp_path / "w.png").exists()


@pytest.mark.parametrize("name", ["bmshj2018-factorized-relu", "elic2022-official", "cheng2020-anchor-checkerboard"])
def test_the_zoo_is_not_asked_for_weights_it_does_not_have(name, tmp_path, capsys):
    """No download is tried (and no other model's weights returned: the zoo's factorized-relu is the GDN model)."""
    rc, _, err = run(capsys, "compress", tmp_path / "x.png", tmp_path / "x.psic", "--codec", name, "--quality", 3)
    assert_one_error_line(rc, err, f"no pretrained weights for {name}")


def test_plain_with_a_key_is_refused(tmp_path):
    """--plain means the base codec alone; a key there would silently do nothing."""
    from PIL import Image

    from psic_adapter.bitstream.coding import decode_file, encode_file
    from psic_adapter.errors import PSICError

    from .conftest import make_codec

    codec = make_codec("bmshj2018-hyperprior")
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")).save(tmp_path / "a.png")
    encode_file(tmp_path / "a.png", tmp_path / "a.psic", codec)
    with pytest.raises(PSICError, match="takes no key"):
        decode_file(tmp_path / "a.psic", tmp_path / "b.png", codec, key=b"k", plain=True)
    assert not (tmp_path / "b.png").exists()


def test_train_on_samples_never_sees_the_test_photos(monkeypatch, tmp_path):
    """`psic eval --data samples` measures on the test photos; the robust recipe's `--data samples` must not fit on them."""
    from psic_adapter.data import TEST_PHOTOS
    from psic_adapter.training.trainer import Trainer

    seen = {}

    class Stop(Exception):
        pass

    def capture(self, model, target, dataset, *args, **kwargs):
        seen["names"] = list(dataset.names)
        raise Stop

    monkeypatch.setattr(Trainer, "__init__", capture)
    (tmp_path / "k").write_text("a key of enough bytes for training\n")
    with pytest.raises(Stop):
        main(["train", "--checkpoint", "shipped", "--target", "efficientnet-lite0", "--target-weights", "random",
              "--data", "samples", "--stage", "2", "--adapter-only", "--key-file", str(tmp_path / "k"),
              "--out", str(tmp_path / "run")])
    assert seen["names"] and not set(seen["names"]) & set(TEST_PHOTOS)
