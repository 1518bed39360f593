"""``PSICConfig``: everything that defines an adapter, saved as ``adapter_config.json``.

The user sets the hyper-parameters (preset, sizes, target modules, condition
mode, KDF). :func:`psic_adapter.wrap_model` fills in the rest (salt, key
check, injection points with their channel counts, the base codec's identity
and fingerprint), so that a saved config says exactly what the adapter is and
which codec it fits.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .condition import default_kdf
from .errors import ConfigError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# 2: the encrypted condition is a fixed public +-1 vector; format-1 adapters used zeros
# (and ones for the public full mode), and keep decoding with them.
FORMAT_VERSION = 2

PRESETS = ("paper", "official")
MODULATIONS = ("bias", "film")
CONDITION_MODES = ("key", "public")

# The preset's default MLP width when hidden_dim is left as None.
_DEFAULT_HIDDEN = {"paper": 64, "official": 512}


@dataclass
class PSICConfig:
    """Configuration of one PSIC adapter (PEFT's ``LoraConfig`` plays this part there).

    Args:
        preset: ``"paper"``: one CLTG per decoder block, each a 2-layer MLP on the
            condition, fused as ``f_beta * W_d + f_dec`` with an element-wise,
            zero-initialised ``W_d`` (paper eq. 4). ``"official"``: as the authors'
            code, one shared Fourier-feature MLP and a zero-initialised bias-free
            ``Linear(hidden -> C)`` per injection point.
        target_modules: where to inject, as module names of the codec
            (``"g_s.1"``), name suffixes, or decoder-block class names
            (``"GDN"``, ``"ResidualBlock"``). ``None`` picks the decoder blocks of
            the codec's synthesis transform by type (see ``surgery.py``).
        cond_dim: length of the condition vector (bits derived from the key).
        hidden_dim: MLP width (``None``: 64 for "paper", 512 for "official").
        fourier_freqs: Fourier frequencies per condition entry ("official").
        modulation: ``"bias"`` (paper eq. 4: ``f_dec + f_beta W_d``) or ``"film"``
            (an extension: ``f_dec * (1 + g_beta) + f_beta``, a condition-dependent
            per-channel gain as well, which acts on the content of each image).
        condition: ``"key"`` (the full version needs the owner's key) or
            ``"public"`` (the paper's public mode bit; not access-controlled).
        kdf: key-derivation function and its parameters.
        description: free text, written to the model card.
    """

    preset: str = "paper"
    target_modules: Optional[List[str]] = None
    cond_dim: int = 64
    hidden_dim: Optional[int] = None
    fourier_freqs: int = 10
    modulation: str = "bias"
    condition: str = "key"
    kdf: Dict[str, Any] = field(default_factory=default_kdf)
    description: str = ""

    # ---- filled in by wrap_model; read from the file when loading ----
    salt: Optional[str] = None
    key_check: Optional[str] = None
    injection_points: List[Dict[str, Any]] = field(default_factory=list)
    base_model: Dict[str, Any] = field(default_factory=dict)
    training: Dict[str, Any] = field(default_factory=dict)
    library_version: Optional[str] = None
    format_version: int = FORMAT_VERSION
    modes: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ checks
    @property
    def resolved_hidden_dim(self) -> int:
        return int(self.hidden_dim) if self.hidden_dim is not None else _DEFAULT_HIDDEN[self.preset]

    @property
    def is_bound(self) -> bool:
        """True once wrap_model has fitted this config to a codec."""
        return bool(self.injection_points) and self.salt is not None

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {PRESETS}, not {self.preset!r}")
        if self.modulation not in MODULATIONS:
            raise ConfigError(f"modulation must be one of {MODULATIONS}, not {self.modulation!r}")
        if self.condition not in CONDITION_MODES:
            raise ConfigError(f"condition must be one of {CONDITION_MODES}, not {self.condition!r}")
        if not isinstance(self.cond_dim, int) or self.cond_dim < 1:
            raise ConfigError(f"cond_dim must be a positive int, not {self.cond_dim!r}")
        if self.condition == "key" and self.cond_dim < 16:
            raise ConfigError("a keyed adapter needs cond_dim >= 16 so that wrong keys cannot land near the owner's")
        if self.hidden_dim is not None and (not isinstance(self.hidden_dim, int) or self.hidden_dim < 1):
            raise ConfigError(f"hidden_dim must be a positive int or None, not {self.hidden_dim!r}")
        if not isinstance(self.fourier_freqs, int) or self.fourier_freqs < 0:
            raise ConfigError(f"fourier_freqs must be an int >= 0, not {self.fourier_freqs!r}")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                self.target_modules = [self.target_modules]
            if not all(isinstance(t, str) and t for t in self.target_modules) or not self.target_modules:
                raise ConfigError("target_modules must be a non-empty list of module names or class names")
        if not isinstance(self.kdf, dict) or "name" not in self.kdf:
            raise ConfigError("kdf must be a dict with a 'name'")
        if self.format_version > FORMAT_VERSION:
            raise ConfigError(
                f"adapter format {self.format_version} is newer than this psic_adapter understands "
                f"({FORMAT_VERSION}); upgrade psic-adapter"
            )

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "PSICConfig":
        if not isinstance(data, dict):
            raise ConfigError("an adapter config must be a JSON object")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ConfigError(f"adapter config format_version must be an integer, not {version!r}")
        if version > FORMAT_VERSION:  # before the field check: new formats add fields
            raise ConfigError(
                f"adapter format {version} is newer than this psic_adapter understands "
                f"({FORMAT_VERSION}); upgrade psic-adapter"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown adapter config field(s): {', '.join(unknown)}")
        return cls(**copy.deepcopy(data))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(self.to_json_string())
        return path

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "PSICConfig":
        path = Path(directory)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{path}: no adapter config here (expected {CONFIG_NAME})")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def replace(self, **changes) -> "PSICConfig":
        return dataclasses.replace(copy.deepcopy(self), **changes)
