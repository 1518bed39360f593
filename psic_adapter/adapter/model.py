"""The wrapped codec: one bitstream, two decodings.

:func:`wrap_model` puts CLTG adapters on any CompressAI image codec;
:class:`PSICModel` is the result (PEFT's ``PeftModel`` plays this part there):

* ``compress(x)`` is the base codec's, byte for byte: the adapter is inactive. Any size: it pads to a
  multiple of 64 and returns the ``size`` that ``decompress(..., size=...)`` crops back to.
* ``decompress(strings, shape)`` gives the *encrypted* version; with
  ``key=<owner's key>`` the *full* version. A wrong key gives the encrypted one.
* ``forward(x, key=... | mode=... | condition=...)`` is the training forward
  (CompressAI's dict: ``x_hat``, ``likelihoods``).
* Adapters are named (``add_adapter``, ``set_adapter``, ``delete_adapter``),
  ``disable_adapter()`` gives plain-codec decodes, and ``save_pretrained`` /
  :func:`load_adapter` write and read ``adapter_config.json`` +
  ``adapter_model.safetensors``.

The base codec is never modified: adapters live in ``model.psic_adapters``
beside ``model.base``, and forward hooks on the decoder blocks add the CLTG
biases only while a condition is active (inside a ``decompress``/``forward``
call of this wrapper). ``model.base.state_dict()`` is the plain codec's.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import os
from typing import Any, Dict, Iterator, List, Optional, Union

import torch
from torch import Tensor, nn

from .. import __version__
from ..codec.padding import PAD_MULTIPLE, crop_to, pad_to_multiple
from ..codec import architecture_name, codec_dims, decode_latent, fingerprint
from ..errors import ConfigError
from .cltg import build_cltg
from .files import fingerprint_of
from .config import PSICConfig, check_adapter_name
from .keyring import Keyring
from .pretrained import PretrainedMixin
from .strength import strength_of
from .keys import KeyLike, derive_material, key_check, material_to_condition, new_salt, rekey_config, warn_if_weak
from .fusion import folded_branch, fusable_next
from .surgery import attach_hooks, get_submodule, probe_channels, resolve_injection_points

#: what a wrapped model forwards to its codec besides the codec's submodules
CODEC_METHODS = ("aux_loss", "update", "load_state_dict_into_codec")

MODES_DOC = {
    "encrypted": "default: no key, or any key but the owner's (condition = a fixed public +-1 vector)",
    "full": "the owner's key (condition = KDF(key, salt) as +-1 bits)",
}
PUBLIC_MODES_DOC = {
    "encrypted": "default, mode='encrypted' (condition = a fixed public +-1 vector)",
    "full": "mode='full' (condition = its negation); NOT access-controlled: anyone can ask for it",
}


class _Active:
    """The condition of the call in progress (set by :meth:`PSICModel.conditioned`)."""

    __slots__ = ("adapter", "condition", "biases", "latent", "deferred", "photo_shift")

    def __init__(self, adapter: str, condition: Tensor, photo_shift=None):
        self.adapter = adapter
        self.condition = condition
        self.photo_shift = photo_shift  # a PhotoShift: this photo's branch shifts and strength (photo_shift.py)
        self.biases: Optional[List[Tensor]] = None
        self.latent: Optional[Tensor] = None  # what g_s decodes now (for a per-image strength)
        self.deferred = None  # (adapter, hidden map, gate): a spatial branch to fold into the next layer


def _mark(fn):
    """``fn``, marked as a hook this library put on a codec (a deep copy finds and replaces them)."""
    fn._psic_hook = True
    return fn


class PSICModel(PretrainedMixin, nn.Module):
    """A CompressAI codec with PSIC adapters. Build it with :func:`wrap_model` or :func:`load_adapter`."""

    def __init__(self, base: nn.Module):
        super().__init__()
        if isinstance(base, PSICModel):
            raise ConfigError("this codec is already wrapped; use model.add_adapter(...)")
        self.base = base
        self.psic_adapters = nn.ModuleDict()
        self.psic_configs: Dict[str, PSICConfig] = {}
        self.active_adapter: Optional[str] = None
        self.keyring = Keyring()
        self._hooks: Dict[str, list] = {}
        # adapter -> the index of its spatial point whose branch a decode folds into the next layer (fusion.py)
        self._fold_points: Dict[str, int] = {}
        self._active: Optional[_Active] = None
        self._disabled = False
        self._latent_hook = None
        self._attach_latent_hook()

    def _attach_latent_hook(self) -> None:
        g_s = self.base._modules.get("g_s")
        # each decode's latent, for adapters with a per-image strength. A function, as attach_hooks' are, not a
        # bound method: a deep copy of g_s (the trainer's frozen reference decoder) copies a bound method's
        # object, this whole wrapper (codec, adapters, the owner's condition), where it shares a function.
        if g_s is not None:
            hook = _mark(lambda module, inputs: self._observe_latent(module, inputs))
            self._latent_hook = g_s.register_forward_pre_hook(hook)

    def __deepcopy__(self, memo):
        """A working copy: the codec's forward hooks are closures over *this* wrapper, so a plain deep copy
        would decode through the copy's codec while the hooks looked for the original's condition (never set
        there): the copy would decode every "encrypted" image as the base codec, unprotected. The copy's hooks
        are dropped and attached again to the copy."""
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k not in ("_hooks", "_latent_hook", "_active"):
                new.__dict__[k] = copy.deepcopy(v, memo)
        new.__dict__.update(_hooks={}, _latent_hook=None, _active=None)
        for m in new.base.modules():  # the original's hooks, copied along with the codec
            for hooks in (m._forward_hooks, m._forward_pre_hooks):
                for key in [k for k, fn in hooks.items() if getattr(fn, "_psic_hook", False)]:
                    del hooks[key]
        new._attach_latent_hook()
        for name in new.psic_adapters:
            new._attach_adapter_hooks(name)
        return new

    # --------------------------------------------------------------- plumbing
    def __getattr__(self, name: str):
        """The codec's submodules (``g_a``, ``entropy_bottleneck`` ...) and its ``aux_loss`` / ``update``;
        any other unknown name is an error here, not a silent reach into the codec."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules", {})
            base = modules.get("base")
            if base is not None and name != "base" and (name in base._modules or name in CODEC_METHODS):
                return getattr(base, name)
            raise AttributeError(f"PSICModel has no attribute {name!r} (the codec itself is model.base)") from None

    @property
    def config(self) -> PSICConfig:
        """The active adapter's config."""
        return self.psic_configs[self.resolve_adapter_name()]

    @property
    def adapter_names(self) -> List[str]:
        return list(self.psic_adapters.keys())

    def resolve_adapter_name(self, name: Optional[str] = None) -> str:
        """``name``, or the active adapter's name; an error when there is no such adapter."""
        name = name or self.active_adapter
        if name is None or name not in self.psic_adapters:
            known = ", ".join(self.adapter_names) or "none"
            raise ConfigError(f"no adapter named {name!r} (adapters: {known})")
        return name

    def _device(self, name: str) -> torch.device:
        p = next(self.psic_adapters[name].parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    # ------------------------------------------------------ managing adapters
    def add_adapter(self, adapter_name: str, config: Optional[PSICConfig] = None, key: Optional[KeyLike] = None) -> "PSICModel":
        """Add a named adapter. A new config is fitted to the codec (this needs the owner's
        ``key`` unless ``config.condition == "public"``); a loaded config is checked against it."""
        check_adapter_name(adapter_name)
        if adapter_name in self.psic_adapters:
            raise ConfigError(f"an adapter named {adapter_name!r} exists already (delete_adapter first)")
        try:
            return self._add_adapter(adapter_name, config, key)
        except BaseException:
            self.keyring.forget(adapter_name)  # nothing half-added survives a failure
            raise

    def _add_adapter(self, adapter_name: str, config: Optional[PSICConfig], key: Optional[KeyLike]) -> "PSICModel":
        config = PSICConfig.from_dict((config or PSICConfig()).to_dict())  # own copy
        if config.is_bound:
            self._check_bound_config(config)
            if key is not None and config.condition == "key":
                derived = self.keyring.derive(adapter_name, config, key)
                if not derived.matches:
                    self.keyring.forget(adapter_name)
                    raise ConfigError(f"the key given does not match adapter {adapter_name!r}")
                self.keyring.set_owner(adapter_name, derived.condition)
        else:
            self._bind_config(config, key)
            if config.condition == "key":
                material = derive_material(key, config.salt, config.kdf)
                self.keyring.set_owner(adapter_name, material_to_condition(material, config.cond_dim))
        channels = [p["channels"] for p in config.injection_points]
        module = build_cltg(config, channels)
        ref = next(self.base.parameters(), None)
        if ref is not None:
            module.to(ref.device)
        self.psic_adapters[adapter_name] = module
        self.psic_configs[adapter_name] = config
        self._attach_adapter_hooks(adapter_name)
        if self.active_adapter is None:
            self.active_adapter = adapter_name
        return self

    def _attach_adapter_hooks(self, adapter_name: str) -> None:
        """The adapter's forward hooks on the codec's decoder blocks (and on the layer its last spatial branch
        folds into, fusion.py), each marked as this library's (see :meth:`__deepcopy__`)."""
        config = self.psic_configs[adapter_name]
        names = [p["module"] for p in config.injection_points]
        self._hooks[adapter_name] = attach_hooks(
            self.base, names, _mark(lambda i, out, owned, _n=adapter_name: self._inject(_n, i, out, owned))
        )
        nxt = (fusable_next(self.base, names[-1], config.resolved_spatial_rank)
               if config.modulation == "spatial" and names else None)
        if nxt is not None:  # decodes fold the last spatial branch into the layer after it (fusion.py)
            self._fold_points[adapter_name] = len(names) - 1
            self._hooks[adapter_name].append(get_submodule(self.base, nxt).register_forward_hook(
                _mark(lambda module, _inp, out, _n=adapter_name: self._fold(_n, module, out))))

    def _bind_config(self, config: PSICConfig, key: Optional[KeyLike]) -> None:
        if config.condition == "key" and key is None:
            raise ConfigError(
                "a keyed adapter needs the owner's key: wrap_model(codec, config, key=...) "
                "(or PSICConfig(condition='public') for the paper's public mode bit)"
            )
        if config.condition == "public" and key is not None:
            raise ConfigError("a public-condition adapter takes no key")
        names = resolve_injection_points(self.base, config.target_modules)
        channels = probe_channels(self.base, names)
        config.injection_points = [{"module": n, "channels": c} for n, c in zip(names, channels)]
        config.salt = new_salt()
        if config.condition == "key":
            warn_if_weak(key)
            config.key_check = key_check(derive_material(key, config.salt, config.kdf))
            config.modes = dict(MODES_DOC)
        else:
            config.modes = dict(PUBLIC_MODES_DOC)
        info = {"architecture": architecture_name(self.base), "class": type(self.base).__name__}
        info.update(codec_dims(self.base))
        info.update({k: v for k, v in config.base_model.items() if k not in ("fingerprint",)})
        info["fingerprint"] = fingerprint(self.base)
        config.base_model = info
        config.library_version = __version__

    def _check_bound_config(self, config: PSICConfig) -> None:
        names = [p["module"] for p in config.injection_points]
        channels = probe_channels(self.base, names)  # raises on a missing module
        want = [int(p["channels"]) for p in config.injection_points]
        if channels != want:
            raise ConfigError(
                f"adapter expects channels {want} at {names}, but this codec has {channels}: "
                "it was made for another architecture or size"
            )

    def set_adapter(self, adapter_name: str) -> None:
        self.active_adapter = self.resolve_adapter_name(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        self.resolve_adapter_name(adapter_name)
        for h in self._hooks.pop(adapter_name):
            h.remove()
        self._fold_points.pop(adapter_name, None)
        del self.psic_adapters[adapter_name]
        del self.psic_configs[adapter_name]
        self.keyring.forget(adapter_name)
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.psic_adapters), None)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Inside this context every decode is the plain base codec's."""
        old, self._disabled = self._disabled, True
        try:
            yield
        finally:
            self._disabled = old

    def unwrap(self) -> nn.Module:
        """Detach every adapter hook and return the plain base codec."""
        for handles in self._hooks.values():
            for h in handles:
                h.remove()
        self._hooks.clear()
        self._fold_points.clear()
        if self._latent_hook is not None:
            self._latent_hook.remove()
            self._latent_hook = None
        return self.base

    # ------------------------------------------------------------- conditions
    def replace_adapter_identity(self, adapter_name: str, config: PSICConfig, owner_condition: Tensor) -> None:
        """Make adapter ``adapter_name`` another process's same adapter: its config (salt, key check)
        and owner's condition (multi-process training: every rank trains rank 0's adapter)."""
        name = self.resolve_adapter_name(adapter_name)
        self.psic_configs[name] = PSICConfig.from_dict(config.to_dict())
        self.keyring.forget(name)
        self.keyring.set_owner(name, owner_condition)

    def key_matches(self, key: KeyLike, adapter_name: Optional[str] = None) -> bool:
        """True when ``key`` is the owner's key of the (active) adapter."""
        name = self.resolve_adapter_name(adapter_name)
        if self.psic_configs[name].condition != "key":
            return False
        return self.keyring.derive(name, self.psic_configs[name], key).matches

    def change_key(self, old_key: KeyLike, new_key: KeyLike, adapter_name: Optional[str] = None) -> None:
        """Make ``new_key`` the owner's key of adapter ``adapter_name`` (see :func:`.keys.rekey_config`);
        save the adapter again to keep the change."""
        name = self.resolve_adapter_name(adapter_name)
        config, condition = rekey_config(self.psic_configs[name], old_key, new_key)
        self.replace_adapter_identity(name, config, condition.to(self._device(name)))

    def encrypted_condition(self, adapter_name: Optional[str] = None) -> Tensor:
        name = self.resolve_adapter_name(adapter_name)
        cfg = self.psic_configs[name]
        return Keyring.encrypted(cfg)[None].to(self._device(name))

    def full_condition(self, adapter_name: Optional[str] = None) -> Tensor:
        """The full version's condition ``[1, D]`` (training needs it; it is as secret as the key)."""
        name = self.resolve_adapter_name(adapter_name)
        cfg = self.psic_configs[name]
        if cfg.condition == "public":
            return Keyring.public_full(cfg)[None].to(self._device(name))
        return self.keyring.owner(name)[None].to(self._device(name))

    def wrong_key_conditions(self, n: int, generator: Optional[torch.Generator] = None, adapter_name: Optional[str] = None) -> Tensor:
        """``[n, D]`` conditions of random keys (what wrong keys give the network before any check)."""
        name = self.resolve_adapter_name(adapter_name)
        return Keyring.random(self.psic_configs[name], n, generator, device=self._device(name))

    def bypasses_full(self, adapter_name: Optional[str] = None) -> bool:
        """True when the full version is the base codec's decode (``full_version="base"``)."""
        return self.psic_configs[self.resolve_adapter_name(adapter_name)].full_version == "base"

    def condition_for(self, key: Optional[KeyLike] = None, mode: Optional[str] = None,
                      adapter_name: Optional[str] = None) -> Optional[Tensor]:
        """The ``[1, D]`` condition that a decode with this key / mode uses (``None``: the adapter is bypassed).

        No key: encrypted. The owner's key: full, which for ``full_version="base"``
        adapters is ``None``, the base codec's own decode. Any other key: encrypted
        (exactly as no key; a warning says the key did not match). ``mode="full"``
        works only for a ``"public"``-condition adapter.
        """
        name = self.resolve_adapter_name(adapter_name)
        cfg = self.psic_configs[name]
        if mode not in (None, "encrypted", "full"):
            raise ConfigError(f"mode must be 'encrypted' or 'full', not {mode!r}")
        if key is not None:
            if cfg.condition != "key":
                raise ConfigError(f"adapter {name!r} has a public mode bit and no key; use mode='full'")
            if mode == "encrypted":
                raise ConfigError("give a key or mode='encrypted', not both")
            derived = self.keyring.derive(name, cfg, key)
            if derived.matches:
                return None if cfg.full_version == "base" else derived.condition[None].to(self._device(name))
            warnings.warn(f"the key does not match adapter {name!r}: decoding the encrypted version", stacklevel=3)
            return self.encrypted_condition(name)
        if mode == "full":
            if cfg.condition == "public":
                return None if cfg.full_version == "base" else self.full_condition(name)
            raise ConfigError(f"the full version of adapter {name!r} needs the owner's key")
        return self.encrypted_condition(name)

    def _resolve(self, key, mode, condition) -> Optional[Tensor]:
        if condition is not None:
            if key is not None or mode is not None:
                raise ConfigError("give a condition, a key or a mode, not several")
            name = self.resolve_adapter_name()
            return condition.to(self._device(name))
        return self.condition_for(key=key, mode=mode)

    @contextlib.contextmanager
    def conditioned(self, condition: Tensor, adapter_name: Optional[str] = None, photo_shift=None) -> Iterator[None]:
        """Inside this context ``self.base`` decodes with ``condition`` ([1, D] or [B, D]), and with the owner's
        per-photo ``photo_shift`` (a :class:`~psic_adapter.adapter.photo_shift.PhotoShift`) where one is given."""
        name = self.resolve_adapter_name(adapter_name)
        if photo_shift is not None:
            photo_shift.check_fits(self, name)
        old = self._active
        self._active = _Active(name, condition, photo_shift)
        try:
            yield
        finally:
            self._active = old

    def _observe_latent(self, _module, inputs) -> None:
        act = self._active
        if act is not None and inputs and isinstance(inputs[0], Tensor):
            act.latent = inputs[0]
            act.biases = None  # a new decode: its own strengths
            act.deferred = None

    def _inject(self, name: str, index: int, out: Tensor, owned: bool = False) -> Optional[Tensor]:
        act = self._active
        if act is None or act.adapter != name or self._disabled:
            return None
        module = self.psic_adapters[name]
        ps = act.photo_shift
        if act.biases is None:
            act.biases = module(act.condition)
            spec = self.psic_configs[name].strength
            if ps is not None and ps.strength is not None:  # the owner's strength for this photo
                act.biases = [t * ps.strength_tensor().to(t.device, t.dtype) for t in act.biases]
            elif spec is not None and act.latent is not None and act.latent.dim() >= 2:
                s = strength_of(spec, act.latent)
                act.biases = [t * s.to(t.device, t.dtype) for t in act.biases]
        shift = ps.shifts[index] if ps is not None else None
        # Without autograd the block's own output may be changed in place (saves an allocation), and the last
        # spatial branch is folded into the next layer (the same function; fusion.py): training keeps it plain.
        if not torch.is_grad_enabled() and self._fold_points.get(name) == index:
            out, (hidden, gate) = module.apply_deferred(index, out, act.biases[index], in_place=owned, shift=shift)
            act.deferred = (name, index, hidden, gate)
            return out
        return module.apply(index, out, act.biases[index], in_place=owned and not torch.is_grad_enabled(),
                            shift=shift)

    def _fold(self, name: str, layer: nn.Module, out: Tensor) -> Optional[Tensor]:
        """The layer after a folded spatial point: its output plus the branch's part (see :meth:`_inject`)."""
        act = self._active
        if act is None or act.deferred is None or act.deferred[0] != name:
            return None
        _, index, hidden, gate = act.deferred
        act.deferred = None
        return out + folded_branch(hidden, gate, self.psic_adapters[name].branches[index].expand, layer).to(out.dtype)

    # ---------------------------------------------------------- codec methods
    @contextlib.contextmanager
    def _plain(self) -> Iterator[None]:
        old, self._active = self._active, None
        try:
            yield
        finally:
            self._active = old

    def compress(self, x: Tensor, **kwargs) -> Dict[str, Any]:
        """The base codec's ``compress``: the bitstream never sees a condition (no autograd).

        An image of any size: sides that are not a multiple of 64 (what CompressAI's codecs need) are
        padded first, replicating the border, as ``psic compress`` does; the result also holds ``"size"``,
        the image's (H, W), for :meth:`decompress` to crop back to. For sides that are multiples of 64 the
        strings are ``codec.compress(x)``'s, byte for byte."""
        xp, size = pad_to_multiple(x, PAD_MULTIPLE)
        with self._plain(), torch.no_grad():
            out = dict(self.base.compress(xp, **kwargs))
        out["size"] = size
        return out

    def decompress(self, strings, shape, key: Optional[KeyLike] = None, mode: Optional[str] = None,
                   condition: Optional[Tensor] = None, size=None, photo_shift=None, **kwargs) -> Dict[str, Any]:
        """Decode a bitstream: encrypted by default, full with the owner's ``key``.

        ``size``: the (H, W) that :meth:`compress` returned; the decode is cropped to it (without it, the
        decode has the padded size). ``photo_shift``: the owner's per-photo shift
        (:mod:`~psic_adapter.adapter.photo_shift`), applied to the encrypted version only (the full one never
        reads it). Without autograd, like entropy coding itself; for gradients through the synthesis use
        :meth:`decode_latent` and :meth:`synthesize`."""
        cond = self._resolve(key, mode, condition)
        if cond is not None and photo_shift is not None and not bool(
                (cond.cpu() == self.encrypted_condition().cpu()).all()):
            photo_shift = None  # the full version (a public mode bit, or a key): it never reads the shift
        with (self._plain() if cond is None else self.conditioned(cond, photo_shift=photo_shift)), torch.no_grad():
            out = self.base.decompress(strings, shape, **kwargs)
        if size is not None:
            out = {**out, "x_hat": crop_to(out["x_hat"], tuple(int(v) for v in size))}
        return out

    def forward(self, x: Tensor, key: Optional[KeyLike] = None, mode: Optional[str] = None,
                condition: Optional[Tensor] = None, **kwargs) -> Dict[str, Any]:
        """The base codec's training forward with a condition (encrypted by default)."""
        cond = self._resolve(key, mode, condition)
        with (self._plain() if cond is None else self.conditioned(cond)):
            return self.base(x, **kwargs)

    def analyze(self, x: Tensor, **kwargs) -> Dict[str, Any]:
        """Run the codec's forward up to (not through) ``g_s``: ``{"y_hat", "likelihoods"}``.

        Stage-2 training encodes once and decodes twice with this and :meth:`synthesize`.
        """
        g_s = self.base._modules["g_s"]
        self.base._modules["g_s"] = nn.Identity()
        try:
            with self._plain():
                out = self.base(x, **kwargs)
        finally:
            self.base._modules["g_s"] = g_s
        return {"y_hat": out["x_hat"], "likelihoods": out["likelihoods"]}

    def decode_latent(self, strings, shape, **kwargs) -> Tensor:
        """Entropy-decode a bitstream to ``y_hat`` without running ``g_s`` (:func:`psic_adapter.codec.decode_latent`).

        ``synthesize(y_hat, c).clamp(0, 1)`` then equals ``decompress(..., condition=c)``
        exactly, so evaluation decodes a bitstream once and synthesises it under
        many conditions.
        """
        with self._plain():
            return decode_latent(self.base, strings, shape, **kwargs)

    def photo_shift_of(self, header_field: Any, adapter_name: Optional[str] = None):
        """The :class:`~.photo_shift.PhotoShift` a ``.psic`` header carries (untrusted: checked, and checked to fit
        this adapter's branches; ``None`` where the file has none)."""
        from .photo_shift import photo_shift_of

        shift = photo_shift_of(header_field)
        if shift is not None:
            shift.check_fits(self, adapter_name)
        return shift

    def synthesize(self, y_hat: Tensor, condition: Optional[Tensor], photo_shift=None) -> Tensor:
        """``g_s(y_hat)`` under ``condition`` (``None``: the base decoder alone; not clamped, as in ``forward``),
        with the owner's per-photo ``photo_shift`` (:mod:`~psic_adapter.adapter.photo_shift`) where given."""
        if condition is None:
            with self._plain():
                return self.base.g_s(y_hat)
        with self.conditioned(condition.to(y_hat.device), photo_shift=photo_shift):
            return self.base.g_s(y_hat)

    # ------------------------------------------------------------ parameters
    def adapter_parameters(self, adapter_name: Optional[str] = None) -> Iterator[nn.Parameter]:
        return self.psic_adapters[self.resolve_adapter_name(adapter_name)].parameters()

    def num_adapter_parameters(self, adapter_name: Optional[str] = None) -> int:
        return sum(p.numel() for p in self.adapter_parameters(adapter_name))

    def num_base_parameters(self) -> int:
        return sum(p.numel() for p in self.base.parameters())

    def adapter_state_dict(self, adapter_name: Optional[str] = None) -> Dict[str, Tensor]:
        name = self.resolve_adapter_name(adapter_name)
        return {k: v.detach().cpu().contiguous() for k, v in self.psic_adapters[name].state_dict().items()}

    def adapter_fingerprint(self, adapter_name: Optional[str] = None, legacy: bool = False) -> str:
        """SHA-256 (hex, 16 chars) of what decides the adapter's decodes: names one trained adapter.

        It covers the salt, the tensors, and every config field that changes a
        decode (format, preset, modulation, sizes, injection points, condition
        mode, full version), so that an edited ``adapter_config.json`` no longer
        matches the ``.psic`` files made for the adapter. From format 3 on it
        leaves out the key check and the KDF: they say who may have the full
        version (the base decode), not what any decode is, and leaving them out
        lets :meth:`change_key` keep the adapter's files. ``legacy=True``: the
        fingerprint of psic-adapter 0.1 (salt and tensors only), which
        ``.psic`` files of container format 1 hold.
        """
        name = self.resolve_adapter_name(adapter_name)
        return fingerprint_of(self.psic_configs[name], self.adapter_state_dict(name), legacy=legacy)

    def extra_repr(self) -> str:
        parts = []
        for n in self.adapter_names:
            c = self.psic_configs[n]
            parts.append(f"{n}: preset={c.preset}, points={len(c.injection_points)}, params={self.num_adapter_parameters(n)}")
        return f"active_adapter={self.active_adapter!r}; " + "; ".join(parts)


