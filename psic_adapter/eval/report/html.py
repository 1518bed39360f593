"""``report.html``: the page a researcher would put in a paper's supplement.

One self-contained file (inline CSS, images as PNG data URIs, no scripts, no
external links), readable on a phone and a laptop without clipping (tables
scroll inside their own box). Per run: a headline in words and units; plots of
the ASR per scale and per perturbation with their controls, counts and Wilson
95 % intervals, the PSNR per image and, from the run's ``log.jsonl``, the
training curves, each with the numbers it draws beneath; the tables; image rows
that show what changed. Every ASR is shown with its count, its interval and
whether it can be told from the control (:data:`~psic_adapter.eval.table.RULE`).
Across runs (adapters at several qualities): rate-distortion curves, one per
image set, and the Bjontegaard deltas where a set has enough rate points.
``metrics.json`` beside it holds every number.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from ...errors import OverwriteError
from ...fileio import atomic_write_text
from .. import table as T
from ..record import METRICS_NAME, SCHEMA_VERSION, EvalResult, to_jsonable
from . import gallery as G
from . import plots as P
from .rd import BD_MIN_POINTS, bd_table, rd_points
from ...types import PathLike

REPORT_NAME = "report.html"

_CSS = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d1d1f;background:#fafafa;
overflow-wrap:anywhere}
main{max-width:1060px;margin:0 auto;padding:24px 20px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 6px}.meta{color:#666;font-size:13px;margin:0 0 18px}
.headline{background:#fff;border:1px solid #e3e3e3;border-left:4px solid #C44E52;padding:12px 16px;margin:10px 0 6px}
.headline p{margin:4px 0}.big{font-size:18px}.muted{color:#666;font-size:13px}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(480px,100%),1fr));gap:14px}
figure{margin:0;background:#fff;border:1px solid #e3e3e3;padding:8px;min-width:0}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#555;margin-top:4px}pre{white-space:pre-wrap;font-size:11px;margin:4px 0}
.scroll{max-width:100%;overflow-x:auto;margin:6px 0}
table{border-collapse:collapse;font-size:13px;background:#fff;overflow-wrap:normal}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.rows{display:grid;grid-template-columns:repeat(6,minmax(0,1fr));gap:6px;margin:10px 0 4px;align-items:start}
.cell{background:#fff;border:1px solid #e3e3e3;padding:3px;font-size:11px;line-height:1.3;min-width:0}
.cell img{width:100%;height:auto;display:block;image-rendering:auto}.cell.zoom img{image-rendering:pixelated}
.rowname{font-size:13px;font-weight:600;margin-top:14px}
details{margin:6px 0}summary{cursor:pointer;color:#333}
@media (max-width:760px){main{padding:14px 10px 40px}h1{font-size:21px}.big{font-size:16px}
.rows{grid-template-columns:repeat(2,minmax(0,1fr))}
table,tbody,tr,td{display:block;width:100%}thead{display:none}tr{border:1px solid #ddd;margin:0 0 8px;background:#fff}
td,td.num{border:0;border-bottom:1px solid #eee;text-align:left;white-space:normal;padding:2px 8px}
td::before{content:attr(data-label) ": ";font-weight:600;color:#444}}
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

def _sentence(text: str) -> str:
    """``text`` as a sentence: a capital first letter and a full stop (empty stays empty)."""
    text = text.strip()
    return f"{text[0].upper()}{text[1:]}." if text else ""


def _against_noise(asr: float, control: float, n: int) -> str:
    verdict = T.verdict(asr, control, n)
    return {T.ABOVE: "above the control's interval", T.NOISE: "not distinguishable from noise",
            T.BELOW: "below the control (the noise changed more)"}.get(verdict, "n/a")


def headline_sentences(result: EvalResult) -> List[str]:
    """The headline in words and units (plain text), every rate with its count and Wilson 95 % interval."""
    h = result.headline()
    m = result.main
    out = []
    n = h.n_base_right
    if result.task in ("classify", "imagenet", "celeba") and n:
        down = f"; the target downsamples them {h.downsampling:.2f}x" if m.downsampling.n else ""
        out.append(
            f"On {m.images_text} ({m.description}{down}), "
            f"the encrypted version changes the target's answer on {T.rate(h.asr, n, label=True)} of the "
            f"{n} it gets right from the base decode; noise of the same energy changes "
            f"{T.rate(h.control_asr, n, label=True)} (the control): {_against_noise(h.asr, h.control_asr, n)}.")
    elif result.task in ("classify", "imagenet", "celeba"):
        out.append(f"On {m.images_text} ({m.description}) the target gets no base decode right: the ASR is "
                   "undefined (n/a).")
    out.append(f"The encrypted version is {T.number(h.db_under_base)} dB under the base decode (PSNR {T.number(h.psnr_encrypted)} "
               f"vs {T.number(h.psnr_base)} dB), from the same bitstream at {T.number(h.bpp, 4)} bpp.")
    if "full" in result.versions:
        agree = m.classification.agreement_with_base.get("full", float("nan"))
        out.append(f"The full version (owner's key): {T.number(h.psnr_full)} dB; the target's answers on it agree with "
                   f"the base decode's on {T.share(agree, m.n_images)} of the images. "
                   f"{_sentence(result.versions.get('full', ''))}")
    others = []
    for k, s in result.scales.items():
        if k == m.scale:
            continue
        c = s.classification
        others.append(f"{k} ({s.images_text}): {T.rate(c.asr, c.n_base_right)} (control "
                      f"{T.rate(c.control_asr, c.n_base_right)}; {_against_noise(c.asr, c.control_asr, c.n_base_right)})")
    if others:
        out.append("ASR at the other scales: " + "; ".join(others) + ".")
    return out


# ------------------------------------------------------------------ html pieces
def _e(s: Any) -> str:
    return html.escape(str(s))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["<div class=scroll><table><thead><tr>", *[f"<th>{_e(h)}</th>" for h in header], "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for h, v in zip(header, row):  # data-label: on a phone each row is a card of "header: value" lines
            num = isinstance(v, (int, float)) or (isinstance(v, str) and v[:1].isdigit())
            out.append(f"<td{' class=num' if num else ''} data-label='{_e(h)}'>{_e(v)}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _img(data: bytes, mime: str, alt: str) -> str:
    return f"<img src='data:{mime};base64,{base64.b64encode(data).decode('ascii')}' alt='{_e(alt)}' loading='lazy'>"


def _plot_figure(p: P.Plot) -> str:
    return (f"<figure>{_img(p.png, 'image/png', p.title)}<figcaption>{_e(p.title)}"
            f"<details><summary>the numbers</summary><pre>{_e(json.dumps(to_jsonable(p.data), indent=1))}</pre>"
            "</details></figcaption></figure>")


def _quality_table(r: EvalResult) -> str:
    rows = []
    for key, s in r.scales.items():
        rows.append([key, T.images(s), f"{s.downsampling.mean:.2f}x" if s.downsampling.n else "",
                     T.number(s.bpp["encrypted"].mean, 4) if "encrypted" in s.bpp else "", T.number(s.psnr("base")),
                     T.number(s.psnr("full")), T.number(s.psnr("encrypted")),
                     T.share(s.classification.agreement_with_base.get("full", float("nan")), s.n_images)])
    return _table(["scale", "images", "target downsamples", "bpp", "PSNR base", "full", "encrypted",
                   "full agrees with base"], rows)


def _scales_table(r: EvalResult) -> str:
    rows = [[key, T.images(s), s.classification.n_base_right,
             *T.asr_cells(s.classification.asr, s.classification.control_asr, s.classification.n_base_right)]
            for key, s in r.scales.items()]
    return _table(["scale", "images", "base right", *T.ASR_HEADER], rows)


def _robustness_table(r: EvalResult) -> str:
    rows = [[p, key, *T.asr_cells(x.asr, x.control_asr, x.n_base_right)]
            for key, s in r.scales.items() for p, x in s.robustness.items()]
    if not rows:
        return ""
    return _table(["after", "scale", *T.ASR_HEADER], rows)


def _keys_section(r: EvalResult) -> str:
    parts = [f"<p>{_e(line)}.</p>" for line in (T.wrong_keys_line(r), T.whitebox_line(r)) if line]
    if r.whitebox is not None:
        parts.append(f"<p class=muted>White-box decodes: PSNR {T.number(r.whitebox.psnr.mean)} dB.</p>")
    return "".join(parts)


def _task_section(r: EvalResult) -> str:
    t = r.main.task
    if not t:
        return ""
    if r.task == "caption" and "scores" in t:
        rows = [[v, *[T.number(s.get(k), 3) for k in ("bleu1", "bleu4", "cider")]] for v, s in t["scores"].items()]
        extra = t.get("encrypted_vs_base", {})
        return ("<h3>Captions</h3>" + _table(["version", "BLEU-1", "BLEU-4", "CIDEr"], rows)
                + f"<p class=muted>Encrypted captions against the base captions: BLEU-4 {T.number(extra.get('bleu4'), 3)}, "
                f"identical {T.share(extra.get('identical', float('nan')), r.main.n_images)}. Captioner: {_e(t.get('captioner'))}.</p>")
    if "per_attribute" in t:
        n = r.main.n_images
        rows = [[a, T.share(e["accuracy"].get("base"), n),
                 *T.asr_cells(e["asr"], e.get("control_asr", float("nan")), int(e.get("n_base_right") or 0))]
                for a, e in t["per_attribute"].items()]
        return "<h3>Per attribute</h3><details><summary>40 attributes</summary>" + _table(
            ["attribute", "accuracy (base)", *T.ASR_HEADER], rows) + "</details>"
    if "per_class" in t:
        from ..metrics import count_of_rate

        rows = [[c, e["n"], T.share(e["accuracy"].get("base"), int(e["n"])),
                 T.rate(e["asr"], count_of_rate(e["accuracy"].get("base", float("nan")), int(e["n"])))]
                for c, e in t["per_class"].items()]
        return "<h3>Per class</h3><details><summary>classes</summary>" + _table(
            ["class", "images", "accuracy (base)", "ASR (k/n) [95% CI]"], rows) + "</details>"
    return ""


def _gallery_html(rows) -> str:
    out = []
    for row in rows:
        out.append(f"<div class=rowname>{_e(row.name)}</div><div class=rows>")
        for cell in G.gallery_row(row):
            zoom = " zoom" if cell.label.startswith("zoom") else ""
            out.append(f"<div class='cell{zoom}'>{_img(cell.png, 'image/png', cell.label)}{_e(cell.label)}</div>")
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
        records = P.read_log(run.log)
        plots.extend(p for p in (P.training_curves(records), P.validation_curve(records)) if p is not None)
    return plots


def _rd_section(results: Sequence[EvalResult]) -> str:
    """Rate-distortion, one curve per image set, and the Bjontegaard deltas where a set has the points."""
    points = rd_points(results)
    rd = P.rate_distortion(points)
    if rd is None:
        return ""
    parts = ["<h2>Rate-distortion</h2><div class=plots>" + _plot_figure(rd) + "</div>"]
    bd = bd_table(points)
    rows = [[label, v, T.number(d["bd_rate"]), T.number(d["bd_psnr"], 3), T.number(d["bd_rate_ms_ssim"]), T.number(d["bd_ms_ssim"], 4)]
            for label, per in bd.items() for v, d in per.items()]
    if rows:
        parts.append(_table(["images", "vs base", "BD-rate (%, PSNR)", "BD-PSNR (dB)", "BD-rate (%, MS-SSIM)",
                             "BD-MS-SSIM"], rows))
    sizes = "; ".join(f"{label}: {max(len(p) for p in curves.values())} point(s)" for label, curves in points.items())
    parts.append(f"<p class=muted>A curve joins runs measured on the same images only. Bjontegaard deltas (pchip "
                 f"interpolation, the bjontegaard package) compare a version with the base on the same images and "
                 f"need {BD_MIN_POINTS} rate points or more per curve"
                 + ("" if rows else ", which no image set here has") + f" ({_e(sizes)}).</p>")
    return "".join(parts)


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
        parts.append("<h3>Protection per scale</h3>" + _scales_table(r))
        parts.append(f"<p class=muted>k/n: the images the encrypted version (or the noise) flips / the images the "
                     f"target gets right from the base decode; [95% CI]: the Wilson score interval. "
                     f"{_e(_sentence(T.RULE))}</p>")
        parts.append("<h3>Quality per scale</h3>" + _quality_table(r))
        rob = _robustness_table(r)
        if rob:
            parts.append("<h3>After processing of the served image</h3>" + rob)
        keys = _keys_section(r)
        if keys:
            parts.append("<h3>Keys</h3>" + keys)
        parts.append(_task_section(r))
        if run.gallery:
            parts.append(f"<h3>What changed ({_e(r.main.scale)})</h3>" + _gallery_html(run.gallery))
            parts.append("<p class=muted>Lossless PNG cells. At 2x zoom (the last cell) the encrypted version can "
                         "show a faint regular grid (likely from the decoder's strided upsampling, where the "
                         "adapter acts): a person who looks closely can see it.</p>")
    if len(runs) > 1:
        lines = T.compare_runs([run.result for run in runs], [run.name for run in runs])
        if lines:
            parts.append("<h2>The runs side by side</h2><ul>" + "".join(f"<li>{_e(x)}</li>" for x in lines)
                         + "</ul>")
    parts.append(_rd_section([run.result for run in runs]))
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
