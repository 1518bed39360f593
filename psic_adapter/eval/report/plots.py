"""The report's plots, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Every function returns a :class:`Plot`: the PNG bytes and the numbers it drew
(``data``), so that the page can show them under the plot and tests can check
that a plot shows what it claims.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..record import EvalResult

#: one colour per version, the same on every plot
COLORS = {"base": "#4C72B0", "full": "#55A868", "encrypted": "#C44E52", "control": "#8C8C8C"}


@dataclass
class Plot:
    name: str
    title: str
    png: bytes
    data: Dict[str, Any] = field(default_factory=dict)


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _png(fig, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _pct(v: float) -> float:
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else 100.0 * v


def _interval(v: float, n: int) -> List[float]:
    """The Wilson 95 % interval of the rate ``v`` of ``n``, in percent (NaN where undefined)."""
    from ..metrics import count_of_rate, wilson_interval

    if v is None or (isinstance(v, float) and math.isnan(v)) or n <= 0:
        return [float("nan"), float("nan")]
    lo, hi = wilson_interval(count_of_rate(v, n), n)
    return [100.0 * lo, 100.0 * hi]


def _bars(ax, labels: Sequence[str], series: Dict[str, List[float]], ylabel: str,
          intervals: Optional[Dict[str, List[List[float]]]] = None,
          counts: Optional[Dict[str, List[str]]] = None) -> None:
    """Grouped bars; ``intervals`` (per series, ``[low, high]`` per bar) drawn as error bars, ``counts`` (``k/n``)
    written on the bars."""
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        vals = [0.0 if math.isnan(v) else v for v in values]
        xs = x + (k - (len(series) - 1) / 2) * width
        bars = ax.bar(xs, vals, width, label=name, color=COLORS.get(name.split()[0], None))
        tops = list(vals)
        if intervals and name in intervals:
            ci = intervals[name]
            lo = [0.0 if math.isnan(c[0]) else v - c[0] for v, c in zip(vals, ci)]
            hi = [0.0 if math.isnan(c[1]) else c[1] - v for v, c in zip(vals, ci)]
            ax.errorbar(xs, vals, yerr=[lo, hi], fmt="none", ecolor="#333", elinewidth=0.8, capsize=2)
            tops = [max(v, c[1]) if not math.isnan(c[1]) else v for v, c in zip(vals, ci)]
        for j, (b, v) in enumerate(zip(bars, values)):
            text = "n/a" if math.isnan(v) else f"{v:.0f}"
            if counts and name in counts and not math.isnan(v):
                text += f"\n{counts[name][j]}"
            ax.text(b.get_x() + b.get_width() / 2, tops[j] + 1, text, ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 118)
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.grid(axis="y", alpha=0.3)


def _asr_series(pairs) -> Dict[str, Any]:
    """The encrypted and control series of (asr, control, n) triples: values, intervals and counts."""
    from ..metrics import count_of_rate

    enc = [_pct(a) for a, _, _ in pairs]
    ctl = [_pct(c) for _, c, _ in pairs]
    return {
        "asr": enc, "control": ctl, "n": [n for _, _, n in pairs],
        "asr_ci": [_interval(a, n) for a, _, n in pairs], "control_ci": [_interval(c, n) for _, c, n in pairs],
        "asr_counts": [f"{count_of_rate(a, n)}/{n}" for a, _, n in pairs],
        "control_counts": [f"{count_of_rate(c, n)}/{n}" for _, c, n in pairs],
    }


def _asr_plot(ax, labels, d) -> None:
    enc_name, ctl_name = "encrypted", "control (same-energy noise)"
    _bars(ax, labels, {enc_name: d["asr"], ctl_name: d["control"]}, "ASR (%), Wilson 95 % interval",
          intervals={enc_name: d["asr_ci"], ctl_name: d["control_ci"]},
          counts={enc_name: d["asr_counts"], ctl_name: d["control_counts"]})


def asr_by_scale(result: EvalResult) -> Plot:
    """ASR of the encrypted version and of the control at each evaluation scale, with counts and intervals."""
    labels, pairs = [], []
    for key, s in result.scales.items():
        down = f" ({s.downsampling.mean:.1f}x)" if s.downsampling.n else ""
        labels.append(f"{key}{down}\n{s.images_text}".replace(" of ", "\nof "))
        c = s.classification
        pairs.append((c.asr, c.control_asr, c.n_base_right))
    d = _asr_series(pairs)
    fig = _figure(5.2, 3.2)
    ax = fig.add_subplot(111)
    _asr_plot(ax, labels, d)
    ax.set_title("ASR per scale (k/n: flipped / right on the base decode)", fontsize=9)
    return Plot("asr_by_scale", "ASR per evaluation scale, with the control, counts and Wilson 95 % intervals",
                _png(fig), {"scales": list(result.scales), **d})


def asr_by_perturbation(result: EvalResult) -> Optional[Plot]:
    """ASR and control after each perturbation, at the primary scale (clean first), with counts and intervals."""
    m = result.main
    if not m.robustness:
        return None
    labels = ["clean"] + list(m.robustness)
    c = m.classification
    pairs = [(c.asr, c.control_asr, c.n_base_right)] + [(r.asr, r.control_asr, r.n_base_right)
                                                         for r in m.robustness.values()]
    d = _asr_series(pairs)
    fig = _figure(5.2, 3.2)
    ax = fig.add_subplot(111)
    _asr_plot(ax, labels, d)
    ax.set_title(f"ASR after processing ({m.scale}, {m.images_text})", fontsize=9)
    return Plot("asr_by_perturbation", f"ASR after processing of the served image, at {m.scale}, with counts and "
                "Wilson 95 % intervals", _png(fig), {"scale": m.scale, "perturbations": labels, **d})


def psnr_per_image(result: EvalResult) -> Plot:
    """PSNR of base / full / encrypted for each image of the primary scale."""
    rows = [r for r in result.per_image if r.get("scale") == result.main.scale]
    versions = [v for v in ("base", "full", "encrypted") if rows and f"psnr_{v}" in rows[0]]
    data = {v: [float(r[f"psnr_{v}"]) for r in rows] for v in versions}
    fig = _figure(5.2, 3.0)
    ax = fig.add_subplot(111)
    order = sorted(range(len(rows)), key=lambda i: data["base"][i]) if rows else []
    for k, v in enumerate(versions):
        ys = [data[v][i] for i in order]
        ax.plot(range(len(ys)), ys, marker="os^"[k % 3], ms=3.5, lw=0.8, label=v, color=COLORS[v],
                alpha=0.55 if v == "full" else 0.9)
    ax.set_xlabel(f"image ({result.main.scale}), sorted by the base's PSNR")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("PSNR per image", fontsize=9)
    return Plot("psnr_per_image", f"PSNR of each version per image, at {result.main.scale}", _png(fig),
                {"names": [rows[i]["name"] for i in order], **{v: [data[v][i] for i in order] for v in versions}})


def read_log(path) -> List[Dict[str, Any]]:
    """The records of a run's ``log.jsonl`` (unreadable lines skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            out.append(rec)
    return out


