"""The command line and the Python API share one set of defaults (issue 16: ``psic bavaft train`` trained 200 steps
of 128 px crops with the margin objective while ``BAvAFTTrainConfig()`` trained 1000 of 256 px with UAEO).

Each command is parsed with its required arguments only, its config built the way the command builds it, and
every field compared with the config class's own default; every flag made from a config field must leave its
parser default unset, so that the config decides.
"""

from __future__ import annotations

import dataclasses

import pytest

from psic_adapter.cli import build_parser
from psic_adapter.options import default_of, flag_fields


def _parse(*argv):
    return build_parser(argv[0]).parse_args(list(argv))


def _same_as_defaults(cfg, cls, except_=()):
    for f in dataclasses.fields(cls):
        if f.name in except_:
            continue
        want = default_of(f)
        got = getattr(cfg, f.name)
        if isinstance(want, (list, tuple)):
            got, want = tuple(got), tuple(want)
        assert got == want, f"{cls.__name__}.{f.name}: the command line gives {got!r}, the API {want!r}"


def _flags_unset(args, cls, skip=()):
    for f in flag_fields(cls):
        if f.name not in skip:
            assert getattr(args, f.name, None) is None, f"--{f.name} has a parser default: the config's must decide"


def test_bavaft_train_defaults_are_the_configs():
    from psic_adapter.baselines.bavaft import BAvAFTTrainConfig
    from psic_adapter.cli.bavaft import train_config

    args = _parse("bavaft", "train", "--target", "efficientnet-lite0", "--data", "samples", "--out", "x")
    _flags_unset(args, BAvAFTTrainConfig)
    _same_as_defaults(train_config(args), BAvAFTTrainConfig)


def test_bavaft_eval_defaults_are_the_configs():
    from psic_adapter.cli.bavaft import EVAL_FLAGS, eval_config
    from psic_adapter.eval.config import EvalConfig

    args = _parse("bavaft", "eval", "dir", "--target", "efficientnet-lite0", "--out", "x")
    _flags_unset(args, EvalConfig, skip=[f.name for f in flag_fields(EvalConfig) if f.name not in EVAL_FLAGS])
    # BAvAFT has no key: no wrong keys and no white-box attack, by design
    _same_as_defaults(eval_config(args), EvalConfig, except_=("wrong_keys", "attack_steps"))


def test_eval_defaults_are_the_configs():
    from psic_adapter.cli.eval import eval_config
    from psic_adapter.eval.config import EvalConfig

    args = _parse("eval", "--adapter", "a", "--target", "efficientnet-lite0", "--out", "x")
    _flags_unset(args, EvalConfig)
    _same_as_defaults(eval_config(args), EvalConfig)


def test_demo_defaults_are_the_configs():
    from psic_adapter.cli.demo import demo_config
    from psic_adapter.demo import DemoConfig

    args = _parse("demo")
    _flags_unset(args, DemoConfig)
    _same_as_defaults(demo_config(args), DemoConfig)


@pytest.mark.parametrize("extra,recipe", [([], "paper"), (["--stage", "2", "--adapter-only"], "robust"),
                                          (["--recipe", "robust"], "robust")])
def test_train_defaults_are_the_recipes(extra, recipe):
    from psic_adapter.cli.train import recipe_of
    from psic_adapter.training import TrainConfig
    from psic_adapter.workflows import Recipe

    args = _parse("train", "--target", "efficientnet-lite0", "--data", "samples", "--out", "x", *extra)
    api = Recipe.named(recipe, **({"stage": 2, "adapter_only": True} if extra[:1] == ["--stage"] else {}))
    cli = recipe_of(args)
    assert cli.name == recipe
    assert ((cli.preset, cli.modulation, cli.spatial_rank, cli.spatial_context)
            == (api.preset, api.modulation, api.spatial_rank, api.spatial_context))
    assert cli.train.to_dict() == api.train.to_dict()
    if not extra:
        _flags_unset(args, TrainConfig)


def test_a_spatial_rank_and_context_reach_the_new_adapter():
    from psic_adapter.cli.train import recipe_of

    args = _parse("train", "--target", "t", "--data", "samples", "--out", "x", "--stage", "2", "--adapter-only",
                  "--spatial-rank", "8", "--spatial-context", "16")
    config = recipe_of(args).adapter_config()
    assert (config.spatial_rank, config.spatial_context) == (8, 16)
    assert recipe_of(_parse("train", "--target", "t", "--data", "samples", "--out", "x")).adapter_config().spatial_context is None


@pytest.mark.parametrize("extra,rank", [(["--stage", "2", "--adapter-only"], 8),  # the robust recipe's branch
                                        (["--stage", "2", "--adapter-only", "--spatial-rank", "32"], 32),
                                        (["--stage", "2", "--adapter-only", "--modulation", "film"], None),
                                        (["--modulation", "spatial"], None)])  # paper: no width named, 32
def test_the_robust_recipe_writes_a_branch_of_8_channels(extra, rank):
    """A config that names its width: one without ``spatial_rank`` means 32, the width before 0.1.3."""
    from psic_adapter.adapter import PSICConfig
    from psic_adapter.cli.train import recipe_of

    config = recipe_of(_parse("train", "--target", "t", "--data", "samples", "--out", "x", *extra)).adapter_config()
    assert config.spatial_rank == rank
    assert PSICConfig.from_dict(config.to_dict()).resolved_spatial_rank == (rank or 32)


def test_a_given_flag_wins_over_the_default():
    from psic_adapter.cli.bavaft import train_config

    args = _parse("bavaft", "train", "--target", "t", "--data", "samples", "--out", "x", "--steps", "7",
                  "--objective", "uaeo", "--batch", "4")
    cfg = train_config(args)
    assert (cfg.steps, cfg.objective, cfg.batch_size) == (7, "uaeo", 4)
