"""Telling codecs apart: by their parameters, and their entropy tables apart.

:func:`fingerprint` identifies a codec by its *parameters*: the entropy coder's
CDF tables are derived buffers that ``update(force=True)`` recomputes
differently on different devices, so they are hashed apart by
:func:`entropy_tables_hash` (stored in each ``.psic`` file so that a decoder
whose tables differ fails clearly instead of producing a garbled image).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from torch import nn

#: the entropy coder's CDF tables: buffers that ``update()`` derives from the parameters
TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")


def _hash_tensors(named: Iterable, digest) -> None:
    for name, t in named:
        t = t.detach()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        if t.is_floating_point():
            t = t.float()
        digest.update(t.cpu().contiguous().numpy().tobytes())


def fingerprint(codec: nn.Module) -> str:
    """SHA-256 of the codec's parameters (names, shapes, float32 values): hex."""
    d = hashlib.sha256(b"psic codec v1\0")
    _hash_tensors(sorted(codec.named_parameters(), key=lambda kv: kv[0]), d)
    return d.hexdigest()


def entropy_tables_hash(codec: nn.Module) -> str:
    """SHA-256 of the entropy coder's CDF tables (the buffers ``update()`` derives): hex."""
    d = hashlib.sha256(b"psic tables v1\0")
    named = [(n, b) for n, b in codec.named_buffers() if n.rsplit(".", 1)[-1] in TABLE_BUFFERS]
    _hash_tensors(sorted(named, key=lambda kv: kv[0]), d)
    return d.hexdigest()


