"""psic_adapter.workflows, called directly as the demo and the Python API do: a recipe's two configs, a file
protected and opened both ways (tiny codec, offline)."""

from __future__ import annotations

import json

import pytest
import torch

from psic_adapter import PSICConfig, wrap_model
from psic_adapter.bitstream.images import load_image, save_image
from psic_adapter.errors import ConfigError, KeyMismatchError
from psic_adapter.workflows import Recipe, open_file, protect_file

from .conftest import randomize_adapter, small_trainable_codec

KEY = "owner secret, long enough"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_recipe_holds_both_configs_and_explicit_settings_win():
    from psic_adapter.training.config import RECIPES

    robust = Recipe.named(stage=2, adapter_only=True)  # the default of adapter-only fitting
    assert robust.name == "robust"
    assert (robust.preset, robust.modulation) == (RECIPES["robust"]["adapter"]["preset"],
                                                  RECIPES["robust"]["adapter"]["modulation"])
    assert robust.train.steps == RECIPES["robust"]["train"]["steps"]
    mine = Recipe.named("robust", modulation="film", steps=7, batch_size=None)  # None: not given
    assert (mine.modulation, mine.train.steps, mine.train.batch_size) == ("film", 7, robust.train.batch_size)
    assert Recipe.named().name == "paper"
    assert mine.adapter_config().condition == "key" and mine.adapter_config(public=True).condition == "public"
    with pytest.raises(ConfigError):
        Recipe.named("nonsense")


def test_settings_that_shape_a_new_adapter_are_refused_beside_one_to_go_on_fitting(tmp_path):
    from psic_adapter import workflows as wf

    assert Recipe.named("robust").shape_given == () and Recipe.named(spatial_rank=8).shape_given == ("spatial_rank",)
    recipe = Recipe.named("robust", modulation="film", spatial_context=4)
    with pytest.raises(ConfigError, match="--modulation, --spatial-context shape a new adapter") as err:
        wf.train(recipe, target="efficientnet-lite0", data="samples", out=tmp_path / "run", adapter=tmp_path / "a",
                 key="k" * 32)  # refused before the codec, the target or the adapter is loaded
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    wf.refuse_reshaping(recipe, None)  # a new adapter: they are what shapes it


def test_a_recipe_builds_its_adapter_with_the_full_version_its_training_needs():
    """Where the decoder trains the adapter says so up front (full_version "condition"): the trainer no longer
    changes it, so ``psic train`` builds it that way; adapter-only fits keep the base decode."""
    assert Recipe.named(stage=1).adapter_config().full_version == "condition"
    assert Recipe.named(stage=2).adapter_config().full_version == "condition"
    assert Recipe.named(stage=2, adapter_only=True).adapter_config().full_version == "base"
    assert Recipe.named("paper", stage=2, adapter_only=True).adapter_config(public=True).full_version == "base"


@pytest.mark.parametrize("stage", [1, 2])
def test_fit_trains_the_decoder_with_a_new_adapter_and_refuses_an_adapter_only_one(stage, tmp_path):
    """``psic train``'s path below the parsing: a new adapter for a run that trains the decoder fits (stage 1, stage 2
    without adapter_only); going on from an adapter-only adapter (--adapter) is refused in one line, nothing written."""
    from psic_adapter.data import SamplePhotos
    from psic_adapter.workflows import BaseCodec, fit

    from .conftest import tiny_clip

    photos = SamplePhotos("train", crop=64, repeats=2)
    recipe = Recipe.named("paper", stage=stage, steps=1, batch_size=4, crop=64, log_every=1)
    codec = BaseCodec(small_trainable_codec(), "bmshj2018-hyperprior", None)
    result = fit(recipe, codec, tiny_clip(), photos, tmp_path / "run", key=KEY)
    assert result["steps"] == 1 and result["codec"]  # the decoder trained: the codec is saved beside the adapter
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["full_version"] == "condition"

    adapter_only = wrap_model(small_trainable_codec(), PSICConfig(), key=KEY).save_pretrained(tmp_path / "ao")
    with pytest.raises(ConfigError, match="adapter-only") as err:
        fit(recipe, BaseCodec(small_trainable_codec(), "bmshj2018-hyperprior", None), None, photos,
            tmp_path / "again", key=KEY, adapter=adapter_only)
    assert "\n" not in str(err.value) and not (tmp_path / "again").exists()


def test_protect_and_open_a_file_both_ways(tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(40, 72), mode="bicubic",
                                        align_corners=False).clamp(0, 1)
    image = save_image(x, tmp_path / "photo.png")
    codec = small_trainable_codec()
    model = randomize_adapter(wrap_model(codec, PSICConfig(modulation="spatial"), key=KEY))
    res = protect_file(image, tmp_path / "photo.psic", model=model, codec="bmshj2018-hyperprior")
    assert res.path.is_file() and (res.height, res.width) == (40, 72)
    full, header = open_file(res.path, tmp_path / "full.png", model=model, key=lambda: KEY)  # read after the checks
    enc, _ = open_file(res.path, tmp_path / "enc.png", model=model)
    plain, _ = open_file(res.path, tmp_path / "plain.png", model=model, plain=True)
    assert (full["version"], enc["version"]) == ("full", "encrypted") and (header.width, header.height) == (72, 40)
    a, b, e = (load_image(tmp_path / f"{n}.png")[0] for n in ("full", "plain", "enc"))
    assert torch.equal(a, b) and not torch.equal(a, e)  # the key gives the base decode, bit for bit
    with pytest.raises(KeyMismatchError):
        open_file(res.path, tmp_path / "wrong.png", model=model, key="another key, long enough too")
    assert not (tmp_path / "wrong.png").exists()
    model.unwrap()
