"""Shared fixtures: small random-weight codecs of every architecture, real photos, ../shared."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_CODEC = SHARED / "codecs" / "bmshj2018-hyperprior-q3"

#: every CompressAI image architecture, at a small size (name, constructor kwargs)
ARCHITECTURES = {
    "bmshj2018-factorized": dict(quality=1),
    "bmshj2018-factorized-relu": dict(quality=1),
    "bmshj2018-hyperprior": dict(quality=1),
    "mbt2018-mean": dict(quality=1),
    "mbt2018": dict(N=64, M=96),
    "cheng2020-anchor": dict(N=64),
    "cheng2020-attn": dict(N=64),
    "cheng2020-anchor-checkerboard": dict(N=64),
    "elic2022-official": dict(N=64, M=160),
    "elic2022-chandelier": dict(N=64, M=160),
    "bmshj2018-hyperprior-vbr": dict(),
    "mbt2018-mean-vbr": dict(),
    "mbt2018-vbr": dict(),
}


def make_codec(name: str, seed: int = 0):
    from psic_adapter.codec import build_codec, prepare_for_coding

    torch.manual_seed(seed)
    kwargs = dict(ARCHITECTURES[name])
    quality = kwargs.pop("quality", None)
    codec = build_codec(name, quality, **kwargs)
    return prepare_for_coding(codec)


@pytest.fixture(scope="session")
def hyperprior():
    """A random-weight bmshj2018-hyperprior quality 1 (N=128, M=192), tables computed."""
    return make_codec("bmshj2018-hyperprior")


@pytest.fixture(scope="session")
def shared_codec_path():
    if not SHARED_CODEC.is_dir():
        pytest.skip("../shared/codecs/bmshj2018-hyperprior-q3 is not available")
    return SHARED_CODEC


@pytest.fixture()
def image64():
    g = torch.Generator().manual_seed(1)
    # smooth-ish content: real codecs behave better on it than on white noise
    base = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    they gain nothing from two, and on a shared 2-core machine OpenMP's barriers can make every small op 100x
    slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_adapter(model, std: float = 0.5, seed: int = 0):
    """Give every adapter parameter non-zero values (a stand-in for training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.psic_adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def small_trainable_codec(seed: int = 0):
    """A random hyperprior (N=32, M=48) whose latents survive rounding, tables computed.

    Random weights give latents of ~0.03, which all round to 0 and make stage 2
    degenerate; the last analysis layer is scaled up so that they matter.
    """
    from psic_adapter.codec import build_codec, prepare_for_coding

    torch.manual_seed(seed)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48)
    with torch.no_grad():
        codec.g_a[-1].weight.mul_(50.0)
        codec.g_a[-1].bias.mul_(50.0)
    return prepare_for_coding(codec)


# ~400 K parameters, almost all in the token embedding the bundled BPE needs
TINY_CLIP = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=32, patch_size=8, width=16, layers=1, head_width=8),
    text_cfg=dict(context_length=16, vocab_size=49408, width=8, heads=2, layers=1),
)


def tiny_clip(seed=0, **kwargs):
    """A tiny random-weight open_clip CLIP target (offline, ~2 s to build)."""
    from psic_adapter.targets import CLIPTarget

    torch.manual_seed(seed)
    return CLIPTarget("ViT-B-32", pretrained=None, model_kwargs=TINY_CLIP, **kwargs)
