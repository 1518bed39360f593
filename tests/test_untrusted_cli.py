"""The `psic` command line against hostile or careless input (defects found by an adversarial review).

Each test names one defect: planted symlinks, key files (mode, overwrite, one
reading rule, pipes, a wrong key), output == input, folders as outputs, text as
weights, EXIF orientation and the pixel limit. A tiny random hyperprior
(N=32, M=48) saved as a checkpoint keeps every run fast.
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psic_adapter import wrap_model
from psic_adapter.adapter.keys import read_key_file
from psic_adapter.bitstream import container
from psic_adapter.bitstream import images as images_module
from psic_adapter.cli import main
from psic_adapter.codec import load_codec, save_codec

from .conftest import randomize_adapter, small_trainable_codec

CODEC = "bmshj2018-hyperprior"
REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return (rc, *capsys.readouterr())


def one_error_line(rc, err, pattern=""):
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("psic: error: "), err
    assert "Traceback" not in err and re.search(pattern, lines[0]), lines[0]
    return lines[0]


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A checkpoint, a 50x40 PNG and its .psic, in a module folder (treat as read-only)."""
    d = tmp_path_factory.mktemp("untrusted")
    ckpt = save_codec(small_trainable_codec(), d / "small.safetensors")
    png = d / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(png)
    psic = d / "x.psic"
    assert main(["compress", str(png), str(psic), "--codec", CODEC, "--checkpoint", str(ckpt)]) == 0
    return {"dir": d, "ckpt": ckpt, "png": png, "psic": psic, "codec": ["--codec", CODEC, "--checkpoint", ckpt]}


@pytest.fixture(scope="module")
def keyed(env, tmp_path_factory):
    """An adapter made in Python with key=open(keyfile).read() (a trailing newline), and a .psic for it."""
    d = tmp_path_factory.mktemp("keyed")
    key_file = d / "owner.key"
    assert main(["keygen", str(key_file)]) == 0
    with open(key_file) as fh:  # what a user writes: key=open(keyfile).read()
        key_text = fh.read()
    assert key_text.endswith("\n")
    model = randomize_adapter(wrap_model(load_codec(CODEC, checkpoint=env["ckpt"]), key=key_text), std=0.5)
    adapter = model.save_pretrained(d / "adapter")
    model.unwrap()
    psic = d / "x.psic"
    assert main(["compress", str(env["png"]), str(psic), *map(str, env["codec"]), "--adapter", str(adapter)]) == 0
    return {"key_file": key_file, "key": key_text.strip(), "adapter": adapter, "psic": psic,
            "args": ["--checkpoint", env["ckpt"], "--adapter", adapter]}


# ------------------------------------------------------------------ symlinks
def test_planted_symlinks_at_temp_names_do_not_redirect_the_write(env, tmp_path, capsys, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "out.psic"
    (tmp_path / "out.psic.part").symlink_to(victim)  # the old fixed temp name
    (tmp_path / ".out.psic.guessed.part").symlink_to(victim)
    (tmp_path / ".out.psic.dangling.part").symlink_to(tmp_path / "created-through-link")
    # even an attacker who guesses the random temp names cannot make the write follow a link
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["guessed", "dangling", "fresh"]))
    rc, _, err = run(capsys, "compress", env["png"], out, *env["codec"])
    assert rc == 0, err
    assert victim.read_bytes() == b"precious\n"
    assert not (tmp_path / "created-through-link").exists()
    assert out.is_file() and not out.is_symlink()
    assert container.read(out)[1].width == 50
    assert listing(tmp_path) == sorted([".out.psic.dangling.part", ".out.psic.guessed.part", "out.psic",
                                        "out.psic.part", "victim.txt"])  # no temp file left


