"""Building CompressAI image codecs by name, and readying them for entropy coding.

:func:`load_codec` builds any CompressAI image codec by its registry name, from
a zoo download (``pretrained=True``, needs a network), a local checkpoint
(:mod:`.checkpoint`), or random weights.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ConfigError, PSICError
from .registry import NOT_IMAGE, REGISTRY_DEFAULTS, available_codecs, compressai_registry, normalize_name
from ..types import PathLike

def _zoo_dims(name: str, quality: int) -> Dict[str, int]:
    from compressai.zoo.image import cfgs

    dims = cfgs[name][quality]
    return dict(zip(("N", "M"), dims))


def build_codec(name: str, quality: Optional[int] = None, pretrained: bool = False, metric: str = "mse", **dims) -> nn.Module:
    """A codec by registry name: zoo weights (``pretrained``) or random weights."""
    MODELS, image_models = compressai_registry()
    name = normalize_name(name)
    if name not in MODELS or any(t in name for t in NOT_IMAGE):
        raise ConfigError(f"unknown codec {name!r}; known: {', '.join(available_codecs())}")
    if pretrained:
        from compressai.zoo.image import model_urls

        # only names with weights of their own: the zoo's bmshj2018-factorized-relu loads the GDN model's
        if name not in image_models or name not in model_urls:
            raise ConfigError(f"CompressAI's zoo has no pretrained weights for {name}; pass a checkpoint")
        if quality is None:
            raise ConfigError(f"{name}: pretrained zoo weights need a quality")
        try:
            return image_models[name](quality=quality, metric=metric, pretrained=True, progress=False)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            raise PSICError(
                f"could not get pretrained {name} quality {quality} from the CompressAI zoo "
                f"({exc.__class__.__name__}: {exc}); pass --checkpoint FILE instead"
            ) from None
    if dims:
        return MODELS[name](**dims)
    if name in image_models and "vbr" not in name:
        if quality is None:
            raise ConfigError(f"{name}: give a quality (1-8) or N/M")
        from compressai.zoo.image import cfgs

        if quality not in cfgs.get(name, {}):
            raise ConfigError(f"{name}: no quality {quality} (known: {sorted(cfgs[name])})")
        # build from the registry class: the zoo maps bmshj2018-factorized-relu to the GDN model
        return MODELS[name](**_zoo_dims(name, quality))
    if name in image_models:  # -vbr models: one model for all rates
        return image_models[name](quality=quality or 0, pretrained=False)
    return MODELS[name](**REGISTRY_DEFAULTS.get(name, {}))


def tables_ready(codec: nn.Module) -> bool:
    """True when every entropy model of ``codec`` has its CDF tables."""
    from compressai.entropy_models import EntropyModel

    models = [m for m in codec.modules() if isinstance(m, EntropyModel)]
    return bool(models) and all(m._quantized_cdf.numel() > 0 for m in models)


def prepare_for_coding(codec: nn.Module) -> nn.Module:
    """Eval mode, and CDF tables computed where the checkpoint had none."""
    codec.eval()
    if not tables_ready(codec):
        codec.update(force=True)
    return codec


def load_codec(
    name: str,
    quality: Optional[int] = None,
    checkpoint: Union[None, PathLike, Sequence[PathLike]] = None,
    pretrained: bool = False,
    metric: str = "mse",
    device: Union[str, torch.device] = "cpu",
    **dims,
) -> nn.Module:
    """Build a CompressAI image codec ready for ``compress``/``decompress``.

    Args:
        name: registry name (``bmshj2018-hyperprior``, ``cheng2020-attn``,
            ``elic2022-official`` ...; see :func:`available_codecs`).
        quality: zoo quality level (sets N/M); optional with a checkpoint.
        checkpoint: a state_dict file, several shards, a folder of shards, or ``"shipped"``
            (the pretrained codec that ships with psic-adapter: bmshj2018-hyperprior quality 3).
        pretrained: download the zoo's weights (needs a network).
        dims: constructor arguments (``N=``, ``M=``) for codecs outside the zoo.

    The codec is returned in eval mode with its entropy tables computed
    (``update(force=True)`` only where the checkpoint carried none).
    """
    name = normalize_name(name)
    if checkpoint is not None and pretrained:
        raise ConfigError("give either a checkpoint or pretrained=True, not both")
    if isinstance(checkpoint, (list, tuple)) and len(checkpoint) == 1:
        checkpoint = checkpoint[0]
    if isinstance(checkpoint, str) and checkpoint.strip().lower() == "shipped":
        return load_shipped_codec(name=name, quality=quality, device=device)
    if checkpoint is not None:
        from .checkpoint import read_checkpoint

        state = read_checkpoint(checkpoint)
        if quality is None and not dims:
            MODELS, _ = compressai_registry()
            cls = MODELS.get(name)
            if cls is None:
                raise ConfigError(f"unknown codec {name!r}; known: {', '.join(available_codecs())}")
            try:
                codec = cls.from_state_dict(state)
            except Exception:  # CompressAI reads the sizes off named tensors: a KeyError for others
                like = build_codec_like(cls)
                filled = with_empty_tables(state, like)
                try:
                    if len(filled) == len(state):  # not a matter of missing entropy tables
                        raise KeyError
                    codec = cls.from_state_dict(filled)
                    state = filled
                except Exception:  # noqa: BLE001 - as above
                    raise PSICError(f"the checkpoint does not fit {name}: {describe_mismatch(like, state)}") from None
        else:
            codec = build_codec(name, quality, **dims)
            state = with_empty_tables(state, codec)
            try:
                codec.load_state_dict(state)
            except (RuntimeError, KeyError, ValueError):
                raise PSICError(f"the checkpoint does not fit {name} quality {quality}: "
                                f"{describe_mismatch(codec, state)}") from None
        problem = tensor_problems(codec, state)  # NaN weights, integer tensors in float places ...
        if problem:
            raise PSICError(f"the checkpoint's tensors cannot code images: {problem}")
    else:
        codec = build_codec(name, quality, pretrained=pretrained, metric=metric, **dims)
    codec = codec.to(device)
    return prepare_for_coding(codec)


def with_empty_tables(state: Dict[str, torch.Tensor], codec: Optional[nn.Module]) -> Dict[str, torch.Tensor]:
    """``state`` with an empty tensor for each entropy table it lacks that ``codec`` has: older CompressAI
    checkpoints hold no tables, and :func:`prepare_for_coding` then computes them (``update()``)."""
    from .fingerprint import TABLE_BUFFERS

    if codec is None:
        return state
    filled = dict(state)
    for k, v in codec.state_dict().items():
        if k not in filled and k.rsplit(".", 1)[-1] in (*TABLE_BUFFERS, "scale_table"):
            filled[k] = torch.empty(0, dtype=v.dtype)
    return filled


def build_codec_like(cls) -> Optional[nn.Module]:
    """A default instance of a codec class, to name what a checkpoint lacks (None when it cannot be built)."""
    try:
        return cls()
    except Exception:  # noqa: BLE001 - some classes need sizes
        try:
            return cls(N=128, M=192)
        except Exception:  # noqa: BLE001
            return None


def describe_mismatch(codec: Optional[nn.Module], state: Dict[str, torch.Tensor]) -> str:
    """One short line on how a checkpoint's tensors differ from ``codec``'s (the entropy tables resize themselves)."""
    if codec is None:
        return f"none of its {len(state)} tensors are this codec's"
    return tensor_problems(codec, state) or "its tensors do not load"


def tensor_problems(codec: nn.Module, state: Dict[str, torch.Tensor]) -> str:
    """What is wrong with ``state`` for ``codec`` ("" when nothing): :func:`psic_adapter.weights.describe_mismatch`,
    the entropy tables' shapes aside (they resize themselves)."""
    from ..weights import describe_mismatch as describe
    from .fingerprint import TABLE_BUFFERS

    return describe(codec.state_dict(), state, ignore=(*TABLE_BUFFERS, "scale_table"))


