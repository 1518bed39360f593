"""Surgery on its own: which decoder blocks each architecture has, naming targets, and the hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from psic_adapter.adapter.surgery import (
    attach_hooks,
    default_injection_points,
    probe_channels,
    resolve_injection_points,
)
from psic_adapter.errors import ConfigError

from .conftest import make_codec

#: the decoder blocks the module docstring of surgery.py promises, by architecture
EXPECTED = {
    "bmshj2018-hyperprior": ["g_s.1", "g_s.3", "g_s.5"],
    "bmshj2018-factorized-relu": ["g_s.1", "g_s.3", "g_s.5"],
    "cheng2020-anchor": [f"g_s.{i}" for i in range(7)],
    "cheng2020-attn": [f"g_s.{i}" for i in range(9)],
    "elic2022-official": ["g_s.0", "g_s.2", "g_s.3", "g_s.4", "g_s.6", "g_s.7", "g_s.8", "g_s.9", "g_s.11",
                          "g_s.12", "g_s.13"],  # its ResidualBottleneckBlocks and AttentionBlocks
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_default_injection_points(arch):
    codec = make_codec(arch)
    points = default_injection_points(codec)
    assert len(points) == len(EXPECTED[arch])
    if arch.startswith(("bmshj", "elic")):
        assert points == EXPECTED[arch]
    channels = probe_channels(codec, points)
    assert all(c > 0 for c in channels)
    for name, c in zip(points, channels):
        assert name.startswith("g_s.") and name != f"g_s.{len(codec.g_s) - 1}"  # never the output layer


def test_naming_targets():
    codec = make_codec("bmshj2018-hyperprior")
    assert resolve_injection_points(codec, ["GDN"]) == ["g_s.1", "g_s.3", "g_s.5"]
    assert resolve_injection_points(codec, ["5", "g_s.1"]) == ["g_s.1", "g_s.5"]  # in g_s's order
    assert resolve_injection_points(codec, [r"g_s\.[13]"]) == ["g_s.1", "g_s.3"]
    with pytest.raises(ConfigError, match="matches nothing"):
        resolve_injection_points(codec, ["nothing"])


def test_a_codec_without_decoder_blocks_names_its_children():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.g_s = nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.ConvTranspose2d(4, 3, 3))

    with pytest.raises(ConfigError, match="ConvTranspose2d"):
        default_injection_points(Plain())


def test_hooks_see_each_point_and_detach():
    codec = make_codec("bmshj2018-hyperprior")
    seen = []
    handles = attach_hooks(codec, ["g_s.1", "g_s.3"], lambda i, out, owned: seen.append((i, owned)) or None)
    y = torch.zeros(1, 192, 2, 2)
    with torch.no_grad():
        codec.g_s(y)
    assert seen == [(0, True), (1, True)]
    for h in handles:
        h.remove()
    seen.clear()
    with torch.no_grad():
        codec.g_s(y)
    assert seen == []


def test_a_block_that_returns_its_input_is_not_owned():
    block = nn.Sequential(nn.Identity(), nn.Conv2d(3, 3, 1))
    owned = []
    attach_hooks(nn.ModuleDict({"b": block}), ["b.0"], lambda i, out, own: owned.append(own) or None)
    block(torch.zeros(1, 3, 2, 2))
    assert owned == [False]  # modifying it in place would modify the caller's tensor
