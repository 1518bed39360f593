"""Evaluation reports: an image grid, rate curves, ``metrics.json`` and one HTML file.

Everything is drawn with matplotlib's Agg canvas (no display, no pyplot global
state), and ``report.html`` is self-contained: inline CSS, every image embedded
as a ``data:image/png;base64,`` URI, no scripts, no external links, so it can be
mailed or opened offline.

The ``metrics`` dict given to :func:`write_report` is free-form JSON-like data;
two entries are laid out as tables when present:

* ``"summary"``: ``{name: value}`` -> the headline table. A value may be a
  number, a string, a :func:`psic_adapter.eval.metrics.summarize` dict
  (shown as ``mean ± std (n=…)``) or a nested dict (its keys joined with " / ").
  Without ``"summary"``, the headline shows the top-level scalar entries.
* ``"per_image"``: a list of ``{column: value}`` dicts -> the per-image table
  (columns in order of first appearance).

The whole dict is also written to ``metrics.json`` (indented; nan and ±inf as
``null``, since JSON has no such numbers; tensors and arrays as lists) and shown
at the end of the report.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import OverwriteError

__all__ = ["image_grid_png", "plot_rate_curves", "write_report", "to_jsonable", "format_value"]

PathLike = Union[str, os.PathLike]
GridRow = Tuple[str, Sequence[Tuple[str, Any]]]


# --------------------------------------------------------------------------- helpers


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts.

    nan / ±inf -> ``None``; tensors and numpy arrays -> (nested) lists; numpy and
    0-d tensor scalars -> Python numbers; tuples and sets -> lists; paths -> str;
    mapping keys -> str; anything else -> ``str(obj)``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def _is_summary(v: Any) -> bool:
    return isinstance(v, Mapping) and {"mean", "std", "n"} <= set(v.keys())


def format_value(v: Any) -> str:
    """A short human-readable form of a metric value (not yet HTML-escaped).

    nan/None -> "n/a"; floats with 4 significant digits; summarize dicts as
    ``mean ± std (n=N)``.
    """
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    if _is_summary(v):
        mean = format_value(v["mean"])
        if mean == "n/a":
            return f"n/a (n={format_value(v['n'])})"
        return f"{mean} ± {format_value(v['std'])} (n={format_value(v['n'])})"
    if isinstance(v, (Mapping, list, tuple, torch.Tensor, np.ndarray)):
        return json.dumps(to_jsonable(v), allow_nan=False)
    return str(v)


def _mpl_text(s: str, width: int = 30) -> str:
    """Wrap a caption and keep matplotlib from reading ``$...$`` as math."""
    s = str(s).replace("$", r"\$")
    return "\n".join(textwrap.wrap(s, width)) if len(s) > width else s


def _to_hwc(img: Any) -> np.ndarray:
    """A 3xHxW / 1x3xHxW / HxW tensor or an HxW(x3) array -> HxWx3 float in [0, 1]."""
    if isinstance(img, torch.Tensor):
        t = img.detach().float().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"grid cells take one image, got a batch of {t.shape[0]}")
            t = t[0]
        if t.dim() == 2:
            t = t[None].expand(3, -1, -1)
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected a 3xHxW image tensor, got shape {tuple(img.shape)}")
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return t.clamp(0, 1).permute(1, 2, 0).numpy()
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image array, got shape {arr.shape}")
    return np.clip(arr.astype(np.float32), 0, 1)


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------------- figures


def image_grid_png(rows: Sequence[GridRow], path: PathLike, cell_inches: float = 2.6, dpi: int = 110) -> Path:
    """Draw rows of captioned images into one PNG (overwrites ``path``).

    Args:
        rows: ``[(row_title, [(caption, image), ...]), ...]``, e.g. one row per
            image with cells "original / base / full / encrypted" and captions
            like ``"tabby cat, 30.7 dB"``. An image is a ``3xHxW`` (or
            ``1x3xHxW``) tensor in ``[0, 1]`` or an ``HxWx3`` array. Rows may
            have different lengths.
        path: the PNG to write.

    Returns:
        ``Path(path)``.
    """
    rows = list(rows)
    if not rows or not any(len(cells) for _, cells in rows):
        raise ValueError("image_grid_png needs at least one image")
    n_rows = len(rows)
    n_cols = max(len(cells) for _, cells in rows)
    images = [[_to_hwc(img) for _, img in cells] for _, cells in rows]
    aspect = max(a.shape[0] / a.shape[1] for row in images for a in row)  # tallest cell, H / W
    fig = _new_figure((n_cols * cell_inches + 0.6, n_rows * (cell_inches * aspect + 0.55)))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (row_title, cells) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(cells):
                ax.axis("off")
                continue
            caption = cells[c][0]
            ax.imshow(images[r][c], interpolation="lanczos")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_xlabel(_mpl_text(caption), fontsize=8)
            if c == 0 and row_title:
                ax.set_ylabel(_mpl_text(row_title, 24), fontsize=9, fontweight="bold")
    fig.tight_layout()
    return _save_png(fig, path, dpi)


def _num(v: Any) -> float:
    if v is None:
        return float("nan")
    if isinstance(v, torch.Tensor):
        v = v.item()
    return float(v)


def plot_rate_curves(points: Sequence[Mapping[str, Any]], path: PathLike, title: Optional[str] = None, dpi: int = 110) -> Path:
    """Two panels against bpp: attack success rate, and PSNR of base/full/encrypted.

    Args:
        points: dicts with ``"name"`` (the adapter / rate set; one line each) and
            ``"bpp"``, and optionally ``"psnr_base"``, ``"psnr_full"``,
            ``"psnr_enc"`` (dB) and ``"asr"`` (a fraction in [0, 1], plotted in
            %; or a dict such as ``{"t2i": .., "i2t": ..}`` for one line per
            entry). Missing or nan values leave the point out of that line.
            Identical base curves (several adapters on one codec) are drawn once.
        path: the PNG to write (overwritten).

    Returns:
        ``Path(path)``.
    """
    points = list(points)
    if not points:
        raise ValueError("plot_rate_curves needs at least one point")
    groups: dict = {}
    for p in points:
        if "name" not in p or "bpp" not in p:
            raise ValueError(f"each point needs 'name' and 'bpp', got keys {sorted(p)}")
        groups.setdefault(str(p["name"]), []).append(p)

    fig = _new_figure((11, 4.2))
    ax_asr, ax_psnr = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(groups))]

    def line(ax, xs, ys, **kw):
        keep = [(x, y) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
        if keep:
            ax.plot([k[0] for k in keep], [k[1] for k in keep], marker="o", markersize=4, **kw)

    asr_styles = ["-", "--", ":", "-."]
    base_curves = []
    for color, (name, pts) in zip(colors, groups.items()):
        pts = sorted(pts, key=lambda p: _num(p["bpp"]))
        bpp = [_num(p["bpp"]) for p in pts]
        kinds: List[str] = []
        for p in pts:
            a = p.get("asr")
            if isinstance(a, Mapping):
                kinds += [str(k) for k in a if str(k) not in kinds]
        if kinds:
            for i, kind in enumerate(kinds):
                ys = [100 * _num(p["asr"].get(kind)) if isinstance(p.get("asr"), Mapping) else float("nan") for p in pts]
                line(ax_asr, bpp, ys, color=color, linestyle=asr_styles[i % 4], label=_mpl_text(f"{name} {kind}", 60))
        else:
            line(ax_asr, bpp, [100 * _num(p.get("asr")) for p in pts], color=color, label=_mpl_text(name, 60))
        line(ax_psnr, bpp, [_num(p.get("psnr_full")) for p in pts], color=color, linestyle="-", label=_mpl_text(f"{name} full", 60))
        line(ax_psnr, bpp, [_num(p.get("psnr_enc")) for p in pts], color=color, linestyle="--", label=_mpl_text(f"{name} encrypted", 60))
        base = tuple((b, _num(p.get("psnr_base"))) for b, p in zip(bpp, pts))
        if any(math.isfinite(y) for _, y in base):
            base_curves.append((name, base))
    unique = []
    for name, base in base_curves:
        if not any(base == u for _, u in unique):
            unique.append((name, base))
    for name, base in unique:
        label = "base codec" if len(unique) == 1 else f"{name} base"
        line(ax_psnr, [b for b, _ in base], [y for _, y in base], color="black", linestyle=":", label=_mpl_text(label, 60))

    ax_asr.set_xlabel("bits per pixel")
    ax_asr.set_ylabel("attack success rate (%)")
    ax_asr.set_ylim(-3, 103)
    ax_asr.set_title("Encrypted version vs target model")
    ax_psnr.set_xlabel("bits per pixel")
    ax_psnr.set_ylabel("PSNR (dB)")
    ax_psnr.set_title("Image quality")
    for ax in (ax_asr, ax_psnr):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(_mpl_text(title, 100))
    fig.tight_layout()
    return _save_png(fig, path, dpi)


# --------------------------------------------------------------------------- report

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
.meta{color:#777;font-size:.85em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .7em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
.scroll{overflow-x:auto}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.8em}
"""


