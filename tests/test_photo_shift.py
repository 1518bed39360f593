"""The owner's per-photo shift (``psic compress --shift-for``; adapter/photo_shift.py, training/shift_search.py): chosen at
compression against a classifier, stored in the file's header (format 3), applied by the encrypted decode only.
Tiny codecs and a stand-in classifier, seconds."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from psic_adapter import ConfigError, ContainerError, PSICConfig, wrap_model
from psic_adapter.adapter.photo_shift import PhotoShift
from psic_adapter.adapter.strength import MAX_STRENGTH
from psic_adapter.bitstream import coding, container
from psic_adapter.bitstream.images import served
from psic_adapter.training.shift_search import ShiftSearch, margin, psnr_drop
from psic_adapter.cli import main

from .conftest import randomize_adapter, small_trainable_codec
from .psic_files import DELETE, edit_psic

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

KEY = "the owner's photo-shift test key"


class MeanColour(torch.nn.Module):
    """A stand-in classifier: three classes scored by the image's mean red, green and blue."""

    def logits(self, x):
        return x.mean(dim=(2, 3)) * 10

    def predict(self, x):
        return self.logits(x).argmax(dim=1)


def _spatial(rank: int = 4):
    """A random spatial adapter on a codec whose decodes sit inside [0, 1] as a photo's do."""
    codec = copy.deepcopy(small_trainable_codec())
    with torch.no_grad():
        codec.g_s[-1].bias += 0.5
    return randomize_adapter(wrap_model(codec, PSICConfig(modulation="spatial", spatial_rank=rank), key=KEY),
                             std=0.1).eval()


@pytest.fixture(scope="module")
def model():
    return _spatial()


@pytest.fixture(scope="module")
def photo():
    g = torch.Generator().manual_seed(1)
    small = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(small, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)


def _latent(model, x):
    enc = coding.encode(model, x)
    return model.decode_latent(enc["strings"], enc["shape"])


def _decode(model, y_hat, shift=None):
    with torch.no_grad():
        return served(model.synthesize(y_hat, model.encrypted_condition(), photo_shift=shift))


def _decodes(model, photo):
    """The photo's decoded latent, its base decode and the adapter's own encrypted decode (no shift), served."""
    y_hat = _latent(model, photo)
    with torch.no_grad():
        base = served(model.synthesize(y_hat, None))
    return y_hat, base, _decode(model, y_hat)


# ------------------------------------------------------------------ the search
def test_the_search_lowers_the_margin_at_the_adapters_own_cost(model, photo):
    target = MeanColour()
    y_hat, base, own = _decodes(model, photo)
    label = int(target.predict(base))

    shift, seen = ShiftSearch(target, steps=30, lr=0.5)(model, y_hat, photo)

    shifted = _decode(model, y_hat, shift)
    assert seen["label"] == label and 1 <= seen["steps"] <= 30
    assert float(margin(target.logits(shifted), label)) < float(margin(target.logits(own), label))
    assert psnr_drop(shifted, base, photo) == pytest.approx(psnr_drop(own, base, photo), abs=0.05)
    assert seen["drop_db"] == pytest.approx(psnr_drop(shifted, base, photo))
    assert len(shift.shifts) == 3 and all(s.shape == (4,) for s in shift.shifts) and shift.strength > 0
    assert torch.equal(_decode(model, y_hat), own)  # the adapter is left as it was


def test_a_budget_puts_each_photo_at_that_cost(model, photo):
    y_hat, base, _ = _decodes(model, photo)
    for budget in (0.3, 1.0):
        shift, _ = ShiftSearch(MeanColour(), steps=2, lr=0.5, budget_db=budget)(model, y_hat, photo)
        assert psnr_drop(_decode(model, y_hat, shift), base, photo) == pytest.approx(budget, abs=0.05)


@pytest.mark.parametrize("budget", [0.05, 0.3, 1.0, 3.0])
def test_the_strength_is_the_last_on_the_grid_within_the_budget(model, photo, budget):
    """The strength's search (secant steps, then a bracket on the grid) ends where the bisection it replaced ended: at
    the largest grid strength whose served decode is within the budget, the next one over it."""
    from psic_adapter.adapter.photo_shift import STRENGTH_STEP

    y_hat, base, _ = _decodes(model, photo)
    shift, seen = ShiftSearch(MeanColour(), steps=1, lr=0.5, budget_db=budget)(model, y_hat, photo)
    assert not seen["capped"]
    drop = lambda s: psnr_drop(_decode(model, y_hat, PhotoShift(shift.shifts, s)), base, photo)  # noqa: E731
    assert drop(shift.strength) <= budget < drop(shift.strength + STRENGTH_STEP)


