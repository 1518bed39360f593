"""Adapters from the Hugging Face Hub: :func:`snapshot` fetches an adapter repository (only its ``*.json``,
``*.safetensors`` and ``README.md``) into the Hugging Face cache, or finds it there; :func:`resolve_adapter_dir`
(:mod:`.pretrained`) calls it for ids like ``org/name``. Uploading is :mod:`psic_adapter.hub`'s (it sits above
the adapter package: it writes the model card from evaluation results).

``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_HOME`` are read when a call is
made (huggingface_hub reads them once, at import), so setting them in a running
process (a notebook, a test) takes effect.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ..errors import PSICError
from .config import CONFIG_NAME

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

#: what :func:`snapshot` fetches from an adapter repository
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "README.md"]  # README.md: the model card


def is_hub_id(text: str) -> bool:
    """``org/name`` (and not an existing local path)."""
    return bool(HUB_ID.match(text)) and not Path(text).exists()


# ------------------------------------------------------------------ environment
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, now or when huggingface_hub was imported."""
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def cache_dir() -> Optional[str]:
    """The hub cache as the environment names it now (``None``: huggingface_hub's default)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expandvars(os.path.expanduser(os.environ[var]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return None


def status_of(exc: BaseException) -> Optional[int]:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def network_errors() -> tuple:
    """Exception types of a failed connection, whichever HTTP client huggingface_hub uses."""
    types = [ConnectionError, TimeoutError]
    for mod, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            types.append(getattr(__import__(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def hf_errors():
    """huggingface_hub's error classes (``huggingface_hub.errors``; ``.utils`` in versions before 0.23)."""
    import types

    try:
        from huggingface_hub import errors as mod
    except ImportError:  # pragma: no cover - old huggingface_hub
        from huggingface_hub import utils as mod
    names = ("HfHubHTTPError", "LocalEntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError",
             "IncompleteSnapshotError")
    return types.SimpleNamespace(**{n: getattr(mod, n, None) for n in names})


# --------------------------------------------------------------------- loading
def snapshot(repo_id: str, revision: Optional[str] = None, token: Optional[str] = None) -> Path:
    """Download (or find in the local cache) an adapter repository; returns its folder.

    Only the adapter's files are fetched (:data:`SNAPSHOT_PATTERNS`). ``revision``
    is a branch, a tag or a commit hash. Offline (``HF_HUB_OFFLINE=1``) the
    cache alone is used.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise PSICError("loading from the hub needs huggingface_hub (pip install huggingface_hub)") from None
    errors = hf_errors()
    at = "" if revision is None else f" (revision {revision!r})"
    is_offline = offline()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir(), token=token,
                                        local_files_only=is_offline, allow_patterns=list(SNAPSHOT_PATTERNS)))
    except errors.LocalEntryNotFoundError as exc:
        if errors.IncompleteSnapshotError is not None and isinstance(exc, errors.IncompleteSnapshotError):
            raise PSICError(f"the cached copy of adapter {repo_id!r}{at} is incomplete and the hub cannot be reached: "
                            "download it again with network access") from None
        where = "HF_HUB_OFFLINE=1 is set" if is_offline else "the hub cannot be reached"
        raise PSICError(
            f"adapter {repo_id!r}{at} is not in the local Hugging Face cache ({cache_dir() or 'the default cache'}) "
            f"and {where}: download it once with network access, or check the id and revision"
        ) from None
    except errors.RevisionNotFoundError:
        raise PSICError(f"adapter {repo_id!r} has no revision {revision!r} on the hub") from None
    except errors.RepositoryNotFoundError:
        raise PSICError(
            f"no adapter repository {repo_id!r} on the hub (or it is private or gated: "
            "log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except errors.HfHubHTTPError as exc:
        raise PSICError(f"cannot get adapter {repo_id!r}{at} from the hub (HTTP {status_of(exc)}: "
                        f"{str(exc).splitlines()[0]})") from None
    except network_errors() as exc:
        raise PSICError(f"cannot reach the hub to get adapter {repo_id!r}{at} ({exc.__class__.__name__}: {exc})") from None
    except (OSError, ValueError) as exc:
        raise PSICError(f"cannot get adapter {repo_id!r}{at} from the hub ({exc.__class__.__name__}: {exc})") from None
    if not (folder / CONFIG_NAME).is_file():
        raise PSICError(f"hub repository {repo_id!r}{at} holds no {CONFIG_NAME}: it is not a PSIC adapter")
    return folder
