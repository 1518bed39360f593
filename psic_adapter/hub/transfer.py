"""Adapters to and from the Hugging Face Hub.

* :func:`push_to_hub` uploads one adapter (``adapter_config.json`` +
  ``adapter_model.safetensors``) with a model card (``README.md``,
  :mod:`.card`). Nothing else is uploaded: not the key, not the base codec,
  not other files of the adapter folder.
* downloading lives with the adapter (:mod:`psic_adapter.adapter.download`: :func:`snapshot`, which
  :func:`psic_adapter.load_adapter` calls for ids like ``org/name``); this module names it too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..adapter.config import CONFIG_NAME, MAX_CONFIG_BYTES, WEIGHTS_NAME, PSICConfig
from ..adapter.download import (HUB_ID, SNAPSHOT_PATTERNS, hf_errors, is_hub_id, network_errors,  # noqa: F401
                                offline, snapshot, status_of)
from ..adapter.files import check_adapter_files, max_weights_bytes
from ..errors import PSICError
from ..fileio import read_limited
from ..types import PathLike
from .card import CARD_NAME, DEFAULT_LICENSE, load_card_results, write_model_card


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
    if not isinstance(repo_id, str) or not HUB_ID.match(repo_id):
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
    HfHubHTTPError = hf_errors().HfHubHTTPError  # noqa: N806

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
            status = status_of(exc)
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            if status == 401:
                why = "the hub refused the token (invalid or expired): `hf auth login` again or set HF_TOKEN"
            elif status == 403:
                why = f"the token has no write access to {repo_id.split('/')[0]!r} (a write token, or membership of the org)"
            else:
                why = f"HTTP {status}: {first}"
            raise PSICError(f"cannot {step} on the hub: {why}") from None
        except network_errors() as exc:
            raise PSICError(f"cannot reach the hub to {step} ({exc.__class__.__name__}: {exc})") from None