def test_the_search_in_bf16_steps_still_lowers_the_margin_and_keeps_the_cost(model, photo):
    """``amp="bf16"``: the steps run in bf16 autocast (about 2x a step on CPUs with bf16 units); the shift still lowers
    the margin, and the strength, set in fp32 after it, still puts the photo at the adapter's own cost; "off" is not
    "bf16" (the steps do run in another precision)."""
    target = MeanColour()
    y_hat, base, own = _decodes(model, photo)
    label = int(target.predict(base))
    fast, seen = ShiftSearch(target, steps=30, lr=0.5, amp="bf16", stop_margin=100.0)(model, y_hat, photo)
    exact, _ = ShiftSearch(target, steps=30, lr=0.5, amp="off", stop_margin=100.0)(model, y_hat, photo)
    shifted = _decode(model, y_hat, fast)
    assert float(margin(target.logits(shifted), label)) < float(margin(target.logits(own), label))
    assert psnr_drop(shifted, base, photo) == pytest.approx(psnr_drop(own, base, photo), abs=0.05)
    assert seen["drop_db"] == pytest.approx(psnr_drop(shifted, base, photo))
    assert any(not torch.equal(a, b) for a, b in zip(fast.shifts, exact.shifts))


def test_the_search_refuses_bad_settings_and_adapters_without_branches(photo):
    for bad in (dict(steps=-1), dict(steps=1.5), dict(lr=0), dict(lr=float("nan")), dict(budget_db=0),
                dict(budget_db=float("inf")), dict(amp="fp16"), dict(amp=None), dict(give_up=float("nan")),
                dict(give_up="0.5"), dict(give_up=1e3)):
        with pytest.raises(ConfigError):
            ShiftSearch(MeanColour(), **bad)
    film = randomize_adapter(wrap_model(small_trainable_codec(), PSICConfig(modulation="film"), key=KEY), std=0.1)
    with pytest.raises(ConfigError, match="needs a 'spatial' adapter"):
        ShiftSearch(MeanColour(), steps=1)(film, _latent(film, photo), photo)


# ------------------------------------------------------------------ applying it
def test_only_the_encrypted_version_reads_the_shift(model, photo):
    enc = coding.encode(model, photo)
    shift = PhotoShift([torch.full((4,), 0.5)] * 3, 1.5)
    args = (enc["strings"], enc["shape"])
    plain = model.decompress(*args)["x_hat"]
    shifted = model.decompress(*args, photo_shift=shift)["x_hat"]
    assert not torch.equal(plain, shifted)  # no key: the shift changes the encrypted version
    assert torch.equal(model.decompress(*args, key=KEY, photo_shift=shift)["x_hat"],
                       model.decompress(*args, key=KEY)["x_hat"])  # the owner's key: the codec's own decode
    with torch.no_grad():  # the decode without autograd (the folded branch) is the function the search differentiates
        y_hat = model.decode_latent(*args)
    torch.testing.assert_close(shifted, model.synthesize(y_hat, model.encrypted_condition(), photo_shift=shift).detach(),
                               atol=1e-5, rtol=0)


def test_a_shift_must_fit_the_adapter(model):
    with pytest.raises(ConfigError, match=r"has \[4, 4\] units per branch; the adapter's branches have \[4, 4, 4\]"):
        PhotoShift([torch.zeros(4)] * 2).check_fits(model)
    with pytest.raises(ConfigError, match="chosen for another adapter"):
        PhotoShift([torch.zeros(4), torch.zeros(4), torch.zeros(5)]).check_fits(model)


@pytest.mark.parametrize("field, what", [
    ("nope", "not an object"),
    ({"shifts": [[0]], "extra": 1}, "not an object"),
    ({"strength": 1}, "not an object"),
    ({"shifts": []}, "not a list of 1 to"),
    ({"shifts": [[]]}, "not a non-empty list"),
    ({"shifts": [[0, "1"]]}, "integers in"),
    ({"shifts": [[0, True]]}, "integers in"),
    ({"shifts": [[0.5]]}, "integers in"),
    ({"shifts": [[25601]]}, "integers in"),
    ({"shifts": [[-(10 ** 400)]]}, "integers in"),
    ({"shifts": [[float("nan")]]}, "integers in"),
    ({"shifts": [[0] * 600, [0] * 600]}, "more than 1024 numbers"),
    ({"shifts": [[0]] * 17}, "not a list of 1 to 16"),
    ({"shifts": [[0]], "strength": 0}, "strength must be"),
    ({"shifts": [[0]], "strength": -1}, "strength must be"),
    ({"shifts": [[0]], "strength": 1.5}, "strength must be"),
    ({"shifts": [[0]], "strength": 65537}, "strength must be"),
])
def test_a_stored_shift_is_checked_before_use(field, what):
    with pytest.raises(ContainerError, match=f"bad photo_shift: .*{what}"):
        PhotoShift.from_json(field)


