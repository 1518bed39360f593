"""psic_adapter.eval.report: each plot drawn from the numbers it claims, Bjontegaard deltas on curves with a
known answer, and a self-contained report.html beside a metrics.json that reads back the same numbers.

Everything is built by hand (no codec, no target): an :class:`EvalResult` with three scales whose ASR,
control, PSNR and downsampling are known, a robustness dict, per-image rows, and :class:`GalleryRow` objects
with small smooth random images.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from psic_adapter.errors import OverwriteError
from psic_adapter.eval.record import (SCHEMA_VERSION, Classification, EvalResult, Robustness, ScaleResult, Stat,
                                      WrongKeys, load_results)
from psic_adapter.eval.report import gallery as G
from psic_adapter.eval.report import plots as P
from psic_adapter.eval.report import rd
from psic_adapter.eval.report.html import REPORT_NAME, ReportRun, headline_sentences, write_report
from psic_adapter.eval.runner import GalleryRow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# scale -> (ASR, control ASR, images the base gets right, target's downsampling, PSNR base/full/encrypted, bpp)
SCALES = {
    "whole": (0.875, 0.125, 8, 2.5, 30.25, 30.25, 27.5, 0.3125),
    "512px": (0.6, 0.2, 5, 2.0, 31.0, 31.0, 28.75, 0.3125),
    "224px": (0.25, 0.0, 4, 1.0, 32.5, 32.5, 30.0, 0.3125),
}
ROBUSTNESS = {"jpeg75": (0.5, 0.125), "resize0.5": (0.25, 0.0)}
# per-image PSNR (base, full, encrypted) of the primary scale, deliberately not sorted by the base's PSNR
PRIMARY_ROWS = {"c.png": (31.5, 31.5, 28.0), "a.png": (29.0, 29.0, 26.5), "d.png": (30.0, 30.0, 27.25),
                "b.png": (30.5, 30.5, 28.25)}


def stat(mean: float, n: int = 8) -> Stat:
    return Stat(mean=mean, std=0.0, n=n, min=mean, max=mean)


def scale_result(key, asr, control, right, down, psnr_b, psnr_f, psnr_e, bpp, robustness=None) -> ScaleResult:
    versions = {"base": psnr_b, "full": psnr_f, "encrypted": psnr_e}
    return ScaleResult(
        scale=key, description=f"{key} photos", n_images=8,
        bpp={v: stat(bpp) for v in versions},
        quality={v: {"psnr": stat(p), "ms_ssim": stat(0.9 + p / 1000)} for v, p in versions.items()},
        downsampling=stat(down),
        classification=Classification(label_source="labels", n_base_right=right, asr=asr, control_asr=control,
                                      full_asr=0.0, accuracy={"base": right / 8, "encrypted": 0.125},
                                      agreement_with_base={"full": 1.0, "encrypted": 0.25, "control": 0.875}),
        robustness={p: Robustness(a, c, right) for p, (a, c) in (robustness or {}).items()},
    )


def make_result(**meta) -> EvalResult:
    scales = {key: scale_result(key, *vals, robustness=ROBUSTNESS if key == "whole" else None)
              for key, vals in SCALES.items()}
    per_image = [{"scale": "whole", "name": n, "psnr_base": b, "psnr_full": f, "psnr_encrypted": e}
                 for n, (b, f, e) in PRIMARY_ROWS.items()]
    # rows of another scale: they must not reach the primary scale's plot
    per_image += [{"scale": "512px", "name": f"other{k}.png", "psnr_base": 40.0 + k, "psnr_full": 40.0 + k,
                   "psnr_encrypted": 35.0} for k in range(3)]
    return EvalResult(
        method="PSIC", target="efficientnet-lite0",
        versions={"base": "the base codec's decode", "full": "the owner's key", "encrypted": "no key"},
        scales=scales, primary="whole",
        wrong_keys=WrongKeys(n_keys=4, asr=stat(0.8125, 4), asr_min=0.75, psnr=stat(27.0, 4),
                             max_abs_diff_to_encrypted=0.5),
        task="classify", per_image=per_image, meta={"name": "q3", "data": "samples", "key_given": True, **meta},
    )


def smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(2, h // 16), max(2, w // 16), generator=g)
    return F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def gallery_rows(n: int = 3, h: int = 192, w: int = 256):
    rows = []
    for k in range(n):
        original = smooth_image(h, w, seed=k)
        base = (original + 0.01).clamp(0, 1)
        encrypted = (base + 0.05 * smooth_image(h, w, seed=100 + k) - 0.025).clamp(0, 1)
        rows.append(GalleryRow(
            name=f"photo{k}.png", images={"original": original, "base": base, "full": base, "encrypted": encrypted},
            answers={"original": "tabby", "base": "tabby", "full": "tabby", "encrypted": "toaster"},
            psnr={"base": 30.25, "full": 30.25, "encrypted": 27.5}))
    return rows


def open_png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_MAGIC)
    im = Image.open(io.BytesIO(data))
    im.verify()  # a complete, uncorrupted PNG
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG" and im.width > 100 and im.height > 100
    return im


def write_log(path, records):
    lines = [json.dumps(r) for r in records]
    lines.insert(1, "{not json")  # a torn line: skipped
    lines.append(json.dumps({"note": "no step"}))  # not a step record: skipped
    path.write_text("\n".join(lines) + "\n")
    return path


LOG = [
    {"step": 0, "encryption": 1.5, "psnr_encrypted": 24.0, "psnr_base": 28.0, "psnr_full": 27.0},
    {"step": 10, "encryption": 0.75, "psnr_encrypted": 26.0, "psnr_base": 28.5, "budget_excess": 0.25},
    {"step": 20, "encryption": 0.5, "psnr_encrypted": 26.5, "psnr_base": 29.0, "psnr_full": 28.5, "lr": 1e-4},
    # the in-training validation reads (--val-every): counts, not only the rate
    {"step": 10, "validation": True, "val_asr": 0.25, "val_flipped": 1, "val_right": 4, "val_images": 8,
     "val_drop_db": 0.5},
    {"step": 20, "validation": True, "val_asr": 0.75, "val_flipped": 3, "val_right": 4, "val_images": 8,
     "val_drop_db": 0.75, "val_at_db": 0.8, "val_flipped_at_db": 2, "val_asr_at_db": 0.5, "val_drop_at_db": 0.79},
    {"step": 30, "validation": True, "val_flipped": 5, "val_right": 4, "val_images": 8},  # impossible counts: skipped
]


# ------------------------------------------------------------------ plots: made from the numbers they claim
def test_asr_by_scale_draws_each_scales_asr_and_control():
    result = make_result()
    plot = P.asr_by_scale(result)
    assert plot.name == "asr_by_scale"
    assert plot.data["scales"] == list(SCALES)
    assert plot.data["asr"] == pytest.approx([100 * v[0] for v in SCALES.values()])
    assert plot.data["control"] == pytest.approx([100 * v[1] for v in SCALES.values()])
    open_png(plot.png)


def test_asr_by_scale_keeps_an_undefined_asr_undefined():
    result = make_result()
    result.scales["224px"].classification.asr = float("nan")
    data = P.asr_by_scale(result).data
    assert math.isnan(data["asr"][2]) and data["asr"][:2] == pytest.approx([87.5, 60.0])


def test_asr_by_perturbation_starts_clean_then_each_perturbation():
    result = make_result()
    plot = P.asr_by_perturbation(result)
    assert plot.data["scale"] == "whole"
    assert plot.data["perturbations"] == ["clean", "jpeg75", "resize0.5"]
    assert plot.data["asr"] == pytest.approx([87.5, 50.0, 25.0])
    assert plot.data["control"] == pytest.approx([12.5, 12.5, 0.0])
    open_png(plot.png)
    result.scales["whole"].robustness = {}
    assert P.asr_by_perturbation(result) is None


def test_psnr_per_image_draws_the_primary_scales_rows():
    plot = P.psnr_per_image(make_result())
    names = plot.data["names"]
    assert sorted(names) == sorted(PRIMARY_ROWS)  # the other scale's rows are not drawn
    for k, version in enumerate(("base", "full", "encrypted")):
        assert dict(zip(names, plot.data[version])) == {n: v[k] for n, v in PRIMARY_ROWS.items()}
    assert plot.data["base"] == sorted(plot.data["base"])  # drawn in the order of the base's PSNR
    open_png(plot.png)


def test_training_curves_from_a_log(tmp_path):
    records = P.read_log(write_log(tmp_path / "log.jsonl", LOG))
    assert [r["step"] for r in records] == [0, 10, 20, 10, 20, 30]
    plot = P.training_curves(records)
    assert plot.data == {
        "encryption": [[0, 1.5], [10, 0.75], [20, 0.5]],
        "psnr_encrypted": [[0, 24.0], [10, 26.0], [20, 26.5]],
        "psnr_base": [[0, 28.0], [10, 28.5], [20, 29.0]],
        "psnr_full": [[0, 27.0], [20, 28.5]],  # logged at two steps only
        "budget_excess": [[10, 0.25]],
    }
    open_png(plot.png)
    assert P.training_curves([]) is None
    assert P.training_curves([{"step": 1, "lr": 0.1}]) is None


def test_validation_curve_from_a_log(tmp_path):
    plot = P.validation_curve(P.read_log(write_log(tmp_path / "log.jsonl", LOG)))
    assert plot.data["step"] == [10, 20]  # the record with more flips than right photos is not drawn
    assert (plot.data["flipped"], plot.data["right"]) == ([1, 3], [4, 4])
    assert plot.data["asr"] == [25.0, 75.0] and plot.data["drop_db"] == [0.5, 0.75]
    for (lo, hi), asr in zip(plot.data["interval"], plot.data["asr"]):
        assert 0.0 < lo < asr < hi < 100.0  # a Wilson interval around each read, 4 photos wide
    assert "on 8 photos" in plot.title
    # the read at equal cost (--val-at-db) where the record has one
    assert plot.data["at_db"] == {"step": [20], "flipped": [2], "right": [4], "db": [0.8]}
    open_png(plot.png)
    assert P.validation_curve(LOG[:3]) is None  # a run without --val-every: no plot


# ------------------------------------------------------------------ rate-distortion and Bjontegaard deltas
ANCHOR = [{"bpp": b, "psnr": p, "ms_ssim": m}
          for b, p, m in [(0.1, 28.0, 0.90), (0.2, 30.0, 0.93), (0.4, 32.5, 0.96), (0.8, 35.0, 0.98)]]


def test_bd_rate_of_the_same_quality_at_nine_tenths_of_the_rate_is_minus_ten_percent():
    test = [dict(p, bpp=0.9 * p["bpp"]) for p in ANCHOR]
    assert rd.bd_deltas(ANCHOR, test)["bd_rate"] == pytest.approx(-10.0, abs=1e-6)
    assert rd.bd_deltas(ANCHOR, test, "ms_ssim")["bd_rate"] == pytest.approx(-10.0, abs=1e-6)
    assert rd.bd_deltas(ANCHOR, ANCHOR)["bd_rate"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:Insufficient curve overlap")
def test_bd_psnr_of_half_a_db_more_at_the_same_rates_is_half_a_db():
    test = [dict(p, psnr=p["psnr"] + 0.5) for p in ANCHOR]
    assert rd.bd_deltas(ANCHOR, test)["bd_psnr"] == pytest.approx(0.5, abs=1e-6)
    worse = [dict(p, psnr=p["psnr"] - 2.0) for p in ANCHOR]
    assert rd.bd_deltas(ANCHOR, worse)["bd_psnr"] == pytest.approx(-2.0, abs=1e-6)


def test_bd_deltas_need_four_points_and_finite_overlapping_curves():
    test = [dict(p, psnr=p["psnr"] + 0.5) for p in ANCHOR]
    for anchor, other in [(ANCHOR[:3], test[:3]), (ANCHOR[:3], test), (ANCHOR, test[:3]), ([], [])]:
        d = rd.bd_deltas(anchor, other)
        assert set(d) == {"bd_rate", "bd_psnr"} and math.isnan(d["bd_rate"]) and math.isnan(d["bd_psnr"])
    with_nan = [dict(p) for p in test]
    with_nan[1]["psnr"] = float("nan")
    assert all(math.isnan(v) for v in rd.bd_deltas(ANCHOR, with_nan).values())
    far = [dict(p, bpp=100 * p["bpp"], psnr=p["psnr"] + 40) for p in ANCHOR]
    with pytest.warns(UserWarning):  # the bjontegaard package's own warning
        assert all(math.isnan(v) for v in rd.bd_deltas(ANCHOR, far).values())


def rd_result(bpp: float, psnr: float, name: str, enc_db: float = 2.0) -> EvalResult:
    r = make_result(name=name)
    for s in r.scales.values():
        for v in s.bpp:
            s.bpp[v] = stat(bpp)
        s.quality = {"base": {"psnr": stat(psnr), "ms_ssim": stat(0.9 + psnr / 1000)},
                     "full": {"psnr": stat(psnr), "ms_ssim": stat(0.9 + psnr / 1000)},
                     "encrypted": {"psnr": stat(psnr - enc_db), "ms_ssim": stat(0.9 + (psnr - enc_db) / 1000)}}
    return r


def test_rd_points_are_sorted_by_rate():
    results = [rd_result(0.5, 33.0, "q5"), rd_result(0.1, 28.0, "q1"), rd_result(0.25, 30.5, "q3")]
    by_set = rd.rd_points(results)
    assert list(by_set) == ["8 images at whole (samples)"]  # one image set: the same images in every result
    (points,) = by_set.values()
    assert set(points) == {"base", "full", "encrypted"}
    assert [p["bpp"] for p in points["base"]] == [0.1, 0.25, 0.5]
    assert [p["label"] for p in points["encrypted"]] == ["q1", "q3", "q5"]
    assert [p["psnr"] for p in points["encrypted"]] == [26.0, 28.5, 31.0]
    assert points["base"][0]["ms_ssim"] == pytest.approx(0.928)
    # another scale than the primary one; a scale a result lacks is skipped
    results[0].scales["512px"].quality["base"]["psnr"] = stat(99.0)
    (other_scale,) = rd.rd_points(results, scale="512px").values()
    assert [p["psnr"] for p in other_scale["base"]] == [28.0, 30.5, 99.0]
    assert rd.rd_points(results, scale="no-such-scale") == {}

    plot = P.rate_distortion(by_set)
    assert plot.data == by_set  # the curves drawn are the points given
    open_png(plot.png)
    assert P.rate_distortion(rd.rd_points(results[:1])) is None  # one point is no curve


def test_results_on_other_images_are_other_curves_never_one_line():
    """Two runs on different photos (the demo's two adapters) are two image sets, each labelled: a line that
    joined them would draw the photos' difference as a rate-distortion curve."""
    a, b = rd_result(0.3, 31.0, "shipped"), rd_result(0.35, 29.0, "yours")
    for row in b.per_image:
        row["name"] = "other-" + row["name"]
    b.scales["whole"].n_images = 14
    by_set = rd.rd_points([a, b])
    assert list(by_set) == ["8 images at whole (samples)", "14 images at whole (samples)"]
    assert [[p["label"] for p in c["base"]] for c in by_set.values()] == [["shipped"], ["yours"]]
    assert rd.bd_table(by_set) == {}  # no delta between curves of other images, nor from one point
    plot = P.rate_distortion(by_set)
    assert plot.data == by_set
    same_label = rd_result(0.4, 33.0, "third")
    for row in same_label.per_image:
        row["name"] = "third-" + row["name"]
    assert len(rd.rd_points([a, same_label])) == 2  # images that differ stay two sets, whatever their label


@pytest.mark.filterwarnings("ignore:Insufficient curve overlap")
def test_bd_table_names_full_and_encrypted_against_the_base():
    results = [rd_result(b, p, f"q{k}") for k, (b, p) in enumerate([(0.1, 28.0), (0.2, 30.0), (0.4, 32.5),
                                                                     (0.8, 35.0)])]
    (table,) = rd.bd_table(rd.rd_points(results)).values()
    assert set(table) == {"full", "encrypted"}
    for row in table.values():
        assert set(row) == {"bd_rate", "bd_psnr", "bd_rate_ms_ssim", "bd_ms_ssim"}
    assert table["full"]["bd_psnr"] == pytest.approx(0.0, abs=1e-6)
    assert table["full"]["bd_rate"] == pytest.approx(0.0, abs=1e-6)
    assert table["encrypted"]["bd_psnr"] == pytest.approx(-2.0, abs=1e-6)
    assert table["encrypted"]["bd_rate"] > 0  # more bits for the same PSNR
    assert table["encrypted"]["bd_ms_ssim"] == pytest.approx(-0.002, abs=1e-6)
    assert rd.bd_table(rd.rd_points(results[:3])) == {}  # three points are too few: no row, not a row of n/a


# ------------------------------------------------------------------ gallery pieces
def test_amplified_difference_puts_the_99th_percentile_at_half_from_mid_grey():
    d = torch.linspace(-0.1, 0.1, 20001).reshape(1, 1, 1, -1).repeat(1, 3, 1, 1)
    base = torch.full_like(d, 0.5)
    out, k = G.amplified_difference(base + d, base)
    p99 = float(torch.quantile(d.abs().flatten(), 0.99))
    assert k == pytest.approx(0.5 / p99, rel=1e-4)
    assert float(torch.quantile((out - 0.5).abs().flatten(), 0.99)) == pytest.approx(0.5, abs=1e-3)
    assert torch.allclose(out, (0.5 + k * d).clamp(0, 1), atol=1e-6)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0  # the top 1 % clamped
    assert out[0, :, 0, 10000].tolist() == pytest.approx([0.5] * 3, abs=1e-6)  # no change: mid-grey
    same, k0 = G.amplified_difference(base, base)
    assert k0 == 1.0 and torch.all(same == 0.5)


@pytest.mark.parametrize("top, left", [(64, 128), (37, 150)])
def test_largest_change_patch_finds_a_planted_difference(top, left):
    base = torch.rand(1, 3, 192, 256, generator=torch.Generator().manual_seed(0)) * 0.5
    encrypted = base.clone()
    encrypted[..., top: top + 64, left: left + 64] += 0.3
    encrypted[..., 0:4, 0:4] += 0.3  # a small change elsewhere does not win
    t, l_ = G.largest_change_patch(encrypted, base)
    stride = G.PATCH // 4
    assert abs(t - top) < stride and abs(l_ - left) < stride
    if top % stride == 0 and left % stride == 0:
        assert (t, l_) == (top, left)
    # an image smaller than a patch: the whole image
    assert G.largest_change_patch(encrypted[..., :40, :48], base[..., :40, :48]) == (0, 0)


def test_gallery_row_cells():
    (row,) = gallery_rows(1, h=480, w=640)
    cells = G.gallery_row(row)
    labels = [c.label for c in cells]
    assert len(cells) == 6
    assert labels[0] == "original: tabby"
    assert labels[1] == "base: tabby, 30.25 dB"
    assert labels[2] == "full: tabby, 30.25 dB (= base, bit for bit)"  # the same tensor as the base
    assert labels[3] == "encrypted: toaster, 27.50 dB"
    assert labels[4].startswith("encrypted - base, x") and labels[5].startswith("zoom at (")
    for c in cells[:5]:
        im = Image.open(io.BytesIO(c.png))
        assert im.format == "PNG" and im.size == (320, 240)  # a lossless thumbnail, not the 640 x 480 image
    zoom = Image.open(io.BytesIO(cells[5].png))
    assert zoom.format == "PNG" and zoom.size == (128, 256)  # 64 x 64 base over encrypted, enlarged 2x
    # lossless: the zoom's pixels are the decodes' own, each repeated 2 x 2
    left, top = (int(v) for v in labels[5].split("(")[1].split(")")[0].split(", "))
    patch = row.images["encrypted"][0, :, top: top + 64, left: left + 64]
    want = (patch.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8)
    got = torch.from_numpy(np.asarray(zoom.convert("RGB")).copy())
    assert torch.equal(got[128::2, ::2], want)


# ------------------------------------------------------------------ headline sentences
def test_headline_sentences_print_the_numbers():
    first, quality, full, others = headline_sentences(make_result())
    assert "On 8 images (whole photos; the target downsamples them 2.50x)" in first
    assert "changes the target's answer on 87.5 % (7/8) [95% CI 52.9-97.8] of the 8 it gets right" in first
    assert "changes 12.5 % (1/8) [95% CI 2.2-47.1] (the control): above the control's interval." in first
    assert "2.75 dB under the base decode (PSNR 27.50 vs 30.25 dB)" in quality and "0.3125 bpp" in quality
    assert "agree with the base decode's on 100.0 % (8/8)" in full
    assert others == ("ASR at the other scales: 512px (8 images): 60.0 % (3/5) [23.1-88.2] (control 20.0 % (1/5) "
                      "[3.6-62.4]; not distinguishable from noise); 224px (8 images): 25.0 % (1/4) [4.6-69.9] "
                      "(control 0.0 % (0/4) [0.0-49.0]; not distinguishable from noise).")


def test_headline_says_the_asr_is_undefined_when_the_base_gets_nothing_right():
    result = make_result()
    for s in result.scales.values():
        s.classification.n_base_right = 0
        s.classification.asr = float("nan")
        s.classification.control_asr = float("nan")
    sentences = headline_sentences(result)
    assert "the target gets no base decode right: the ASR is undefined (n/a)" in sentences[0]
    assert "0.0 %" not in sentences[0] and "nan" not in " ".join(sentences).lower()
    assert sentences[-1] == ("ASR at the other scales: 512px (8 images): n/a (0 to count) (control n/a (0 to count); "
                             "n/a); 224px (8 images): n/a (0 to count) (control n/a (0 to count); n/a).")


def test_headline_without_a_measured_downsampling_prints_no_nan():
    result = make_result()
    result.scales["whole"].downsampling = Stat()
    assert "nan" not in " ".join(headline_sentences(result)).lower()


# ------------------------------------------------------------------ report.html and metrics.json
@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "rep"
    log = write_log(tmp_path_factory.mktemp("run") / "log.jsonl", LOG)
    result = make_result()
    run = ReportRun("q3", result, gallery=gallery_rows(3), log=log)
    path = write_report(out, [run], title="PSIC <b>&</b> test", command="psic eval --data samples")
    return out, path, result, run


def data_uris(page: str, mime: str):
    return re.findall(rf"src='data:{mime};base64,([A-Za-z0-9+/=]+)'", page)


def test_report_writes_metrics_that_read_back_the_same_numbers(report):
    out, path, result, _ = report
    assert path == out / REPORT_NAME and path.is_file()
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["schema"] == SCHEMA_VERSION == 2 and len(data["runs"]) == 1
    (back,) = load_results(out)  # the folder or the file
    assert load_results(out / "metrics.json")[0].to_dict() == back.to_dict() == result.to_dict()
    assert back.scales["512px"].classification.asr == 0.6
    assert back.scales["whole"].robustness["jpeg75"].control_asr == 0.125
    assert back.scales["224px"].downsampling.mean == 1.0
    assert back.headline().asr_by_scale == {k: v[0] for k, v in SCALES.items()}
    assert back.wrong_keys.asr_min == 0.75 and back.primary == "whole"
    single = result.save(out.parent / "single.json")  # one result on its own reads back too
    assert [r.to_dict() for r in load_results(single)] == [result.to_dict()]
    assert [r["name"] for r in back.per_image if r["scale"] == "whole"] == list(PRIMARY_ROWS)


def test_report_page_shows_the_headline_numbers(report):
    out, path, result, _ = report
    page = path.read_text(encoding="utf-8")
    for sentence in headline_sentences(result):
        assert html.escape(sentence) in page
    assert "87.5 %" in page and "12.5 %" in page  # ASR and control as the headline prints them
    assert "PSIC &lt;b&gt;&amp;&lt;/b&gt; test" in page and "<b>&</b>" not in page  # the title escaped
    assert "psic eval --data samples" in page
    for name in ("photo0.png", "photo1.png", "photo2.png"):
        assert name in page


def test_report_page_has_one_image_per_plot_and_per_gallery_cell(report):
    out, path, result, run = report
    page = path.read_text(encoding="utf-8")
    assert [p.name for p in run.plots] == ["asr_by_scale", "asr_by_perturbation", "psnr_per_image",
                                           "training_curves", "validation_curve"]
    cells = 6 * 3
    assert page.count("<img") == len(run.plots) + cells
    pngs = data_uris(page, "image/png")
    assert len(pngs) == len(run.plots) + cells and not data_uris(page, "image/jpeg")  # lossless, all of them
    assert [base64.b64decode(u) for u in pngs[:len(run.plots)]] == [p.png for p in run.plots]  # each plot as drawn
    for u in pngs[len(run.plots):]:
        im = Image.open(io.BytesIO(base64.b64decode(u)))
        assert im.format == "PNG" and max(im.size) <= G.THUMB
    # the numbers each plot draws are printed under it
    assert html.escape(json.dumps(run.plots[0].data, indent=1)) in page


def test_report_page_is_self_contained_and_small(report):
    out, path, _, _ = report
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]?([^'" >]*)""", page, flags=re.I)
    assert refs and all(r.startswith("data:") for r in refs)
    assert "http" not in "".join(refs) and "url(" not in page
    assert len(path.read_bytes()) < 2_500_000  # 4 plots and 3 rows of 6 PNG cells (lossless costs bytes)


def test_report_refuses_to_overwrite_without_force(report, tmp_path):
    out, path, result, _ = report
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"metrics.json", REPORT_NAME}
    other = make_result(name="other")
    other.scales["whole"].classification.asr = 0.5
    with pytest.raises(OverwriteError, match="exists"):
        write_report(out, [ReportRun("other", other)], title="second")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, no temp file left

    lone = tmp_path / "lone"  # either file alone counts
    lone.mkdir()
    (lone / REPORT_NAME).write_text("mine")
    with pytest.raises(OverwriteError):
        write_report(lone, [ReportRun("other", other)])
    assert [p.name for p in lone.iterdir()] == [REPORT_NAME] and (lone / REPORT_NAME).read_text() == "mine"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OverwriteError):
        write_report(tmp_path / "a-file", [ReportRun("other", other)])

    again = tmp_path / "again"
    write_report(again, [ReportRun("q3", result)])
    write_report(again, [ReportRun("other", other)], title="second", force=True)
    assert load_results(again)[0].scales["whole"].classification.asr == 0.5
    assert "second" in (again / REPORT_NAME).read_text()


