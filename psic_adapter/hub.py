"""Publishing adapters to, and loading them from, the Hugging Face Hub."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from .errors import PSICError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_id(text: str) -> bool:
    """``org/name`` (and not an existing local path)."""
    return bool(_HUB_ID.match(text)) and not Path(text).exists()


def snapshot(repo_id: str, revision: Optional[str] = None) -> Path:
    """Download (or find in the local cache) an adapter repository; returns its folder."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise PSICError("loading from the hub needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.md"]))
    except LocalEntryNotFoundError:
        raise PSICError(
            f"adapter {repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise PSICError(f"cannot get adapter {repo_id!r} from the hub ({exc.__class__.__name__}: {exc})") from None
