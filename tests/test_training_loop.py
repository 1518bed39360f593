"""psic_adapter.training.loop on its own (issue 16: it was tested only through the PSIC and BAvAFT trainers).

A toy trainer (three weights, SGD with momentum, a noise draw from the global RNG each step) over a list of
numbered items, so that each test sees which items each step got: the seeded and sharded order, the log, the
checkpoints, resume, and the refusals. Milliseconds a test.
"""

from __future__ import annotations

import json

import pytest
import torch

from psic_adapter.errors import ConfigError, OverwriteError, PSICError
from psic_adapter.training import TrainConfig
from psic_adapter.training.loop import CHECKPOINT_NAME, EpochSampler, TrainingLoop, psnr_of_mse

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def items(n: int = 6):
    return [{"image": torch.full((3,), float(i)), "index": i} for i in range(n)]


def config(**overrides) -> TrainConfig:
    cfg = dict(stage=2, adapter_only=True, steps=5, batch_size=2, log_every=2, num_workers=0, seed=3)
    cfg.update(overrides)
    return TrainConfig(**cfg)


class ToyLoop(TrainingLoop):
    """Fits ``w`` to each batch's mean (plus a little noise from the global RNG, which resume must restore)."""

    done_marker = ("done.json",)

    def __init__(self, dataset, cfg, out_dir, loss_at=None, val_every_calls=None):
        self._init_loop(dataset, cfg, out_dir, "cpu", False, {"toy": 1})
        self.w = torch.zeros(3, requires_grad=True)
        self.opt = torch.optim.SGD([self.w], lr=0.1, momentum=0.9)
        self.seen = []  # the item numbers of each step's batch
        self.loss_at = loss_at or {}  # step -> a loss to report instead (a NaN ...)
        self.finished = None
        self.validated = []

    def step(self, batch):
        x = batch["image"]
        loss = ((x.mean(0) + 0.01 * torch.randn(3) - self.w) ** 2).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.seen.append(list(batch["index"]))
        self.step_count += 1
        return {"loss": self.loss_at.get(self.step_count, float(loss.detach()))}

    def validate(self):
        self.validated.append(self.step_count)
        return {"w0": float(self.w[0].detach())}

    def checkpoint_state(self):
        return {"w": self.w.detach().clone(), "optimizer": self.opt.state_dict()}

    def load_checkpoint_state(self, state, path):
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["optimizer"])

    def finish(self, last):
        self.finished = last
        (self.out_dir / "done.json").write_text(json.dumps(last))
        self.save_checkpoint()
        return {"steps": self.step_count, "last": last}


def log_records(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ the order of the data
def test_epoch_sampler_is_seeded_per_epoch_sharded_and_starts_mid_epoch():
    s = EpochSampler(10, seed=1)
    first = list(s)
    assert sorted(first) == list(range(10)) and first == list(EpochSampler(10, seed=1))  # a permutation, repeatable
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(10))  # another order each epoch
    assert list(EpochSampler(10, seed=2)) != first
    s.set_epoch(1, start=4)
    assert list(s) == order(10, 1, 1)[4:] and len(s) == 6

    shards = [EpochSampler(10, seed=1, rank=r, world=3) for r in range(3)]
    got = [list(sh) for sh in shards]
    assert all(len(g) == 3 for g in got) and len({i for g in got for i in g}) == 9  # disjoint, 10 // 3 each
    assert [i for g in got for i in g] == first[:9]  # the ranks split the one order


def order(n, seed, epoch):
    """The sampler's order of ``epoch``."""
    s = EpochSampler(n, seed=seed)
    s.set_epoch(epoch)
    return list(s)


def test_psnr_of_mse():
    assert psnr_of_mse(torch.tensor(0.01)) == pytest.approx(20.0)
    assert psnr_of_mse(torch.tensor(0.0)) == 100.0  # a perfect decode is a number, not infinity


# ------------------------------------------------------------------ a run
def test_a_run_takes_its_steps_over_epochs_logs_validates_and_finishes(tmp_path):
    loop = ToyLoop(items(6), config(steps=5, log_every=2, val_every=2, val_data="unused"), tmp_path)
    result = loop.train()
    assert result["steps"] == loop.step_count == 5
    # 6 items, batches of 2: three batches an epoch in the sampler's order of that epoch
    flat = [i for b in loop.seen for i in b]
    assert all(len(b) == 2 for b in loop.seen)
    assert flat[:6] == order(6, 3, 0) and flat[6:] == order(6, 3, 1)[:4]
    assert (loop.epoch, loop.batch_in_epoch) == (1, 2)
    records = log_records(tmp_path)
    train = [r for r in records if not r.get("validation")]
    assert [r["step"] for r in train] == [2, 4, 5]  # every log_every steps, and the last
    assert all("loss" in r and r["img_per_s"] > 0 for r in train)
    assert loop.validated == [2, 4, 5]
    assert [r["step"] for r in records if r.get("validation")] == [2, 4, 5]
    assert loop.finished["loss"] == train[-1]["loss"]


def test_the_same_seed_gives_the_same_run(tmp_path):
    a, b = ToyLoop(items(), config(), tmp_path / "a"), ToyLoop(items(), config(), tmp_path / "b")
    a.train()
    b.train()
    assert a.seen == b.seen and torch.equal(a.w, b.w)
    c = ToyLoop(items(), config(seed=4), tmp_path / "c")
    c.train()
    assert c.seen != a.seen