def test_an_output_symlink_is_replaced_not_written_through(env, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "out.psic"
    out.symlink_to(victim)
    one_error_line(*run(capsys, "compress", env["png"], out, *env["codec"])[::2], r"exists.*--force")
    assert out.is_symlink()
    rc, _, err = run(capsys, "compress", env["png"], out, *env["codec"], "--force")
    assert rc == 0, err
    assert victim.read_bytes() == b"precious\n"
    assert not out.is_symlink() and container.read(out)[1].height == 40


# ------------------------------------------------------------------ keys
def test_keygen_is_private_from_creation_and_never_overwrites(tmp_path, capsys):
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    old = os.umask(0)  # a lax umask: the file must still be 600
    try:
        assert run(capsys, "keygen", a)[0] == 0
        assert run(capsys, "keygen", b)[0] == 0
    finally:
        os.umask(old)
    for p in (a, b):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        assert re.fullmatch(r"[0-9a-f]{64}\n", p.read_text())
    assert a.read_text() != b.read_text()
    key = a.read_text()
    one_error_line(*run(capsys, "keygen", a)[::2], r"a\.key exists.*--force")
    assert a.read_text() == key
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "link.key"
    link.symlink_to(victim)
    assert run(capsys, "keygen", link, "--force")[0] == 0
    assert victim.read_text() == "precious" and not link.is_symlink()
    assert stat.S_IMODE(os.stat(link).st_mode) == 0o600


def test_a_key_read_in_python_and_by_key_file_is_one_key(env, keyed, tmp_path, capsys):
    rc, out, err = run(capsys, "decompress", keyed["psic"], tmp_path / "full.png", *keyed["args"],
                       "--key-file", keyed["key_file"])
    assert rc == 0, err
    assert "full version" in out and err == ""
    # full_version "base" (the default): the owner's decode is the base codec's, bit for bit
    assert run(capsys, "decompress", keyed["psic"], tmp_path / "plain.png", "--checkpoint", env["ckpt"], "--plain")[0] == 0
    assert run(capsys, "decompress", keyed["psic"], tmp_path / "enc.png", *keyed["args"])[0] == 0
    full, plain, enc = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("full", "plain", "enc"))
    assert np.array_equal(full, plain) and not np.array_equal(full, enc)
    crlf = tmp_path / "crlf.key"  # an editor's line ending and indentation: still the same key
    crlf.write_bytes(b"  " + keyed["key"].encode() + b"\r\n")
    rc, out, err = run(capsys, "decompress", keyed["psic"], tmp_path / "full2.png", *keyed["args"], "--key-file", crlf)
    assert rc == 0 and "full version" in out, err


def _fifo_with(fifo: Path, data: bytes) -> Path:
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "wb") as fh:  # blocks until the reader opens it
            fh.write(data)

    threading.Thread(target=writer, daemon=True).start()
    return fifo


def test_key_file_can_be_a_pipe(keyed, tmp_path, capsys):
    fifo = _fifo_with(tmp_path / "key.fifo", keyed["key"].encode() + b"\n")
    rc, out, err = run(capsys, "decompress", keyed["psic"], tmp_path / "x.png", *keyed["args"], "--key-file", fifo)
    assert rc == 0, err
    assert "full version" in out
    assert read_key_file(_fifo_with(tmp_path / "other.fifo", b"  pipe key \n")) == b"pipe key"


def test_a_wrong_key_is_one_error_line_and_writes_nothing(keyed, tmp_path, capsys):
    wrong = tmp_path / "wrong.key"
    wrong.write_text("0" * 64 + "\n")
    out = tmp_path / "x.png"
    rc, stdout, err = run(capsys, "decompress", keyed["psic"], out, *keyed["args"], "--key-file", wrong)
    one_error_line(rc, err, r"key does not match.*nothing written")
    assert stdout == "" and not out.exists()
    assert listing(tmp_path) == ["wrong.key"]


@pytest.fixture(scope="module")
def wrong_key_process(keyed, tmp_path_factory):
    """`python -m psic_adapter.cli decompress` with a wrong key, as a real process."""
    d = tmp_path_factory.mktemp("wrong-process")
    (d / "wrong.key").write_text("1" * 64 + "\n")
    out = d / "x.png"
    proc = subprocess.run([sys.executable, "-m", "psic_adapter.cli", "decompress", str(keyed["psic"]), str(out),
                           *map(str, keyed["args"]), "--key-file", str(d / "wrong.key")],
                          capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, out


def test_a_wrong_key_in_a_real_process(wrong_key_process):
    proc, out = wrong_key_process
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("psic:")]
    assert len(errors) == 1 and errors[0].startswith("psic: error: ") and "does not match" in errors[0]
    assert not out.exists()


def test_a_wrong_key_in_a_real_process_prints_nothing_else(wrong_key_process):
    proc, _ = wrong_key_process
    assert proc.stderr.strip().splitlines() == [ln for ln in proc.stderr.splitlines() if ln.startswith("psic:")]