def test_a_stored_shift_decodes_as_the_search_saw_it(model, photo):
    y_hat = _latent(model, photo)
    shift = PhotoShift([torch.randn(4, generator=torch.Generator().manual_seed(k)) for k in range(3)], 1.2345678)
    text = json.dumps(shift.to_json())
    assert all(isinstance(v, int) for s in json.loads(text)["shifts"] for v in s) and len(text) < 100  # integers
    again = PhotoShift.from_json(json.loads(text))
    assert torch.equal(_decode(model, y_hat, again), _decode(model, y_hat, shift.on_grid()))
    found, _ = ShiftSearch(MeanColour(), steps=3, lr=0.5)(model, y_hat, photo)  # the search's result is on the grid
    assert torch.equal(_decode(model, y_hat, PhotoShift.from_json(found.to_json())), _decode(model, y_hat, found))


# ------------------------------------------------------------------ files
def _png(tmp_path, x):
    path = tmp_path / "photo.png"
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def test_a_file_with_a_shift_keeps_the_codecs_bytes_and_decodes_both_versions(model, photo, tmp_path, capsys):
    png = _png(tmp_path, photo)
    plain, shifted = tmp_path / "plain.psic", tmp_path / "shifted.psic"
    coding.encode_file(png, plain, model)
    res = coding.encode_file(png, shifted, model, shift_search=ShiftSearch(MeanColour(), steps=5, lr=0.5))
    a, ha, _ = container.read(plain)
    b, hb, _ = container.read(shifted)
    assert a["strings"] == b["strings"]  # the base codec's bytes either way
    assert (ha.version, hb.version) == (2, 3) and ha.photo_shift is None
    assert plain.read_bytes()[4] == 2 and b'"photo_shift"' not in plain.read_bytes()  # format 2, as before
    assert res.shift_search["steps"] >= 1

    out = coding.decode_file(shifted, tmp_path / "enc.png", model)
    assert out["photo_shift"] is True
    shift = PhotoShift.from_json(hb.photo_shift)
    want = _decode(model, model.decode_latent(b["strings"], b["shape"]), shift)
    got = torch.from_numpy(np.array(Image.open(tmp_path / "enc.png"))).permute(2, 0, 1)[None].float() / 255
    assert torch.equal(got, want)
    coding.decode_file(shifted, tmp_path / "full.png", model, key=KEY)
    coding.decode_file(plain, tmp_path / "full-plain.png", model, key=KEY)
    assert (tmp_path / "full.png").read_bytes() == (tmp_path / "full-plain.png").read_bytes()

    assert main(["info", str(shifted)]) == 0
    assert re.search(r"per-photo shift +13 numbers \(3 branches x \[4, 4, 4\] units", capsys.readouterr().out)


def test_a_shift_that_does_not_fit_or_a_format_that_does_not_match_is_refused(model, photo, tmp_path):
    png = _png(tmp_path, photo)
    shifted = tmp_path / "shifted.psic"
    coding.encode_file(png, shifted, model, shift_search=ShiftSearch(MeanColour(), steps=1))
    data = shifted.read_bytes()
    misfit = tmp_path / "misfit.psic"
    misfit.write_bytes(edit_psic(data, photo_shift={"shifts": [[0] * 5] * 3}))
    with pytest.raises(ContainerError, match=r"misfit.psic: this per-photo shift has \[5, 5, 5\] units"):
        coding.decode_file(misfit, tmp_path / "out.png", model)
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(ContainerError, match="a format-3 file without its photo_shift"):
        container.unpack(edit_psic(data, photo_shift=DELETE))
    with pytest.raises(ContainerError, match="a photo_shift in a format-2 file"):
        container.unpack(edit_psic(data, version=2))