def test_report_of_a_result_the_base_gets_nothing_right(tmp_path):
    result = make_result()
    for s in result.scales.values():
        s.classification = Classification(n_base_right=0)
        s.robustness = {p: Robustness() for p in s.robustness}
    path = write_report(tmp_path / "r", [ReportRun("none", result)])
    page = path.read_text()
    assert "the ASR is undefined (n/a)" in page
    words = re.sub(r"<pre>.*?</pre>|<img [^>]*>", "", page, flags=re.S)  # images and the plots' raw numbers aside
    assert "nan" not in words.lower()
    assert not re.search(r"(?<![\d.])0\.0 %", words)  # n/a in the headline and the tables, never 0 %
    assert re.search(r"<td[^>]*>n/a \(0 to count\)</td>", words)  # the tables
    (back,) = load_results(tmp_path / "r")
    assert math.isnan(back.main.classification.asr)


@pytest.mark.filterwarnings("ignore:Insufficient curve overlap")
def test_report_over_several_adapters_has_rate_distortion_and_bd(tmp_path):
    results = [rd_result(b, p, f"q{k}") for k, (b, p) in enumerate([(0.1, 28.0), (0.2, 30.0), (0.4, 32.5),
                                                                     (0.8, 35.0)])]
    for r in results:  # one scale, no robustness: one plot per adapter, fast
        r.scales = {"whole": r.scales["whole"]}
        r.scales["whole"].robustness = {}
    runs = [ReportRun(r.meta["name"], r) for r in results]
    page = write_report(tmp_path / "rd", runs).read_text()
    assert "<h2>Rate-distortion</h2>" in page
    assert ("<td class=num data-label='images'>8 images at whole (samples)</td>"
            "<td data-label='vs base'>encrypted</td><td class=num") in page
    assert "-2.000" in page  # BD-PSNR of the encrypted version
    assert page.count("<h2>") == 4 + 2  # one section per adapter, the runs side by side, rate-distortion
    assert "the intervals overlap: the two are not distinguishable" in page  # every run flips 7 of the same 8
    assert len(load_results(tmp_path / "rd")) == 4
    two = write_report(tmp_path / "rd2", runs[:2]).read_text()
    rd_part = two[two.index("<h2>Rate-distortion</h2>"):]
    assert "BD-rate" not in rd_part and "which no image set here has" in rd_part  # a curve, no deltas from 2 points


