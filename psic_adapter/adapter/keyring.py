"""The conditions of a model's adapters: what each key gives, cached, and the owner's.

A :class:`Keyring` belongs to one :class:`~psic_adapter.adapter.model.PSICModel`.
For each adapter it keeps the owner's condition (known when the adapter was
made or loaded with the key) and a cache of what keys derive to (the KDF is
deliberately slow: scrypt costs ~50 ms a key). It never stores a key, only
``SHA-256(key)`` as the cache's index.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from .config import PSICConfig
from .keys import (
    DerivedKey,
    KeyLike,
    derive,
    encrypted_condition,
    normalize_key,
    public_full_condition,
    random_conditions,
)


class Keyring:
    """Per adapter: the owner's condition and the derived keys seen so far."""

    def __init__(self) -> None:
        self._owner: Dict[str, Tensor] = {}
        self._cache: Dict[Tuple[str, bytes], DerivedKey] = {}

    def derive(self, name: str, config: PSICConfig, key: KeyLike) -> DerivedKey:
        """What ``key`` gives for adapter ``name`` (cached)."""
        index = (name, hashlib.sha256(normalize_key(key)).digest())
        if index not in self._cache:
            self._cache[index] = derive(key, config.salt, config.kdf, config.cond_dim, config.key_check)
        return self._cache[index]

    def set_owner(self, name: str, condition: Tensor) -> None:
        self._owner[name] = condition.detach().clone()

    def has_owner(self, name: str) -> bool:
        return name in self._owner

    def owner(self, name: str) -> Tensor:
        if name not in self._owner:
            raise ConfigError(f"adapter {name!r} was loaded without its key: load_adapter(..., key=...) "
                              "to use the full condition")
        return self._owner[name]

    def forget(self, name: str) -> None:
        """Drop everything known about adapter ``name`` (deleted, or its identity replaced)."""
        self._owner.pop(name, None)
        self._cache = {k: v for k, v in self._cache.items() if k[0] != name}

    @staticmethod
    def encrypted(config: PSICConfig) -> Tensor:
        return encrypted_condition(config.cond_dim, config.format_version)

    @staticmethod
    def public_full(config: PSICConfig) -> Tensor:
        return public_full_condition(config.cond_dim, config.format_version)

    @staticmethod
    def random(config: PSICConfig, n: int, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        return random_conditions(n, config.cond_dim, generator, device=device)