def _headline_rows(metrics: Mapping[str, Any]) -> List[Tuple[str, Any]]:
    summary = metrics.get("summary")
    if isinstance(summary, Mapping):
        src, only_scalars = summary, False
    else:
        src, only_scalars = metrics, True
    rows: List[Tuple[str, Any]] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, Mapping) and not _is_summary(v):
            for k, sub in v.items():
                walk(f"{prefix} / {k}" if prefix else str(k), sub)
        else:
            rows.append((prefix, v))

    for k, v in src.items():
        if only_scalars:
            if k == "per_image":
                continue
            if isinstance(v, (int, float, str, bool, np.generic)) or v is None or _is_summary(v):
                rows.append((str(k), v))
        else:
            walk(str(k), v)
    return rows


def _is_numeric(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) or _is_summary(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    e = html.escape
    out = ["<div class='scroll'><table><thead><tr>"]
    out += [f"<th>{e(str(h))}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for v in row:
            cls = " class='num'" if _is_numeric(v) else ""
            out.append(f"<td{cls}>{e(format_value(v))}</td>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(alt)}\">"


def write_report(
    out_dir: PathLike,
    metrics: Mapping[str, Any],
    grid_rows: Optional[Sequence[GridRow]] = None,
    plots: Sequence[PathLike] = (),
    title: str = "PSIC evaluation",
    force: bool = False,
) -> Path:
    """Write ``metrics.json`` and a self-contained ``report.html`` into ``out_dir``.

    Args:
        out_dir: the report folder (created if needed).
        metrics: the results (layout: see the module docstring).
        grid_rows: rows for :func:`image_grid_png`; drawn to ``out_dir/grid.png``
            and embedded. ``None`` or empty: no grid.
        plots: PNG files (e.g. from :func:`plot_rate_curves`) to embed, in order.
        title: the page title.
        force: overwrite an existing ``report.html`` / ``metrics.json``.

    Returns:
        The path of ``report.html``.

    Raises:
        OverwriteError: ``report.html`` or ``metrics.json`` exists and not ``force``
            (checked before anything is written).
        FileNotFoundError: a plot file does not exist.
    """
    out_dir = Path(out_dir)
    html_path, json_path, grid_path = out_dir / "report.html", out_dir / "metrics.json", out_dir / "grid.png"
    if out_dir.exists() and not out_dir.is_dir():
        raise OverwriteError(f"{out_dir} exists and is not a folder")
    existing = [p for p in (html_path, json_path) if p.exists()]
    if existing and not force:
        raise OverwriteError(f"{existing[0]} exists (use --force to overwrite)")
    if not isinstance(metrics, Mapping):
        raise TypeError("metrics must be a dict")

    plot_pngs = []
    for p in plots:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"plot {p} does not exist")
        plot_pngs.append((p, p.read_bytes()))
    json_text = json.dumps(to_jsonable(metrics), indent=2, allow_nan=False, ensure_ascii=False) + "\n"

    out_dir.mkdir(parents=True, exist_ok=True)
    grid_png = None
    if grid_rows:
        grid_png = image_grid_png(grid_rows, grid_path).read_bytes()

    e = html.escape
    from .. import __version__

    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p class='meta'>psic_adapter {e(__version__)} &middot; {e(now)}</p>",
    ]
    headline = _headline_rows(metrics)
    if headline:
        parts.append("<h2>Headline</h2>")
        parts.append(_table(["metric", "value"], headline))
    if plot_pngs:
        parts.append("<h2>Plots</h2>")
        for p, png in plot_pngs:
            parts.append(f"<figure>{_img_tag(png, p.stem)}<figcaption>{e(p.name)}</figcaption></figure>")
    per_image = metrics.get("per_image")
    if isinstance(per_image, Sequence) and not isinstance(per_image, str) and per_image:
        cols: List[str] = []
        for row in per_image:
            if isinstance(row, Mapping):
                cols += [str(k) for k in row if str(k) not in cols]
        if cols:
            parts.append("<h2>Per image</h2>")
            body = []
            for row in per_image:
                if isinstance(row, Mapping):
                    lookup = {str(k): v for k, v in row.items()}
                    body.append([lookup.get(c) for c in cols])
            parts.append(_table(cols, body))
    if grid_png is not None:
        parts.append("<h2>Images</h2>")
        parts.append(f"<figure>{_img_tag(grid_png, 'image grid')}</figure>")
    parts.append("<h2>All metrics</h2><details><summary>metrics.json</summary>")
    parts.append(f"<pre>{e(json_text)}</pre></details>")
    parts.append("</body></html>\n")
    html_text = "\n".join(parts)

    for path, text in ((json_path, json_text), (html_path, html_text)):
        tmp = path.with_name(path.name + ".part")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return html_path


def write_results(out_dir: PathLike, results, force: bool = False) -> Path:
    """``out_dir/metrics.json``: ``{"schema", "runs": [EvalResult.to_dict(), ...]}``."""
    from .record import METRICS_NAME, SCHEMA_VERSION

    from ..fileio import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"schema": SCHEMA_VERSION, "runs": [r.to_dict() for r in results]}
    return atomic_write_text(out_dir / METRICS_NAME, json.dumps(data, indent=2, allow_nan=False) + "\n", force=force)
