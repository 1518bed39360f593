"""From the owner's key to the condition vector that CLTG modules read.

The paper feeds CLTG a mode indicator beta; its authors' code makes beta a
public bit, so anyone with the decoder can ask for the full image. Here the
full version's condition is derived from a secret key:

* ``material = KDF(key, salt)`` with a memory-hard KDF (scrypt; PBKDF2-SHA256 as
  a fallback where hashlib lacks scrypt). The salt and the KDF parameters are
  stored in the adapter config; the key never is.
* ``condition = +-1 bits of SHAKE-256(material)``, ``cond_dim`` of them.
* The encrypted condition (no key, or a wrong key) is a fixed, public +-1
  vector (SHAKE-256 of a label). It is a point like any key's condition, not
  the zero vector: an MLP reads a zero input through its biases alone, and a
  first real run decoded a far weaker attack from zeros (27 % ASR) than from
  random wrong-key conditions (53 %) at a similar PSNR.
* One rule reads a key, wherever it comes from (:func:`normalize_key`: the
  API, ``--key-file``, ``--key-env``): a ``str`` is UTF-8 encoded, and
  surrounding whitespace (spaces, tabs, CR, LF) is removed, so that
  ``key=open("owner.key").read()`` and ``--key-file owner.key`` are one key.
  A key of nothing but whitespace is an error.
* A short check value ``HMAC(material, ...)`` is stored so that a decoder can
  tell a wrong key from the right one and fall back to the encrypted condition
  exactly (wrong key == no key). Training also feeds random wrong-key
  conditions to the encrypted objective, so that the network itself maps any
  key but the owner's to the encrypted version (an attacker may bypass the
  check; see docs/threat-model.md).

A ``"public"`` condition mode reproduces the paper's public indicator
(full = all ones): it is NOT access-controlled and is only there for
paper-faithful comparisons.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..errors import ConfigError, PSICError, show, show_names
from ..types import KeyLike


#: scrypt with N=2**14, r=8, p=1 costs ~16 MiB and ~50 ms per guess (a loaded config may ask for up to 16x that).
DEFAULT_KDF: Dict[str, object] = {"name": "scrypt", "n": 2**14, "r": 8, "p": 1, "dklen": 32}
PBKDF2_KDF: Dict[str, object] = {"name": "pbkdf2_sha256", "iterations": 600_000, "dklen": 32}

_CHECK_LABEL = b"psic-adapter key check v1"
_COND_LABEL = b"psic-adapter condition v1"
_ENCRYPTED_LABEL = b"psic-adapter encrypted condition v1"


#: the least KDF cost a config may ask for (a loaded config cannot make a key cheaper to guess)
MIN_SCRYPT_N = 2**14
MAX_SCRYPT_N = 2**20
#: the most memory (and so time: both grow with n * r * p) one scrypt derivation of a loaded config may ask for:
#: 128 * r * n * p bytes, 256 MiB (16x the default's, about a second); a config is untrusted input
MAX_SCRYPT_BYTES = 256 << 20
MIN_PBKDF2_ITERATIONS = 600_000
MAX_PBKDF2_ITERATIONS = 10_000_000


def _kdf_int(name: str, v, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], not {show(v)}")
    return v


def check_kdf(kdf) -> Dict[str, object]:
    """A KDF setting that is known, complete and at least as costly as the minimum."""
    if not isinstance(kdf, dict) or "name" not in kdf:
        raise ConfigError("kdf must be a JSON object with a 'name'")
    name = kdf["name"]
    if name == "scrypt":
        known = {"name", "n", "r", "p", "dklen"}
        for k in ("n", "r", "p", "dklen"):
            if k not in kdf:
                raise ConfigError(f"kdf scrypt is missing {k!r}")
        n = _kdf_int("kdf n", kdf["n"], MIN_SCRYPT_N, MAX_SCRYPT_N)
        if n & (n - 1):
            raise ConfigError(f"kdf n must be a power of two, not {n}")
        r = _kdf_int("kdf r", kdf["r"], 8, 32)
        p = _kdf_int("kdf p", kdf["p"], 1, 16)
        if scrypt_cost(n, r, p) > MAX_SCRYPT_BYTES:
            raise ConfigError(f"kdf scrypt n={n}, r={r}, p={p} asks for {scrypt_cost(n, r, p) >> 20} MiB and as much "
                              f"time per key (128*r*n*p bytes): more than {MAX_SCRYPT_BYTES >> 20} MiB")
    elif name == "pbkdf2_sha256":
        known = {"name", "iterations", "dklen"}
        for k in ("iterations", "dklen"):
            if k not in kdf:
                raise ConfigError(f"kdf pbkdf2_sha256 is missing {k!r}")
        _kdf_int("kdf iterations", kdf["iterations"], MIN_PBKDF2_ITERATIONS, MAX_PBKDF2_ITERATIONS)
    else:
        raise ConfigError(f"unknown KDF {name!r} (known: scrypt, pbkdf2_sha256)")
    _kdf_int("kdf dklen", kdf["dklen"], 16, 64)
    extra = sorted(set(kdf) - known)
    if extra:
        raise ConfigError(f"unknown kdf field(s): {show_names(extra)}")
    return kdf



def scrypt_cost(n: int, r: int, p: int) -> int:
    """Bytes that bound one scrypt derivation's memory, and its time with them: ``128 * r * n * p``."""
    return 128 * r * n * p