def running_mean(values: Sequence[float], window: int) -> List[float]:
    """The mean of the finite values among each value and the ``window - 1`` before it (NaN where none is
    finite): one diverged step leaves a gap, not a curve that stops."""
    if window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    out = []
    for i in range(len(values)):
        finite = [v for v in values[max(0, i - window + 1): i + 1] if math.isfinite(v)]
        out.append(sum(finite) / len(finite) if finite else float("nan"))
    return out


def training_curves(records: Sequence[Dict[str, Any]]) -> Optional[Plot]:
    """The encryption objective and the PSNRs over training steps, from ``log.jsonl``."""
    if not records:
        return None
    series = {}
    for key in ("encryption", "psnr_encrypted", "psnr_base", "psnr_full", "budget_excess"):
        pts = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
        if pts:
            series[key] = pts
    if not series:
        return None
    fig = _figure(5.2, 3.0)
    ax = fig.add_subplot(111)
    ax2 = ax.twinx()
    for key, pts in series.items():
        xs, ys = zip(*pts)
        target_ax = ax if key in ("encryption", "budget_excess") else ax2
        color = {"encryption": "#C44E52", "budget_excess": "#DD8452", "psnr_encrypted": "#8172B3",
                 "psnr_base": COLORS["base"], "psnr_full": COLORS["full"]}[key]
        if len(ys) >= 20:  # per-step values are noisy: draw them faintly, with their running mean over it
            target_ax.plot(xs, ys, lw=0.6, color=color, alpha=0.25)
            target_ax.plot(xs, running_mean(ys, max(5, len(ys) // 15)), lw=1.4, label=f"{key} (running mean)",
                           color=color)
        else:
            target_ax.plot(xs, ys, lw=1, label=key, color=color)
    ax.set_xlabel("step")
    ax.set_ylabel("loss terms")
    ax2.set_ylabel("PSNR of the training views (dB)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, frameon=False, loc="upper right")
    ax.grid(alpha=0.3)
    ax.set_title("training (log.jsonl)", fontsize=9)
    return Plot("training_curves", "Training curves from the run's log.jsonl", _png(fig),
                {k: [list(p) for p in v] for k, v in series.items()})


def validation_curve(records: Sequence[Dict[str, Any]]) -> Optional[Plot]:
    """The in-training validation ASR (``--val-every``) over steps with its Wilson 95 % interval, and the
    mean PSNR drop it was read at, from ``log.jsonl``: whether a run was still improving when it stopped.
    None without validation records."""
    from ..metrics import wilson_interval

    pts = []
    for r in records:
        if not r.get("validation"):
            continue
        k, n, drop = r.get("val_flipped"), r.get("val_right"), r.get("val_drop_db")
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k <= n):
            continue
        ka, at = r.get("val_flipped_at_db"), r.get("val_at_db")
        at_pt = (ka, float(at)) if isinstance(ka, int) and 0 <= ka <= n and isinstance(at, (int, float)) else None
        pts.append((r["step"], k, n, float(drop) if isinstance(drop, (int, float)) else float("nan"),
                    r.get("val_images"), at_pt))
    if not pts:
        return None
    steps = [p[0] for p in pts]
    asr = [100.0 * p[1] / p[2] if p[2] else float("nan") for p in pts]
    ci = [[100.0 * v for v in wilson_interval(p[1], p[2])] for p in pts]
    drops = [p[3] for p in pts]
    fig = _figure(5.2, 3.0)
    ax = fig.add_subplot(111)
    lo = [0.0 if math.isnan(a) else a - c[0] for a, c in zip(asr, ci)]
    hi = [0.0 if math.isnan(a) else c[1] - a for a, c in zip(asr, ci)]
    ax.errorbar(steps, asr, yerr=[lo, hi], fmt="o-", color=COLORS["encrypted"], ecolor="#333", elinewidth=0.8,
                capsize=2, lw=1.2, ms=3, label="validation ASR (95 % interval)")
    at_pts = [(s, p[5][0], p[2], p[5][1]) for s, p in zip(steps, pts) if p[5] is not None and p[2]]
    at_asr = {a[0]: 100.0 * a[1] / a[2] for a in at_pts}
    for x, y, p in zip(steps, asr, pts):  # each k/n on the side away from the other read at that step
        if not math.isnan(y):
            up = at_asr.get(x, -1.0) <= y
            ax.annotate(f"{p[1]}/{p[2]}", (x, y), textcoords="offset points", xytext=(0, 5 if up else -10),
                        ha="center", fontsize=6)
    at_dbs = sorted({a[3] for a in at_pts})
    if at_pts:  # the same photos with each change rescaled to one drop: reads at equal cost
        ax.plot([a[0] for a in at_pts], [100.0 * a[1] / a[2] for a in at_pts], "^:", color=COLORS["full"], lw=1.2,
                ms=4, label="ASR at " + "/".join(f"{d:g}" for d in at_dbs) + " dB (each change rescaled)")
        decoded = dict(zip(steps, asr))
        for s, k, n, _ in at_pts:
            up = 100.0 * k / n > decoded.get(s, float("inf")) or math.isnan(decoded.get(s, 0.0))
            ax.annotate(f"{k}/{n}", (s, 100.0 * k / n), textcoords="offset points", xytext=(0, 5 if up else -10),
                        ha="center", fontsize=6, color=COLORS["full"])
    ax.set_ylim(0, 100)
    ax.set_xlabel("step")
    ax.set_ylabel("ASR (%)")
    ax2 = ax.twinx()
    ax2.plot(steps, drops, "s--", color="#8172B3", lw=0.9, ms=3, label="dB under base (mean)")
    ax2.set_ylabel("dB under base")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.grid(alpha=0.3)
    images = sorted({p[4] for p in pts if isinstance(p[4], int)})
    on = f" on {images[0]} photos" if len(images) == 1 else ""
    ax.set_title(f"validation during training{on} (log.jsonl)", fontsize=9)
    return Plot("validation_curve", f"Validation ASR during training{on}, with the right photos it counts (k/n)",
                _png(fig), {"step": steps, "flipped": [p[1] for p in pts], "right": [p[2] for p in pts],
                            "asr": asr, "interval": ci, "drop_db": drops,
                            "at_db": {"step": [a[0] for a in at_pts], "flipped": [a[1] for a in at_pts],
                                      "right": [a[2] for a in at_pts], "db": [a[3] for a in at_pts]}})


def rate_distortion(points: Dict[str, Dict[str, List[Dict[str, float]]]]) -> Optional[Plot]:
    """PSNR and MS-SSIM against bpp: one curve per image set and version, each point labelled with its run.

    ``points``: image set -> version -> ``[{"bpp", "psnr", "ms_ssim", "label"}]`` sorted by bpp
    (:func:`~psic_adapter.eval.report.rd.rd_points`). Points of different image sets are never joined.
    None with fewer than two points in all.
    """
    runs = sum(max((len(pts) for pts in curves.values()), default=0) for curves in points.values())
    if runs < 2:
        return None
    markers, styles = "osD^v<>", ["-", "--", ":", "-."]
    fig = _figure(7.6, 3.6)
    for k, metric in enumerate(("psnr", "ms_ssim")):
        ax = fig.add_subplot(1, 2, k + 1)
        for j, (set_label, curves) in enumerate(points.items()):
            for v, pts in curves.items():
                xs, ys = [p["bpp"] for p in pts], [p[metric] for p in pts]
                ax.plot(xs, ys, marker=markers[j % len(markers)], ms=5, lw=1, ls=styles[j % len(styles)],
                        color=COLORS.get(v), label=f"{v}: {set_label}")
                if v == "encrypted" or len(curves) == 1:  # each run's name once, at its encrypted point
                    for p, x, y in zip(pts, xs, ys):
                        ax.annotate(p.get("label", ""), (x, y), textcoords="offset points", xytext=(0, -11),
                                    ha="center", fontsize=7, color="#333")
        ax.margins(x=0.25, y=0.2)
        ax.set_xlabel("bpp (real bytes)", fontsize=8)
        ax.set_ylabel({"psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM"}[metric], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, frameon=False, loc="upper center", ncol=1,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("rate-distortion, one curve per image set (points: the runs)", fontsize=9)
    return Plot("rate_distortion", "Rate-distortion of each version, one curve per image set", _png(fig),
                {s: {v: [dict(p) for p in pts] for v, pts in curves.items()} for s, curves in points.items()})
