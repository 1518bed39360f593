"""Evaluation results as small plain-text tables, for the terminal (``psic eval``, ``psic demo``).

Every rate is printed with its count and its Wilson 95 % interval (:func:`rate`): the evaluations
here are small, and a percentage without its count hides that one image moves it by tens of points.
The same words serve the HTML report and the model card.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

from .metrics import count_of_rate, wilson_interval
from .record import EvalResult, ScaleResult

#: how an ASR is read against its control, said wherever a verdict is printed
RULE = ("an ASR counts as the adapter's doing only where its Wilson 95 % interval lies wholly above the "
        "control's (noise of the same energy on the same images); where the two overlap it is not "
        "distinguishable from noise")
ABOVE, NOISE, BELOW = "above noise", "not distinguishable from noise", "below noise"


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def number(v: Optional[float], digits: int = 2) -> str:
    """``v`` with ``digits`` decimals, or ``n/a`` where it is undefined (None, NaN): the one rule for the terminal,
    the report and the model card."""
    return "n/a" if _nan(v) else f"{v:.{digits}f}"


def percent(v: float) -> str:
    """``78.0 %``, or ``n/a`` for an undefined rate (nothing to count)."""
    return "n/a" if _nan(v) else f"{number(100 * v, 1)} %"


def db(v: float) -> str:
    return number(v, 2)


def interval(v: float, n: int) -> str:
    """The Wilson 95 % interval of the rate ``v`` of ``n`` in percent: ``4.6-69.9``."""
    if _nan(v) or n <= 0:
        return "n/a"
    lo, hi = wilson_interval(count_of_rate(v, n), n)
    return f"{100 * lo:.1f}-{100 * hi:.1f}"


def rate(v: float, n: int, ci: bool = True, label: bool = False) -> str:
    """A rate of ``n`` with its count and (``ci``) its Wilson 95 % interval: ``25.0 % (1/4) [4.6-69.9]``;
    ``label`` writes ``[95% CI 4.6-69.9]``. ``n/a (0 to count)`` where nothing was counted."""
    if _nan(v) or n <= 0:
        return "n/a (0 to count)"
    text = f"{percent(v)} ({count_of_rate(v, n)}/{n})"
    return f"{text} [{'95% CI ' if label else ''}{interval(v, n)}]" if ci else text


def verdict(asr: float, control: float, n: int, n_control: Optional[int] = None) -> str:
    """The ASR against its control by :data:`RULE`: ``above noise``, ``not distinguishable from noise``,
    ``below noise`` (the noise changed more answers), or ``n/a``."""
    m = n if n_control is None else n_control
    if _nan(asr) or _nan(control) or n <= 0 or m <= 0:
        return "n/a"
    lo, hi = wilson_interval(count_of_rate(asr, n), n)
    c_lo, c_hi = wilson_interval(count_of_rate(control, m), m)
    return ABOVE if lo > c_hi else BELOW if hi < c_lo else NOISE


def overlap(a: float, n_a: int, b: float, n_b: int) -> bool:
    """Whether the Wilson 95 % intervals of two rates overlap (True where either is undefined)."""
    if _nan(a) or _nan(b) or n_a <= 0 or n_b <= 0:
        return True
    lo_a, hi_a = wilson_interval(count_of_rate(a, n_a), n_a)
    lo_b, hi_b = wilson_interval(count_of_rate(b, n_b), n_b)
    return not (lo_a > hi_b or lo_b > hi_a)


def share(v: float, n: int) -> str:
    """A share of ``n`` images with its count, no interval: ``100.0 % (9/9)``."""
    return rate(v, n, ci=False)


def images(s: ScaleResult) -> str:
    """``20`` or ``64 (of 20 photos)``: the images of a scale and, for crops, the photos they come from."""
    return f"{s.n_images} (of {s.photos} photo{'s' if s.photos != 1 else ''})" if s.crops else str(s.n_images)


def render(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the first left-aligned, the rest right-aligned."""
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


ASR_HEADER = ["ASR (k/n) [95% CI]", "control [95% CI]", "vs noise"]


def asr_cells(asr: float, control: float, n: int) -> List[str]:
    """The ASR, its control and the verdict, as table cells (:data:`ASR_HEADER`)."""
    return [rate(asr, n), rate(control, n), verdict(asr, control, n)]


def quality_table(result: EvalResult) -> str:
    """One row per evaluation scale: images, downsampling, bpp, PSNR per version, full = base."""
    rows: List[List[str]] = []
    for key, s in result.scales.items():
        rows.append([
            key, images(s), f"{s.downsampling.mean:.2f}x" if s.downsampling.n else "n/a",
            f"{s.bpp['encrypted'].mean:.4f}" if "encrypted" in s.bpp else "n/a",
            db(s.psnr("base")), db(s.psnr("full")), db(s.psnr("encrypted")),
            share(s.classification.agreement_with_base.get("full", float("nan")), s.n_images),
        ])
    return render(["scale", "images", "target /", "bpp", "PSNR base", "full", "encrypted", "full = base"], rows)


def scales_table(result: EvalResult) -> str:
    """One row per evaluation scale: images, the base's right answers, ASR and control with intervals, verdict."""
    rows = [[key, images(s), str(s.classification.n_base_right),
             *asr_cells(s.classification.asr, s.classification.control_asr, s.classification.n_base_right)]
            for key, s in result.scales.items()]
    return render(["scale", "images", "base right", *ASR_HEADER], rows)


