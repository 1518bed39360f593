"""The CLTG modules on their own: zero at birth, what each modulation computes, sizes from the config."""

from __future__ import annotations

import pytest
import torch

from psic_adapter.adapter.cltg import FACTORS, OfficialCLTG, PaperCLTG, build_cltg, fourier_embed
from psic_adapter.adapter.config import PSICConfig

CHANNELS = [8, 12]


def _bound(preset: str, modulation: str) -> PSICConfig:
    """A config as wrap_model leaves it (the injection points filled in), without a codec."""
    cfg = PSICConfig(preset=preset, modulation=modulation, condition="public", cond_dim=16, hidden_dim=8)
    cfg.injection_points = [{"module": f"g_s.{i}", "channels": c} for i, c in enumerate(CHANNELS)]
    return cfg


@pytest.mark.parametrize("preset", ["paper", "official"])
@pytest.mark.parametrize("modulation", ["bias", "film", "spatial"])
def test_a_fresh_cltg_changes_nothing_and_has_the_configs_size(preset, modulation):
    cfg = _bound(preset, modulation)
    module = build_cltg(cfg, CHANNELS)
    assert sum(p.numel() for p in module.parameters()) == cfg.num_parameters()
    cond = torch.randn(3, 16).sign()
    outs = module(cond)
    assert [tuple(t.shape) for t in outs] == [(3, FACTORS[modulation] * c, 1, 1) for c in CHANNELS]
    f = torch.randn(3, 8, 5, 5)
    for in_place in (False, True):
        got = module.apply(0, f.clone(), outs[0], in_place=in_place)
        assert torch.equal(got, f)  # zero-initialised W_d: exactly the block's output


def test_each_modulation_computes_what_it_says():
    f = torch.randn(2, 8, 4, 4)
    bias = torch.randn(2, 8, 1, 1)
    gain = torch.randn(2, 8, 1, 1)
    gate = torch.randn(2, 8, 1, 1)
    m = PaperCLTG(16, [8], hidden=4, modulation="bias")
    assert torch.allclose(m.apply(0, f, bias), f + bias)
    m = PaperCLTG(16, [8], hidden=4, modulation="film")
    assert torch.allclose(m.apply(0, f, torch.cat([gain, bias], 1)), f * (1 + gain) + bias)
    m = PaperCLTG(16, [8], hidden=4, modulation="spatial")
    t = torch.cat([gain, bias, gate], 1)
    want = f * (1 + gain) + bias + gate * m.branches[0](f)
    assert torch.allclose(m.apply(0, f, t), want, atol=1e-6)
    assert torch.allclose(m.apply(0, f.clone(), t, in_place=True), want, atol=1e-6)  # in place: the same numbers
    zero_gate = torch.cat([gain, bias, torch.zeros_like(gate)], 1)
    assert torch.allclose(m.apply(0, f, zero_gate), f * (1 + gain) + bias)  # no gate, no branch


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_a_global_context_starts_silent_is_counted_and_then_carries_the_whole_image(preset):
    cfg = _bound(preset, "spatial").replace(spatial_context=6)
    module = build_cltg(cfg, CHANNELS)
    assert sum(p.numel() for p in module.parameters()) == cfg.num_parameters() > _bound(preset, "spatial").num_parameters()
    branch = module.branches[0]
    plain = PaperCLTG(16, [8], hidden=4, modulation="spatial").branches[0]
    plain.load_state_dict({k: v for k, v in branch.state_dict().items() if not k.startswith("context")})
    f = torch.randn(2, 8, 6, 6)
    assert torch.equal(branch(f), plain(f))  # zero-initialised: the branch it was without
    with torch.no_grad():
        branch.context[2].weight.normal_()
    far = f.clone()
    far[:, :, 4:, 4:] += 3.0  # a change far from the top-left corner, beyond the 1x1 + 3x3 branch's reach
    assert torch.equal(plain(far)[:, :, :2, :2], plain(f)[:, :, :2, :2])  # the local branch cannot see it
    assert not torch.allclose(branch(far)[:, :, :2, :2], branch(f)[:, :, :2, :2])  # the context does


def test_the_context_summary_is_per_image_scale_free_and_finite_on_a_flat_map():
    from psic_adapter.adapter.cltg import SpatialBranch

    torch.manual_seed(0)
    f = torch.randn(3, 8, 6, 7) * 0.3 + 0.05
    x = f.flatten(2)
    want = torch.cat([x.mean(2), x.std(2, unbiased=False)], 1)
    want = want / want.square().mean(1, keepdim=True).sqrt()
    assert torch.allclose(SpatialBranch.summary(f), want, atol=1e-4)
    assert torch.allclose(SpatialBranch.summary(f * 10), SpatialBranch.summary(f), atol=1e-4)  # the codec's scale out
    assert torch.allclose(SpatialBranch.summary(f[1:2]), SpatialBranch.summary(f)[1:2])  # each image its own
    flat = torch.zeros(1, 8, 6, 7, requires_grad=True)
    out = SpatialBranch.summary(flat)
    out.sum().backward()
    assert torch.isfinite(out).all() and out.abs().max() < 0.1 and torch.isfinite(flat.grad).all()


@pytest.mark.parametrize("changes,message", [
    ({"spatial_context": True}, "spatial_context"),
    ({"spatial_context": 0}, "spatial_context"),
    ({"spatial_context": 10 ** 6}, "spatial_context"),
    ({"spatial_context": 8, "modulation": "film"}, "has not"),
])
def test_a_global_context_out_of_range_or_without_a_branch_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        PSICConfig(**{"modulation": "spatial", **changes})


def test_a_trained_cltg_depends_on_the_condition():
    torch.manual_seed(0)
    m = OfficialCLTG(16, CHANNELS, hidden=8, fourier_freqs=2, modulation="film")
    with torch.no_grad():
        for p in m.proj:
            p.weight.normal_()
    a, b = torch.ones(1, 16), -torch.ones(1, 16)
    assert not torch.equal(m(a)[0], m(b)[0])
    with pytest.raises(ValueError, match=r"condition must be \[B, 16\]"):
        m(torch.ones(1, 15))


def test_fourier_embedding():
    c = torch.tensor([[0.0, 1.0]])
    e = fourier_embed(c, 3)
    assert e.shape == (1, 2 * 7)
    assert torch.equal(e[:, :2], c)  # the raw values first
    assert torch.allclose(e[:, 2:8].reshape(2, 3)[0], torch.zeros(3))  # sin(0) = 0
    assert torch.equal(fourier_embed(c, 0), c)