def test_psic_compress_and_eval_check_the_shift_flags_before_anything_loads(model, tmp_path, capsys, monkeypatch):
    import psic_adapter.targets as targets

    def no_target(*a, **k):  # a refusal must come before the target loads
        raise AssertionError("the target was loaded")

    monkeypatch.setattr(targets, "build_target", no_target)
    png = _png(tmp_path, torch.rand(1, 3, 64, 64))
    out = str(tmp_path / "a.psic")
    film = tmp_path / "film"
    wrap_model(small_trainable_codec(), PSICConfig(modulation="film"), key=KEY).save_pretrained(film)
    spatial = tmp_path / "spatial"
    model.save_pretrained(spatial)
    for argv, says in [
        (["--shift-db", "0.5"], "--shift-db need(s) --shift-for"),
        (["--shift-steps", "5"], "--shift-steps need(s) --shift-for"),
        (["--shift-amp", "off"], "--shift-amp need(s) --shift-for"),
        (["--shift-give-up", "off"], "--shift-give-up need(s) --shift-for"),
        (["--shift-for", "efficientnet-lite0", "--shift-give-up", "never", "--adapter", str(spatial)],
         "--shift-give-up takes a margin or 'off', not 'never'"),
        (["--shift-for", "efficientnet-lite0", "--shift-give-up", "nan", "--adapter", str(spatial)],
         "give-up margin must be in"),
        (["--shift-for", "efficientnet-lite0"], "--shift-for needs --adapter"),
        (["--shift-for", "", "--adapter", str(spatial)], "--shift-for needs a target"),
        (["--shift-for", "clip:ViT-B-32", "--adapter", str(spatial)], "needs a classifier"),
        (["--shift-for", "efficientnet-lite0+clip:RN50", "--adapter", str(spatial)], "needs a classifier"),
        (["--shift-for", "efficientnet-lite0", "--shift-steps", "0", "--adapter", str(spatial)], "steps must be 1 to"),
        (["--shift-for", "efficientnet-lite0", "--adapter", str(film)], "needs a 'spatial' adapter"),
    ]:
        assert main(["compress", str(png), out, "--checkpoint", "shipped", *argv]) == 1
        assert says in capsys.readouterr().err
    assert main(["compress", str(png), str(tmp_path / "a.png"), "--checkpoint", "shipped", "--adapter",
                 str(spatial), "--shift-for", "efficientnet-lite0"]) == 1
    assert "needs a .psic name" in capsys.readouterr().err
    assert not list(tmp_path.glob("a.*psic"))
    for argv, says in [
        (["--shift-db", "0.5"], "--shift-db need(s) --shift-for"),
        (["--shift-for", "efficientnet-lite0", "--adapter", str(film)], "needs a 'spatial' adapter"),
        (["--shift-for", "efficientnet-lite0", "--adapter", str(spatial), "--task", "celeba"], "not --task celeba"),
    ]:
        if "--adapter" not in argv:
            argv = [*argv, "--adapter", str(spatial)]
        assert main(["eval", "--target", "efficientnet-lite0", "--out", str(tmp_path / "r"), *argv]) == 1
        assert says in capsys.readouterr().err


def test_a_budget_the_change_cannot_spend_or_a_change_that_costs_nothing(model, photo):
    y_hat = _latent(model, photo)
    shift, seen = ShiftSearch(MeanColour(), steps=1, budget_db=20.0)(model, y_hat, photo)
    assert seen["capped"] and shift.strength == MAX_STRENGTH and seen["drop_db"] < 20.0
    with torch.no_grad():
        base = served(model.synthesize(y_hat, None))
    calm = copy.deepcopy(model)
    with torch.no_grad():
        for p in calm.psic_adapters.parameters():
            p.mul_(1e-4)  # a change that costs nothing measurable on this photo
    shift, seen = ShiftSearch(MeanColour(), steps=1)(calm, y_hat, photo)
    assert seen["budget_db"] == 0  # served, its change rounds away
    assert shift.strength == 1.0  # the adapter's own strength, not a strength of ~0 (which would undo the shift too)
    assert psnr_drop(_decode(calm, y_hat, shift), base, photo) == pytest.approx(seen["drop_db"])


class _Handicapped(MeanColour):
    """MeanColour with one class's score lowered, so that a few steps of the search change the answer."""

    def __init__(self, label: int, by: float):
        super().__init__()
        self.label, self.by = label, by

    def logits(self, x):
        out = super().logits(x).clone()
        out[:, self.label] -= self.by
        return out


