"""Building and loading base codecs, and telling them apart.

* :func:`load_codec` builds any CompressAI image codec by its registry name,
  from a zoo download (``pretrained=True``, needs a network), a local
  checkpoint (safetensors shards, ``.pth``/``.pth.tar``), or random weights.
* :func:`fingerprint` identifies a codec by its *parameters*: the entropy
  coder's CDF tables are derived buffers that ``update(force=True)`` recomputes
  differently on different devices, so they are hashed apart by
  :func:`entropy_tables_hash` (stored in each ``.psic`` file so that a decoder
  whose tables differ fails clearly instead of producing a garbled image).
"""

from __future__ import annotations

import glob
import hashlib
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from .errors import ConfigError, PSICError

PathLike = Union[str, os.PathLike]

#: constructor arguments for codecs that the zoo does not build
_REGISTRY_DEFAULTS = {
    "cheng2020-anchor-checkerboard": {"N": 192},
    "elic2022-official": {"N": 192, "M": 320},
    "elic2022-chandelier": {"N": 192, "M": 320},
}
#: registry entries that are not still-image codecs
_NOT_IMAGE = ("pcc", "ssf2020")
_TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")


def _compressai():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import compressai  # noqa: F401  (imports torchvision / torch_geometric)
        from compressai.registry import MODELS
        from compressai.zoo import image_models
    return MODELS, image_models


def normalize_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def available_codecs() -> List[str]:
    """Registry names of CompressAI's still-image codecs."""
    MODELS, _ = _compressai()
    return sorted(n for n in MODELS if not any(t in n for t in _NOT_IMAGE))


def architecture_name(codec: nn.Module) -> str:
    """The registry name of ``codec``'s class (its class name for other codecs)."""
    MODELS, _ = _compressai()
    for name, cls in MODELS.items():
        if type(codec) is cls:
            return name
    return type(codec).__name__


def _zoo_dims(name: str, quality: int) -> Dict[str, int]:
    from compressai.zoo.image import cfgs

    dims = cfgs[name][quality]
    return dict(zip(("N", "M"), dims))


def build_codec(name: str, quality: Optional[int] = None, pretrained: bool = False, metric: str = "mse", **dims) -> nn.Module:
    """A codec by registry name: zoo weights (``pretrained``) or random weights."""
    MODELS, image_models = _compressai()
    name = normalize_name(name)
    if name not in MODELS or any(t in name for t in _NOT_IMAGE):
        raise ConfigError(f"unknown codec {name!r}; known: {', '.join(available_codecs())}")
    if pretrained:
        if name not in image_models:
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
    return MODELS[name](**_REGISTRY_DEFAULTS.get(name, {}))