def runs_table(results: Sequence[EvalResult], names: Sequence[str]) -> str:
    """Several runs side by side, a row per run and scale: images, ASR and control with intervals, the
    verdict, PSNR of the base and the encrypted version."""
    if len(names) != len(results):
        raise ValueError(f"{len(names)} names for {len(results)} results")
    rows: List[List[str]] = []
    for name, result in zip(names, results):
        for key, s in result.scales.items():
            c = s.classification
            rows.append([name, key, images(s), *asr_cells(c.asr, c.control_asr, c.n_base_right),
                         db(s.psnr("base")), db(s.psnr("encrypted"))])
    return render(["run", "scale", "images", *ASR_HEADER, "PSNR base", "encrypted"], rows)


def counts_on(result: EvalResult, scale: str, names) -> Tuple[int, int, int]:
    """(flipped, flipped by the control, right on the base) over the images ``names`` of a scale, counted from the
    per-image rows."""
    rows = [r for r in result.per_image if r.get("scale") == scale and r.get("name") in names]
    right = [r for r in rows if r.get("base_right")]
    return (sum(not r.get("encrypted_right", True) for r in right), sum(not r.get("control_right", True) for r in right),
            len(right))


def _names(result: EvalResult, scale: str, counted: bool = False) -> set:
    """The names of a scale's images (``counted``: only those whose per-image rows can be counted again)."""
    return {r.get("name") for r in result.per_image
            if r.get("scale") == scale and (not counted or "encrypted_right" in r)}


def _photos(result: EvalResult, scale: str) -> int:
    return result.scales[scale].photos


def compare_runs(results: Sequence[EvalResult], names: Sequence[str]) -> List[str]:
    """Per scale two runs share, on the images both were measured on: each ASR with its count, and whether the
    two can be told apart (whether their Wilson 95 % intervals overlap)."""
    out = []
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            for key in results[i].scales:
                if key not in results[j].scales:
                    continue
                every_a, every_b = _names(results[i], key), _names(results[j], key)
                crops = results[i].scales[key].crops or results[j].scales[key].crops
                if every_a and every_a == every_b and not (crops and _photos(results[i], key) != _photos(
                        results[j], key)):  # the same images: the scale's own numbers
                    ca, cb = results[i].scales[key].classification, results[j].scales[key].classification
                    (a, na), (b, nb), count = (ca.asr, ca.n_base_right), (cb.asr, cb.n_base_right), len(every_a)
                else:
                    # crops of other photo lists are other crops, whatever their names: never matched
                    shared = set() if crops else _names(results[i], key, True) & _names(results[j], key, True)
                    if not shared:
                        out.append(f"{key}: {names[i]} and {names[j]} were measured on other images here: "
                                   "not compared")
                        continue
                    (ka, _, na), (kb, _, nb) = counts_on(results[i], key, shared), counts_on(results[j], key, shared)
                    a, b, count = ka / max(na, 1), kb / max(nb, 1), len(shared)
                if not na or not nb or _nan(a) or _nan(b):
                    continue
                same = overlap(a, na, b, nb)
                out.append(f"{key}, on the {count} images both were measured on: {names[i]} {rate(a, na)}, "
                           f"{names[j]} {rate(b, nb)}: "
                           + ("the intervals overlap: the two are not distinguishable" if same
                              else "the intervals do not overlap"))
    return out


def robustness_table(result: EvalResult) -> str:
    """ASR and control after each perturbation, with counts and the verdict, a row per scale and perturbation."""
    rows = []
    for key, s in result.scales.items():
        for p, r in s.robustness.items():
            rows.append([p, key, *asr_cells(r.asr, r.control_asr, r.n_base_right)])
    if not rows:
        return ""
    return render(["after", "scale", *ASR_HEADER], rows)


def wrong_keys_line(result: EvalResult) -> str:
    """The wrong keys' ASR (mean over keys, lowest) with the images each is counted on."""
    w = result.wrong_keys
    if w is None:
        return ""
    n = result.main.classification.n_base_right
    return (f"{w.n_keys} wrong key{'s' if w.n_keys != 1 else ''} (fed to the network directly), each counted on the {n} image{'s' if n != 1 else ''} the base "
            f"gets right at {result.main.scale}: ASR mean {percent(w.asr.mean)}, lowest {rate(w.asr_min, n, ci=False)}; "
            f"PSNR {db(w.psnr.mean)} dB")


def whitebox_line(result: EvalResult) -> str:
    b = result.whitebox
    if b is None:
        return ""
    n = result.main.classification.n_base_right
    return (f"white-box attacker ({b.steps} steps on {b.images_optimised_on} images): ASR {rate(b.asr, n)}, "
            f"agreement with base {share(b.agreement_with_base, result.main.n_images)}")


def summary(result: EvalResult, name: str = "") -> str:
    """The tables a person reads after ``psic eval``."""
    parts = [f"{name}: {result.method} against {result.target}" if name else f"{result.method} against {result.target}",
             quality_table(result), scales_table(result)]
    rob = robustness_table(result)
    if rob:
        parts.append(rob)
    for line in (wrong_keys_line(result), whitebox_line(result)):
        if line:
            parts.append(line)
    task = result.main.task
    if result.task == "caption" and "scores" in task:
        parts.append("captions: " + "; ".join(
            f"{v} BLEU-4 {db(s.get('bleu4'))} CIDEr {db(s.get('cider'))}" for v, s in task["scores"].items()))
        e = task.get("encrypted_vs_base", {})
        parts.append(f"encrypted captions against the base captions: BLEU-4 {db(e.get('bleu4'))}, "
                     f"identical {share(e.get('identical', float('nan')), result.main.n_images)}")
    parts.append(f"(k/n: flipped / right on the base decode; {RULE})")
    return "\n".join(parts)
