"""An adapter folder's two files, read and checked without a codec.

``adapter_config.json`` is bounded by :class:`~.config.PSICConfig` before anything is
allocated; ``adapter_model.safetensors`` is size-checked against the config, read by
safetensors (never unpickled), and each tensor's name, shape, type and finiteness is
checked against the CLTG modules the config describes. :mod:`.pretrained` loads
adapters through these; ``psic info`` and ``psic push`` check a folder with them
before describing or publishing it. :func:`write_adapter_files` writes the two
files (with the adapter's fingerprint, :func:`fingerprint_of`, in the weights'
metadata), for ``save_pretrained`` and for tools that edit an adapter's tensors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Tuple

from torch import Tensor

from .. import __version__
from ..errors import ConfigError
from ..fileio import atomic_write, regular_or_absent
from ..weights import describe_mismatch
from .config import CONFIG_NAME, WEIGHTS_NAME, PSICConfig
from ..types import PathLike


def max_weights_bytes(config: PSICConfig) -> int:
    """The most bytes a weights file of this config may have (8 per parameter, a MiB of header)."""
    expected = config.num_parameters() if config.injection_points else 0
    return 8 * expected + (1 << 20)


def read_adapter_weights(weights: Path, config: PSICConfig) -> Dict[str, Tensor]:
    """The tensors of ``adapter_model.safetensors``, after checking its size against the config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights.is_file():
        raise ConfigError(f"{weights.parent}: {WEIGHTS_NAME} is missing")
    if weights.stat().st_size > max_weights_bytes(config):
        raise ConfigError(f"{weights}: {weights.stat().st_size} bytes, far more than an adapter of "
                          f"{config.num_parameters() if config.injection_points else 0:,} parameters needs")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{weights}: cannot read adapter weights ({exc})") from None


def tensors_mismatch(config: PSICConfig, state: Dict[str, Tensor]) -> str:
    """What keeps ``state`` from being the tensors of a fitted ``config``'s CLTG modules ("" when they fit),
    naming the tensors."""
    from .cltg import build_cltg

    return describe_mismatch(build_cltg(config, [p["channels"] for p in config.injection_points]).state_dict(), state)


def check_adapter_files(directory: PathLike, regular: bool = False) -> Tuple[PSICConfig, Dict[str, Tensor]]:
    """The config and the tensors of a fitted adapter folder, after every check that needs no codec (see the
    module docstring). ``regular``: both files regular, not symbolic links (what ``psic push`` publishes)."""
    directory = Path(directory)
    if regular:
        for fn in (CONFIG_NAME, WEIGHTS_NAME):
            regular_or_absent(directory / fn, "adapter file")
    config = PSICConfig.load(directory)
    if not config.is_bound:
        raise ConfigError(f"{directory}: the adapter config is not fitted to a codec (save it with save_pretrained)")
    weights = directory / WEIGHTS_NAME
    state = read_adapter_weights(weights, config)
    problem = tensors_mismatch(config, state)
    if problem:
        raise ConfigError(f"{weights}: tensors do not fit the adapter config: {problem}")
    return config, state


def fingerprint_of(config: PSICConfig, state: Dict[str, Tensor], legacy: bool = False) -> str:
    """SHA-256 (hex, 16 chars) of what decides an adapter's decodes: its config and its tensors
    (:meth:`~.model.PSICModel.adapter_fingerprint` says what it covers and why)."""
    d = hashlib.sha256(b"psic adapter v1\0" if legacy else b"psic adapter v2\0")
    d.update((config.salt or "").encode())
    if not legacy:
        names = ["format_version", "preset", "modulation", "cond_dim", "hidden_dim", "fourier_freqs", "condition",
                 "full_version", "injection_points"]
        if config.format_version < 3:
            names += ["key_check", "kdf"]
        fields = {k: getattr(config, k) for k in names}
        if config.strength is not None:  # absent otherwise: adapters without one keep their fingerprints
            fields["strength"] = config.strength
        d.update(json.dumps(fields, sort_keys=True).encode())
    for k, v in sorted(state.items()):
        d.update(k.encode())
        d.update(v.float().numpy().tobytes())
    return d.hexdigest()[:16]


def write_adapter_files(directory: Path, config: PSICConfig, state: Dict[str, Tensor],
                        adapter_name: str = "default") -> None:
    """Write ``adapter_model.safetensors`` (``state``, its fingerprint in the metadata) and
    ``adapter_config.json`` into ``directory``, each atomically, over files already there (the
    caller has checked what may be overwritten)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {
        "format": "pt",
        "psic_adapter_version": __version__,
        "adapter_name": adapter_name,
        "adapter_fingerprint": fingerprint_of(config, state),
        "base_fingerprint": config.base_model.get("fingerprint", ""),
    }
    atomic_write(directory / WEIGHTS_NAME, save(state, metadata=meta), force=True)
    atomic_write(directory / CONFIG_NAME, config.to_json_string().encode(), force=True)
