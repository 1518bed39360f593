"""The last spatial branch folded into the decoder's next layer at decode time (adapter/fusion.py, issue 15):
the same function as the branch as it trains, up to float rounding. Tiny shapes, seconds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from psic_adapter.adapter import PSICConfig, PSICModel, wrap_model
from psic_adapter.adapter.fusion import folded_branch, fusable_next
from psic_adapter.errors import ConfigError

from .conftest import make_codec, randomize_adapter, small_trainable_codec

KEY = "the owner's fusion test key, 32 b"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("stride,kernel,padding,output_padding,size", [
    (2, 5, 2, 1, (6, 7)),  # the hyperprior's last layer, an odd width
    (2, 5, 2, 1, (1, 1)),  # a one-latent-wide map: the ring is all there is
    (1, 3, 1, 0, (5, 4)),
    (3, 5, 1, 2, (4, 6)),
])
def test_folded_branch_is_the_next_layer_of_the_gated_branch(stride, kernel, padding, output_padding, size):
    g = torch.Generator().manual_seed(stride * 10 + kernel)
    tconv = nn.ConvTranspose2d(6, 3, kernel, stride=stride, padding=padding, output_padding=output_padding)
    expand = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        for p in (*tconv.parameters(), *expand.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
        h = torch.randn(2, 4, *size, generator=g).relu()
        gate = torch.randn(2, 6, 1, 1, generator=g)  # one gate per image
        want = tconv(gate * expand(h)) - tconv.bias.view(1, -1, 1, 1)
        got = folded_branch(h, gate, expand, tconv)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())


def test_only_a_plain_transposed_convolution_next_in_a_sequential_is_fusable():
    codec = make_codec("bmshj2018-hyperprior")
    assert fusable_next(codec, "g_s.5") == "g_s.6"
    assert fusable_next(codec, "g_s.3") is None  # into 128 channels: the folded kernel would cost 9x the 3x3
    assert fusable_next(codec, "g_s.6") is None  # the last layer: nothing after it
    assert fusable_next(codec, "g_s.missing") is None
    seq = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(128, 3, 5, stride=2, padding=2, dilation=2))
    assert fusable_next(seq, "0") is None  # dilated: not folded
    assert fusable_next(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(128, 3, 5, stride=2, padding=2)), "0") == "1"


def _pair(codec, **config):
    """A model and the same model with the fold off (its own codec: hooks belong to their wrapper)."""
    import copy

    model = randomize_adapter(wrap_model(copy.deepcopy(codec), PSICConfig(modulation="spatial", **config), key=KEY),
                              std=0.1)
    plain = PSICModel(copy.deepcopy(codec)).add_adapter("default", PSICConfig.from_dict(model.config.to_dict()),
                                                        key=KEY)
    plain.psic_adapters.load_state_dict(model.psic_adapters.state_dict())
    plain._fold_points.clear()
    return model, plain


def test_a_decode_without_autograd_folds_and_equals_the_branch_as_it_trains():
    codec = small_trainable_codec()
    strength = {"proxy": "latent_nonzero", "intercept": 0.3, "slope": 0.5, "min": 0.25, "max": 4.0}
    model, plain = _pair(codec, strength=strength)
    assert model._fold_points == {"default": 2}
    y = torch.randn(2, 48, 5, 7).round()
    y[1, :, :, 3:] = 0  # the second image's latent is sparser: its own strength
    cond = model.encrypted_condition().expand(2, -1)
    with torch.no_grad():
        folded = model.synthesize(y, cond)
        unfolded = plain.synthesize(y, cond)
        base = model.synthesize(y, None)
    with torch.enable_grad():
        trained = model.synthesize(y, cond).detach()  # with autograd: the branch as it is (no fold)
    assert torch.allclose(folded, unfolded, atol=1e-5) and torch.allclose(folded, trained, atol=1e-5)
    assert (folded - base).abs().mean() > 1e-3  # the adapter does change the decode
    x = torch.rand(1, 3, 64, 64)
    enc = model.compress(x)
    with torch.no_grad():
        a = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        b = plain.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.allclose(a, b, atol=1e-5)


def test_the_full_version_and_a_disabled_adapter_do_not_fold():
    model, _ = _pair(small_trainable_codec())
    x = torch.rand(1, 3, 64, 64)
    enc = model.compress(x)
    with torch.no_grad():
        base = model.base.decompress(enc["strings"], enc["shape"])["x_hat"]
        full = model.decompress(enc["strings"], enc["shape"], key=KEY)["x_hat"]
        with model.disable_adapter():
            off = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.equal(full, base) and torch.equal(off, base)  # bit for bit, the fold leaves them alone


def test_deleting_the_adapter_removes_the_fold_hook():
    model, _ = _pair(small_trainable_codec())
    layer = model.base.g_s[6]
    before = len(layer._forward_hooks)
    model.delete_adapter("default")
    assert model._fold_points == {} and len(layer._forward_hooks) == before - 1
    y = torch.randn(1, 48, 4, 4).round()
    with torch.no_grad():
        assert torch.equal(model.base.g_s(y), model.synthesize(y, None))


def test_a_deep_copy_of_a_wrapped_model_decodes_as_the_model_does():
    """The codec's hooks are closures over their wrapper: a plain deep copy decoded every "encrypted" image as
    the base codec (unprotected). The copy's hooks are its own: it decodes as the original, and each changes
    on its own."""
    import copy

    model, _ = _pair(small_trainable_codec())
    twin = copy.deepcopy(model)
    x = torch.rand(1, 3, 64, 64)
    enc = model.compress(x)
    with torch.no_grad():
        base = model.base.decompress(enc["strings"], enc["shape"])["x_hat"]
        mine = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        theirs = twin.decompress(enc["strings"], enc["shape"])["x_hat"]
        assert not torch.equal(theirs, base) and torch.allclose(theirs, mine, atol=1e-6)
        assert torch.equal(twin.decompress(enc["strings"], enc["shape"], key=KEY)["x_hat"], base)
        for hooks in (twin.base.g_s[1]._forward_hooks, model.base.g_s[1]._forward_hooks):
            assert len(hooks) == 1  # one adapter hook each, not the original's as well
        twin.delete_adapter("default")  # the copy's hooks go; the original's stay
        assert len(twin.base.g_s[1]._forward_hooks) == 0 and len(model.base.g_s[1]._forward_hooks) == 1
        assert torch.allclose(model.decompress(enc["strings"], enc["shape"])["x_hat"], mine, atol=1e-6)


def test_a_narrower_spatial_branch_saves_loads_and_folds(tmp_path):
    from psic_adapter.adapter import load_adapter

    codec = small_trainable_codec()
    model, plain = _pair(codec, spatial_rank=8)
    assert model.config.to_dict()["spatial_rank"] == 8
    branches = model.psic_adapters["default"].branches
    assert all(b.reduce.out_channels == 8 and b.expand.in_channels == 8 for b in branches)
    own = sum(p.numel() for p in model.psic_adapters["default"].parameters())
    assert own == model.config.num_parameters()  # the size check before allocation counts the same branch
    y = torch.randn(1, 48, 4, 6).round()
    cond = model.encrypted_condition()
    with torch.no_grad():
        assert model._fold_points == {"default": 2}
        assert torch.allclose(model.synthesize(y, cond), plain.synthesize(y, cond), atol=1e-5)
    model.save_pretrained(tmp_path / "a")
    again = load_adapter(copy.deepcopy(codec), tmp_path / "a", key=KEY)
    assert again.config.spatial_rank == 8
    from psic_adapter.cli.info import adapter_info

    assert adapter_info(tmp_path / "a")["modulation"] == "spatial (8 hidden channels)"  # psic info says so
    with torch.no_grad():
        assert torch.equal(again.synthesize(y, cond), model.synthesize(y, cond))
    assert "spatial_rank" not in PSICConfig(modulation="spatial").to_dict()  # unset: configs read as before
    with pytest.raises(ConfigError, match="spatial_rank"):
        PSICConfig(modulation="film", spatial_rank=8)
    with pytest.raises(ConfigError, match="spatial_rank"):
        PSICConfig(modulation="spatial", spatial_rank=10_000)