def wrap_model(codec: nn.Module, config: Optional[PSICConfig] = None, key: Optional[KeyLike] = None,
               adapter_name: str = "default", **base_info) -> PSICModel:
    """Insert CLTG adapters after the decoder blocks of ``codec``'s synthesis transform.

    Args:
        codec: any CompressAI image codec (``g_s`` decodes ``y_hat``).
        config: adapter hyper-parameters (defaults: paper preset, keyed condition).
        key: the owner's key; its KDF output is the full version's condition.
        base_info: facts to record about the base codec (e.g. ``quality=3``).

    A fresh adapter adds zero everywhere: every decode equals the base codec's
    until the adapter is trained.
    """
    config = PSICConfig.from_dict((config or PSICConfig()).to_dict())
    if config.is_bound:
        raise ConfigError("this config is already fitted to a codec; use load_adapter to load a saved adapter")
    if base_info:
        config.base_model = {**config.base_model, **base_info}
    return PSICModel(codec).add_adapter(adapter_name, config, key=key)


def load_adapter(codec: nn.Module, path: Union[str, os.PathLike], adapter_name: str = "default",
                 key: Optional[KeyLike] = None, ignore_fingerprint: bool = False, is_trainable: bool = False,
                 revision: Optional[str] = None) -> PSICModel:
    """Load a saved adapter (a folder or a hub id) onto ``codec`` (a plain codec or a :class:`PSICModel`);
    see :meth:`PretrainedMixin.from_pretrained`."""
    return PSICModel.from_pretrained(codec, path, adapter_name=adapter_name, key=key,
                                     ignore_fingerprint=ignore_fingerprint, is_trainable=is_trainable,
                                     revision=revision)
