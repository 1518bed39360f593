"""The key rule's warning: a short key is warned about (pyproject.toml silences it for the rest of the suite,
whose keys are short on purpose)."""

from __future__ import annotations

import warnings

import pytest

from psic_adapter.adapter.keys import MIN_KEY_BYTES, WeakKeyWarning, generate_key, warn_if_weak


def test_a_short_key_is_warned_about():
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeakKeyWarning)  # undo the suite's filter here
        with pytest.raises(WeakKeyWarning, match="psic keygen"):
            warn_if_weak("x" * (MIN_KEY_BYTES - 1))
        warn_if_weak(generate_key())  # a generated key is long enough: no warning


def test_the_keyring_caches_by_a_hash_of_the_key_and_knows_the_owner():
    import torch

    from psic_adapter.adapter.config import PSICConfig
    from psic_adapter.adapter.keyring import Keyring
    from psic_adapter.adapter.keys import derive, key_check, derive_material, new_salt
    from psic_adapter.errors import ConfigError

    key = generate_key()
    cfg = PSICConfig(salt=new_salt(), cond_dim=16)
    cfg.key_check = key_check(derive_material(key, cfg.salt, cfg.kdf))
    ring = Keyring()
    first = ring.derive("default", cfg, key)
    assert first.matches and ring.derive("default", cfg, key) is first  # cached: the KDF is slow on purpose
    assert torch.equal(first.condition, derive(key, cfg.salt, cfg.kdf, cfg.cond_dim, cfg.key_check).condition)
    assert all(key.encode() not in repr(k).encode() for k in vars(ring).values())  # never the key itself
    assert not ring.has_owner("default")
    with pytest.raises(ConfigError, match="without its key"):
        ring.owner("default")
    ring.set_owner("default", first.condition)
    assert ring.has_owner("default") and torch.equal(ring.owner("default"), first.condition)
    ring.forget("default")
    assert not ring.has_owner("default") and ring.derive("default", cfg, key) is not first
    assert Keyring.encrypted(cfg).shape == Keyring.public_full(cfg).shape == (16,)
    assert Keyring.random(cfg, 3, torch.Generator().manual_seed(0)).shape == (3, 16)