def test_running_mean_of_the_training_curves():
    assert P.running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert P.running_mean([2.0] * 30, 7) == [2.0] * 30
    smoothed = P.running_mean([1.0, float("nan"), 3.0, 5.0], 2)  # a diverged step is a gap, not the end
    assert smoothed[0] == 1.0 and smoothed[1] == 1.0 and smoothed[2] == 3.0 and smoothed[3] == 4.0
    assert math.isnan(P.running_mean([float("nan")], 3)[0])
    with pytest.raises(ValueError):
        P.running_mean([1.0], 0)
    long_log = [{"step": 10 * i, "encryption": float(i % 2), "psnr_base": 28.0} for i in range(40)]
    plot = P.training_curves(long_log)
    assert plot.data["encryption"] == [[10 * i, float(i % 2)] for i in range(40)]  # the logged values, unsmoothed
    open_png(plot.png)


def _counted(name: str, photos: dict) -> EvalResult:
    """A result at 512px whose per-image rows say, per photo, (right on the base, flipped, flipped by the noise)."""
    r = make_result(name=name)
    r.per_image = [{"scale": "512px", "name": n, "base_right": b, "encrypted_right": b and not f,
                    "control_right": b and not c} for n, (b, f, c) in photos.items()]
    right = [v for v in photos.values() if v[0]]
    r.scales["512px"].classification.n_base_right = len(right)
    r.scales["512px"].classification.asr = sum(v[1] for v in right) / len(right)
    r.scales["512px"].n_images = len(photos)
    return r