def synthesis_transform(codec: nn.Module) -> nn.Module:
    g_s = getattr(codec, "g_s", None)
    if not isinstance(g_s, nn.Module):
        raise ConfigError(
            f"{type(codec).__name__} has no synthesis transform `g_s`: PSIC adapters need a "
            "CompressAI-style image codec (x_hat = g_s(y_hat))"
        )
    return g_s


def latent_channels(codec: nn.Module) -> int:
    """Channels of ``y_hat``: ``in_channels`` of the first conv that ``g_s`` contains."""
    for m in synthesis_transform(codec).modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return m.in_channels
    raise ConfigError(f"cannot tell the latent channels of {type(codec).__name__}.g_s (no convolution found)")


def codec_dims(codec: nn.Module) -> Dict[str, Optional[int]]:
    """N (synthesis width) and M (latent channels) read off ``g_s``."""
    convs = [m for m in codec.g_s.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    M = latent_channels(codec)
    N = convs[0].out_channels if convs else None
    return {"N": N, "M": M}


def load_shipped_codec(name: Optional[str] = None, quality: Optional[int] = None, device="cpu") -> nn.Module:
    """The codec that ships with psic-adapter, ready to code (file SHA-256 and codec fingerprint checked);
    ``name`` / ``quality``, when given, must be its."""
    from .fingerprint import fingerprint
    from .shipped import SHIPPED_CODEC, check_shipped_request, shipped_codec_path

    check_shipped_request(name, quality)
    codec = load_codec(SHIPPED_CODEC["name"], SHIPPED_CODEC["quality"], checkpoint=shipped_codec_path(), device=device)
    if SHIPPED_CODEC["fingerprint"] and fingerprint(codec) != SHIPPED_CODEC["fingerprint"]:
        raise PSICError("the shipped codec does not load to the recorded weights (fingerprint mismatch)")
    return codec
