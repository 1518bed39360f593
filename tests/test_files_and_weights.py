"""Direct tests of the two modules every file in and out goes through (issue 16: they were tested only through
the commands): psic_adapter.fileio (outputs) and psic_adapter.weights (weight files a user hands the library)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from psic_adapter.errors import OverwriteError, PSICError, TargetError
from psic_adapter.fileio import atomic_write, check_output, open_append, read_limited
from psic_adapter.weights import describe_mismatch, read_state_dict


# ------------------------------------------------------------------ fileio
def test_atomic_write_never_replaces_without_force_nor_an_input(tmp_path):
    out = atomic_write(tmp_path / "sub" / "a.bin", b"one")  # the folder is made
    assert out.read_bytes() == b"one" and oct(out.stat().st_mode & 0o777) != "0o000"
    with pytest.raises(OverwriteError, match="exists"):
        atomic_write(out, b"two")
    assert out.read_bytes() == b"one"
    atomic_write(out, b"two", force=True)
    assert out.read_bytes() == b"two"
    with pytest.raises(OverwriteError, match="is the input file"):
        atomic_write(out, b"three", force=True, inputs=[out])
    assert out.read_bytes() == b"two"
    with pytest.raises(OverwriteError, match="is a folder"):
        check_output(tmp_path / "sub", force=True)
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".part")]  # no temporary left


def test_atomic_write_with_a_writer_and_a_mode(tmp_path):
    out = atomic_write(tmp_path / "k", lambda fh: fh.write(b"secret"), mode=0o600)
    assert out.read_bytes() == b"secret" and out.stat().st_mode & 0o777 == 0o600


def test_a_link_at_the_output_is_replaced_not_followed(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"keep")
    link = tmp_path / "out.txt"
    link.symlink_to(target)
    atomic_write(link, b"new", force=True)
    assert target.read_bytes() == b"keep" and not link.is_symlink() and link.read_bytes() == b"new"
    log = tmp_path / "log.jsonl"
    log.symlink_to(target)
    with pytest.raises(PSICError, match="symbolic link"):
        open_append(log, "log")
    assert target.read_bytes() == b"keep"


def test_read_limited(tmp_path):
    p = tmp_path / "small"
    p.write_bytes(b"x" * 10)
    assert read_limited(p, 10) == b"x" * 10
    with pytest.raises(PSICError, match="longer than 9 bytes"):
        read_limited(p, 9, "key")
    with pytest.raises(PSICError, match="no such key"):
        read_limited(tmp_path / "missing", 9, "key")
    with pytest.raises(PSICError, match="is a folder"):
        read_limited(tmp_path, 9, "key")


# ------------------------------------------------------------------ weights
def test_read_state_dict_reads_safetensors_and_checked_pytorch_files(tmp_path):
    from safetensors.torch import save_file

    state = {"a.weight": torch.ones(2, 3), "b.bias": torch.zeros(3)}
    save_file(state, str(tmp_path / "w.safetensors"))
    got = read_state_dict(tmp_path / "w.safetensors")
    assert set(got) == set(state) and torch.equal(got["a.weight"], state["a.weight"])
    # a training checkpoint: unwrapped, DataParallel's prefix removed
    torch.save({"step": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pth")
    assert set(read_state_dict(tmp_path / "ckpt.pth")) == set(state)


class _Planted:
    def __reduce__(self):
        return (os.getcwd, ())


def test_read_state_dict_refuses_what_is_not_weights(tmp_path):
    (tmp_path / "notes.pth").write_text("not weights")
    with pytest.raises(PSICError, match="not a weights file"):
        read_state_dict(tmp_path / "notes.pth")
    with open(tmp_path / "object.pth", "wb") as fh:  # a pickle of an object: never unpickled
        pickle.dump({"a": _Planted()}, fh, protocol=2)
    with pytest.raises(TargetError, match="cannot read weights") as info:
        read_state_dict(tmp_path / "object.pth", TargetError)  # the caller's error class
    assert "\n" not in str(info.value)
    torch.save({"a": [1, 2]}, tmp_path / "nested.pt")
    with pytest.raises(PSICError, match="not a state dict of tensors"):
        read_state_dict(tmp_path / "nested.pt")
    with pytest.raises(PSICError, match="no such weights file"):
        read_state_dict(tmp_path / "missing.safetensors")


def test_describe_mismatch_names_what_does_not_fit():
    own = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    assert describe_mismatch(own, dict(own)) == ""
    text = describe_mismatch(own, {"a": torch.zeros(4), "b": torch.full((3,), float("nan")), "d": torch.zeros(1)})
    assert "1 missing (c)" in text and "1 unexpected (d)" in text and "1 of another shape" in text
    assert "1 not finite (b)" in text
