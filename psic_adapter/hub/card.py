"""The model card (``README.md``) of an adapter on the Hub, made with ``huggingface_hub.ModelCard``.

The card's metadata is a ``ModelCardData`` (library, license, tags, the base
codec); its text is a Jinja template (``card_template.md`` beside this module)
rendered by ``ModelCard.from_template``. The measured numbers come from
``psic eval``'s ``metrics.json`` through the typed result
(:class:`psic_adapter.eval.record.EvalResult`): the same headline the report
and the terminal show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from ..adapter.config import CONFIG_NAME, WEIGHTS_NAME, PSICConfig
from ..errors import PSICError
from ..eval.record import EvalResult, load_results
from ..codec.shipped import shipped_codec_for
from ..types import PathLike

CARD_NAME = "README.md"
LIBRARY_NAME = "psic-adapter"
CARD_TAGS = ["psic", "image-compression", "privacy", "compressai"]
DEFAULT_LICENSE = "apache-2.0"
#: where the model card links the threat model; None: named as a file of the psic-adapter sources
THREAT_MODEL_URL: Optional[str] = None
TEMPLATE = Path(__file__).resolve().parent / "card_template.md"


def load_card_results(metrics: Union[PathLike, Mapping[str, Any], EvalResult]) -> List[EvalResult]:
    """``psic eval``'s results for a card: a ``metrics.json`` path, its report folder, its dict, or a result."""
    if isinstance(metrics, EvalResult):
        return [metrics]
    if isinstance(metrics, (list, tuple)) and metrics and all(isinstance(m, EvalResult) for m in metrics):
        return list(metrics)
    if isinstance(metrics, Mapping):
        runs = metrics.get("runs")
        if not isinstance(runs, list) or not runs:
            raise PSICError("not the metrics of `psic eval` (no 'runs')")
        return [EvalResult.from_dict(r) for r in runs]
    path = Path(metrics)
    if not path.exists():
        raise PSICError(f"{path}: no metrics file (give the metrics.json that `psic eval` wrote)")
    return load_results(path)


def _fmt(v: Any, digits: int = 2) -> str:
    """A table cell: a number by the evaluation's rule (:func:`psic_adapter.eval.table.number`), else text that
    cannot break the Markdown table."""
    from ..eval import table

    if v is None or isinstance(v, float):
        return table.number(v, digits)
    return str(v).replace("|", "\\|").replace("\n", " ")


def metrics_rows(results: List[EvalResult]) -> Dict[str, Any]:
    """What the card's evaluation section shows: per result and scale, the headline numbers."""
    from ..eval import table

    rows = []
    for r in results:
        for key, s in r.scales.items():
            c = s.classification
            asr, control, verdict = table.asr_cells(c.asr, c.control_asr, c.n_base_right)
            rows.append({
                "run": _fmt(r.meta.get("name", r.method)), "scale": _fmt(key), "images": table.images(s),
                "bpp": _fmt(s.bpp["encrypted"].mean, 4) if "encrypted" in s.bpp else "n/a",
                "psnr_base": _fmt(s.psnr("base")), "psnr_full": _fmt(s.psnr("full")),
                "psnr_encrypted": _fmt(s.psnr("encrypted")), "asr": asr, "control": control, "verdict": verdict,
                "right": c.n_base_right,
            })
    first = results[0]
    return {"rows": rows, "target": first.target, "data": first.meta.get("data"),
            "key_given": first.meta.get("key_given"), "rule": table.RULE}


def _weights_facts(directory: Path) -> Dict[str, Any]:
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


_TRAIN_KEYS = [
    ("recipe", "recipe"), ("target", "target model"), ("codec", "codec"), ("quality", "quality"),
    ("data", "training data"), ("from_scratch", "codec from scratch"), ("stage", "stage"),
    ("adapter_only", "adapter only"), ("steps_done", "steps"), ("batch_size", "batch"), ("views", "views"),
    ("view_sizes", "view sizes (px)"), ("train_sizes", "training sizes (px)"), ("crop", "crop"),
    ("lr", "learning rate (codec)"), ("adapter_lr", "learning rate (adapter)"), ("objective", "objective"),
    ("budget_db", "PSNR budget (dB)"), ("eot", "processing shown to the target"), ("schedule", "schedule"),
    ("guard_weight", "semantic guard weight"), ("seed", "seed"),
]