def scrypt_maxmem(n: int, r: int, p: int) -> int:
    """The ``maxmem`` to give ``hashlib.scrypt``: what it allocates (``128 * r * (n + p + 2)``) with room to spare."""
    return 128 * r * (n + p + 2) + (1 << 20)


def default_kdf() -> Dict[str, object]:
    """scrypt where this Python's hashlib has it, PBKDF2-HMAC-SHA256 otherwise."""
    return dict(DEFAULT_KDF) if hasattr(hashlib, "scrypt") else dict(PBKDF2_KDF)


def new_salt() -> str:
    """A fresh random 16-byte salt, hex encoded (stored in the adapter config)."""
    return secrets.token_hex(16)


#: the longest key accepted (a key file is untrusted input)
MAX_KEY_BYTES = 4096
#: keys shorter than this get a warning when an adapter is made with them
MIN_KEY_BYTES = 16
_WHITESPACE = b" \t\r\n\v\f"


class WeakKeyWarning(UserWarning):
    """An adapter is being made with a short key (use ``psic keygen``)."""


def normalize_key(key: KeyLike) -> bytes:
    """The one rule for keys: UTF-8 for ``str``, surrounding whitespace removed, not empty."""
    if isinstance(key, str):
        try:  # surrogateescape: the bytes behind a non-UTF-8 environment variable or argument
            key = key.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise ConfigError("the key is not valid text (a lone surrogate)") from None
    if not isinstance(key, (bytes, bytearray)):
        raise ConfigError(f"a key must be str or bytes, not {type(key).__name__}")
    key = bytes(key).strip(_WHITESPACE)
    if len(key) == 0:
        raise ConfigError("the key is empty")
    if len(key) > MAX_KEY_BYTES:
        raise ConfigError(f"the key is longer than {MAX_KEY_BYTES} bytes")
    return key


_key_bytes = normalize_key


def derive_material(key: KeyLike, salt: str, kdf: Dict[str, object]) -> bytes:
    """Stretch ``key`` with the adapter's KDF and salt into secret key material."""
    key_b = _key_bytes(key)
    try:
        salt_b = bytes.fromhex(salt)
    except (TypeError, ValueError):
        raise ConfigError(f"adapter salt {salt!r} is not hex") from None
    check_kdf(kdf)  # known, complete, and at least the minimum cost
    name = kdf.get("name")
    dklen = int(kdf.get("dklen", 32))
    if name == "scrypt":
        if not hasattr(hashlib, "scrypt"):
            raise PSICError("this adapter uses scrypt, which this Python's hashlib lacks")
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        try:
            return hashlib.scrypt(key_b, salt=salt_b, n=n, r=r, p=p, maxmem=scrypt_maxmem(n, r, p), dklen=dklen)
        except (ValueError, MemoryError) as exc:  # the bounds above keep this from happening
            raise PSICError(f"the key derivation (scrypt n={n}, r={r}, p={p}) failed: {exc}") from None
    if name == "pbkdf2_sha256":
        return hashlib.pbkdf2_hmac("sha256", key_b, salt_b, int(kdf["iterations"]), dklen=dklen)
    raise ConfigError(f"unknown KDF {name!r} (known: scrypt, pbkdf2_sha256)")


def key_check(material: bytes) -> str:
    """A short value that tells the right key's material from others (hex)."""
    return hmac.new(material, _CHECK_LABEL, hashlib.sha256).hexdigest()[:16]


def material_to_condition(material: bytes, dim: int) -> torch.Tensor:
    """+-1 float vector of ``dim`` bits drawn from SHAKE-256(material)."""
    return _label_bits(_COND_LABEL + material, dim)


