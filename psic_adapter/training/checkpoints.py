"""Resumable training state, saved and loaded without pickle.

A run's checkpoint (adapter and codec tensors, optimiser and scheduler state,
RNG states, counters, the recipe) is one ``.safetensors`` file: the tensors as
safetensors tensors, everything else as JSON in its metadata, with a few tags
for what JSON lacks (tuples, dicts with integer keys, counters, non-finite
floats, numpy arrays). Loading rebuilds exactly those types and nothing else:
a crafted checkpoint can hold wrong values (they are checked where they are
used) but can never run code, unlike ``torch.load(weights_only=False)``.
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from ..errors import PSICError
from ..types import PathLike

_META_KEY = "psic_checkpoint"
FORMAT = 1
MAX_CHECKPOINT_BYTES = 1 << 34


def _encode(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": name}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, collections.Counter):
        return {"__counter__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    raise PSICError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(obj: Any, tensors: Dict[str, torch.Tensor], depth: int = 0) -> Any:
    if depth > 64:
        raise PSICError("checkpoint state is nested too deeply")
    if isinstance(obj, list):
        return [_decode(v, tensors, depth + 1) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (tag, value), = obj.items()
        if tag in ("__tensor__", "__ndarray__"):
            if not isinstance(value, str) or value not in tensors:
                raise PSICError(f"checkpoint refers to a missing tensor {value!r}"[:120])
            return tensors[value] if tag == "__tensor__" else tensors[value].numpy()
        if tag == "__float__":
            if value not in ("nan", "inf", "-inf"):
                raise PSICError("checkpoint holds a bad float")
            return float(value)
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, depth + 1) for v in _pairs_or_list(value))
        if tag in ("__items__", "__counter__"):
            items = []
            for pair in _pairs_or_list(value):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise PSICError("checkpoint holds a malformed mapping")
                k = _decode(pair[0], tensors, depth + 1)
                try:
                    hash(k)
                except TypeError:
                    raise PSICError("checkpoint holds a mapping with an unhashable key") from None
                if not isinstance(k, (str, int, float, bool, type(None), tuple)):
                    raise PSICError("checkpoint holds a mapping with a key of another type")
                items.append((k, _decode(pair[1], tensors, depth + 1)))
            return collections.Counter(dict(items)) if tag == "__counter__" else dict(items)
    return {k: _decode(v, tensors, depth + 1) for k, v in obj.items()}


def _pairs_or_list(value):
    if not isinstance(value, list):
        raise PSICError("checkpoint holds a malformed value")
    return value


def save_state(path: PathLike, state: Dict[str, Any]) -> Path:
    """Write ``state`` (nested dicts / lists / tuples of tensors, numbers, strings) atomically."""
    from safetensors.torch import save

    from ..fileio import atomic_write

    tensors: Dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors)
    meta = {_META_KEY: json.dumps({"format": FORMAT, "state": skeleton}, allow_nan=False)}
    # safetensors refuses tensors that share memory: store copies
    tensors = {k: v.clone() for k, v in tensors.items()}
    return atomic_write(path, save(tensors, metadata=meta), force=True)


def load_state(path: PathLike) -> Dict[str, Any]:
    """Read a state written by :func:`save_state`; any other file is a :class:`PSICError`, never code."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise PSICError(f"{path}: no checkpoint here")
    if path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise PSICError(f"{path}: larger than {MAX_CHECKPOINT_BYTES} bytes: not a psic checkpoint")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise PSICError(f"{path}: not a psic checkpoint ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    raw = meta.get(_META_KEY)
    if raw is None:
        raise PSICError(f"{path}: not a psic checkpoint (no {_META_KEY} metadata)")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise PSICError(f"{path}: its checkpoint metadata is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("state"), dict):
        raise PSICError(f"{path}: not a psic checkpoint of format {FORMAT}")
    state = _decode(data["state"], tensors)
    if not isinstance(state, dict):
        raise PSICError(f"{path}: not a psic checkpoint")
    return state
