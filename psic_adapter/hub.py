"""Publishing adapters to, and loading them from, the Hugging Face Hub.

* :func:`push_to_hub` uploads one adapter (``adapter_config.json`` +
  ``adapter_model.safetensors``) with a model card (``README.md``, written by
  :func:`write_model_card`). Nothing else is uploaded: not the key, not the
  base codec, not other files of the adapter folder.
* :func:`snapshot` fetches an adapter repository (only its ``*.json``,
  ``*.safetensors`` and ``README.md``) into the Hugging Face cache, or finds it
  there; :func:`psic_adapter.load_adapter` calls it for ids like ``org/name``.

``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_HOME`` are read when a call is
made (huggingface_hub reads them once, at import), so setting them in a running
process (a notebook, a test) takes effect.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from .errors import PSICError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

CARD_NAME = "README.md"
#: what :func:`snapshot` fetches from an adapter repository
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", CARD_NAME]
LIBRARY_NAME = "psic-adapter"
CARD_TAGS = ["psic", "image-compression", "privacy", "compressai"]
DEFAULT_LICENSE = "apache-2.0"
#: where the model card links the threat model; None: named as a file of the psic-adapter sources
THREAT_MODEL_URL: Optional[str] = None

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
    from .config import CONFIG_NAME

    if not (folder / CONFIG_NAME).is_file():
        raise PSICError(f"hub repository {repo_id!r}{at} holds no {CONFIG_NAME}: it is not a PSIC adapter")
    return folder


# ------------------------------------------------------------------ model card
def load_metrics(metrics: Union[PathLike, Mapping[str, Any]]) -> Dict[str, Any]:
    """The ``metrics.json`` of ``psic eval`` (a dict, the file, or its report folder)."""
    if isinstance(metrics, Mapping):
        return dict(metrics)
    path = Path(metrics)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise PSICError(f"{path}: no metrics file (give the metrics.json that `psic eval` wrote)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PSICError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PSICError(f"{path}: expected a JSON object (the metrics.json of `psic eval`)")
    return data


_HEADLINE_LABELS = {
    "images": "images evaluated",
    "bpp": "rate (bpp)",
    "psnr_base": "PSNR, base codec (dB)",
    "psnr_full": "PSNR, full version (dB)",
    "psnr_encrypted": "PSNR, encrypted version (dB)",
    "asr": "attack success rate, encrypted version",
    "full_agreement_with_base": "full version agrees with the base decode (target)",
    "n_base_right": "images the target gets right on the base decode",
    "asr_wrong_keys_mean": "attack success rate, wrong keys (mean)",
    "asr_whitebox": "attack success rate after a white-box attack on the condition",
}


def _label(key: str) -> str:
    if key in _HEADLINE_LABELS:
        return _HEADLINE_LABELS[key]
    if key.startswith("retrieval_"):
        return f"retrieval attack success rate, {key[len('retrieval_'):]}"
    if key.startswith("asr_"):
        return f"attack success rate after {key[4:]}"
    return key


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and "mean" in value:  # a summarize() dict
        return _fmt(value["mean"])
    return str(value).replace("|", "\\|").replace("\n", " ")


def _ordered_keys(rows) -> list:
    keys: list = []
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    first = [k for k in _HEADLINE_LABELS if k in keys]
    return first + [k for k in keys if k not in first]


def _metrics_section(metrics: Mapping[str, Any]) -> list:
    summary = metrics.get("summary", metrics)
    if not isinstance(summary, Mapping) or not summary:
        raise PSICError("the metrics hold no summary (give the metrics.json that `psic eval` wrote)")
    if all(isinstance(v, Mapping) and "mean" not in v for v in summary.values()):
        runs = {str(k): dict(v) for k, v in summary.items()}  # several adapters: {name: headline}
    else:
        runs = {"value": {k: v for k, v in summary.items()}}
    keys = [k for k in _ordered_keys(runs.values())
            if all(not isinstance(r.get(k), (list, Mapping)) or (isinstance(r.get(k), Mapping) and "mean" in r[k])
                   for r in runs.values())]
    lines = ["## Evaluation (`psic eval`)", ""]
    meta = metrics.get("meta") if isinstance(metrics.get("meta"), Mapping) else {}
    facts = []
    if meta.get("target"):
        facts.append(f"target model `{meta['target']}`")
    if meta.get("data"):
        facts.append(f"data `{meta['data']}`")
    if meta.get("crop"):
        facts.append(f"{meta['crop']}x{meta['crop']} crops")
    if "key_given" in meta:
        facts.append("with the owner's key" if meta["key_given"] else "without the owner's key (no full version)")
    if facts:
        lines += ["Measured with " + ", ".join(facts) + ".", ""]
    lines += ["| metric | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for k in keys:
        lines.append(f"| {_label(k)} | " + " | ".join(_fmt(r.get(k)) for r in runs.values()) + " |")
    lines += ["", "Attack success rate (ASR): among the images the target gets right on the base codec's decode, "
              "the share it gets wrong on the encrypted version (higher shields better); PSNR is against the "
              "original image.", ""]
    return lines


_TRAIN_KEYS = [
    ("target", "target model"), ("codec", "codec"), ("quality", "quality"), ("data", "training data"),
    ("from_scratch", "codec from scratch"), ("stage", "stage"), ("adapter_only", "adapter only"),
    ("steps_done", "steps"), ("batch_size", "batch"), ("crop", "crop"), ("lr", "learning rate (codec)"),
    ("adapter_lr", "learning rate (adapter)"), ("lmbda", "lambda (rate-distortion)"), ("objective", "objective"),
    ("schedule", "schedule"), ("encryption_weight", "encryption weight"),
    ("encrypted_distortion", "encrypted distortion weight"), ("guard_weight", "semantic guard weight"),
    ("seed", "seed"),
]


def _training_section(training: Mapping[str, Any]) -> list:
    lines = ["## Target and training", ""]
    if not training:
        return lines + ["The adapter config holds no training record.", ""]
    flat = dict(training.get("train_config") or {})
    flat.update({k: v for k, v in training.items() if k not in ("train_config", "final")})
    lines += ["| | |", "|---|---|"]
    for key, label in _TRAIN_KEYS:
        if flat.get(key) is not None:
            lines.append(f"| {label} | {_fmt(flat[key])} |")
    final = dict(training.get("final") or {})
    shown = {k: final[k] for k in ("psnr_full", "psnr_encrypted", "bpp", "encryption", "loss") if k in final}
    final = shown or final
    if final:
        lines += ["", "Last training step: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in final.items()) + "."]
    return lines + [""]


def _weights_facts(directory: Path) -> Dict[str, Any]:
    from .config import WEIGHTS_NAME

    path = directory / WEIGHTS_NAME
    if not path.is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            n = 0
            for name in f.keys():
                numel = 1
                for s in f.get_slice(name).get_shape():
                    numel *= int(s)
                n += numel
        return {"parameters": n, "adapter_fingerprint": meta.get("adapter_fingerprint")}
    except Exception:  # the card is informative only; a bad file fails at load time
        return {}


def render_model_card(config, metrics: Optional[Union[PathLike, Mapping[str, Any]]] = None, *,
                      repo_id: Optional[str] = None, license: str = DEFAULT_LICENSE,
                      weights_facts: Optional[Mapping[str, Any]] = None) -> str:
    """The model card's text (see :func:`write_model_card`)."""
    from .config import CONFIG_NAME, WEIGHTS_NAME, PSICConfig

    cfg = config if isinstance(config, PSICConfig) else PSICConfig.from_dict(dict(config))
    repo = repo_id or "org/name"
    base = dict(cfg.base_model)
    arch = base.get("architecture", "unknown")
    quality = base.get("quality")
    fp = base.get("fingerprint", "unknown")
    checkpoint_note = base.get("checkpoint")
    facts = dict(weights_facts or {})
    public = cfg.condition == "public"

    title = f"PSIC adapter for `{arch}`" + ("" if quality is None else f" (quality {quality})")
    lines = ["---", f"library_name: {LIBRARY_NAME}", f"license: {license}", "tags:"]
    lines += [f"- {t}" for t in CARD_TAGS]
    lines += ["---", "", f"# {title}", ""]
    lines += [
        f"A PSIC adapter (Privacy-Shielded Image Compression, Shen et al., ICML 2025) for the CompressAI codec "
        f"`{arch}`, made with psic-adapter. It leaves the codec's "
        "bitstream byte for byte as it is and changes only how it is decoded: by default into an **encrypted** "
        "version that looks like the image to a person but misleads machine vision, and "
        + ("with `mode=\"full\"` into the **full** version." if public else "with the owner's key into the **full** version."),
        "",
    ]
    if cfg.description:
        lines += [cfg.description.strip(), ""]
    if public:
        lines += ["**This adapter has the paper's public mode bit instead of a key: anyone can ask for the full "
                  "version. It is not access-controlled.**", ""]

    # base codec
    lines += ["## Base codec", "", "| | |", "|---|---|", f"| architecture | `{arch}` |"]
    if base.get("class"):
        lines.append(f"| class | `{base['class']}` |")
    for key in ("quality", "N", "M"):
        if base.get(key) is not None:
            lines.append(f"| {key} | {base[key]} |")
    lines.append(f"| fingerprint (SHA-256 of its weights) | `{fp}` |")
    if checkpoint_note:
        lines.append(f"| weights | {_fmt(checkpoint_note)} |")
    lines += ["", "`load_adapter` loads this adapter only onto a codec with this fingerprint."]
    if checkpoint_note:
        lines.append("The codec's weights are not in this repository: decode with the checkpoint it was trained as "
                     "(`--checkpoint codec.safetensors`).")
    elif quality is not None:
        lines.append("The snippets below take CompressAI's zoo weights for this quality; if the adapter was fitted "
                     "to other weights, give them (`checkpoint=` / `--checkpoint`).")
    lines.append("")

    # adapter
    points = ", ".join(f"`{p['module']}` ({p['channels']} ch)" for p in cfg.injection_points) or "none"
    lines += ["## Adapter", "", "| | |", "|---|---|",
              f"| preset | `{cfg.preset}` |",
              f"| condition | `{cfg.condition}`" + (" (a key, through the KDF below)" if not public else "") + " |",
              f"| condition length | {cfg.cond_dim} |",
              f"| MLP width | {cfg.resolved_hidden_dim} |",
              f"| injection points | {points} |"]
    if facts.get("parameters") is not None:
        lines.append(f"| parameters | {facts['parameters']:,} |")
    if facts.get("adapter_fingerprint"):
        lines.append(f"| adapter fingerprint | `{facts['adapter_fingerprint']}` |")
    if not public:
        lines.append(f"| key derivation | `{cfg.kdf.get('name')}` |")
    if cfg.library_version:
        lines.append(f"| psic-adapter version | {cfg.library_version} |")
    lines += ["", f"Files: `{CONFIG_NAME}` and `{WEIGHTS_NAME}` (PEFT-style).", ""]

    lines += _training_section(cfg.training)
    if metrics is not None:
        lines += _metrics_section(load_metrics(metrics))

    # decoding
    if quality is not None:
        codec_args = f'"{arch}", quality={quality}, ' + ("checkpoint=\"codec.safetensors\"" if checkpoint_note else "pretrained=True")
    else:
        codec_args = f'"{arch}", checkpoint="codec.safetensors"'
    cli_ckpt = " --checkpoint codec.safetensors" if (checkpoint_note or quality is None) else ""
    cli_codec = f"--codec {arch}" + ("" if quality is None else f" --quality {quality}") + cli_ckpt
    full_call = ('model.decompress(enc["strings"], enc["shape"], mode="full")["x_hat"]' if public else
                 'model.decompress(enc["strings"], enc["shape"], key=read_key_file("owner.key"))["x_hat"]')
    lines += ["## Decoding" + ("" if public else " with the key"), "", "```python",
              "from psic_adapter import load_adapter, load_codec"]
    if not public:
        lines.append("from psic_adapter.condition import read_key_file")
    lines += [
        "",
        f"codec = load_codec({codec_args})",
        f'model = load_adapter(codec, "{repo}")   # checks the codec fingerprint',
        'enc = model.compress(x)                  # x: [1, 3, H, W] in [0, 1], H and W multiples of 64',
        'x_enc = model.decompress(enc["strings"], enc["shape"])["x_hat"]   # encrypted version',
        f"x_full = {full_call}   # full version",
        "```",
        "",
        "On the command line:",
        "",
        "```bash",
        f"psic compress IN.png IN.psic {cli_codec} --adapter {repo}",
        f"psic decompress IN.psic OUT.png{cli_ckpt} --adapter {repo}                          # encrypted version",
    ]
    if not public:
        lines.append(f"psic decompress IN.psic OUT.png{cli_ckpt} --adapter {repo} --key-file owner.key   # full version")
    lines += ["```", ""]

    # threat model
    threat = (f"[docs/threat-model.md]({THREAT_MODEL_URL})" if THREAT_MODEL_URL
              else "`docs/threat-model.md` in the psic-adapter sources")
    lines += ["## What this protects, and what it does not", ""]
    if not public:
        lines += ["**The key is not in this repository.** It holds the adapter and this card only; the config "
                  "holds a random salt and a one-way key check, never the key. Without the owner's key this "
                  "adapter decodes the encrypted version (a wrong key gives the encrypted version too).", ""]
    lines += [
        "**The base codec alone decodes the full image.** The bitstream is the base codec's, byte for byte: "
        "whoever has a `.psic` file and the base codec decodes the full-quality image without this adapter and "
        "without any key (`psic decompress --plain`). PSIC does not encrypt the bitstream; it shields images "
        "from machine vision where images are decoded through this adapter (for instance by a service that "
        f"serves the decodes), not from whoever holds the bitstream and the codec. See {threat}.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: PathLike, config=None, metrics: Optional[Union[PathLike, Mapping[str, Any]]] = None,
                     *, repo_id: Optional[str] = None, license: str = DEFAULT_LICENSE) -> Path:
    """Write ``README.md`` (the Hub's model card) into ``directory``; returns its path.

    Args:
        directory: the adapter folder (its weights, when there, give the parameter count).
        config: the adapter's :class:`~psic_adapter.config.PSICConfig` (or its dict);
            ``None`` reads ``directory/adapter_config.json``.
        metrics: ``psic eval``'s ``metrics.json`` (a path, its report folder, or the dict):
            its headline numbers become a table.
        repo_id: the id shown in the loading snippets (default ``org/name``).
        license: the license in the card's metadata.
    """
    from .config import PSICConfig

    directory = Path(directory)
    if config is None:
        config = PSICConfig.load(directory)
    text = render_model_card(config, metrics, repo_id=repo_id, license=license,
                             weights_facts=_weights_facts(directory))
    from .fileio import atomic_write_text

    return atomic_write_text(directory / CARD_NAME, text, force=True)


# --------------------------------------------------------------------- pushing
def _stage_adapter(model_or_dir, folder: Path, scratch: Path, adapter_name: Optional[str]) -> None:
    """Copy exactly the adapter's two files into ``folder`` (a model is saved into ``scratch`` first)."""
    from .adapter import PSICModel
    from .config import CONFIG_NAME, WEIGHTS_NAME, PSICConfig

    if isinstance(model_or_dir, PSICModel):
        name = model_or_dir._require_adapter(adapter_name)
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
        if not PSICConfig.load(src).is_bound:
            raise PSICError(f"{src}: the adapter config is not fitted to a codec (save it with save_pretrained)")
    folder.mkdir(parents=True, exist_ok=True)
    for fn in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copyfile(src / fn, folder / fn)


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
    metrics = load_metrics(card_metrics) if card_metrics is not None else None
    from .config import CONFIG_NAME, WEIGHTS_NAME, PSICConfig

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
        _stage_adapter(model_or_dir, folder, Path(tmp) / "saved", adapter_name)
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
