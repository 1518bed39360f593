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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from .keys import check_kdf, default_kdf
from .strength import check_strength
from ..errors import ConfigError, show, show_names

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# 1: the encrypted condition is zeros (ones for the public full mode).
# 2: the encrypted condition is a fixed public +-1 vector.
# 3: `full_version`: adapters fitted to a frozen codec decode the full version with the adapter
#    bypassed (bit for bit the base codec); formats 1 and 2 decode it with the owner's condition.
FORMAT_VERSION = 3

PRESETS = ("paper", "official")
MODULATIONS = ("bias", "film", "spatial")
CONDITION_MODES = ("key", "public")
FULL_VERSIONS = ("base", "condition")

# The preset's default MLP width when hidden_dim is left as None.
_DEFAULT_HIDDEN = {"paper": 64, "official": 512}
#: width of the "spatial" modulation's convolutional branch
SPATIAL_RANK = 32
#: the widest spatial branch a config may ask for
MAX_SPATIAL_RANK = 256
#: the widest global-context MLP of a spatial branch a config may ask for
MAX_SPATIAL_CONTEXT = 1024

# Bounds that a loaded config cannot leave: an adapter folder is untrusted input.
MAX_COND_DIM = 4096
MAX_HIDDEN = 8192
MAX_FOURIER = 64
MAX_CHANNELS = 8192
MAX_POINTS = 256
MAX_PARAMETERS = 50_000_000
MAX_CONFIG_BYTES = 1 << 20
MAX_TEXT = 10_000


#: adapter names: they become folder names in ``save_pretrained``
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_adapter_name(name) -> str:
    """An adapter name that is safe as a folder name (and as a module name): letters, digits, ``_ -``, at most 64."""
    if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
        raise ConfigError(f"adapter name {show(name)} is not allowed: use letters, digits, '_' and '-' "
                          "(at most 64, starting with a letter or digit)")
    return name

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_in(name: str, v: Any, lo: int, hi: int) -> int:
    if not _is_int(v) or not lo <= v <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], not {show(v)}")
    return v


