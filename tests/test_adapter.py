"""wrap_model on every CompressAI image architecture: the core contract of issue #2."""

from __future__ import annotations

import copy

import pytest
import torch

from psic_adapter import FingerprintMismatchError, PSICConfig, load_adapter, wrap_model

from .conftest import ARCHITECTURES, make_codec, randomize_adapter

def Conditioned(**kwargs) -> PSICConfig:
    """A config whose full version goes through the adapter (the behaviour these tests pin down;
    the default bypass is tested in test_full_version.py)."""
    return PSICConfig(**{"full_version": "condition", **kwargs})


KEY = "owner secret"


def _strings_equal(a, b):
    return a == b  # nested lists of bytes compare element-wise


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def codec(arch):
    return make_codec(arch)


@pytest.fixture(scope="module")
def x(arch):
    g = torch.Generator().manual_seed(3)
    small = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(small, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)


@torch.no_grad()
def test_fresh_adapter_is_the_base_codec(codec, x):
    enc0 = codec.compress(x)
    dec0 = codec.decompress(enc0["strings"], enc0["shape"])["x_hat"]
    # (snapshot after a first run: CompressAI's checkerboard conv masks its weight in place on first use)
    base_state = {k: v.clone() for k, v in codec.state_dict().items()}

    model = wrap_model(codec, Conditioned(), key=KEY)
    assert len(model.config.injection_points) >= 3
    enc = model.compress(x)
    assert _strings_equal(enc["strings"], enc0["strings"])
    enc_dec = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    full_dec = model.decompress(enc["strings"], enc["shape"], key=KEY)["x_hat"]
    assert torch.equal(enc_dec, dec0)
    assert torch.equal(full_dec, dec0)

    # the base codec is untouched: same keys, same tensors, strict reload works
    assert model.base is codec
    state = codec.state_dict()
    assert state.keys() == base_state.keys()
    assert all(torch.equal(state[k], base_state[k]) for k in state)
    codec.load_state_dict(base_state, strict=True)
    model.unwrap()


@torch.no_grad()
def test_trained_adapter_two_decodings_one_bitstream(codec, x, tmp_path):
    model = randomize_adapter(wrap_model(codec, Conditioned(), key=KEY))
    try:
        enc0 = codec.compress(x)  # plain codec outside a wrapper call: unconditioned
        dec0 = codec.decompress(enc0["strings"], enc0["shape"])["x_hat"]
        enc = model.compress(x)
        assert _strings_equal(enc["strings"], enc0["strings"])  # only decoding is conditioned

        encrypted = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        full = model.decompress(enc["strings"], enc["shape"], key=KEY)["x_hat"]
        with pytest.warns(UserWarning, match="does not match"):
            wrong = model.decompress(enc["strings"], enc["shape"], key="not the key")["x_hat"]
        assert not torch.equal(encrypted, full)
        assert torch.equal(wrong, encrypted)  # wrong key == no key
        assert not torch.equal(full, dec0)
        with model.disable_adapter():
            plain = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        assert torch.equal(plain, dec0)

        # save / load onto a separate copy of the same codec: identical decodes
        model.save_pretrained(tmp_path / "adapter")
        other = copy.deepcopy(codec)
        for h in list(other.modules()):
            h._forward_hooks.clear()
        model2 = load_adapter(other, tmp_path / "adapter")
        assert torch.equal(model2.decompress(enc["strings"], enc["shape"])["x_hat"], encrypted)
        assert torch.equal(model2.decompress(enc["strings"], enc["shape"], key=KEY)["x_hat"], full)
        assert model2.adapter_fingerprint() == model.adapter_fingerprint()
        model2.unwrap()
    finally:
        model.unwrap()


def test_fingerprint_mismatch_is_an_error(arch, codec, tmp_path):
    model = wrap_model(codec, Conditioned(), key=KEY)
    model.save_pretrained(tmp_path / "a")
    model.unwrap()
    other = make_codec(arch, seed=1)  # same architecture, other weights
    with pytest.raises(FingerprintMismatchError, match="another base codec"):
        load_adapter(other, tmp_path / "a")
    forced = load_adapter(other, tmp_path / "a", ignore_fingerprint=True)
    assert forced.adapter_names == ["default"]
    forced.unwrap()


def test_training_forward_reaches_the_adapter(codec, x):
    model = randomize_adapter(wrap_model(codec, Conditioned(), key=KEY), std=0.1)
    try:
        model.train()
        out = model(x, key=KEY)
        assert set(out) >= {"x_hat", "likelihoods"}
        out["x_hat"].mean().backward()
        grads = [p.grad for p in model.adapter_parameters()]
        assert all(g is not None for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        model.unwrap()


def test_files_and_decodes_outside_no_grad(codec, x, tmp_path):
    """The CLI and most users call the library with autograd on: compress, decompress and the file round trip
    must not need a caller's ``torch.no_grad()`` (ELIC's channel-groups decoder fails under autograd)."""
    from PIL import Image

    from psic_adapter.bitstream import coding

    assert torch.is_grad_enabled()
    model = randomize_adapter(wrap_model(codec, PSICConfig(), key=KEY))
    try:
        enc = model.compress(x)
        encrypted = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        assert not encrypted.requires_grad
        png = tmp_path / "x.png"
        Image.fromarray((x[0].permute(1, 2, 0) * 255).round().byte().numpy()).save(png)
        coding.encode_file(png, tmp_path / "x.psic", model)
        coding.decode_file(tmp_path / "x.psic", tmp_path / "enc.png", model)
        coding.decode_file(tmp_path / "x.psic", tmp_path / "full.png", model, key=KEY)
        coding.decode_file(tmp_path / "x.psic", tmp_path / "plain.png", model.base, plain=True)
        assert (tmp_path / "full.png").read_bytes() == (tmp_path / "plain.png").read_bytes()  # the bypass
    finally:
        model.unwrap()
