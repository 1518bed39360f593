"""tools/where_the_budget_goes.py's E3 (issue 15): the best per-photo shift of the spatial branches' hidden
units, at the adapter's own energy. Tiny shapes, seconds."""

from __future__ import annotations

import copy
import importlib.util
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


def test_the_context_ceiling_lowers_the_margin_at_the_adapters_own_energy():
    tool = _tool()
    codec = small_trainable_codec()
    model = randomize_adapter(wrap_model(copy.deepcopy(codec), PSICConfig(modulation="spatial", spatial_rank=4),
                                         key="the owner's budget test key, 32b"), std=0.1).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = MeanColour()
    with torch.no_grad():
        y_hat = model.analyze(x)["y_hat"]
        base = tool.served(model.synthesize(y_hat, None))
        enc = tool.served(model.synthesize(y_hat, model.encrypted_condition()))
    label = int(target.logits(base).argmax())
    energy = float((enc - base).pow(2).sum())
    before = float(tool.margin(target.logits(enc), label))

    shifted = tool.context_ceiling(model, target, base, y_hat, (64, 64), energy, label, steps=30, lr=0.5)

    assert float(tool.margin(target.logits(shifted), label)) < before  # the shift bought margin
    assert float((shifted - base).pow(2).sum()) <= energy * 1.05  # within the adapter's own energy (8 bits)
    with torch.no_grad():  # and the adapter is left as it was
        assert torch.equal(tool.served(model.synthesize(y_hat, model.encrypted_condition())), enc)
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
    assert all(r["across_photos"] > 0 and 0 <= r["dead"] <= r["units"] == 6 for r in busy)
    assert not any("hidden" in vars(m) for m in used.modules())