def _json_depth(obj: Any, limit: int = 16, depth: int = 0) -> None:
    if depth > limit:
        raise ConfigError(f"adapter config is nested deeper than {limit} levels")
    if isinstance(obj, dict):
        for v in obj.values():
            _json_depth(v, limit, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _json_depth(v, limit, depth + 1)


def _check_hex(name: str, v: Any, lo: int, hi: int) -> None:
    if not isinstance(v, str) or not lo <= len(v) <= hi or len(v) % 2:
        raise ConfigError(f"{name} must be a hex string of {lo}-{hi} characters, not {show(v)}")
    try:
        bytes.fromhex(v)
    except ValueError:
        raise ConfigError(f"{name} is not hex: {show(v)}") from None


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
        modulation: ``"bias"`` (paper eq. 4: ``f_dec + f_beta W_d``), ``"film"``
            (an extension: ``f_dec * (1 + g_beta) + f_beta``, a condition-dependent
            per-channel gain as well, which acts on the content of each image), or
            ``"spatial"`` (FiLM plus a small convolutional branch on the block's
            output, gated per channel by the condition: changes that vary across
            the image with its content).
        spatial_rank: hidden channels of the "spatial" branch (``None``: 32, which
            is what a saved config without the field means). Its cost at decode
            time grows with it: 8 costs about half the decode overhead of 32 on
            the shipped codec (docs/benchmarks.md) and flips as many photos (runs
            NR, docs/results.md), so the ``robust`` recipe writes 8.
        spatial_context: ``None`` (the default) or the hidden width of an MLP that reads the
            mean and spread of the block's output over the whole image and shifts the "spatial" branch's
            hidden units by it, per image (``cltg.SpatialBranch``): the change may then depend on
            the whole image's content. Zero-initialised; part of the fingerprint when set.
        condition: ``"key"`` (the full version needs the owner's key) or
            ``"public"`` (the paper's public mode bit; not access-controlled).
        full_version: ``"base"`` (the default from format 3 on): the full version is the base codec's
            own decode, the adapter bypassed, bit for bit; right for adapters
            fitted to a frozen codec (stage 2, adapter only). ``"condition"``: the
            full version is decoded with the owner's condition through the adapter;
            what training sets where the decoder itself trains (stage 1, stage 2
            with the decoder). ``None`` picks the format's default ("condition"
            for formats 1 and 2).
        kdf: key-derivation function and its parameters.
        description: free text, written to the model card.
        strength: ``None`` (every image changed at strength 1), or a per-image strength of the
            change read from the latent, fitted so that each photo spends about the same share of
            the PSNR budget (see ``strength.py`` and :func:`psic_adapter.training.calibrate.fit_strength`); part of the
            fingerprint when set.
    """

    preset: str = "paper"
    target_modules: Optional[List[str]] = None
    cond_dim: int = 64
    hidden_dim: Optional[int] = None
    fourier_freqs: int = 10
    modulation: str = "bias"
    spatial_rank: Optional[int] = None
    spatial_context: Optional[int] = None
    condition: str = "key"
    full_version: Optional[str] = None
    kdf: Dict[str, Any] = field(default_factory=default_kdf)
    description: str = ""
    strength: Optional[Dict[str, Any]] = None

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
        if self.full_version is None:
            self.full_version = "condition" if _is_int(self.format_version) and self.format_version < 3 else "base"
        self.validate()

    # ------------------------------------------------------------------ checks
    @property
    def resolved_hidden_dim(self) -> int:
        return int(self.hidden_dim) if self.hidden_dim is not None else _DEFAULT_HIDDEN[self.preset]

    @property
    def resolved_spatial_rank(self) -> int:
        return int(self.spatial_rank) if self.spatial_rank is not None else SPATIAL_RANK

    @property
    def is_bound(self) -> bool:
        """True once wrap_model has fitted this config to a codec."""
        return bool(self.injection_points) and self.salt is not None

    def validate(self) -> None:
        """Every field in range, so that a config read from disk cannot ask for a huge
        allocation, a cheap KDF or a decode other than the one it was trained with."""
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {PRESETS}, not {show(self.preset)}")
        if self.modulation not in MODULATIONS:
            raise ConfigError(f"modulation must be one of {MODULATIONS}, not {show(self.modulation)}")
        if self.condition not in CONDITION_MODES:
            raise ConfigError(f"condition must be one of {CONDITION_MODES}, not {show(self.condition)}")
        if self.full_version not in FULL_VERSIONS:
            raise ConfigError(f"full_version must be one of {FULL_VERSIONS}, not {show(self.full_version)}")
        _int_in("cond_dim", self.cond_dim, 1, MAX_COND_DIM)
        if self.condition == "key" and self.cond_dim < 16:
            raise ConfigError("a keyed adapter needs cond_dim >= 16 so that wrong keys cannot land near the owner's")
        if self.hidden_dim is not None:
            _int_in("hidden_dim", self.hidden_dim, 1, MAX_HIDDEN)
        _int_in("fourier_freqs", self.fourier_freqs, 0, MAX_FOURIER)
        if self.spatial_rank is not None:
            _int_in("spatial_rank", self.spatial_rank, 1, MAX_SPATIAL_RANK)
            if self.modulation != "spatial":
                raise ConfigError(f"spatial_rank is the width of the 'spatial' modulation's branch, not of "
                                  f"{show(self.modulation)}")
        if self.spatial_context is not None:
            _int_in("spatial_context", self.spatial_context, 1, MAX_SPATIAL_CONTEXT)
            if self.modulation != "spatial":
                raise ConfigError(f"spatial_context feeds the 'spatial' modulation's branch, which "
                                  f"{show(self.modulation)} has not")
        if self.target_modules is not None:
            if isinstance(self.target_modules, str):
                self.target_modules = [self.target_modules]
            if (not isinstance(self.target_modules, list) or not self.target_modules
                    or len(self.target_modules) > MAX_POINTS
                    or not all(isinstance(t, str) and 0 < len(t) <= 256 for t in self.target_modules)):
                raise ConfigError("target_modules must be a non-empty list of module names or class names")
        check_kdf(self.kdf)
        check_strength(self.strength)
        if not _is_int(self.format_version) or self.format_version < 1:
            raise ConfigError(f"format_version must be an integer >= 1, not {show(self.format_version)}")
        if self.format_version > FORMAT_VERSION:
            raise ConfigError(
                f"adapter format {self.format_version} is newer than this psic_adapter understands "
                f"({FORMAT_VERSION}); upgrade psic-adapter"
            )
        if self.format_version < 3 and self.full_version != "condition":
            raise ConfigError(f"adapter format {self.format_version} decodes the full version with its condition "
                              "(full_version 'condition')")
        if self.format_version < 3 and self.modulation == "spatial":
            raise ConfigError("the 'spatial' modulation needs adapter format 3")
        if self.strength is not None and self.full_version != "base":
            raise ConfigError("a strength scales every decode through the adapter: it needs full_version 'base' (with "
                              "'condition' it would scale the owner's full version too)")
        if not isinstance(self.description, str) or len(self.description) > MAX_TEXT:
            raise ConfigError(f"description must be a string of at most {MAX_TEXT} characters")
        if self.salt is not None:
            _check_hex("salt", self.salt, 32, 128)
        if self.key_check is not None:
            _check_hex("key_check", self.key_check, 16, 64)
        if not isinstance(self.injection_points, list) or len(self.injection_points) > MAX_POINTS:
            raise ConfigError(f"injection_points must be a list of at most {MAX_POINTS} points")
        for p in self.injection_points:
            if (not isinstance(p, dict) or set(p) != {"module", "channels"} or not isinstance(p["module"], str)
                    or not 0 < len(p["module"]) <= 256):
                raise ConfigError(f"each injection point is {{'module': name, 'channels': count}}, not {show(p)}")
            _int_in(f"channels of {p['module']}", p["channels"], 1, MAX_CHANNELS)
        for name in ("base_model", "training", "modes"):
            v = getattr(self, name)
            if not isinstance(v, dict):
                raise ConfigError(f"{name} must be a JSON object")
            _json_depth(v)
        self._check_base_model()
        if self.library_version is not None and not (isinstance(self.library_version, str)
                                                     and len(self.library_version) <= 64):
            raise ConfigError("library_version must be a short string")
        if self.injection_points:
            n = self.num_parameters()
            if n > MAX_PARAMETERS:
                raise ConfigError(f"this adapter would have {n:,} parameters (more than {MAX_PARAMETERS:,}): "
                                  "not a PSIC adapter")

    def _check_base_model(self) -> None:
        """What a fitted adapter says of its base codec is what building that codec reads: the architecture and
        the fingerprint are there, and every known fact has its type (a crafted ``"base_model": {}`` otherwise
        surfaced as an AttributeError deep in the codec registry)."""
        info = self.base_model
        if self.is_bound:
            missing = [k for k in ("architecture", "fingerprint") if k not in info]
            if missing:
                raise ConfigError(f"base_model lacks {' and '.join(missing)}: this fitted adapter does not say "
                                  "which codec it fits")
        arch = info.get("architecture")
        if arch is not None and not (isinstance(arch, str) and 0 < len(arch) <= 64):
            raise ConfigError(f"base_model architecture must be a codec name, not {show(arch)}")
        if info.get("fingerprint") is not None:
            _check_hex("base_model fingerprint", info["fingerprint"], 64, 64)
        if info.get("quality") is not None:
            _int_in("base_model quality", info["quality"], 0, 64)
        for k in ("N", "M"):
            if info.get(k) is not None:
                _int_in(f"base_model {k}", info[k], 1, MAX_CHANNELS)
        for k in ("class", "checkpoint"):
            if info.get(k) is not None and not (isinstance(info[k], str) and len(info[k]) <= MAX_TEXT):
                raise ConfigError(f"base_model {k} must be a string, not {show(info[k])}")

    def num_parameters(self) -> int:
        """The adapter's parameter count, from the config alone (checked before anything is allocated)."""
        factor = {"bias": 1, "film": 2, "spatial": 3}[self.modulation]
        hidden = self.resolved_hidden_dim
        channels = [int(p["channels"]) for p in self.injection_points]
        if self.preset == "paper":
            n = sum(self.cond_dim * hidden + hidden + hidden * c * factor + c * factor + c * factor for c in channels)
        else:
            in_dim = self.cond_dim * (2 * self.fourier_freqs + 1)
            n = in_dim * hidden + hidden + hidden * hidden + hidden + sum(hidden * c * factor for c in channels)
        if self.modulation == "spatial":
            r = self.resolved_spatial_rank
            n += sum(c * r + r + r * c * 9 + c for c in channels)  # per point: 1x1 C->r, 3x3 r->C
            k = self.spatial_context or 0
            n += sum(2 * c * k + k + k * r + r for c in channels) if k else 0  # per point: 2C->k->r
        return n

    # ------------------------------------------------------------ serialising
    def to_dict(self) -> Dict[str, Any]:
        d = copy.deepcopy(dataclasses.asdict(self))
        if d["strength"] is None:  # absent unless fitted: configs without it read as before, by older releases too
            del d["strength"]
        for name in ("spatial_rank", "spatial_context"):  # likewise absent unless set
            if d[name] is None:
                del d[name]
        return d

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
        if version < 1:
            raise ConfigError(f"unknown adapter format {version}")
        _json_depth(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise ConfigError(f"unknown adapter config field(s): {show_names(unknown)}")
        data = copy.deepcopy(data)
        if version < 3:  # the full version of older adapters is their owner's condition
            data.setdefault("full_version", "condition")
        if data.get("injection_points"):  # a bound config: what it was bound with must be there, never defaulted
            need = ["salt", "kdf"] + (["key_check"] if data.get("condition", "key") == "key" else [])
            missing = [k for k in need if data.get(k) is None]
            if missing:
                raise ConfigError(f"this fitted adapter config lacks {', '.join(missing)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"adapter config: {str(exc)[:200]}") from None

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        from ..fileio import atomic_write_text

        return atomic_write_text(Path(directory) / CONFIG_NAME, self.to_json_string(), force=True)

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> "PSICConfig":
        path = Path(directory)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{path}: no adapter config here (expected {CONFIG_NAME})")
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not an adapter config")
            data = json.loads(path.read_text(encoding="utf-8"))
        except ConfigError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({str(exc)[:100]})") from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise ConfigError(f"{path}: not valid JSON ({str(exc)[:100]})") from None
        except RecursionError:
            raise ConfigError(f"{path}: JSON nested too deeply") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def replace(self, **changes) -> "PSICConfig":
        return dataclasses.replace(copy.deepcopy(self), **changes)
