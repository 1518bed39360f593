"""``psic info``: what a ``.psic`` file or an adapter folder is, without decoding anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a .psic file or an adapter folder")
    p.add_argument("input", help="a .psic file, or an adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def file_info(path) -> Dict[str, Any]:
    """The facts of a .psic file, from its checked header."""
    from ..bitstream import container
    from ..adapter.photo_shift import describe, photo_shift_of
    from ..bitstream.coding import count_bytes
    from ..codec import SHIPPED_CODEC

    enc, header, alpha = container.read(path)
    n = count_bytes(enc["strings"])
    shipped = bool(SHIPPED_CODEC["fingerprint"]) and header.base_fingerprint == SHIPPED_CODEC["fingerprint"][:32]
    return {
        "kind": ".psic file",
        "file": str(path),
        "container format": header.version,
        "codec": header.codec,
        "quality": header.quality,
        "codec weights": "the codec shipped with psic-adapter" if shipped else "a checkpoint (give it with --checkpoint)",
        "image": f"{header.width}x{header.height}, {header.mode}, {header.bit_depth}-bit",
        "file bytes": Path(path).stat().st_size,
        "bitstream bytes": n,
        "bpp": round(8 * n / (header.height * header.width), 5),
        "base fingerprint": header.base_fingerprint,
        "entropy tables": header.tables_hash,
        "adapter": header.adapter_fingerprint or "none: the base codec alone decodes it",
        "needs": ("--adapter (the one with this fingerprint); the owner's key for the full version"
                  if header.adapter_fingerprint else "nothing but the base codec"),
        "latent checksum": "yes" if header.latent_check is not None else "no (format 1)",
        "per-photo shift": (describe(photo_shift_of(header.photo_shift)) + ": the encrypted version applies it"
                            if header.photo_shift is not None else "none (the adapter's own change)"),
    }


def adapter_info(path) -> Dict[str, Any]:
    """The facts of an adapter folder, from its checked config and weights (missing, unreadable or
    misfitting weights are an error, not a description)."""
    import re

    from safetensors import safe_open

    from ..adapter.config import WEIGHTS_NAME
    from ..adapter.files import check_adapter_files
    from ..codec import SHIPPED_CODEC
    from ..hub.card import training_rows

    cfg, state = check_adapter_files(path)
    base = cfg.base_model
    training = {r["label"]: r["value"] for r in training_rows(cfg.training)} if cfg.training else {}
    shipped = bool(SHIPPED_CODEC["fingerprint"]) and base.get("fingerprint") == SHIPPED_CODEC["fingerprint"]
    params = sum(t.numel() for t in state.values())
    with safe_open(str(Path(path) / WEIGHTS_NAME), framework="pt") as f:  # read once already: a safetensors file
        fingerprint = (f.metadata() or {}).get("adapter_fingerprint")
    if not (isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{16}", fingerprint)):
        fingerprint = "not recorded"
    return {
        "kind": "adapter folder",
        "folder": str(path),
        "format": cfg.format_version,
        "preset": cfg.preset,
        "modulation": cfg.modulation + (f" ({cfg.resolved_spatial_rank} hidden channels"
                                        + (f", a global context of {cfg.spatial_context} hidden units"
                                           if cfg.spatial_context else "") + ")"
                                        if cfg.modulation == "spatial" else ""),
        "condition": cfg.condition + (" (the owner's key)" if cfg.condition == "key" else " (NOT access-controlled)"),
        "full version": ("the base codec's decode, bit for bit" if cfg.full_version == "base"
                         else "decoded with the owner's condition"),
        "strength": (f"per image, from the latent{' and its size' if cfg.strength.get('size_slope') else ''} "
                     f"(fitted on {cfg.strength.get('fitted_on') or 'photos'} for "
                     f"{cfg.strength.get('target_db', '?')} dB; psic calibrate)" if cfg.strength else "1 for every image"),
        "injection points": ", ".join(f"{p['module']} ({p['channels']} ch)" for p in cfg.injection_points),
        "parameters": params,
        "adapter fingerprint": fingerprint,
        "base codec": f"{base.get('architecture')}" + ("" if base.get("quality") is None else f" quality {base['quality']}"),
        "base fingerprint": base.get("fingerprint"),
        "base weights": ("the codec shipped with psic-adapter" if shipped else
                         base.get("checkpoint") or "a checkpoint with that fingerprint (or the zoo's, if it is)"),
        "kdf": cfg.kdf.get("name"),
        **({f"trained: {k}": v for k, v in training.items()} if training else {"trained": "no training record"}),
    }


def render(info: Dict[str, Any]) -> str:
    from ..errors import show_line

    # one row per fact: text from an adapter config (a strength's fitted_on, a checkpoint name) may hold line
    # breaks or terminal escapes that would forge rows of their own
    rows: List[Tuple[str, str]] = [(k, show_line(str(v), None)) for k, v in info.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def run(args) -> int:
    from ..errors import PSICError

    path = Path(args.input)
    if path.is_dir():
        info = adapter_info(path)
    elif path.is_file():
        info = file_info(path)
    else:
        raise PSICError(f"{path}: no such file or adapter folder")
    print(json.dumps(info, indent=2, default=str) if args.json else render(info))
    return 0
