"""tools/where_the_budget_goes.py's E3 (issue 15): the best per-photo shift of the spatial branches' hidden
units, at the adapter's own energy. Tiny shapes, seconds."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch

from psic_adapter.adapter import PSICConfig, wrap_model

from .conftest import randomize_adapter, small_trainable_codec

TOOL = Path(__file__).resolve().parents[1] / "tools" / "where_the_budget_goes.py"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _tool():
    spec = importlib.util.spec_from_file_location("where_the_budget_goes", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MeanColour(torch.nn.Module):
    """A stand-in classifier: three classes scored by the image's mean red, green and blue."""

    def logits(self, x):
        return x.mean(dim=(2, 3)) * 10


def _spatial(codec, **config):
    """A random spatial adapter on a copy of ``codec`` whose decodes sit inside [0, 1] as a photo's do (the random
    codec's are centred on 0, where clamping would hide what the change does)."""
    codec = copy.deepcopy(codec)
    with torch.no_grad():
        codec.g_s[-1].bias += 0.5
    return randomize_adapter(wrap_model(codec, PSICConfig(modulation="spatial", spatial_rank=4, **config),
                                        key="the owner's budget test key, 32b"), std=0.1).eval()


def _decodes(tool, model, x):
    with torch.no_grad():
        y_hat = model.analyze(x)["y_hat"]
        base = tool.served(model.synthesize(y_hat, None))
        enc = tool.served(model.synthesize(y_hat, model.encrypted_condition()))
    return y_hat, base, enc


def _drop(tool, x, base, y):
    return 10 * math.log10(tool.mse(y, x) / tool.mse(base, x))


def test_the_context_ceiling_lowers_the_margin_at_the_adapters_own_cost():
    tool = _tool()
    model = _spatial(small_trainable_codec())
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = MeanColour()
    y_hat, base, enc = _decodes(tool, model, x)
    label = int(target.logits(base).argmax())
    drop = _drop(tool, x, base, enc)

    shifted = tool.context_ceiling(model, target, x, base, y_hat, (64, 64), drop, label, steps=30, lr=0.5)

    assert float(tool.margin(target.logits(shifted), label)) < float(tool.margin(target.logits(enc), label))
    assert _drop(tool, x, base, shifted) == pytest.approx(drop, abs=0.1)  # at the adapter's own cost (8 bits)
    _, _, again = _decodes(tool, model, x)  # and the adapter is left as it was
    assert torch.equal(again, enc) and not any("hidden" in vars(m) for m in model.modules())


def test_the_context_ceiling_keeps_an_adapters_own_context_and_restores_it_on_errors():
    tool = _tool()
    model = _spatial(small_trainable_codec(), spatial_context=3)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y_hat, base, enc = _decodes(tool, model, x)
    drop = _drop(tool, x, base, enc)
    # no step: every shift zero, so the adapter's own change (its context included) at its own cost
    same = tool.context_ceiling(model, MeanColour(), x, base, y_hat, (64, 64), drop, 0, steps=0, lr=0.5)
    assert (same - enc).abs().max() <= 2 / 255

    class Broken(MeanColour):
        def logits(self, x):
            raise RuntimeError("the target failed")

    with pytest.raises(RuntimeError, match="the target failed"):
        tool.context_ceiling(model, Broken(), x, base, y_hat, (64, 64), drop, 0, steps=3, lr=0.5)
    assert not any("hidden" in vars(m) for m in model.modules())


def test_context_activity_tells_a_used_context_from_an_unused_one():
    """tools/context_activity.py: a fresh context (zero last layer) adds nothing to any photo; a fitted one
    (here random) a shift that differs from photo to photo. The branches are left as they were."""
    spec = importlib.util.spec_from_file_location("context_activity", TOOL.parent / "context_activity.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    codec = small_trainable_codec()
    config = PSICConfig(modulation="spatial", spatial_rank=4, spatial_context=6)
    fresh = wrap_model(copy.deepcopy(codec), config, key="the owner's budget test key, 32b").eval()
    used = randomize_adapter(copy.deepcopy(fresh), std=0.3).eval()
    g = torch.Generator().manual_seed(1)
    photos = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 48, 64, generator=g) * 0.5]

    quiet, busy = tool.activity(fresh, photos, 64), tool.activity(used, photos, 64)

    assert len(quiet) == len(busy) == len(fresh.config.injection_points) > 0
    assert all(r["shift_rms"] == 0 and r["across_photos"] == 0 for r in quiet)
    assert all(r["across_photos"] > 0 and r["pre_activation_std"] > 0 and 0 <= r["dead"] <= r["units"] == 6
               for r in busy)
    assert not any("hidden" in vars(m) for m in used.modules())


def test_context_activity_refuses_another_adapters_checkpoint_and_junk_in_one_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("context_activity", TOOL.parent / "context_activity.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from psic_adapter.codec import load_codec
    from psic_adapter.training.checkpoints import save_state

    codec = load_codec("bmshj2018-hyperprior", 3, ["shipped"], device="cpu")
    config = PSICConfig(modulation="spatial", spatial_rank=2, spatial_context=2)
    mine = wrap_model(copy.deepcopy(codec), config, key="the owner's budget test key, 32b")
    mine.save_pretrained(tmp_path / "mine")
    other = wrap_model(copy.deepcopy(codec), config, key="the owner's budget test key, 32b")
    save_state(tmp_path / "other.safetensors", {"adapter_state": other.adapter_state_dict(),
                                                "adapter_config": other.config.to_dict()})
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    args = [str(tmp_path / "mine"), "--data", "samples", "--count", "1", "--size", "64"]

    assert tool.main(args) == 0
    assert capsys.readouterr().out.count("hidden units dead") == len(mine.config.injection_points)
    for bad, says in (("other.safetensors", "another adapter"), ("junk.safetensors", "not a psic checkpoint")):
        assert tool.main(args[:1] + [str(tmp_path / bad)] + args[1:]) == 2
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(SystemExit):
        tool.main(args + ["--count", "0"])


def test_learn_context_shift_finds_a_map_where_there_is_one_and_none_where_there_is_not():
    spec = importlib.util.spec_from_file_location("learn_context_shift", TOOL.parent / "learn_context_shift.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    g = torch.Generator().manual_seed(0)
    summaries = torch.randn(120, 8, generator=g)
    mapping = torch.randn(8, 3, generator=g)
    unrelated = torch.randn(120, 3, generator=g)
    records = [{"summary": [s], "shift": [s @ mapping]} for s in summaries]
    noise = [{"summary": [s], "shift": [u]} for s, u in zip(summaries, unrelated)]

    (told,), (untold,) = tool.fit(records), tool.fit(noise)

    assert told["heldout_r2"] > 0.99 and torch.allclose(tool.predict(told["w"], summaries[:2]), summaries[:2] @ mapping,
                                                         atol=0.05)
    assert untold["heldout_r2"] < 0.05