def test_two_runs_are_compared_on_the_images_both_saw():
    """The demo's shipped adapter saw 20 photos, your adapter 14 of them: the two are compared on those 14, from
    the per-image rows, with counts, and called indistinguishable where the intervals overlap."""
    from psic_adapter import demo
    from psic_adapter.eval import table as T

    shipped = {f"p{i}": (True, i < 8, i == 0) for i in range(20)}  # flips 8 of 20: p0..p7
    yours = {f"p{i}": (True, i in (6, 7, 8, 9), False) for i in range(6, 20)}  # 14 photos, flips 4
    a, b = _counted("shipped", shipped), _counted("yours", yours)
    lines = T.compare_runs([a, b], ["shipped", "yours"])
    line = next(x for x in lines if x.startswith("512px"))
    # on p6..p19 the shipped adapter flips p6, p7 (2 of 14), yours 4 of 14
    assert line == ("512px, on the 14 images both were measured on: shipped 14.3 % (2/14) [4.0-39.9], yours "
                    "28.6 % (4/14) [11.7-54.6]: the intervals overlap: the two are not distinguishable")
    assert T.counts_on(a, "512px", {"p0", "p1", "p19"}) == (2, 1, 3)
    text = demo.closing_text([a, b], ["shipped", "yours"])
    assert line in text and T.RULE in text and "vs noise" in text


