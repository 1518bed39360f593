"""Reading weight files that a user hands the library: one rule for codecs and targets.

* ``.safetensors`` files are read with safetensors (no code can run);
* anything else must be a PyTorch file (a zip archive or a pickle stream) and is
  read with ``torch.load(weights_only=True)``: tensors and plain containers
  only, never arbitrary objects; a text file or other junk is a one-line error;
* training checkpoints are unwrapped (:data:`UNWRAP_KEYS`, the first present
  wins) and a ``module.`` prefix that every key carries (DataParallel / DDP) is
  removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Type

import torch

from .errors import PSICError
from .types import PathLike

#: where training scripts nest the weights, in order of preference (an EMA first)
UNWRAP_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "network")


def read_tensor_file(path: PathLike, error: Type[PSICError] = PSICError) -> Any:
    """The raw content of a weights file (a dict of tensors, or a nested checkpoint dict)."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such weights file")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
            raise error(f"{p}: not a weights file (expected .safetensors or a PyTorch .pth/.pt file)")
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except PSICError:
        raise
    except Exception as exc:  # safetensors and torch raise many kinds for bad files
        raise error(f"{p}: cannot read weights ({exc.__class__.__name__}: {str(exc)[:200]})") from None


def unwrap_state_dict(obj: Any, path: PathLike = "weights", error: Type[PSICError] = PSICError) -> Dict[str, torch.Tensor]:
    """A ``{name: tensor}`` state dict out of what :func:`read_tensor_file` returned."""
    if isinstance(obj, dict):
        for key in UNWRAP_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v)
                                                        for k, v in obj.items()):
        raise error(f"{path}: not a state dict of tensors")
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path: PathLike, error: Type[PSICError] = PSICError) -> Dict[str, torch.Tensor]:
    """:func:`read_tensor_file` then :func:`unwrap_state_dict`."""
    return unwrap_state_dict(read_tensor_file(path, error), path, error)


def describe_mismatch(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], ignore=()) -> str:
    """One short line on what keeps ``state`` from loading strictly where ``own`` is ("" when it fits):
    missing, unexpected, mis-shaped, non-float (or integer of another type) and non-finite tensors, counted,
    with a few names (a NaN or integer weight would otherwise hang the entropy coder). Keys ending in
    ``ignore`` are not compared for shape (e.g. entropy tables that a codec resizes itself)."""
    common = sorted(set(own) & set(state))
    groups = [
        ("missing", sorted(set(own) - set(state))),
        ("unexpected", sorted(set(state) - set(own))),
        ("of another shape", [f"{k} {tuple(state[k].shape)} for {tuple(own[k].shape)}" for k in common
                              if tuple(state[k].shape) != tuple(own[k].shape) and not k.endswith(tuple(ignore))]),
        ("not floating point", [k for k in common if own[k].is_floating_point() and not state[k].is_floating_point()]),
        ("of another type", [f"{k} {state[k].dtype} for {own[k].dtype}" for k in common
                             if not own[k].is_floating_point() and state[k].dtype != own[k].dtype]),
        ("not finite", [k for k in common if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]),
    ]
    parts = []
    for what, names in groups:
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{len(names)} {what} ({', '.join(names[:3])}{more})")
    return "; ".join(parts)
