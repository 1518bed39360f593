"""Adapters on disk and on a hub: ``save_pretrained`` / ``from_pretrained`` (PEFT's shape).

An adapter is a folder with ``adapter_config.json`` (:class:`~.config.PSICConfig`)
and ``adapter_model.safetensors`` (the CLTG tensors); the ``"default"`` adapter
(or the only one) at its root, others in sub-folders named after them. The
key is never written. A folder or a hub download is untrusted: the config is
bounded (:meth:`PSICConfig.validate`) before anything is allocated, the weights
file's size is checked against the config, and tensors that do not fit are
named in a one-line error (:mod:`.files`).

:class:`PretrainedMixin` gives :class:`~.model.PSICModel` these methods without
this module importing the model.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..errors import ConfigError, FingerprintMismatchError, OverwriteError
from ..fileio import atomic_write, check_output
from ..weights import describe_mismatch
from .config import CONFIG_NAME, WEIGHTS_NAME, PSICConfig, check_adapter_name
from .files import check_adapter_files, read_adapter_weights, write_adapter_files
from .keys import KeyLike
from ..types import PathLike

#: the adapter shipped for ``psic demo``: its key (``demo.key``) ships beside it, so it protects nothing
DEMO_ADAPTER = Path(__file__).resolve().parents[1] / "assets" / "demo-adapter"
DEMO_KEY = DEMO_ADAPTER / "demo.key"


class PublicKeyWarning(UserWarning):
    """An adapter whose owner's key is public (the demo adapter, or a copy of it)."""


