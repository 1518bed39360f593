"""Writing outputs safely and reading small untrusted files.

Every file the library writes (``.psic`` files, decoded images, adapters, keys,
checkpoints, reports) goes through :func:`atomic_write`:

* the bytes go to a fresh temporary file in the output's own folder, created
  exclusively with a random name (``tempfile.mkstemp``), never to a fixed
  ``<out>.part`` name that someone could have planted as a symlink;
* it is flushed and renamed over the output (``os.replace``): a reader sees the
  old file or the new one, never half of one; two writers to one output do not
  collide; a symlink at the output is replaced, not followed;
* an existing output needs ``force``; a folder, or anything else that is not a
  regular file (a device, a pipe, a socket), is never replaced; nor is any of the
  command's inputs (the image, the key file, the checkpoint ...), ``force`` or not;
* a file-system failure (a parent that is a file, a read-only folder, a full
  disk) is a one-line :class:`~psic_adapter.errors.PSICError` naming the output;
* its permissions are the usual ones for a new file (``0o666`` less the umask),
  or ``mode`` (``0o600`` for keys) from the moment it exists.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

from .errors import OverwriteError, PSICError
from .types import PathLike


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file (after resolving links; hard links included)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # a link loop: compare what exists
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _lstat(path: Path, failing: str) -> Optional[os.stat_result]:
    """What ``path`` itself is (a link not followed); None where nothing is; a :class:`PSICError` where even that
    cannot be told (a parent that is a file)."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PSICError(f"{path}: {failing} ({exc.strerror})") from None


def check_output(path: PathLike, force: bool = False, inputs=()) -> Path:
    """Refuse an output that exists (unless ``force``), is not a regular file, or is one of ``inputs``.

    ``inputs`` are the files the command reads (the image or ``.psic`` file, the
    key file, the codec checkpoint, the adapter's files): writing over one of
    them (after resolving links) would destroy what the command was given,
    ``force`` or not. A symbolic link at the output is replaced, not followed.
    """
    path = Path(path)
    if path.is_dir():
        raise OverwriteError(f"{path} is a folder; give a file name")
    for src in inputs:
        if src is None:
            continue
        src = Path(src)
        if _same_file(path, src):
            raise OverwriteError(f"{path} is the input file {src}: choose another output")
    st = _lstat(path, "cannot write")
    if st is None:
        return path
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise OverwriteError(f"{path} exists and is not a regular file (a device, a pipe or a socket): "
                             "choose another output")
    if not force:
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
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise _write_error(path, exc) from None
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
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and not isinstance(exc, PSICError):
            raise _write_error(path, exc) from None
        raise
    return path


def _write_error(path: Path, exc: OSError) -> PSICError:
    """A file-system failure while writing ``path``, as one line (nothing was replaced)."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in (str(path), str(path.parent)) else ""
    return PSICError(f"{path}: cannot write ({exc.strerror or exc.__class__.__name__}{where}); nothing was replaced")


def regular_or_absent(path: PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file or does not exist; a symbolic link or anything else is a :class:`PSICError`
    (a file the library appends to or rewrites in place must not lead elsewhere)."""
    path = Path(path)
    st = _lstat(path, f"cannot read {what}")
    if st is None:
        return path
    if stat.S_ISLNK(st.st_mode):
        raise PSICError(f"{path} is a symbolic link: the {what} must be a regular file in its folder "
                        "(remove the link)")
    if not stat.S_ISREG(st.st_mode):
        raise PSICError(f"{path} is not a regular file: the {what} must be one (remove it)")
    return path


def open_append(path: PathLike, what: str = "file"):
    """``path`` opened for appending text, never through a symbolic link (``O_NOFOLLOW``), only if regular."""
    path = regular_or_absent(path, what)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)  # less the umask
    except OSError as exc:
        if os.path.islink(path):
            raise PSICError(f"{path} is a symbolic link: the {what} must be a regular file in its folder") from None
        raise PSICError(f"{path}: cannot write {what} ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PSICError(f"{path} is not a regular file: the {what} must be one (remove it)")
    return os.fdopen(fd, "a", encoding="utf-8")


def atomic_write_text(path: PathLike, text: str, force: bool = False, mode: Optional[int] = None) -> Path:
    return atomic_write(path, text.encode("utf-8"), force=force, mode=mode)


def read_limited(path: PathLike, limit: int, what: str = "file", regular: bool = False) -> bytes:
    """The bytes of a small file (a key, a config), refusing more than ``limit`` bytes.

    Regular files and pipes (``--key-file <(...)``) are accepted; folders and
    missing paths are a :class:`PSICError`. ``regular``: a regular file only,
    never read through a symbolic link (what is about to be published must be
    the file in the folder, not whatever a link points to).
    """
    p = Path(path)
    if p.is_dir():
        raise PSICError(f"{p}: is a folder, not a {what}")
    if regular and p.is_symlink():
        raise PSICError(f"{p} is a symbolic link: the {what} must be a regular file (copy it in place of the link)")
    try:
        # regular: no link followed, and a pipe planted there does not block the open
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | (
            getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) if regular else 0)
        with os.fdopen(os.open(p, flags), "rb") as fh:
            if regular and not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise PSICError(f"{p} is not a regular file: not a {what}")
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise PSICError(f"{p}: no such {what}") from None
    except OSError as exc:
        raise PSICError(f"{p}: cannot read {what} ({exc.strerror})") from None
    if len(data) > limit:
        raise PSICError(f"{p}: longer than {limit} bytes: not a {what}")
    return data
