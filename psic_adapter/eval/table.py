"""Evaluation results as small plain-text tables, for the terminal (``psic eval``, ``psic demo``)."""

from __future__ import annotations

import math
from typing import List, Sequence

from .record import EvalResult


def percent(v: float) -> str:
    """``78.0 %``, or ``n/a`` for an undefined rate (nothing to count)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def db(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the first left-aligned, the rest right-aligned."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def scales_table(result: EvalResult) -> str:
    """One row per evaluation scale: images, downsampling, bpp, PSNR per version, ASR and its control."""
    rows: List[List[str]] = []
    for key, s in result.scales.items():
        c = s.classification
        rows.append([
            key, str(s.n_images), f"{s.downsampling.mean:.2f}x" if s.downsampling.n else "n/a",
            f"{s.bpp['encrypted'].mean:.4f}" if "encrypted" in s.bpp else "n/a",
            db(s.psnr("base")), db(s.psnr("full")), db(s.psnr("encrypted")),
            percent(c.asr), percent(c.control_asr), str(c.n_base_right),
            percent(c.agreement_with_base.get("full", float("nan"))),
        ])
    return render(["scale", "images", "target /", "bpp", "PSNR base", "full", "encrypted", "ASR", "control",
                   "base right", "full = base"], rows)


def runs_table(results: Sequence[EvalResult], names: Sequence[str]) -> str:
    """Several runs side by side, a row per run and scale: images, right, ASR, control, PSNR per version."""
    if len(names) != len(results):
        raise ValueError(f"{len(names)} names for {len(results)} results")
    rows: List[List[str]] = []
    for name, result in zip(names, results):
        for key, s in result.scales.items():
            c = s.classification
            rows.append([name, key, str(s.n_images), str(c.n_base_right), percent(c.asr), percent(c.control_asr),
                         db(s.psnr("base")), db(s.psnr("full")), db(s.psnr("encrypted"))])
    return render(["run", "scale", "images", "right", "ASR", "control", "PSNR base", "full", "encrypted"], rows)


def robustness_table(result: EvalResult) -> str:
    """ASR and control after each perturbation, one column per scale."""
    names = sorted({p for s in result.scales.values() for p in s.robustness})
    if not names:
        return ""
    keys = list(result.scales)
    rows = []
    for p in names:
        row = [p]
        for k in keys:
            r = result.scales[k].robustness.get(p)
            row.append("" if r is None else f"{percent(r.asr)} ({percent(r.control_asr)})")
        rows.append(row)
    return render(["after", *[f"{k}: ASR (control)" for k in keys]], rows)


def summary(result: EvalResult, name: str = "") -> str:
    """The tables a person reads after ``psic eval``."""
    parts = [f"{name}: {result.method} against {result.target}" if name else f"{result.method} against {result.target}",
             scales_table(result)]
    rob = robustness_table(result)
    if rob:
        parts.append(rob)
    if result.wrong_keys is not None:
        w = result.wrong_keys
        parts.append(f"wrong keys ({w.n_keys}, fed to the network directly): ASR {percent(w.asr.mean)} "
                     f"(min {percent(w.asr_min)}), PSNR {db(w.psnr.mean)} dB")
    task = result.main.task
    if result.task == "caption" and "scores" in task:
        parts.append("captions: " + "; ".join(
            f"{v} BLEU-4 {db(s.get('bleu4'))} CIDEr {db(s.get('cider'))}" for v, s in task["scores"].items()))
        e = task.get("encrypted_vs_base", {})
        parts.append(f"encrypted captions against the base captions: BLEU-4 {db(e.get('bleu4'))}, "
                     f"identical {percent(e.get('identical', float('nan')))}")
    if result.whitebox is not None:
        b = result.whitebox
        parts.append(f"white-box attacker ({b.steps} steps on {b.images_optimised_on} images): "
                     f"ASR {percent(b.asr)}, agreement with base {percent(b.agreement_with_base)}")
    return "\n".join(parts)
