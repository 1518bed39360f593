"""psic_adapter.training.eot on its own (issue 16: it was tested only through a training step).

What a served image goes through in training: each kind of draw is seen and does what it says, the draws are
the generator's (so a resumed run draws the same), the real encoders pass the identity's gradient, the codec
pass leaves the codec as it found it. Small images, a stand-in codec; well under a second.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from psic_adapter.errors import ConfigError
from psic_adapter.training.eot import (EOT_MODES, codec_forward, eot_mode, random_transform, random_transform_blur,
                                       served_transform, straight_through)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def photo(h: int = 48, w: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return F.interpolate(torch.rand(2, 3, 6, 6, generator=g), size=(h, w), mode="bicubic",
                         align_corners=False).clamp(0, 1)


class StandInCodec(torch.nn.Module):
    """Records what it was given and in which mode; "decodes" to a darker image."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append((tuple(x.shape), self.training))
        return {"x_hat": 0.9 * x + 0.2}


def test_eot_mode_reads_old_booleans_and_refuses_unknown_modes():
    assert (eot_mode(True), eot_mode(False), eot_mode(None)) == ("basic", "none", "none")
    assert [eot_mode(m) for m in EOT_MODES] == list(EOT_MODES)
    with pytest.raises(ConfigError, match="eot must be one of"):
        eot_mode("jpeg")


def test_straight_through_is_the_value_of_one_and_the_gradient_of_the_other():
    x = torch.rand(1, 3, 4, 4, requires_grad=True)
    y = torch.rand(1, 3, 4, 4).double()
    out = straight_through(x, y)
    assert out.dtype == x.dtype and torch.allclose(out, y.float())
    (out * 3).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


def test_the_blur_keeps_a_flat_image_and_the_size_and_smooths_noise():
    flat = torch.full((1, 3, 20, 24), 0.3)
    assert torch.allclose(random_transform_blur(flat, 1.2), flat, atol=1e-6)  # a normalised kernel, reflected borders
    noise = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    blurred = random_transform_blur(noise, 1.0)
    assert blurred.shape == noise.shape and blurred.std() < 0.6 * noise.std()


def test_codec_forward_pads_to_the_multiple_crops_back_and_restores_the_mode():
    codec = StandInCodec().train()
    x = photo(48, 40)
    out = codec_forward(codec, x)
    assert codec.calls == [((2, 3, 64, 64), False)]  # eval mode (rounded latents), padded to 64
    assert codec.training  # as it was
    assert out.shape == x.shape and not out.requires_grad
    assert torch.allclose(out, (0.9 * x + 0.2).clamp(0, 1))


def kind_of(x: torch.Tensor, out: torch.Tensor, codec: StandInCodec, calls_before: int) -> str:
    """Which processing ``served_transform`` drew, read from what it returned."""
    if out is x:
        return "none"
    if len(codec.calls) > calls_before:
        return "codec"
    if out.shape[-2:] != x.shape[-2:]:
        plain = F.interpolate(x, size=out.shape[-2:], mode="bicubic", align_corners=False, antialias=True)
        return "thumbnail" if torch.equal(out, plain) else "thumbnail+jpeg"
    (grad,) = torch.autograd.grad(out.sum(), x)
    return "jpeg" if torch.equal(grad, torch.ones_like(x)) else "blur"  # straight-through vs the blur's own


def draw(x, g, codec):
    """One ``served_transform`` draw with ``codec`` and the kind it was."""
    n = len(codec.calls)
    return kind_of(x, served_transform(x, g, codec=codec), codec, n)


def test_served_transform_draws_every_kind_from_its_generator_and_passes_gradients():
    x = photo().requires_grad_(True)
    codec = StandInCodec()
    g = torch.Generator().manual_seed(5)
    kinds = []
    for _ in range(60):
        n = len(codec.calls)
        out = served_transform(x, g, codec=codec)
        kinds.append(kind_of(x, out, codec, n))
        assert out.shape[:2] == x.shape[:2] and out.requires_grad  # one draw for the whole batch, differentiable
        if out.shape[-2:] != x.shape[-2:]:  # a thumbnail: 1-3x smaller, at least 16 px
            h, w = out.shape[-2:]
            assert 16 <= h <= 48 and 16 <= w <= 40 and h >= 48 / 3 - 1
    assert set(kinds) == {"none", "thumbnail", "jpeg", "blur", "codec", "thumbnail+jpeg"}

    # the draws are the generator's alone: the same seed draws the same sequence (a resumed run's)
    again = torch.Generator().manual_seed(5)
    torch.manual_seed(123)  # the global RNG plays no part
    assert [draw(x, again, codec) for _ in range(60)] == kinds


def test_served_transform_without_a_codec_never_draws_the_codec_pass():
    x = photo().requires_grad_(True)
    codec = StandInCodec()  # only to read the kinds with
    g = torch.Generator().manual_seed(5)
    kinds = {kind_of(x, served_transform(x, g), codec, 0) for _ in range(60)}
    assert kinds == {"none", "thumbnail", "jpeg", "blur", "thumbnail+jpeg"} and not codec.calls


def test_random_transform_draws_a_downscale_a_blur_noise_or_nothing():
    x = photo(40, 40).requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    seen = set()
    for _ in range(60):
        out = random_transform(x, g)
        if out is x:
            seen.add("none")
            continue
        if out.shape[-2:] != x.shape[-2:]:
            assert out.shape[:2] == x.shape[:2] and 16 <= out.shape[-1] <= 36  # 0.4-0.9 of 40 px
            seen.add("downscale")
            continue
        (grad,) = torch.autograd.grad(out.sum(), x)
        if torch.equal(grad, torch.ones_like(x)):  # x + noise
            assert 0.7 / 255 < float((out - x).detach().std()) < 1.3 * 4 / 255  # 1-4 / 255
            seen.add("noise")
        else:
            seen.add("blur")
    assert seen == {"none", "downscale", "blur", "noise"}