def test_the_search_reports_its_margin_at_each_step(model, photo):
    """``trace``: the margin the search saw at each step, the step it stopped at last (below the stop margin); run to
    the end, one entry a step, moving the margin down from where the adapter alone leaves it."""
    y_hat, base, _ = _decodes(model, photo)
    _, full = ShiftSearch(MeanColour(), steps=6, lr=0.5, stop_margin=100.0)(model, y_hat, photo)
    assert full["steps"] == 6 and len(full["trace"]) == 6
    assert full["trace"][-1] < full["trace"][0]
    assert full["trace"][0] == pytest.approx(full["margin_before"], abs=0.05)  # before any step: the adapter's own
    # lowered by the margin it has after two steps and a bit, the answer changes at the third: the search stops there
    by = full["trace"][2] + 0.01
    target = _Handicapped(full["label"], by)
    assert int(target.predict(base)) == full["label"]  # the base decode still gets the same answer
    _, early = ShiftSearch(target, steps=6, lr=0.5, stop_margin=0.0)(model, y_hat, photo)
    assert early["steps"] == 2 and len(early["trace"]) == 3 and early["trace"][-1] < 0 <= min(early["trace"][:-1])
    assert early["trace"] == pytest.approx([t - by for t in full["trace"][:3]], abs=1e-3)


def test_the_search_gives_up_on_a_photo_whose_answer_is_not_changing(model, photo):
    """``give_up``: after 10 steps, a margin that would still be above ``give_up`` at the last step, at the pace of the
    last 5, ends the search; the shift is the one those 10 steps found, as a search of 10 steps would find it."""
    y_hat = _latent(model, photo)
    base = served(model.synthesize(y_hat, None))
    stuck = _Handicapped(int(MeanColour().predict(base)), -5.0)  # its answer held by a lead of 5 that no step closes
    shift, seen = ShiftSearch(stuck, steps=40, lr=0.5, give_up=0.5)(model, y_hat, photo)
    assert seen["gave_up"] and seen["steps"] == 10 and len(seen["trace"]) == 11 and seen["trace"][-1] > 0.5
    ten, _ = ShiftSearch(stuck, steps=10, lr=0.5, give_up=None)(model, y_hat, photo)
    assert all(torch.equal(a, b) for a, b in zip(shift.shifts, ten.shifts)) and shift.strength == ten.strength
    _, patient = ShiftSearch(stuck, steps=14, lr=0.5, give_up=None)(model, y_hat, photo)
    assert not patient["gave_up"] and patient["steps"] == 14 and len(patient["trace"]) == 14


@pytest.mark.parametrize("trace, steps, gives_up", [
    ([3.0] * 11, 40, True),                                    # flat and above: hopeless
    ([3.0 - 0.2 * i for i in range(11)], 40, False),           # 1.0 after 10 steps, falling 0.2 a step: reaches 0
    ([3.0 - 0.05 * i for i in range(11)], 40, True),           # 2.5, falling 0.05 a step: 1.0 after 30 more
    ([3.0 - 0.05 * i for i in range(11)], 80, False),          # the same with 70 more steps: -1.0
    ([3.0] * 10, 40, False),                                   # 9 steps: too soon to judge
    ([3.0] * 5 + [None] * 6, 40, False),                       # a decode that was not finite: no pace to judge
    ([0.4] * 11, 40, False),                                   # already at the give-up margin
])
def test_when_the_search_judges_a_photo_hopeless(trace, steps, gives_up):
    assert ShiftSearch(MeanColour(), steps=steps, give_up=0.5)._hopeless(trace, len(trace) - 1) is gives_up
    assert not ShiftSearch(MeanColour(), steps=steps, give_up=None)._hopeless(trace, len(trace) - 1)


def test_an_evaluation_records_each_photos_search(model, photo):
    """``psic eval --shift-for``: each photo's row says what its search saw (steps, margins, trace), beside its PSNRs."""
    from psic_adapter.eval.config import EvalConfig
    from psic_adapter.eval.measure import Measurements, Sample
    from psic_adapter.eval.protocol import PSICDecoder
    from psic_adapter.eval.record import to_jsonable

    decoder = PSICDecoder(model, KEY, shift_search=ShiftSearch(MeanColour(), steps=2, lr=0.5, stop_margin=100.0))
    rows = Measurements(decoder, EvalConfig(), "native")
    _, decoded = rows.measure(Sample("p", photo))
    row = json.loads(json.dumps(to_jsonable(rows.rows[0]), allow_nan=False))  # as metrics.json keeps it
    assert row["shift_search"]["steps"] == 2 and len(row["shift_search"]["trace"]) == 2
    assert row["shift_search"]["strength"] == decoded.photo_shift.strength
    plain = Measurements(PSICDecoder(model, KEY), EvalConfig(), "native")
    plain.measure(Sample("p", photo))
    assert "shift_search" not in plain.rows[0]


