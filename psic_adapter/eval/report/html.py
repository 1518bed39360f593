"""``report.html``: the page a researcher would put in a paper's supplement.

One self-contained file (inline CSS, images as small JPEG / PNG data URIs, no
scripts, no external links), readable on a laptop without horizontal
scrolling. Per run: a headline in words and units; plots of the ASR per scale
and per perturbation with their controls, the PSNR per image and, from the
run's ``log.jsonl``, the training curves, each with the numbers it draws
beneath; the tables; image rows that show what changed. Across runs (adapters
at several qualities): rate-distortion curves and the Bjontegaard deltas.
``metrics.json`` beside it holds every number.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

from ...errors import OverwriteError
from ...fileio import atomic_write_text
from ..record import METRICS_NAME, SCHEMA_VERSION, EvalResult, to_jsonable
from . import gallery as G
from . import plots as P
from .rd import bd_table, rd_points

PathLike = Union[str, os.PathLike]
REPORT_NAME = "report.html"

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1060px;margin:0 auto;padding:24px 20px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 6px}.meta{color:#666;font-size:13px;margin:0 0 18px}
.headline{background:#fff;border:1px solid #e3e3e3;border-left:4px solid #C44E52;padding:12px 16px;margin:10px 0 6px}
.headline p{margin:4px 0}.big{font-size:18px}.muted{color:#666;font-size:13px}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #e3e3e3;padding:8px}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;margin-top:4px}
table{border-collapse:collapse;font-size:13px;background:#fff;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.rows{display:grid;grid-template-columns:repeat(6,1fr);gap:6px;margin:10px 0 4px;align-items:start}
.cell{background:#fff;border:1px solid #e3e3e3;padding:3px;font-size:11px;line-height:1.3}
.cell img{width:100%;height:auto;display:block;image-rendering:auto}.cell.zoom img{image-rendering:pixelated}
.rowname{font-size:13px;font-weight:600;margin-top:14px}
details{margin:6px 0}summary{cursor:pointer;color:#333}
"""


@dataclass
class ReportRun:
    """One evaluated method (adapter) for the report."""

    name: str
    result: EvalResult
    gallery: Sequence[Any] = ()
    log: Optional[PathLike] = None
    plots: List[P.Plot] = field(default_factory=list)


# ------------------------------------------------------------------ words
def _pct(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f} %"