@functools.lru_cache(maxsize=1)
def _demo_identity() -> Optional[Tuple[Any, Any]]:
    """``(salt, key_check)`` of the shipped demo adapter (read once), or None where it is missing."""
    try:
        demo = json.loads((DEMO_ADAPTER / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return demo.get("salt"), demo.get("key_check")


def is_demo_adapter(config: PSICConfig) -> bool:
    """Whether ``config`` is the shipped demo adapter's (same salt and key check: same key), wherever it lies."""
    demo = _demo_identity()
    return demo is not None and bool(config.salt) and (config.salt, config.key_check) == demo


def resolve_adapter_dir(path: PathLike, revision: Optional[str] = None) -> Path:
    """A local adapter folder, or a hub id (``org/name``) downloaded to the cache."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists():
        raise ConfigError(f"{p} is a file; an adapter is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    from .download import is_hub_id, snapshot

    if is_hub_id(str(path)):
        return snapshot(str(path), revision=revision)
    raise ConfigError(f"{p}: no such adapter folder (nor a hub id like 'org/name')")


def state_mismatch(module: nn.Module, state: Dict[str, Tensor]) -> str:
    """What keeps ``state`` from loading strictly into ``module`` ("" when it fits), naming the tensors."""
    return describe_mismatch(module.state_dict(), state)


def save_adapters(model, save_directory: PathLike, adapter_names: Optional[Sequence[str]] = None,
                  force: bool = False) -> Path:
    """Write each adapter of ``model`` (see the module docstring); existing files need ``force``."""
    root = Path(save_directory)
    names = list(adapter_names) if adapter_names is not None else model.adapter_names
    if not names:
        raise ConfigError("this model has no adapter to save")
    plans = []
    for name in names:
        model.resolve_adapter_name(check_adapter_name(name))
        sub = root if (name == "default" or len(model.adapter_names) == 1) else root / name
        for fn in (CONFIG_NAME, WEIGHTS_NAME):
            if (sub / fn).exists() and not force:
                raise OverwriteError(f"{sub / fn} exists (pass force=True to overwrite)")
        plans.append((name, sub))
    for name, sub in plans:
        write_adapter_files(sub, model.psic_configs[name], model.adapter_state_dict(name), adapter_name=name)
    return root


class PretrainedMixin:
    """``save_pretrained``, ``from_pretrained`` and ``load_adapter`` for :class:`PSICModel`."""

    def save_pretrained(self, save_directory: PathLike, adapter_names: Optional[Sequence[str]] = None,
                        force: bool = False) -> Path:
        """Write each adapter as ``adapter_config.json`` + ``adapter_model.safetensors`` (the key never)."""
        return save_adapters(self, save_directory, adapter_names=adapter_names, force=force)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Moved: ``psic_adapter.hub.push_to_hub(model, repo_id, **kwargs)``. The hub package sits above this one
        (the model card reads evaluation results), so the adapter does not call up into it."""
        from ..errors import ConfigError

        raise ConfigError(f"use psic_adapter.hub.push_to_hub(model, {repo_id!r}, ...): uploading (with its model "
                          "card) is the hub package's")

    def load_adapter(self, path: PathLike, adapter_name: str = "default", **kwargs):
        """Load another saved adapter onto this model under ``adapter_name``."""
        return type(self).from_pretrained(self, path, adapter_name=adapter_name, **kwargs)

    @classmethod
    def from_pretrained(cls, codec: nn.Module, path: PathLike, adapter_name: str = "default",
                        key: Optional[KeyLike] = None, ignore_fingerprint: bool = False, is_trainable: bool = False,
                        revision: Optional[str] = None):
        """Load a saved adapter onto ``codec`` (a plain codec, or a model of this class to add it to).

        Args:
            path: a folder written by ``save_pretrained`` or a hub id (``org/name``).
            key: the owner's key, to train further (checked against the adapter).
            ignore_fingerprint: load onto a codec whose weights differ from the
                ones the adapter was fitted to (the decodes may then be poor).
            is_trainable: keep the adapter's parameters trainable (default: frozen).
        """
        from ..codec import architecture_name, fingerprint

        directory = resolve_adapter_dir(path, revision)
        config = PSICConfig.load(directory)
        if is_demo_adapter(config):
            warnings.warn(f"{directory} is the demo adapter: its key ships with psic-adapter, so its full version "
                          "is anyone's; fit your own adapter to protect images", PublicKeyWarning, stacklevel=2)
        model = codec if isinstance(codec, cls) else cls(codec)
        want = config.base_model.get("fingerprint")
        have = fingerprint(model.base)
        if want != have and not ignore_fingerprint:
            arch = config.base_model.get("architecture", "?")
            q = config.base_model.get("quality")
            raise FingerprintMismatchError(
                f"adapter {directory} was fitted to another base codec ({arch}"
                f"{'' if q is None else f' quality {q}'}, fingerprint {str(want)[:12]}) than this one "
                f"({architecture_name(model.base)}, fingerprint {have[:12]}); "
                "load the same checkpoint, or pass ignore_fingerprint=True to load it anyway"
            )
        state = read_adapter_weights(directory / WEIGHTS_NAME, config)
        model.add_adapter(adapter_name, config, key=key)
        module = model.psic_adapters[adapter_name]
        problem = state_mismatch(module, state)
        if problem:
            model.delete_adapter(adapter_name)
            raise ConfigError(f"{directory / WEIGHTS_NAME}: tensors do not fit the adapter config: {problem}")
        module.load_state_dict(state, strict=True)
        module.requires_grad_(is_trainable)
        return model


def change_adapter_key(path: PathLike, out: PathLike, old_key: KeyLike, new_key: KeyLike,
                       force: bool = False, inputs=()) -> Path:
    """Copy the adapter folder ``path`` to ``out`` with ``new_key`` as its owner's key
    (:func:`.keys.rekey_config`: only for ``full_version="base"`` adapters; the ``.psic``
    files made for it still decode). The tensors are copied byte for byte after the
    usual checks. ``out == path`` rewrites the config in place and needs ``force``;
    ``inputs`` (the key files) are never written over."""
    from .keys import rekey_config

    src = resolve_adapter_dir(path)
    config, _ = check_adapter_files(src)  # an unreadable adapter is refused before anything is written
    new, _ = rekey_config(config, old_key, new_key)
    dst = Path(out)
    same = dst.exists() and dst.resolve() == src.resolve()
    for fn in (CONFIG_NAME, WEIGHTS_NAME):  # both checked before anything is written; never a key file
        check_output(dst / fn, force=force, inputs=inputs)
    if not same:
        atomic_write(dst / WEIGHTS_NAME, (src / WEIGHTS_NAME).read_bytes(), force=True,  # size checked above
                     inputs=inputs)
    atomic_write(dst / CONFIG_NAME, new.to_json_string().encode(), force=True, inputs=inputs)
    return dst


def fingerprint_matches(codec: nn.Module, path: PathLike) -> bool:
    """True when the adapter at ``path`` was fitted to exactly this codec's weights."""
    from ..codec import fingerprint

    base = codec.base if hasattr(codec, "psic_adapters") else codec
    return PSICConfig.load(resolve_adapter_dir(path)).base_model.get("fingerprint") == fingerprint(base)


def codec_for_adapter(path: PathLike, checkpoint=None, device="cpu"):
    """Build the base codec an adapter was fitted to.

    The architecture and quality come from the adapter config; the weights from
    the first candidate whose fingerprint matches: ``codec.safetensors`` beside
    the adapter folder (written when training changed the decoder), then
    ``checkpoint``, then the codec shipped with psic-adapter (when it is the one);
    with no candidate, the CompressAI zoo's weights (a download).
    """
    from ..codec import fingerprint, load_codec, shipped_codec_for

    directory = resolve_adapter_dir(path)
    config = PSICConfig.load(directory)
    info = config.base_model
    name, quality = info.get("architecture"), info.get("quality")
    if not isinstance(name, str) or not name.strip():  # an edited or foreign config: say so, not a traceback
        raise ConfigError(f"{directory / CONFIG_NAME}: names no base codec (base_model.architecture): not an adapter "
                          "saved by psic-adapter, or edited since")
    dims = {} if quality is not None else {k: info[k] for k in ("N", "M") if info.get(k)}
    candidates = []
    beside = directory.parent / "codec.safetensors"
    if beside.is_file():
        candidates.append(beside)
    if checkpoint:
        candidates.append(checkpoint)
    shipped = shipped_codec_for(info.get("fingerprint"))
    if shipped is not None and not candidates:
        candidates.append(shipped)
    if not candidates:
        return load_codec(name, quality, pretrained=True, device=device, **dims)
    seen = []
    for cand in candidates:
        codec = load_codec(name, quality, checkpoint=cand, device=device, **dims)
        fp = fingerprint(codec)
        if fp == info.get("fingerprint"):
            return codec
        seen.append(f"{cand} ({fp[:12]})")
    raise FingerprintMismatchError(
        f"adapter {directory} was fitted to another base codec (fingerprint {str(info.get('fingerprint'))[:12]}) "
        f"than the weights given: " + ", ".join(seen)
    )
