"""``psic train --rounds``: the measured recipe (fit, calibrate, fit on from the calibrated adapter, ...) as one
command, resumable round by round; and ``psic calibrate --data samples`` fitting on the training photos only."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from psic_adapter import PSICConfig, wrap_model
from psic_adapter import workflows
from psic_adapter.adapter.config import CONFIG_NAME, WEIGHTS_NAME
from psic_adapter.cli import main

KEY = b"a key of enough bytes for these tests"


def _write_adapter(folder: Path, steps: int, strength=None, salt=None) -> Path:
    """An adapter folder as far as the rounds read it: its config's fitted steps (and strength, salt)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"training": {"steps_done": steps}, **({"strength": strength} if strength else {}),
              **({"salt": salt} if salt else {})}
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    (folder / WEIGHTS_NAME).write_bytes(b"")
    return folder


STRENGTH = {"proxy": "latent_nonzero", "intercept": 2.0, "slope": 0.9, "min": 0.25, "max": 4.0, "target_db": 0.8}


@pytest.fixture()
def fake_steps(monkeypatch):
    """workflows.train / workflows.calibrate replaced by stand-ins that write what the real ones write and record
    how they were called (the orchestration is under test here, not the fit)."""
    import inspect

    calls = []
    real_train, real_calibrate = inspect.signature(workflows.train), inspect.signature(workflows.calibrate)

    def train(recipe, *, out, adapter=None, resume=False, force=False, **kwargs):
        real_train.bind(recipe, out=out, adapter=adapter, resume=resume, force=force, **kwargs)  # the real call's
        calls.append(("train", Path(out).name, recipe.train.steps, str(adapter) if adapter else None, resume,
                      recipe.shape_given))
        return {"adapter": _write_adapter(Path(out) / "adapter", recipe.train.steps), "steps": recipe.train.steps,
                "is_main": True}

    def calibrate(adapter, out, *, data, checkpoint=None, force=False, log=None, **kwargs):
        real_calibrate.bind(adapter, out, data=data, checkpoint=checkpoint, force=force, log=log, **kwargs)
        calls.append(("calibrate", str(adapter), str(out)))
        steps = json.loads((Path(adapter) / CONFIG_NAME).read_text())["training"]["steps_done"]
        return {"adapter": _write_adapter(Path(out), steps, STRENGTH), "r2": 0.5}

    monkeypatch.setattr(workflows, "train", train)
    monkeypatch.setattr(workflows, "calibrate", calibrate)
    import psic_adapter.training as training  # a checkpoint's adapter: round 3's below was fitted from round 2's

    monkeypatch.setattr(training, "checkpoint_adapter_config", lambda run: PSICConfig(strength=STRENGTH))
    return calls


def _recipe(**given):
    return workflows.Recipe.named(stage=2, adapter_only=True, **given)


def test_each_round_starts_from_the_last_calibrated_adapter(fake_steps, tmp_path):
    out = tmp_path / "run"
    result = workflows.train_rounds(_recipe(spatial_rank=4), [3, 2, 5], out=out, data="photos", key=KEY,
                                    target="efficientnet-lite0", checkpoint=["shipped"], device="cpu")
    r1, r2, r3 = (out / f"round-{k}" for k in (1, 2, 3))
    assert fake_steps == [
        ("train", "round-1", 3, None, False, ("spatial_rank",)),  # the new adapter's shape, in round 1 only
        ("calibrate", str(r1 / "adapter"), str(r1 / "adapter-cal")),
        ("train", "round-2", 2, str(r1 / "adapter-cal"), False, ()),
        ("calibrate", str(r2 / "adapter"), str(r2 / "adapter-cal")),
        ("train", "round-3", 5, str(r2 / "adapter-cal"), False, ()),
        ("calibrate", str(r3 / "adapter"), str(r3 / "adapter-cal")),
    ]
    assert result["adapter"] == r3 / "adapter-cal" and len(result["rounds"]) == 3


def test_resume_goes_on_from_the_first_round_not_finished(fake_steps, tmp_path):
    out = tmp_path / "run"
    _write_adapter(out / "round-1" / "adapter-cal", 3, STRENGTH)  # round 1: fitted and calibrated
    _write_adapter(out / "round-2" / "adapter", 2)                # round 2: fitted, not calibrated
    (out / "round-3").mkdir()
    (out / "round-3" / "checkpoint.safetensors").write_bytes(b"")  # round 3: cut off mid-fit
    workflows.train_rounds(_recipe(), [3, 2, 5, 4], out=out, data="photos", key=KEY, resume=True,
                           target="efficientnet-lite0")
    r1, r2, r3, r4 = (out / f"round-{k}" for k in (1, 2, 3, 4))
    assert fake_steps == [
        ("calibrate", str(r2 / "adapter"), str(r2 / "adapter-cal")),
        ("train", "round-3", 5, str(r2 / "adapter-cal"), True, ()),
        ("calibrate", str(r3 / "adapter"), str(r3 / "adapter-cal")),
        ("train", "round-4", 4, str(r3 / "adapter-cal"), False, ()),  # never started: a fresh fit
        ("calibrate", str(r4 / "adapter"), str(r4 / "adapter-cal")),
    ]


