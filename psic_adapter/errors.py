"""Errors that name a user's problem.

Every error a user can cause (a bad file, a wrong adapter, a missing image) is a
:class:`PSICError`. The CLI prints its message on one line and exits non-zero;
library callers can catch the base class or the specific one.
"""


def show(value, limit: int = 80) -> str:
    """A short repr of an untrusted value for an error message (huge integers cannot even be printed in full)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[:limit] + "..."


class PSICError(Exception):
    """Base class of the errors that a user's input can cause."""


class ConfigError(PSICError, ValueError):
    """An adapter configuration or an argument is invalid."""


class FingerprintMismatchError(PSICError):
    """An adapter or a bitstream was made for another base codec."""


class ContainerError(PSICError):
    """A ``.psic`` file is truncated, corrupted or of an unknown format."""


class KeyMismatchError(PSICError):
    """A key was given explicitly and it is not the adapter's owner key."""


class ImageError(PSICError):
    """An image could not be read or written."""


class TargetError(PSICError):
    """A target model could not be built or loaded."""


class DataError(PSICError):
    """A dataset could not be found or read."""


class OverwriteError(PSICError, FileExistsError):
    """An output exists and ``force`` was not given."""