def test_the_demo_times_the_fits_first_steps_and_says_how_long():
    from psic_adapter import demo

    said = []

    class Trainer:
        def step(self, batch):
            return {"loss": float(batch)}

    trainer = Trainer()
    clock = demo.StepClock(trainer, steps=100, probe=3, say=said.append)
    assert trainer.step is clock
    assert [trainer.step(k) for k in range(5)] == [{"loss": float(k)} for k in range(5)]
    assert len(clock.times) == 5 and len(said) == 1  # said once, after the third step
    assert said[0].startswith("the fit's first 3 steps: ") and "the other 97 steps take about" in said[0]


def test_crops_of_other_photo_lists_are_never_matched_by_name():
    """Crop i of one run is not crop i of another when the photos differ (the demo's two runs): not compared."""
    from psic_adapter.eval import table as T

    runs = []
    for name, photos in (("shipped", 18), ("yours", 12)):
        r = _counted(name, {f"p#{i}": (True, i < 3, False) for i in range(8)})
        r.scales["crops"] = r.scales.pop("512px")
        r.scales["crops"].scale, r.scales["crops"].n_photos = "crops", photos
        for row in r.per_image:
            row["scale"] = "crops"
        runs.append(r)
    lines = [x for x in T.compare_runs(runs, ["shipped", "yours"]) if x.startswith("crops")]
    assert lines == ["crops: shipped and yours were measured on other images here: not compared"]
    runs[1].scales["crops"].n_photos = 18  # the same photos, the same seeded crops: compared
    assert "the two are not distinguishable" in T.compare_runs(runs, ["shipped", "yours"])[-1]