def test_resume_is_bit_identical_across_an_epoch_boundary(tmp_path):
    straight = ToyLoop(items(), config(steps=5), tmp_path / "a")
    straight.train()
    first = ToyLoop(items(), config(steps=4, checkpoint_every=2), tmp_path / "b")
    first.train()
    resumed = ToyLoop(items(), config(steps=5), tmp_path / "b")
    resumed.train(resume=True)
    assert first.seen + resumed.seen == straight.seen  # the data order goes on where it stopped
    assert torch.equal(resumed.w, straight.w)  # weights, momentum and the global RNG's noise all restored
    assert [r["step"] for r in log_records(tmp_path / "b")] == [2, 4, 5]


def test_resume_drops_log_records_past_the_checkpoint(tmp_path):
    """A run stopped after its last checkpoint logged steps it will redo: they are dropped, not repeated."""
    stopped = ToyLoop(items(), config(steps=4, log_every=1, checkpoint_every=2), tmp_path, loss_at={4: float("nan")})
    with pytest.raises(PSICError):
        stopped.train()  # logged steps 1-3, the checkpoint is step 2's
    with open(tmp_path / "log.jsonl", "a") as fh:
        fh.write('{"step": 4, "cut')  # a line cut by the interruption
    again = ToyLoop(items(), config(steps=4, log_every=1, checkpoint_every=2), tmp_path)
    again.train(resume=True)
    assert again.seen == stopped.seen[2:]  # steps 3 and 4 again, on the same batches
    assert [r["step"] for r in log_records(tmp_path)] == [1, 2, 3, 4]


def test_resume_refuses_another_recipe_but_takes_more_steps(tmp_path):
    ToyLoop(items(), config(steps=2), tmp_path).train()
    (tmp_path / "done.json").unlink()
    with pytest.raises(PSICError, match=r"another recipe.*batch_size 2 -> 3"):
        ToyLoop(items(), config(steps=4, batch_size=3), tmp_path).train(resume=True)
    more = ToyLoop(items(), config(steps=4, log_every=1), tmp_path)  # steps and log_every may change
    assert more.train(resume=True)["steps"] == 4


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    from psic_adapter.training.checkpoints import load_state, save_state

    ToyLoop(items(), config(steps=2), tmp_path).train()
    (tmp_path / "done.json").unlink()
    state = load_state(tmp_path / CHECKPOINT_NAME)
    del state["train_config"]["feature_weight"]  # a run started before feature_weight was added
    save_state(tmp_path / CHECKPOINT_NAME, state)
    assert ToyLoop(items(), config(steps=4), tmp_path).train(resume=True)["steps"] == 4
    (tmp_path / "done.json").unlink()
    with pytest.raises(PSICError, match=r"another recipe.*feature_weight 0.0 -> 2.0"):  # not any value, its default
        ToyLoop(items(), config(steps=5, objective="margin", feature_weight=2.0), tmp_path).train(resume=True)


def test_resume_needs_a_checkpoint_and_refuses_one_past_the_steps_asked_for(tmp_path):
    with pytest.raises(PSICError, match="no checkpoint"):
        ToyLoop(items(), config(), tmp_path / "none").train(resume=True)
    ToyLoop(items(), config(steps=4), tmp_path).train()
    with pytest.raises(PSICError, match="past the 2 steps asked for: ask for more than 4 steps to go on training$"):
        ToyLoop(items(), config(steps=2), tmp_path).train(resume=True)  # no flag named: --steps or --rounds asks


# ------------------------------------------------------------------ refusals
def test_a_non_finite_loss_stops_the_run_with_nothing_of_that_step_logged_or_saved(tmp_path):
    from psic_adapter.training.checkpoints import load_state

    loop = ToyLoop(items(), config(steps=5, checkpoint_every=1), tmp_path, loss_at={3: float("nan")})
    with pytest.raises(PSICError, match="the loss became nan at step 3"):
        loop.train()
    assert loop.finished is None and not (tmp_path / "done.json").exists()
    assert loop._log_fh is None  # the log is closed on the way out
    assert [r["step"] for r in log_records(tmp_path)] == [2]
    assert load_state(tmp_path / CHECKPOINT_NAME)["step"] == 2  # the last good step's checkpoint


def test_a_dataset_smaller_than_a_batch_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="smaller than one batch of 4") as err:
        ToyLoop(items(3), config(batch_size=4), tmp_path).train()
    assert "\n" not in str(err.value)


def test_a_finished_run_and_its_log_are_never_overwritten_without_force(tmp_path):
    ToyLoop(items(), config(steps=2), tmp_path).train()
    with pytest.raises(OverwriteError, match="--force"):
        ToyLoop(items(), config(steps=2), tmp_path).train()
    (tmp_path / "done.json").unlink()
    with pytest.raises(OverwriteError, match="log.jsonl exists"):
        ToyLoop(items(), config(steps=2), tmp_path).train()
    ToyLoop(items(), config(steps=3, log_every=1), tmp_path).train(force=True)  # starts over: a new log
    assert [r["step"] for r in log_records(tmp_path)] == [1, 2, 3]


def test_out_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "a-file"
    out.write_text("mine")
    with pytest.raises(PSICError, match="is a file"):
        ToyLoop(items(), config(), out).train()
    assert out.read_text() == "mine"