def test_the_search_takes_one_photo_and_leaves_the_models_mode(model, photo):
    y_hat = _latent(model, photo)
    with pytest.raises(ConfigError, match="one photo at a time"):
        ShiftSearch(MeanColour(), steps=1)(model, y_hat.expand(2, -1, -1, -1), photo.expand(2, -1, -1, -1))
    model.train()
    try:
        ShiftSearch(MeanColour(), steps=1)(model, y_hat, photo)
        assert model.training
    finally:
        model.eval()


def test_the_folded_branch_reads_the_shift_as_the_plain_one_does(photo):
    folded = _spatial(rank=8)  # 8 hidden channels: the last branch folds into the decoder's last layer
    assert folded._fold_points  # (fusion.py)
    enc = coding.encode(folded, photo)
    shift = PhotoShift([torch.linspace(-1, 1, 8)] * 3, 0.7)
    with torch.no_grad():
        y_hat = folded.decode_latent(enc["strings"], enc["shape"])
        fold = folded.decompress(enc["strings"], enc["shape"], photo_shift=shift)["x_hat"]
    plain = folded.synthesize(y_hat, folded.encrypted_condition(), photo_shift=shift).detach()  # autograd: no fold
    torch.testing.assert_close(fold, plain, atol=1e-5, rtol=0)
    given = folded.encrypted_condition().clone()  # the encrypted condition given explicitly still reads it
    assert torch.equal(folded.decompress(enc["strings"], enc["shape"], condition=given, photo_shift=shift)["x_hat"],
                       fold)


class _LinearChange:
    """A stand-in decoder for the strength's search alone: the decode is ``raw + strength * change`` (``nan``: every
    strength other than 1 decodes to NaN), counting its decodes."""

    def __init__(self, raw, change, nan=False):
        self.raw, self.change, self.nan, self.decodes = raw, change, nan, 0

    def synthesize(self, y_hat, cond, photo_shift=None):
        self.decodes += 1
        s = photo_shift.strength
        if self.nan and s != 1.0:
            return torch.full_like(self.raw, float("nan"))
        return self.raw + s * self.change


@pytest.mark.parametrize("case", ["linear", "out of reach", "under one step", "nan"])
def test_the_strength_search_at_its_edges(case):
    """The bracket on the grid at its edges: the budget met in a few decodes where the change is linear in the
    strength; a budget no strength reaches (MAX_STRENGTH, capped); a budget that even one grid step exceeds (one
    step, the least change); decodes that go NaN (no crash, a strength on the grid)."""
    from psic_adapter.adapter.photo_shift import STRENGTH_STEP

    g = torch.Generator().manual_seed(3)
    original = 0.2 + 0.6 * torch.rand(1, 3, 32, 32, generator=g)
    raw = original + 0.03 * torch.randn(1, 3, 32, 32, generator=g)
    change = {"out of reach": 1e-4, "under one step": 50.0}.get(case, 0.02) * torch.randn(1, 3, 32, 32, generator=g)
    model = _LinearChange(raw, change, nan=case == "nan")
    budget = {"out of reach": 3.0, "under one step": 0.01}.get(case, 1.0)
    base = served(raw)
    strength, capped = ShiftSearch(MeanColour())._strength_for(model, None, None, [], raw, base, original,
                                                               tuple(raw.shape[-2:]), budget, 1.0)
    k = strength / STRENGTH_STEP
    assert k == round(k) and 1 <= k <= MAX_STRENGTH / STRENGTH_STEP
    drop = lambda s: psnr_drop(served(raw + s * change), base, original)  # noqa: E731
    if case == "linear":
        assert not capped and drop(strength) <= budget < drop(strength + STRENGTH_STEP)
        assert model.decodes <= 10  # secant steps land within a few grid steps; a bisection took about 15
    elif case == "out of reach":
        assert capped and strength == MAX_STRENGTH and drop(MAX_STRENGTH) <= budget
    elif case == "under one step":
        assert not capped and strength == STRENGTH_STEP and drop(STRENGTH_STEP) > budget
    else:
        assert not capped