def _label_bits(label: bytes, dim: int) -> torch.Tensor:
    raw = hashlib.shake_256(label).digest((dim + 7) // 8)
    bits = torch.tensor([(raw[i // 8] >> (i % 8)) & 1 for i in range(dim)], dtype=torch.float32)
    return bits * 2 - 1


def encrypted_condition(dim: int, format_version: int = 2) -> torch.Tensor:
    """The default condition, public and fixed: what a decode with no (or a wrong) key uses.

    Adapters of format 1 were trained with the zero vector and keep it."""
    return torch.zeros(dim) if format_version < 2 else _label_bits(_ENCRYPTED_LABEL, dim)


def public_full_condition(dim: int, format_version: int = 2) -> torch.Tensor:
    """The paper's public 'full' indicator (condition mode "public"): the encrypted one negated
    (all ones for adapters of format 1)."""
    return torch.ones(dim) if format_version < 2 else -encrypted_condition(dim)


def random_conditions(n: int, dim: int, generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """``n`` conditions of random keys: uniform +-1 vectors.

    A KDF output is pseudo-random, so a random +-1 vector is distributed as the
    condition of a random wrong key, without paying the KDF ``n`` times.
    """
    bits = torch.randint(0, 2, (n, dim), generator=generator)
    out = bits.float() * 2 - 1
    return out.to(device) if device is not None else out


@dataclass(frozen=True)
class DerivedKey:
    """What a key gives for one adapter: its condition and whether it is the owner's."""

    condition: torch.Tensor
    matches: bool


def derive(key: KeyLike, salt: str, kdf: Dict[str, object], dim: int, check: Optional[str]) -> DerivedKey:
    material = derive_material(key, salt, kdf)
    matches = check is not None and hmac.compare_digest(key_check(material), check)
    return DerivedKey(condition=material_to_condition(material, dim), matches=matches)


def rekey_config(config, old_key: KeyLike, new_key: KeyLike):
    """``(config, owner's condition)`` with ``new_key`` as the owner's key instead of ``old_key``.

    Only for adapters whose full version is the base codec's decode
    (``full_version="base"``): their weights never saw the owner's condition, so
    the key is a gate and can change. The salt stays (it is part of the
    adapter's fingerprint, so the ``.psic`` files made for the adapter still
    decode); only the key check changes, and the old key stops working.
    """
    from ..errors import KeyMismatchError

    if config.condition != "key":
        raise ConfigError(f"this adapter has no key (condition {config.condition!r})")
    if config.full_version != "base":
        raise ConfigError("this adapter decodes its full version under its key's condition "
                          "(full_version 'condition'): a new key needs a retrained adapter")
    if not derive(old_key, config.salt, config.kdf, config.cond_dim, config.key_check).matches:
        raise KeyMismatchError("the old key given is not this adapter's key")
    warn_if_weak(new_key)
    material = derive_material(new_key, config.salt, config.kdf)
    new = type(config).from_dict(config.to_dict())
    new.key_check = key_check(material)
    return new, material_to_condition(material, new.cond_dim)


def generate_key() -> str:
    """A fresh random key (256 bits, hex) for ``psic keygen``."""
    return secrets.token_hex(32)


def write_key_file(path: Union[str, os.PathLike], key: Optional[KeyLike] = None, force: bool = False) -> Path:
    """Write ``key`` (default: a fresh :func:`generate_key`) to a new file readable by its owner only.

    The file is created with mode 600 from the start (never written, then
    restricted), atomically, and an existing file needs ``force``.
    """
    from ..fileio import atomic_write

    data = normalize_key(generate_key() if key is None else key)  # the same rule as reading it back
    return atomic_write(path, data + b"\n", force=force, mode=0o600)


def warn_if_weak(key: KeyLike) -> None:
    """Warn when a new adapter's key is short enough to guess."""
    if len(normalize_key(key)) < MIN_KEY_BYTES:
        import warnings

        warnings.warn(f"the key has fewer than {MIN_KEY_BYTES} bytes: anyone who guesses it decodes the full "
                      "version; make one with `psic keygen KEYFILE`", WeakKeyWarning, stacklevel=4)


def read_key_file(path: Union[str, os.PathLike]) -> bytes:
    """A key file's key, by :func:`normalize_key`'s rule (a regular file or a pipe)."""
    from ..fileio import read_limited

    data = read_limited(path, MAX_KEY_BYTES + 64, what="key file")
    try:
        return normalize_key(data)
    except ConfigError as exc:
        raise PSICError(f"{path}: {exc}") from None


def read_key_env(var: str) -> bytes:
    """The key in environment variable ``var``, by :func:`normalize_key`'s rule."""
    value = os.environ.get(var)
    if value is None:
        raise PSICError(f"environment variable {var} is not set")
    try:
        return normalize_key(value)
    except ConfigError as exc:
        raise PSICError(f"environment variable {var}: {exc}") from None
