"""The two-stage schedule on its own: which parameters train in each stage, and the phases."""

from __future__ import annotations

import copy

import pytest

from psic_adapter import PSICConfig, wrap_model
from psic_adapter.errors import ConfigError
from psic_adapter.training.schedule import PHASES, configure_trainable, phase_at

from .conftest import small_trainable_codec

KEY = b"a long enough schedule test key"


@pytest.fixture(scope="module")
def base():
    return small_trainable_codec()


def _names(params, model):
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_stage_1_trains_everything(base):
    model = wrap_model(copy.deepcopy(base), PSICConfig(), key=KEY)
    groups = configure_trainable(model, 1)
    aux = _names(groups["aux"], model)
    assert aux and all(n.endswith(".quantiles") for n in aux)
    assert all(p.requires_grad for p in model.parameters())
    assert model.base.training and model.base.g_a.training


def test_stage_2_freezes_the_encoder_and_the_entropy_models(base):
    model = wrap_model(copy.deepcopy(base), PSICConfig(), key=KEY)
    groups = configure_trainable(model, 2)
    trained = _names(groups["base"], model)
    assert trained and all(n.startswith("base.g_s.") for n in trained)
    assert not any(p.requires_grad for p in model.base.g_a.parameters())
    assert not model.base.g_a.training and model.base.g_s.training  # rounding, fixed statistics upstream
    assert groups["aux"] == []


def test_stage_2_adapter_only_trains_the_cltg_alone(base):
    model = wrap_model(copy.deepcopy(base), PSICConfig(), key=KEY)
    groups = configure_trainable(model, 2, adapter_only=True)
    assert groups["base"] == [] and groups["aux"] == []
    assert _names(groups["adapter"], model) == {n for n, _ in model.named_parameters() if n.startswith("psic_")}
    assert not any(p.requires_grad for p in model.base.parameters())
    with pytest.raises(ConfigError, match="stage-2 option"):
        configure_trainable(model, 1, adapter_only=True)


def test_phases_alternate():
    assert [phase_at(1, s).name for s in range(4)] == ["S1-1", "S1-2", "S1-1", "S1-2"]
    assert [phase_at(2, s).version for s in range(3)] == ["full", "encrypted", "full"]
    assert all(p.rate for p in PHASES[1]) and not any(p.rate for p in PHASES[2])
    with pytest.raises(ConfigError):
        phase_at(3, 0)