def read_state_dict(checkpoint: Union[PathLike, Sequence[PathLike]]) -> Dict[str, torch.Tensor]:
    """Merge one or more checkpoint files (or a folder of safetensors shards) into one state_dict."""
    paths: List[Path] = []
    items = [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint)
    for item in items:
        p = Path(item)
        if p.is_dir():
            shards = sorted(Path(s) for s in glob.glob(str(p / "*.safetensors")))
            if not shards:
                raise PSICError(f"{p}: no *.safetensors checkpoint shards in this folder")
            paths.extend(shards)
        elif p.is_file():
            paths.append(p)
        else:
            raise PSICError(f"{p}: no such checkpoint file")
    state: Dict[str, torch.Tensor] = {}
    for p in paths:
        try:
            if p.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(str(p))
            else:
                with open(p, "rb") as fh:
                    magic = fh.read(4)
                if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
                    raise PSICError(f"{p}: not a checkpoint (expected safetensors shards or a PyTorch .pth/.pt file)")
                # weights_only: tensors and plain containers only, never arbitrary objects
                part = torch.load(str(p), map_location="cpu", weights_only=True)
                for key in ("state_dict", "model", "network"):
                    if isinstance(part, dict) and key in part and isinstance(part[key], dict):
                        part = part[key]
                        break
        except PSICError:
            raise
        except Exception as exc:
            raise PSICError(f"{p}: cannot read checkpoint ({exc.__class__.__name__}: {str(exc)[:200]})") from None
        if not isinstance(part, dict) or not all(torch.is_tensor(v) for v in part.values()):
            raise PSICError(f"{p}: not a state_dict of tensors")
        state.update(part)
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):  # saved from DataParallel / DDP
        state = {k[len(prefix):]: v for k, v in state.items()}
    from compressai.zoo.pretrained import load_pretrained

    try:
        return load_pretrained(state)
    except Exception as exc:  # CompressAI renames old keys; odd ones fail in many ways
        raise PSICError(f"cannot read the checkpoint's tensors ({exc.__class__.__name__}: {str(exc)[:200]})") from None


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
        checkpoint: a state_dict file, several shards, or a folder of shards.
        pretrained: download the zoo's weights (needs a network).
        dims: constructor arguments (``N=``, ``M=``) for codecs outside the zoo.

    The codec is returned in eval mode with its entropy tables computed
    (``update(force=True)`` only where the checkpoint carried none).
    """
    name = normalize_name(name)
    if checkpoint is not None and pretrained:
        raise ConfigError("give either a checkpoint or pretrained=True, not both")
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        if quality is None and not dims:
            MODELS, _ = _compressai()
            cls = MODELS.get(name)
            if cls is None:
                raise ConfigError(f"unknown codec {name!r}; known: {', '.join(available_codecs())}")
            try:
                codec = cls.from_state_dict(state)
            except Exception as exc:
                raise PSICError(f"checkpoint does not fit {name} ({exc.__class__.__name__}: {exc})") from None
        else:
            codec = build_codec(name, quality, **dims)
            try:
                codec.load_state_dict(state)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0:3]
                raise PSICError(
                    f"checkpoint does not fit {name} quality {quality}: {' '.join(first)}"
                ) from None
    else:
        codec = build_codec(name, quality, pretrained=pretrained, metric=metric, **dims)
    codec = codec.to(device)
    return prepare_for_coding(codec)


def codec_dims(codec: nn.Module) -> Dict[str, Optional[int]]:
    """N (synthesis width) and M (latent channels) read off ``g_s``."""
    from .surgery import latent_channels

    convs = [m for m in codec.g_s.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    M = latent_channels(codec)
    N = convs[0].out_channels if convs else None
    return {"N": N, "M": M}


def _hash_tensors(named: Iterable, digest) -> None:
    for name, t in named:
        t = t.detach()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = t.float()
        digest.update(t.cpu().contiguous().numpy().tobytes())


def fingerprint(codec: nn.Module) -> str:
    """SHA-256 of the codec's parameters (names, shapes, float32 values): hex."""
    d = hashlib.sha256(b"psic codec v1\0")
    _hash_tensors(sorted(codec.named_parameters(), key=lambda kv: kv[0]), d)
    return d.hexdigest()


def entropy_tables_hash(codec: nn.Module) -> str:
    """SHA-256 of the entropy coder's CDF tables (the buffers ``update()`` derives): hex."""
    d = hashlib.sha256(b"psic tables v1\0")
    named = [(n, b) for n, b in codec.named_buffers() if n.rsplit(".", 1)[-1] in _TABLE_BUFFERS]
    _hash_tensors(sorted(named, key=lambda kv: kv[0]), d)
    return d.hexdigest()


def save_codec(codec: nn.Module, path: PathLike, force: bool = True) -> Path:
    """Write a codec's full state_dict (CDF tables included) as one safetensors file, atomically."""
    from safetensors.torch import save

    from .fileio import atomic_write

    state = {k: v.detach().cpu().contiguous().clone() for k, v in codec.state_dict().items()}
    return atomic_write(path, save(state, metadata={"architecture": architecture_name(codec)}), force=force)


class _StopDecoding(Exception):
    """Raised inside ``g_s``'s pre-hook to stop a decode once ``y_hat`` is known."""


def decode_latent(codec: nn.Module, strings, shape, **kwargs) -> torch.Tensor:
    """Entropy-decode a bitstream to ``y_hat`` (the input of ``g_s``) without running ``g_s``.

    ``codec.g_s(y_hat).clamp(0, 1)`` then equals ``codec.decompress(...)["x_hat"]``:
    a bitstream is decoded once and synthesised as often as needed.
    """
    captured: Dict[str, torch.Tensor] = {}

    def grab(_module, args):
        captured["y_hat"] = args[0]
        raise _StopDecoding

    handle = codec.g_s.register_forward_pre_hook(grab)
    try:
        codec.decompress(strings, shape, **kwargs)
    except _StopDecoding:
        pass
    finally:
        handle.remove()
    if "y_hat" not in captured:
        raise PSICError(f"{type(codec).__name__}.decompress did not call g_s")
    return captured["y_hat"]