def training_rows(training: Mapping[str, Any]) -> List[Dict[str, str]]:
    flat = dict(training.get("train_config") or {})
    flat.update({k: v for k, v in training.items() if k not in ("train_config", "final")})
    return [{"label": label, "value": _fmt(flat[key])} for key, label in _TRAIN_KEYS if flat.get(key) is not None]


def render_model_card(config, metrics=None, *, repo_id: Optional[str] = None, license: str = DEFAULT_LICENSE,
                      weights_facts: Optional[Mapping[str, Any]] = None) -> str:
    """The model card's text (see :func:`write_model_card`)."""
    from huggingface_hub import ModelCard, ModelCardData

    cfg = config if isinstance(config, PSICConfig) else PSICConfig.from_dict(dict(config))
    base = dict(cfg.base_model)
    arch = base.get("architecture", "unknown")
    quality = base.get("quality")
    public = cfg.condition == "public"
    checkpoint_note = base.get("checkpoint")
    shipped = shipped_codec_for(base.get("fingerprint")) is not None
    if shipped:  # fitted to the codec psic-adapter ships: nothing to download, nothing to name
        codec_args = f'"{arch}", quality={quality}, checkpoint="shipped"'
    elif quality is not None:
        codec_args = f'"{arch}", quality={quality}, ' + ('checkpoint="codec.safetensors"' if checkpoint_note
                                                        else "pretrained=True")
    else:
        codec_args = f'"{arch}", checkpoint="codec.safetensors"'
    cli_ckpt = " --checkpoint codec.safetensors" if not shipped and (checkpoint_note or quality is None) else ""
    data = ModelCardData(library_name=LIBRARY_NAME, license=license, tags=list(CARD_TAGS),
                         base_model_architecture=arch, base_model_fingerprint=base.get("fingerprint"))
    results = load_card_results(metrics) if metrics is not None else None
    card = ModelCard.from_template(
        data, template_str=TEMPLATE.read_text(encoding="utf-8"),
        title=f"PSIC adapter for `{arch}`" + ("" if quality is None else f" (quality {quality})"),
        arch=arch, quality=quality, base=base, cfg=cfg, public=public, checkpoint_note=checkpoint_note,
        facts=dict(weights_facts or {}), repo=repo_id or "org/name", config_name=CONFIG_NAME,
        weights_name=WEIGHTS_NAME, points=", ".join(f"`{p['module']}` ({p['channels']} ch)"
                                                   for p in cfg.injection_points) or "none",
        training=training_rows(cfg.training) if cfg.training else [],
        final={k: _fmt(v, 4) for k, v in (cfg.training.get("final") or {}).items()
               if k in ("psnr_encrypted", "psnr_base", "encryption", "loss")},
        evaluation=metrics_rows(results) if results else None,
        codec_args=codec_args, cli_ckpt=cli_ckpt, shipped=shipped,
        threat=(f"[docs/threat-model.md]({THREAT_MODEL_URL})" if THREAT_MODEL_URL
                else "`docs/threat-model.md` in the psic-adapter sources"),
    )
    return str(card)


def write_model_card(directory: PathLike, config=None, metrics=None, *, repo_id: Optional[str] = None,
                     license: str = DEFAULT_LICENSE) -> Path:
    """Write ``README.md`` (the Hub's model card) into ``directory``; returns its path.

    Args:
        directory: the adapter folder (its weights, when there, give the parameter count).
        config: the adapter's :class:`~psic_adapter.PSICConfig` (or its dict); ``None``
            reads ``directory/adapter_config.json``.
        metrics: ``psic eval``'s ``metrics.json`` (a path, its report folder, its dict, or an
            :class:`EvalResult`): its numbers become a table.
        repo_id: the id shown in the loading snippets (default ``org/name``).
        license: the license in the card's metadata.
    """
    from ..fileio import atomic_write_text

    directory = Path(directory)
    if config is None:
        config = PSICConfig.load(directory)
    text = render_model_card(config, metrics, repo_id=repo_id, license=license,
                             weights_facts=_weights_facts(directory))
    return atomic_write_text(directory / CARD_NAME, text, force=True)
