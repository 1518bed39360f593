"""The argument types many modules share, defined once: a path, a key. Imports nothing of the package."""

from __future__ import annotations

import os
from typing import Union

#: a file or folder path as callers give it
PathLike = Union[str, os.PathLike]
#: an owner's key as callers give it (:func:`psic_adapter.adapter.keys.normalize_key` reads it)
KeyLike = Union[str, bytes]
