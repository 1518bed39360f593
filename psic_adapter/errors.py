"""Errors that name a user's problem.

Every error a user can cause (a bad file, a wrong adapter, a missing image) is a
:class:`PSICError`. The CLI prints its message on one line and exits non-zero;
library callers can catch the base class or the specific one.
"""

from typing import Optional


def show(value, limit: int = 80) -> str:
    """A short repr of an untrusted value for an error message (huge integers cannot even be printed in full)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[:limit] + "..."


def show_names(names, limit: int = 200) -> str:
    """Untrusted names (a file's field names, say) for an error message: each as its repr, so that a name
    holding a line break or a comma stays one visible item on one line."""
    return show_line(", ".join(show(str(n), 40) for n in names), limit)


def show_line(text: str, limit: Optional[int] = 300) -> str:
    """``text`` on one line: line breaks and other control characters escaped as repr would, cut at ``limit``."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return text if limit is None or len(text) <= limit else text[:limit] + "..."


def describe_os_error(exc: OSError) -> str:
    """A file-system failure as one line: the file(s) it names and the system's reason."""
    names = [str(f) for f in (exc.filename, getattr(exc, "filename2", None)) if f]
    reason = exc.strerror or str(exc) or exc.__class__.__name__
    return f"{' -> '.join(names)}: {reason}" if names else reason


class PSICError(Exception):
    """Base class of the errors that a user's input can cause.

    Its message is one line, whatever it embeds (a path or a name from an untrusted file may hold a line
    break): the CLI prints it as one ``psic: error:`` line. Embed untrusted names with :func:`show` or
    :func:`show_names`, which also make them unambiguous; this is the net under that rule.
    """

    def __str__(self) -> str:
        text = super().__str__()
        return text if text.isprintable() else show_line(text, limit=None)


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
