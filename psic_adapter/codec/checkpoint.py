"""Codec weights on disk: checkpoints in, ``codec.safetensors`` out.

A checkpoint is one or more safetensors shards (or a folder of them) or a
PyTorch ``.pth`` / ``.pth.tar`` file, read with ``weights_only=True`` (tensors
and plain containers, never arbitrary objects; :mod:`psic_adapter.weights`).
CompressAI's older key names are renamed to the current ones.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Dict, List, Sequence, Union

import torch
from torch import nn

from ..errors import PSICError
from ..weights import read_state_dict
from ..types import PathLike


def read_checkpoint(checkpoint: Union[PathLike, Sequence[PathLike]]) -> Dict[str, torch.Tensor]:
    """Merge one or more codec checkpoint files (or a folder of safetensors shards) into one state_dict, each read
    by :func:`psic_adapter.weights.read_state_dict`'s rule, with CompressAI's old key names renamed."""
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
        state.update(read_state_dict(p, PSICError))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # importing compressai warns about torch.jit.script
        from compressai.zoo.pretrained import load_pretrained
    try:
        return load_pretrained(state)
    except Exception as exc:  # CompressAI renames old keys; odd ones fail in many ways
        raise PSICError(f"cannot read the checkpoint's tensors ({exc.__class__.__name__}: {str(exc)[:200]})") from None



def save_codec(codec: nn.Module, path: PathLike, force: bool = True) -> Path:
    """Write a codec's full state_dict (CDF tables included) as one safetensors file, atomically."""
    from safetensors.torch import save

    from ..fileio import atomic_write

    from .registry import architecture_name

    state = {k: v.detach().cpu().contiguous().clone() for k, v in codec.state_dict().items()}
    return atomic_write(path, save(state, metadata={"architecture": architecture_name(codec)}), force=force)