def _f(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _sentence(text: str) -> str:
    """``text`` as a sentence: a capital first letter and a full stop (empty stays empty)."""
    text = text.strip()
    return f"{text[0].upper()}{text[1:]}." if text else ""


def headline_sentences(result: EvalResult) -> List[str]:
    """The headline in words and units (plain text)."""
    h = result.headline()
    m = result.main
    out = []
    if result.task in ("classify", "imagenet", "celeba") and m.classification.n_base_right:
        down = f"; the target downsamples them {h.downsampling:.2f}x" if m.downsampling.n else ""
        out.append(
            f"On {h.images} images ({m.description}{down}), "
            f"the encrypted version changes the target's answer on {_pct(h.asr)} of the "
            f"{h.n_base_right} it gets right from the base decode; noise of the same energy changes "
            f"{_pct(h.control_asr)} (the control).")
    elif result.task in ("classify", "imagenet", "celeba"):
        out.append(f"On {h.images} images ({m.description}) the target gets no base decode right: the ASR is "
                   "undefined (n/a).")
    out.append(f"The encrypted version is {_f(h.db_under_base)} dB under the base decode (PSNR {_f(h.psnr_encrypted)} "
               f"vs {_f(h.psnr_base)} dB), from the same bitstream at {_f(h.bpp, 4)} bpp.")
    if "full" in result.versions:
        agree = m.classification.agreement_with_base.get("full", float("nan"))
        out.append(f"The full version (owner's key): {_f(h.psnr_full)} dB; the target's answers on it agree with "
                   f"the base decode's on {_pct(agree)} of the images. {_sentence(result.versions.get('full', ''))}")
    others = [f"{k}: {_pct(v)} (control {_pct(h.control_by_scale.get(k))})" for k, v in h.asr_by_scale.items()
              if k != m.scale]
    if others:
        out.append("ASR at the other scales: " + "; ".join(others) + ".")
    return out


# ------------------------------------------------------------------ html pieces
def _e(s: Any) -> str:
    return html.escape(str(s))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["<table><thead><tr>", *[f"<th>{_e(h)}</th>" for h in header], "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for v in row:
            num = isinstance(v, (int, float)) or (isinstance(v, str) and v[:1].isdigit())
            out.append(f"<td{' class=num' if num else ''}>{_e(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(data: bytes, mime: str, alt: str) -> str:
    return f"<img src='data:{mime};base64,{base64.b64encode(data).decode('ascii')}' alt='{_e(alt)}' loading='lazy'>"


def _plot_figure(p: P.Plot) -> str:
    return (f"<figure>{_img(p.png, 'image/png', p.title)}<figcaption>{_e(p.title)}"
            f"<details><summary>the numbers</summary><pre>{_e(json.dumps(to_jsonable(p.data), indent=1))}</pre>"
            "</details></figcaption></figure>")


def _scales_table(r: EvalResult) -> str:
    rows = []
    for key, s in r.scales.items():
        c = s.classification
        rows.append([key, s.n_images, f"{s.downsampling.mean:.2f}x" if s.downsampling.n else "",
                     _f(s.bpp["encrypted"].mean, 4) if "encrypted" in s.bpp else "", _f(s.psnr("base")),
                     _f(s.psnr("full")), _f(s.psnr("encrypted")), _pct(c.asr), _pct(c.control_asr), c.n_base_right,
                     _pct(c.agreement_with_base.get("full", float("nan")))])
    return _table(["scale", "images", "target downsamples", "bpp", "PSNR base", "full", "encrypted", "ASR",
                   "control ASR", "base right", "full agrees with base"], rows)


def _robustness_table(r: EvalResult) -> str:
    names = sorted({p for s in r.scales.values() for p in s.robustness})
    if not names:
        return ""
    keys = [k for k, s in r.scales.items() if s.robustness]
    rows = [[p, *[f"{_pct(r.scales[k].robustness[p].asr)} ({_pct(r.scales[k].robustness[p].control_asr)})"
                  if p in r.scales[k].robustness else "" for k in keys]] for p in names]
    return _table(["after", *[f"{k}: ASR (control)" for k in keys]], rows)


def _keys_section(r: EvalResult) -> str:
    parts = []
    if r.wrong_keys is not None:
        w = r.wrong_keys
        parts.append(f"<p>{w.n_keys} random wrong-key conditions fed to the network directly (bypassing the key "
                     f"check): ASR {_pct(w.asr.mean)} (lowest {_pct(w.asr_min)}), PSNR {_f(w.psnr.mean)} dB.</p>")
    if r.whitebox is not None:
        b = r.whitebox
        parts.append(f"<p>A white-box attacker (the adapter, not the key; {b.steps} steps on {b.images_optimised_on} "
                     f"images): ASR {_pct(b.asr)}, agreement with the base {_pct(b.agreement_with_base)}, "
                     f"PSNR {_f(b.psnr.mean)} dB.</p>")
    return "".join(parts)


def _task_section(r: EvalResult) -> str:
    t = r.main.task
    if not t:
        return ""
    if r.task == "caption" and "scores" in t:
        rows = [[v, *[_f(s.get(k), 3) for k in ("bleu1", "bleu4", "cider")]] for v, s in t["scores"].items()]
        extra = t.get("encrypted_vs_base", {})
        return ("<h3>Captions</h3>" + _table(["version", "BLEU-1", "BLEU-4", "CIDEr"], rows)
                + f"<p class=muted>Encrypted captions against the base captions: BLEU-4 {_f(extra.get('bleu4'), 3)}, "
                f"identical {_pct(extra.get('identical', float('nan')))}. Captioner: {_e(t.get('captioner'))}.</p>")
    if "per_attribute" in t:
        rows = [[a, _pct(e["accuracy"].get("base")), _pct(e["asr"]), _pct(e.get("control_asr", float("nan")))]
                for a, e in t["per_attribute"].items()]
        return "<h3>Per attribute</h3><details><summary>40 attributes</summary>" + _table(
            ["attribute", "accuracy (base)", "ASR", "control ASR"], rows) + "</details>"
    if "per_class" in t:
        rows = [[c, e["n"], _pct(e["accuracy"].get("base")), _pct(e["asr"])] for c, e in t["per_class"].items()]
        return "<h3>Per class</h3><details><summary>classes</summary>" + _table(
            ["class", "images", "accuracy (base)", "ASR"], rows) + "</details>"
    return ""


def _gallery_html(rows) -> str:
    out = []
    for row in rows:
        out.append(f"<div class=rowname>{_e(row.name)}</div><div class=rows>")
        for cell in G.gallery_row(row):
            zoom = " zoom" if cell.label.startswith("zoom") else ""
            out.append(f"<div class='cell{zoom}'>{_img(cell.jpeg, 'image/jpeg', cell.label)}{_e(cell.label)}</div>")
        out.append("</div>")
    return "".join(out)


def run_plots(run: ReportRun) -> List[P.Plot]:
    r = run.result
    plots = []
    if r.task in ("classify",) and len(r.scales) > 1:
        plots.append(P.asr_by_scale(r))
    pert = P.asr_by_perturbation(r)
    if pert is not None:
        plots.append(pert)
    plots.append(P.psnr_per_image(r))
    if run.log and Path(run.log).is_file():
        curves = P.training_curves(P.read_log(run.log))
        if curves is not None:
            plots.append(curves)
    return plots


def render(runs: Sequence[ReportRun], title: str = "PSIC evaluation", command: Optional[str] = None) -> str:
    from ... import __version__

    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = ["<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>", f"<h1>{_e(title)}</h1>",
             f"<p class=meta>psic-adapter {_e(__version__)} &middot; {_e(now)}"
             + (f" &middot; <code>{_e(command)}</code>" if command else "") + "</p>"]
    for run in runs:
        r = run.result
        run.plots = run_plots(run)
        if len(runs) > 1:
            parts.append(f"<h2>{_e(run.name)}</h2>")
        parts.append("<div class=headline>")
        for k, s in enumerate(headline_sentences(r)):
            parts.append(f"<p{' class=big' if k == 0 else ''}>{_e(s)}</p>")
        parts.append(f"<p class=muted>{_e(r.method)} against {_e(r.target)}; versions: "
                     + "; ".join(f"{_e(v)} = {_e(d)}" for v, d in r.versions.items()) + "</p></div>")
        parts.append("<h3>Plots</h3><div class=plots>" + "".join(_plot_figure(p) for p in run.plots) + "</div>")
        parts.append("<h3>Scales</h3>" + _scales_table(r))
        rob = _robustness_table(r)
        if rob:
            parts.append("<h3>After processing of the served image</h3>" + rob)
        keys = _keys_section(r)
        if keys:
            parts.append("<h3>Keys</h3>" + keys)
        parts.append(_task_section(r))
        if run.gallery:
            parts.append(f"<h3>What changed ({_e(r.main.scale)})</h3>" + _gallery_html(run.gallery))
    points = rd_points([run.result for run in runs])
    rd = P.rate_distortion(points)
    if rd is not None:
        parts.append("<h2>Rate-distortion</h2><div class=plots>" + _plot_figure(rd) + "</div>")
        bd = bd_table(points)
        rows = [[v, _f(d["bd_rate"]), _f(d["bd_psnr"], 3), _f(d["bd_rate_ms_ssim"]), _f(d["bd_ms_ssim"], 4)]
                for v, d in bd.items()]
        parts.append(_table(["vs base", "BD-rate (%, PSNR)", "BD-PSNR (dB)", "BD-rate (%, MS-SSIM)", "BD-MS-SSIM"],
                            rows))
        parts.append("<p class=muted>Bjontegaard deltas (pchip interpolation, the bjontegaard package); n/a with "
                     "fewer than four rate points.</p>")
    parts.append(f"<p class=muted>Every number: <code>{METRICS_NAME}</code> beside this page.</p></main></body></html>\n")
    return "\n".join(parts)


def write_results(out_dir: PathLike, results: Sequence[EvalResult], force: bool = False) -> Path:
    """``out_dir/metrics.json``: ``{"schema", "runs": [EvalResult.to_dict(), ...]}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"schema": SCHEMA_VERSION, "runs": [r.to_dict() for r in results]}
    return atomic_write_text(out_dir / METRICS_NAME, json.dumps(data, indent=2, allow_nan=False) + "\n", force=force)


def write_report(out_dir: PathLike, runs: Sequence[ReportRun], title: str = "PSIC evaluation", force: bool = False,
                 command: Optional[str] = None) -> Path:
    """Write ``metrics.json`` and ``report.html`` into ``out_dir``; returns the page's path.

    Existing files need ``force`` (checked before anything is written).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OverwriteError(f"{out_dir} exists and is not a folder")
    existing = [p for p in (out_dir / REPORT_NAME, out_dir / METRICS_NAME) if p.exists()]
    if existing and not force:
        raise OverwriteError(f"{existing[0]} exists (use --force to overwrite)")
    page = render(runs, title=title, command=command)
    write_results(out_dir, [r.result for r in runs], force=True)
    return atomic_write_text(out_dir / REPORT_NAME, page, force=True)
