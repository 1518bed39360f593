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
