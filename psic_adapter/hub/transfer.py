"""Adapters to and from the Hugging Face Hub.

* :func:`push_to_hub` uploads one adapter (``adapter_config.json`` +
  ``adapter_model.safetensors``) with a model card (``README.md``,
  :mod:`.card`). Nothing else is uploaded: not the key, not the base codec,
  not other files of the adapter folder.
* :func:`snapshot` fetches an adapter repository (only its ``*.json``,
  ``*.safetensors`` and ``README.md``) into the Hugging Face cache, or finds it
  there; :func:`psic_adapter.load_adapter` calls it for ids like ``org/name``.

``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_HOME`` are read when a call is
made (huggingface_hub reads them once, at import), so setting them in a running
process (a notebook, a test) takes effect.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..adapter.config import CONFIG_NAME, MAX_CONFIG_BYTES, WEIGHTS_NAME, PSICConfig
from ..adapter.files import check_adapter_files, max_weights_bytes
from ..errors import PSICError
from ..fileio import read_limited
from .card import CARD_NAME, DEFAULT_LICENSE, load_card_results, write_model_card

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

#: what :func:`snapshot` fetches from an adapter repository
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", CARD_NAME]

PathLike = Union[str, os.PathLike]


def is_hub_id(text: str) -> bool:
    """``org/name`` (and not an existing local path)."""
    return bool(_HUB_ID.match(text)) and not Path(text).exists()


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


def _status(exc: BaseException) -> Optional[int]:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _network_errors() -> tuple:
    """Exception types of a failed connection, whichever HTTP client huggingface_hub uses."""
    types = [ConnectionError, TimeoutError]
    for mod, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            types.append(getattr(__import__(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _hf_errors():
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
    errors = _hf_errors()
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
        raise PSICError(f"cannot get adapter {repo_id!r}{at} from the hub (HTTP {_status(exc)}: "
                        f"{str(exc).splitlines()[0]})") from None
    except _network_errors() as exc:
        raise PSICError(f"cannot reach the hub to get adapter {repo_id!r}{at} ({exc.__class__.__name__}: {exc})") from None
    except (OSError, ValueError) as exc:
        raise PSICError(f"cannot get adapter {repo_id!r}{at} from the hub ({exc.__class__.__name__}: {exc})") from None
    if not (folder / CONFIG_NAME).is_file():
        raise PSICError(f"hub repository {repo_id!r}{at} holds no {CONFIG_NAME}: it is not a PSIC adapter")
    return folder


# --------------------------------------------------------------------- pushing
def stage_adapter(model_or_dir, folder: Path, scratch: Path, adapter_name: Optional[str]) -> None:
    """Copy exactly the adapter's two files into ``folder`` (a model is saved into ``scratch`` first).

    A folder's files must be regular files (a symbolic link is refused, never followed: a link to the
    key would publish the key) and a valid, fitted adapter (:func:`check_adapter_files`); the copies
    are checked again, so that what is uploaded is what was checked."""
    if hasattr(model_or_dir, "save_pretrained") and hasattr(model_or_dir, "resolve_adapter_name"):
        name = model_or_dir.resolve_adapter_name(adapter_name)
        model_or_dir.save_pretrained(scratch, adapter_names=[name])
        src = scratch if (scratch / CONFIG_NAME).is_file() else scratch / name
    else:
        if adapter_name is not None:
            raise PSICError("adapter_name applies to a model, not to a folder")
        src = Path(model_or_dir)
        if not src.is_dir():
            raise PSICError(f"{src}: no such adapter folder")
        if not (src / CONFIG_NAME).is_file():
            hint = f" (did you mean {src / 'adapter'}?)" if (src / "adapter" / CONFIG_NAME).is_file() else ""
            raise PSICError(f"{src}: no {CONFIG_NAME} here: not an adapter folder{hint}")
        if not (src / WEIGHTS_NAME).is_file():
            raise PSICError(f"{src}: {WEIGHTS_NAME} is missing")
    config, _ = check_adapter_files(src, regular=True)
    folder.mkdir(parents=True, exist_ok=True)
    limits = {CONFIG_NAME: MAX_CONFIG_BYTES, WEIGHTS_NAME: max_weights_bytes(config)}
    for fn, limit in limits.items():  # the bytes of the regular files checked, never through a link
        (folder / fn).write_bytes(read_limited(src / fn, limit, what="adapter file", regular=True))
    check_adapter_files(folder)


def push_to_hub(model_or_dir, repo_id: str, *, private: bool = False, token: Optional[str] = None,
                revision: Optional[str] = None, commit_message: Optional[str] = None, create_pr: bool = False,
                card_metrics: Optional[Union[PathLike, Mapping[str, Any]]] = None, license: str = DEFAULT_LICENSE,
                adapter_name: Optional[str] = None, api=None):
    """Upload an adapter with its model card to the Hugging Face Hub.

    Args:
        model_or_dir: a :class:`~psic_adapter.PSICModel` (its active adapter, or
            ``adapter_name``) or a folder written by ``save_pretrained``.
        repo_id: ``org/name``; the repository is created when missing.
        private: create the repository private.
        token: a Hugging Face token (default: ``HF_TOKEN`` or ``hf auth login``'s).
        revision: the branch to push to (created from ``main`` when missing).
        commit_message: default ``"Upload PSIC adapter"``.
        create_pr: open a pull request instead of committing to the branch.
        card_metrics: ``psic eval``'s ``metrics.json`` (path, report folder or dict)
            for the card's table.
        api: an ``huggingface_hub.HfApi`` (or an object with its ``create_repo``,
            ``create_branch`` and ``upload_folder``); default ``HfApi(token=token)``.

    Returns:
        huggingface_hub's ``CommitInfo`` (``.commit_url``; ``.pr_url`` with ``create_pr``).

    Only ``adapter_config.json``, ``adapter_model.safetensors`` and ``README.md``
    are uploaded; the key never is.
    """
    if not isinstance(repo_id, str) or not _HUB_ID.match(repo_id):
        raise PSICError(f"{repo_id!r} is not a hub id (expected 'org/name')")
    if offline():
        raise PSICError("cannot push with HF_HUB_OFFLINE=1 set (unset it to upload)")
    metrics = load_card_results(card_metrics) if card_metrics is not None else None

    if api is None:
        try:
            from huggingface_hub import HfApi, get_token
        except ImportError:  # pragma: no cover - huggingface_hub is a dependency
            raise PSICError("pushing to the hub needs huggingface_hub (pip install huggingface_hub)") from None
        if not token and not get_token():
            raise PSICError("pushing to the hub needs a Hugging Face token with write access: "
                            "`hf auth login`, set HF_TOKEN, or pass token= (psic push --token-env VAR)")
        api = HfApi(token=token)
    HfHubHTTPError = _hf_errors().HfHubHTTPError  # noqa: N806

    with tempfile.TemporaryDirectory(prefix="psic-push-") as tmp:
        folder = Path(tmp) / "upload"
        stage_adapter(model_or_dir, folder, Path(tmp) / "saved", adapter_name)
        write_model_card(folder, PSICConfig.load(folder), metrics, repo_id=repo_id, license=license)
        files = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]
        step = f"create the repository {repo_id!r}"
        try:
            api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
            if revision is not None and revision != "main":
                step = f"create the branch {revision!r} of {repo_id!r}"
                api.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
            step = f"upload the adapter to {repo_id!r}"
            return api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), repo_type="model", token=token, revision=revision,
                commit_message=commit_message or "Upload PSIC adapter", create_pr=create_pr, allow_patterns=files,
            )
        except HfHubHTTPError as exc:
            status = _status(exc)
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            if status == 401:
                why = "the hub refused the token (invalid or expired): `hf auth login` again or set HF_TOKEN"
            elif status == 403:
                why = f"the token has no write access to {repo_id.split('/')[0]!r} (a write token, or membership of the org)"
            else:
                why = f"HTTP {status}: {first}"
            raise PSICError(f"cannot {step} on the hub: {why}") from None
        except _network_errors() as exc:
            raise PSICError(f"cannot reach the hub to {step} ({exc.__class__.__name__}: {exc})") from None
