"""psic_adapter.eval.report: figures, metrics.json and the self-contained HTML."""

import base64
import io
import json
import re

import pytest
import torch
from PIL import Image

from psic_adapter.errors import OverwriteError
from psic_adapter.eval import metrics as M
from psic_adapter.eval import report as RP

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def grid_rows():
    torch.manual_seed(0)
    x = torch.rand(3, 24, 32)
    return [
        ("kodim01", [("original", x), ("base, 30.7 dB", x * 0.9), ("full", x), ("tabby cat, $5 & <b>", 1 - x)]),
        ("kodim02", [("original", x[None]), ("base", x)]),  # shorter row, batched tensor
    ]


def metrics_dict():
    return {
        "summary": {
            "psnr_full": M.summarize([30.1, 31.2]),
            "asr": {"t2i@1": 0.8, "i2t@1": float("nan")},
            "bpp": 0.25,
        },
        "per_image": [
            {"image": "kodim01", "bpp": 0.2, "psnr_full": 30.1, "asr": float("nan")},
            {"image": "kodim02", "bpp": 0.3, "psnr_full": 31.2, "asr": 1.0, "note": "<i>x</i>"},
        ],
        "settings": {"codec": "bmshj2018-hyperprior", "quality": 3, "inf": float("inf")},
        "tensor": torch.tensor([1.0, float("nan")]),
    }


def test_image_grid_png(tmp_path):
    p = RP.image_grid_png(grid_rows(), tmp_path / "g.png")
    data = p.read_bytes()
    assert data.startswith(PNG_MAGIC)
    with Image.open(p) as im:
        assert im.width > im.height  # 4 columns, 2 rows
    with pytest.raises(ValueError):
        RP.image_grid_png([], tmp_path / "empty.png")


def test_plot_rate_curves(tmp_path):
    points = [
        {"name": "adapterA", "bpp": 0.3, "psnr_base": 30, "psnr_full": 29.8, "psnr_enc": 28, "asr": 0.7},
        {"name": "adapterA", "bpp": 0.1, "psnr_base": 27, "psnr_full": 26.9, "psnr_enc": 25, "asr": float("nan")},
        {"name": "adapterB", "bpp": 0.2, "psnr_full": 28, "psnr_enc": 26, "asr": {"t2i": 0.8, "i2t": 0.6}},
    ]
    p = RP.plot_rate_curves(points, tmp_path / "curves.png", title="rate")
    assert p.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        RP.plot_rate_curves([{"name": "x"}], tmp_path / "bad.png")


def test_to_jsonable_and_format_value():
    obj = RP.to_jsonable({1: float("nan"), "t": torch.tensor([1.5, float("inf")]), "n": torch.tensor(3)})
    assert obj == {"1": None, "t": [1.5, None], "n": 3}
    assert RP.format_value(float("nan")) == "n/a"
    assert RP.format_value(0.123456) == "0.1235"
    assert RP.format_value({"mean": 2.0, "std": 0.5, "n": 3}) == "2 ± 0.5 (n=3)"


def test_write_report(tmp_path):
    out = tmp_path / "rep"
    plot = RP.plot_rate_curves(
        [{"name": "a", "bpp": 0.1, "psnr_full": 30, "psnr_enc": 29, "asr": 0.5}], tmp_path / "curves.png"
    )
    title = "PSIC <script>alert(1)</script> & Kodak"
    html_path = RP.write_report(out, metrics_dict(), grid_rows(), [plot], title=title)
    assert html_path == out / "report.html"
    assert html_path.is_file() and (out / "metrics.json").is_file() and (out / "grid.png").is_file()

    text = (out / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["per_image"][0]["asr"] is None
    assert data["summary"]["asr"]["i2t@1"] is None
    assert data["settings"]["inf"] is None
    assert data["tensor"] == [1.0, None]
    assert data["summary"]["psnr_full"]["n"] == 2

    page = html_path.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Kodak" in page
    assert "<script>" not in page  # escaped everywhere, no scripts
    assert "&lt;i&gt;x&lt;/i&gt;" in page
    assert "kodim01" in page and "kodim02" in page
    assert "Headline" in page and "Per image" in page
    assert "asr / i2t@1" in page and "n/a" in page
    assert "30.65 ± 0.7778 (n=2)" in page
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2  # the plot and the grid
    for u in uris:
        with Image.open(io.BytesIO(base64.b64decode(u))) as im:
            assert im.format == "PNG"
    assert "http://" not in page and "https://" not in page  # self-contained


def test_write_report_refuses_overwrite_without_force(tmp_path):
    out = tmp_path / "rep"
    RP.write_report(out, {"summary": {"a": 1.0}}, None, [], title="first")
    with pytest.raises(OverwriteError):
        RP.write_report(out, {"summary": {"a": 2.0}}, None, [], title="second")
    assert "first" in (out / "report.html").read_text()  # untouched
    assert json.loads((out / "metrics.json").read_text())["summary"]["a"] == 1.0
    RP.write_report(out, {"summary": {"a": 2.0}}, None, [], title="second", force=True)
    assert "second" in (out / "report.html").read_text()
    assert json.loads((out / "metrics.json").read_text())["summary"]["a"] == 2.0
    # a lone metrics.json also counts as an existing report
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text("{}")
    with pytest.raises(OverwriteError):
        RP.write_report(other, {}, None, [])


def test_write_report_missing_plot(tmp_path):
    with pytest.raises(FileNotFoundError):
        RP.write_report(tmp_path / "r", {}, None, [tmp_path / "nope.png"])
    assert not (tmp_path / "r" / "report.html").exists()