# ------------------------------------------------------------------ outputs
def test_the_output_is_never_the_input(env, tmp_path, capsys):
    png, psic = tmp_path / "x.png", tmp_path / "a.psic"
    png.write_bytes(env["png"].read_bytes())
    psic.write_bytes(env["psic"].read_bytes())
    (tmp_path / "link.png").symlink_to(png)
    os.link(png, tmp_path / "hard.png")
    before = {p: p.read_bytes() for p in (png, psic)}
    names = listing(tmp_path)
    for src, dst in [(png, png), (png, tmp_path / "link.png"), (tmp_path / "link.png", png),
                     (png, tmp_path / "hard.png")]:
        one_error_line(*run(capsys, "compress", src, dst, *env["codec"], "--force")[::2], r"is the input file")
    one_error_line(*run(capsys, "decompress", psic, psic, "--checkpoint", env["ckpt"], "--force")[::2],
                   r"a\.psic is the input file")
    assert {p: p.read_bytes() for p in (png, psic)} == before  # byte for byte
    assert (tmp_path / "link.png").is_symlink() and listing(tmp_path) == names


def test_force_onto_a_folder_is_one_error_line(env, tmp_path, capsys):
    folder = tmp_path / "out.psic"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    for argv in (["compress", env["png"], folder, *env["codec"], "--force"],
                 ["decompress", env["psic"], folder, "--checkpoint", env["ckpt"], "--force"],
                 ["keygen", folder, "--force"]):
        one_error_line(*run(capsys, *argv)[::2], r"out\.psic is a folder")
    assert folder.is_dir() and listing(folder) == ["keep.txt"]
    assert listing(tmp_path) == ["out.psic"]


# ------------------------------------------------------------------ untrusted inputs
def test_a_text_file_as_checkpoint_is_one_error_line(env, tmp_path, capsys):
    for name in ("notes.txt", "notes.pth", "notes.safetensors"):
        text = tmp_path / name
        text.write_text("these are not weights\n")
        for argv in (["compress", env["png"], tmp_path / "o.psic", "--codec", CODEC, "--checkpoint", text],
                     ["decompress", env["psic"], tmp_path / "o.png", "--checkpoint", text]):
            line = one_error_line(*run(capsys, *argv)[::2], re.escape(name))
            assert "KeyError" not in line
    assert not (tmp_path / "o.psic").exists() and not (tmp_path / "o.png").exists()


def test_exif_orientation_is_applied(env, tmp_path, capsys):
    src, psic, out = tmp_path / "cam.jpg", tmp_path / "cam.psic", tmp_path / "cam.png"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray((np.random.default_rng(1).random((32, 48, 3)) * 255).astype(np.uint8)).save(src, exif=exif)
    with Image.open(src) as im:
        assert im.size == (48, 32) and im.getexif().get(0x0112) == 6
    assert run(capsys, "compress", src, psic, *env["codec"])[0] == 0
    header = container.read(psic)[1]
    assert (header.width, header.height) == (32, 48)  # as the photo is seen
    assert run(capsys, "decompress", psic, out, "--checkpoint", env["ckpt"])[0] == 0
    with Image.open(out) as im:
        assert im.size == (32, 48)


@pytest.fixture()
def png100(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "_max_pixels", None)  # the environment decides
    path = tmp_path / "big.png"
    Image.fromarray((np.random.default_rng(2).random((100, 100, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_pixel_limit_from_the_environment(env, png100, tmp_path, capsys, monkeypatch):
    psic, out = tmp_path / "big.psic", tmp_path / "big-dec.png"
    monkeypatch.setenv("PSIC_MAX_PIXELS", "5000")
    one_error_line(*run(capsys, "compress", png100, psic, *env["codec"])[::2],
                   r"10,000 pixels.*limit of 5,000.*PSIC_MAX_PIXELS")
    assert not psic.exists()
    monkeypatch.delenv("PSIC_MAX_PIXELS")
    assert run(capsys, "compress", png100, psic, *env["codec"])[0] == 0
    monkeypatch.setenv("PSIC_MAX_PIXELS", "5000")  # a decode is held to the limit as well
    one_error_line(*run(capsys, "decompress", psic, out, "--checkpoint", env["ckpt"])[::2],
                   r"pixel limit \(5,?000.*PSIC_MAX_PIXELS")
    assert not out.exists()
    monkeypatch.delenv("PSIC_MAX_PIXELS")
    assert run(capsys, "decompress", psic, out, "--checkpoint", env["ckpt"])[0] == 0


def test_the_pixel_limit_message_names_a_real_setter(env, png100, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PSIC_MAX_PIXELS", "5000")
    rc, _, err = run(capsys, "compress", png100, tmp_path / "big.psic", *env["codec"])
    one_error_line(rc, err, r"set_max_pixels")
    dotted = re.search(r"(psic_adapter[\w.]*)\.set_max_pixels", err).group(1)
    assert hasattr(importlib.import_module(dotted), "set_max_pixels")
