"""Writing outputs safely and reading small untrusted files.

Every file the library writes (``.psic`` files, decoded images, adapters, keys,
checkpoints, reports) goes through :func:`atomic_write`:

* the bytes go to a fresh temporary file in the output's own folder, created
  exclusively with a random name (``tempfile.mkstemp``), never to a fixed
  ``<out>.part`` name that someone could have planted as a symlink;
* it is flushed and renamed over the output (``os.replace``): a reader sees the
  old file or the new one, never half of one; two writers to one output do not
  collide; a symlink at the output is replaced, not followed;
* an existing output needs ``force``; a folder is never replaced;
* its permissions are the usual ones for a new file (``0o666`` less the umask),
  or ``mode`` (``0o600`` for keys) from the moment it exists.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

from .errors import OverwriteError, PSICError

PathLike = Union[str, os.PathLike]


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_output(path: PathLike, force: bool = False, inputs=()) -> Path:
    """Refuse an output that exists (unless ``force``), is a folder, or is one of ``inputs``.

    ``inputs`` are the files the command reads: writing over one of them (after
    resolving links) would destroy what is being converted, ``force`` or not.
    """
    path = Path(path)
    if path.is_dir():
        raise OverwriteError(f"{path} is a folder; give a file name")
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        same = path.resolve() == src.resolve()
        if not same and path.exists() and src.exists():
            try:
                same = os.path.samefile(path, src)
            except OSError:
                same = False
        if same:
            raise OverwriteError(f"{path} is the input file {src}: choose another output")
    if (path.exists() or path.is_symlink()) and not force:
        raise OverwriteError(f"{path} exists (use --force to overwrite)")
    return path


def atomic_write(path: PathLike, data: Union[bytes, Callable[[object], None]], force: bool = False,
                 mode: Optional[int] = None, inputs=()) -> Path:
    """Write ``data`` (bytes, or a function that writes to a binary file object) to ``path``.

    See the module docstring. ``mode``: the file's permission bits (default:
    ``0o666`` less the umask). Returns the path.
    """
    path = check_output(path, force=force, inputs=inputs)
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, _default_mode() if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, (bytes, bytearray, memoryview)):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if path.is_dir():  # appeared meanwhile
            raise OverwriteError(f"{path} is a folder; give a file name")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_text(path: PathLike, text: str, force: bool = False, mode: Optional[int] = None) -> Path:
    return atomic_write(path, text.encode("utf-8"), force=force, mode=mode)


def read_limited(path: PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a small file (a key, a config), refusing more than ``limit`` bytes.

    Regular files and pipes (``--key-file <(...)``) are accepted; folders and
    missing paths are a :class:`PSICError`.
    """
    p = Path(path)
    if p.is_dir():
        raise PSICError(f"{p}: is a folder, not a {what}")
    try:
        with open(p, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise PSICError(f"{p}: no such {what}") from None
    except OSError as exc:
        raise PSICError(f"{p}: cannot read {what} ({exc.strerror})") from None
    if len(data) > limit:
        raise PSICError(f"{p}: longer than {limit} bytes: not a {what}")
    return data