def test_without_resume_a_finished_round_is_fitted_again_only_as_the_fit_allows(fake_steps, tmp_path):
    """No --resume: every round is fitted (the real fit refuses an existing run without --force)."""
    out = tmp_path / "run"
    _write_adapter(out / "round-1" / "adapter-cal", 1, STRENGTH)
    workflows.train_rounds(_recipe(), [1], out=out, data="photos", key=KEY, target="efficientnet-lite0")
    assert [c[0] for c in fake_steps] == ["train", "calibrate"]


@pytest.mark.parametrize("extra, message", [
    (["--rounds", "10", "--steps", "5"], "leave out --steps"),
    (["--rounds", "10", "0"], "each at least 1"),
    (["--rounds", "10", "--stage", "1"], "add --stage 2 --adapter-only"),
    (["--rounds", "10", "--stage", "2"], "add --stage 2 --adapter-only"),
])
def test_rounds_refusals_are_one_line(extra, message, tmp_path, capsys):
    key = tmp_path / "k"
    key.write_text("a key of enough bytes for training\n")
    argv = ["train", "--checkpoint", "shipped", "--target", "efficientnet-lite0", "--target-weights", "random",
            "--data", "samples", "--key-file", str(key), "--out", str(tmp_path / "run"), *extra]
    if "--stage" not in extra:
        argv += ["--stage", "2", "--adapter-only"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_rounds_on_the_command_line_reach_the_workflow(monkeypatch, tmp_path, capsys):
    seen = {}

    def train_rounds(recipe, rounds, **kwargs):
        seen.update(rounds=list(rounds), every=recipe.train.checkpoint_every, **kwargs)
        return {"rounds": [], "adapter": Path(kwargs["out"]) / "round-2" / "adapter-cal"}

    monkeypatch.setattr(workflows, "train_rounds", train_rounds)
    key = tmp_path / "k"
    key.write_text("a key of enough bytes for training\n")
    rc = main(["train", "--checkpoint", "shipped", "--target", "efficientnet-lite0", "--data", "photos",
               "--stage", "2", "--adapter-only", "--key-file", str(key), "--out", str(tmp_path / "run"),
               "--rounds", "7", "9", "--resume"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert seen["rounds"] == [7, 9] and seen["resume"] is True and seen["checkpoint"] == ["shipped"]
    assert seen["every"] == 0  # the recipe as given: train_rounds fills in its checkpoints (below)
    assert "2 rounds (16 steps); adapter: " in printed.out and "round-2" in printed.out


@pytest.mark.parametrize("given, every", [(None, 100), (0, 100), (7, 7)])
def test_rounds_checkpoint_every_hundred_steps_unless_the_recipe_says(fake_steps, tmp_path, monkeypatch, given,
                                                                      every):
    """A robust fit checkpoints only at its end: a round cut off would start again. The API and the CLI alike."""
    seen = []
    fake_train = workflows.train

    def train(recipe, **kwargs):
        seen.append(recipe.train.checkpoint_every)
        return fake_train(recipe, **kwargs)

    monkeypatch.setattr(workflows, "train", train)
    workflows.train_rounds(_recipe(checkpoint_every=given), [2, 3], out=tmp_path / "run", data="photos", key=KEY,
                           target="efficientnet-lite0")
    assert seen == [every, every]


def test_calibrating_on_samples_reads_the_training_photos_only(hyperprior, tmp_path, monkeypatch):
    """`--data samples` is the bundled photos; `psic eval --data samples` measures on their test split, so the
    strength must not be fitted on it."""
    import psic_adapter.training.calibrate as calibration
    from psic_adapter.codec import save_codec
    from psic_adapter.data import TRAIN_PHOTOS

    class Seen(Exception):
        pass

    def fit_strength(model, images, target_db, **kwargs):
        raise Seen(sum(1 for _ in images))

    monkeypatch.setattr(calibration, "fit_strength", fit_strength)
    ckpt = save_codec(hyperprior, tmp_path / "hp.safetensors")
    adapter = wrap_model(copy.deepcopy(hyperprior), PSICConfig(modulation="spatial"), key=KEY).save_pretrained(
        tmp_path / "adapter")
    with pytest.raises(Seen) as seen:
        workflows.calibrate(adapter, tmp_path / "cal", data="samples", checkpoint=[str(ckpt)], count=None)
    assert seen.value.args[0] == len(TRAIN_PHOTOS)
    assert json.loads((adapter / CONFIG_NAME).read_text()).get("strength") is None


def _rounds(out, rounds, **kwargs):
    return workflows.train_rounds(_recipe(), rounds, out=out, data="photos", key=KEY, target="efficientnet-lite0",
                                  **kwargs)


def test_resume_refuses_rounds_that_are_not_this_runs(fake_steps, tmp_path, monkeypatch):
    import psic_adapter.training as training
    from psic_adapter.errors import ConfigError

    out = tmp_path / "run"
    _write_adapter(out / "round-1" / "adapter-cal", 3, STRENGTH)
    with pytest.raises(ConfigError, match=r"round-1/adapter-cal was fitted for 3 steps, and --rounds asks 2 of round 1"):
        _rounds(out, [2, 2], resume=True)
    _write_adapter(out / "round-2" / "adapter", 5)
    with pytest.raises(ConfigError, match=r"round-2/adapter was fitted for 5 steps, and --rounds asks 2 of round 2"):
        _rounds(out, [3, 2], resume=True)
    (out / "round-2" / "adapter" / CONFIG_NAME).unlink()
    (out / "round-2" / "checkpoint.safetensors").write_bytes(b"")
    monkeypatch.setattr(training, "checkpoint_adapter_config", lambda run: PSICConfig())  # round 1's start, not 2's
    with pytest.raises(ConfigError, match=r"checkpoint.safetensors was not fitted from .*round-1/adapter-cal: "
                                          r"remove .*round-2 to fit round 2 of 2 again"):
        _rounds(out, [3, 2], resume=True)
    assert fake_steps == []  # refused before anything was fitted or calibrated


def test_a_round_cut_off_before_its_first_checkpoint_needs_force(fake_steps, tmp_path):
    from psic_adapter.errors import ConfigError

    out = tmp_path / "run"
    (out / "round-1").mkdir(parents=True)
    (out / "round-1" / "log.jsonl").write_text("")
    with pytest.raises(ConfigError, match="round 1 of 1 was cut off before its first checkpoint .* add --force"):
        _rounds(out, [2], resume=True)
    _rounds(out, [2], resume=True, force=True)
    assert [c[0] for c in fake_steps] == ["train", "calibrate"] and fake_steps[0][4] is False  # from its start


def test_rounds_write_inside_out_only(fake_steps, tmp_path):
    from psic_adapter.errors import ConfigError

    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "round-1").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="round-1 is a link"):
        _rounds(out, [2])
    (out / "round-1").unlink()
    (out / "round-1").write_text("")
    with pytest.raises(ConfigError, match="round-1 is a file, not round 1 of 1's folder"):
        _rounds(out, [2])
    assert fake_steps == [] and not any(elsewhere.iterdir())


def test_a_rounds_error_says_which_round_and_names_no_flag(monkeypatch, tmp_path):
    """The Trainer's own message reaches the user under the round's name; it names no --steps (which --rounds refuses)."""
    from psic_adapter.errors import PSICError

    def train(recipe, **kwargs):
        raise PSICError("ckpt: the checkpoint is at step 2, past the 1 steps asked for: ask for more than 2 steps to go on training")

    monkeypatch.setattr(workflows, "train", train)
    with pytest.raises(PSICError, match=r"^round 1 of 1: ckpt: .* ask for more than 2 steps to go on training$"):
        _rounds(tmp_path / "run", [1])
    with pytest.raises(PSICError, match="leave out --from-scratch"):
        _rounds(tmp_path / "run", [1], from_scratch=True)


def test_an_adapter_config_naming_no_codec_is_one_line(tmp_path, capsys):
    """An edited adapter_config.json without its base codec reached CompressAI's name lookup (a traceback)."""
    folder = _write_adapter(tmp_path / "adapter", 3)
    rc = main(["calibrate", str(folder), str(tmp_path / "cal"), "--data", "samples", "--checkpoint", "shipped"])
    err = capsys.readouterr().err
    assert rc != 0 and "names no base codec" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_refuses_a_round_fitted_from_another_adapter(fake_steps, tmp_path):
    """Every round continues one adapter (its salt): a kept round 1 must be the --adapter given now."""
    from psic_adapter.errors import ConfigError

    out = tmp_path / "run"
    given = _write_adapter(tmp_path / "mine", 9, salt="11" * 16)
    _write_adapter(out / "round-1" / "adapter-cal", 3, STRENGTH, salt="22" * 16)
    with pytest.raises(ConfigError, match=r"round-1/adapter-cal was not fitted from .*mine"):
        _rounds(out, [3], resume=True, adapter=given)
    _write_adapter(out / "round-1" / "adapter-cal", 3, STRENGTH, salt="11" * 16)
    assert _rounds(out, [3], resume=True, adapter=given)["adapter"] == out / "round-1" / "adapter-cal"
    assert fake_steps == []
