"""tools/widen_adapter.py (issue 15, runs WT): a wider spatial branch that decodes as the original did,
and one-line refusals. Tiny shapes, seconds."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from psic_adapter.adapter import PSICConfig, load_adapter, wrap_model

from .conftest import randomize_adapter, small_trainable_codec

KEY = "the owner's widening test key, 32"
TOOL = Path(__file__).resolve().parents[1] / "tools" / "widen_adapter.py"

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _tool():
    spec = importlib.util.spec_from_file_location("widen_adapter", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    codec = small_trainable_codec()
    model = randomize_adapter(wrap_model(copy.deepcopy(codec), PSICConfig(modulation="spatial", spatial_rank=4),
                                         key=KEY), std=0.1)
    folder = tmp_path_factory.mktemp("fitted") / "adapter"
    model.save_pretrained(folder)
    return codec, folder


def recorded_fingerprint(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        return f.metadata()["adapter_fingerprint"]


def _decodes(codec, folder, y, grad: bool = False):
    """Encrypted and owner's decodes of latent ``y``; without autograd the last branch is folded into the
    decoder's next layer where that is cheaper (adapter/fusion.py), with it the branch runs as it trains."""
    model = load_adapter(copy.deepcopy(codec), folder, key=KEY)
    with torch.set_grad_enabled(grad):
        return (model.synthesize(y, model.encrypted_condition()).detach(),
                model.synthesize(y, model.full_condition()).detach())


def test_the_widened_adapter_decodes_as_the_original_and_its_new_channels_can_learn(fitted, tmp_path):
    codec, folder = fitted
    out = tmp_path / "wide"
    assert _tool().main([str(folder), str(out), "--rank", "12", "--seed", "3"]) == 0
    wide = PSICConfig.load(out)
    assert wide.spatial_rank == 12 and wide.salt == PSICConfig.load(folder).salt  # same owner's key
    y = torch.randn(2, 48, 4, 5).round()
    enc, full = _decodes(codec, folder, y)
    assert (enc - full).abs().max() > 1e-3  # the adapter does something, so equality below means something
    for grad in (False, True):  # the folded decode (rank 12 folds here, rank 4 does not) and the branch as it trains
        wide_enc, wide_full = _decodes(codec, out, y, grad=grad)
        assert torch.allclose(wide_enc, enc, atol=1e-5), (grad, float((wide_enc - enc).abs().max()))
        assert torch.allclose(wide_full, full, atol=1e-5)  # the owner's decode too (this config's is keyed)
    model = load_adapter(copy.deepcopy(codec), out, key=KEY)
    # recorded as save_pretrained records it (psic info and the hub card read it); a new adapter to .psic files
    assert recorded_fingerprint(out) == model.adapter_fingerprint() != recorded_fingerprint(folder)
    assert model._fold_points == {"default": 2} and not load_adapter(copy.deepcopy(codec), folder, key=KEY)._fold_points
    branch = model.psic_adapters["default"].branches[0]
    # the new hidden channels are live (their 1x1 rows drawn, not zero) and feed nothing yet (their 3x3 columns
    # zero): the columns get a gradient from the first step, the rows once the columns have moved
    assert branch.reduce.weight.shape[0] == 12 and branch.reduce.weight[4:].abs().sum() > 0
    assert not branch.expand.weight[:, 4:].any()


def test_an_added_global_context_decodes_as_the_original_and_learns_from_the_first_step(fitted, tmp_path):
    codec, folder = fitted
    out = tmp_path / "context"
    assert _tool().main([str(folder), str(out), "--context", "5", "--seed", "1"]) == 0
    cfg = PSICConfig.load(out)
    assert cfg.spatial_context == 5 and cfg.spatial_rank == 4 and cfg.salt == PSICConfig.load(folder).salt
    y = torch.randn(2, 48, 4, 5).round()
    enc, full = _decodes(codec, folder, y)
    for grad in (False, True):
        got_enc, got_full = _decodes(codec, out, y, grad=grad)
        assert torch.allclose(got_enc, enc, atol=1e-5) and torch.allclose(got_full, full, atol=1e-5)
    model = load_adapter(copy.deepcopy(codec), out, key=KEY, is_trainable=True)
    assert recorded_fingerprint(out) == model.adapter_fingerprint() != recorded_fingerprint(folder)
    model.synthesize(y, model.encrypted_condition()).square().mean().backward()
    for branch in model.psic_adapters["default"].branches:  # the zero last layer gets a gradient at once
        assert branch.context[0].weight.abs().sum() > 0 and branch.context[2].weight.grad.abs().sum() > 0
    again = tmp_path / "again"
    assert _tool().main([str(out), str(again), "--context", "5"]) == 2 and not again.exists()  # one context only


def test_a_context_survives_widening_and_the_folded_decode_carries_it(fitted, tmp_path):
    from safetensors.torch import load_file, save_file

    codec, folder = fitted
    ctx = tmp_path / "ctx"
    assert _tool().main([str(folder), str(ctx), "--rank", "4", "--context", "3"]) == 0  # same rank, a context
    state = load_file(str(ctx / "adapter_model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for k in [k for k in state if ".context.2." in k]:  # a context that does something
        state[k] = torch.randn(state[k].shape, generator=g)
    save_file(state, str(ctx / "adapter_model.safetensors"))  # hand-edited: loads without a recorded fingerprint
    wide = tmp_path / "wide"
    assert _tool().main([str(ctx), str(wide), "--rank", "12", "--seed", "2"]) == 0  # folds at rank 12
    y = torch.randn(2, 48, 4, 5).round()
    enc = _decodes(codec, ctx, y)[0]
    without = _decodes(codec, folder, y)[0]
    assert (enc - without).abs().max() > 1e-4  # the context changes the decode
    for grad in (False, True):  # folded (no autograd) and as it trains: the same, context included
        assert torch.allclose(_decodes(codec, wide, y, grad=grad)[0], enc, atol=1e-5), grad


def test_narrowing_keeps_the_channels_that_carry_the_change_and_says_the_decode_changed(fitted, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    codec, folder = fitted
    state = load_file(str(folder / "adapter_model.safetensors"))
    silent = [n for n in state if n.endswith(".expand.weight")]
    for n in silent:  # hidden channels 0 and 2 of every branch feed nothing: narrowing to 2 must drop them
        state[n][:, [0, 2]] = 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_bytes((folder / "adapter_config.json").read_bytes())
    save_file(state, str(src / "adapter_model.safetensors"))  # no recorded fingerprint: loads with a note, as a hand-made file
    out = tmp_path / "narrow"
    assert _tool().main([str(src), str(out), "--rank", "2"]) == 0
    assert "DIFFERENT decode" in capsys.readouterr().out
    assert PSICConfig.load(out).spatial_rank == 2
    narrow = load_file(str(out / "adapter_model.safetensors"))
    for n in silent:
        prefix = n[: -len("expand.weight")]
        assert torch.equal(narrow[n], state[n][:, [1, 3]])  # channels 1 and 3 kept, in order
        assert torch.equal(narrow[prefix + "reduce.weight"], state[prefix + "reduce.weight"][[1, 3]])
    y = torch.randn(2, 48, 4, 5).round()
    enc = _decodes(codec, src, y)[0]
    assert torch.allclose(_decodes(codec, out, y)[0], enc, atol=1e-5)  # the dropped channels fed nothing


@pytest.mark.parametrize("args,message", [
    (["--rank", "4"], "already have 4 hidden channels"),
    (["--rank", "100000"], "spatial_rank must be an integer"),
    ([], "nothing to widen"),
    (["--context", "0"], "spatial_context must be an integer"),
])
def test_it_refuses_what_it_cannot_widen_in_one_line(fitted, tmp_path, capsys, args, message):
    _, folder = fitted
    assert _tool().main([str(folder), str(tmp_path / "wide"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "wide").exists()


def test_it_never_writes_into_an_existing_folder(fitted, tmp_path, capsys):
    _, folder = fitted
    (tmp_path / "wide").mkdir()
    assert _tool().main([str(folder), str(tmp_path / "wide"), "--rank", "8"]) == 2
    assert "exists" in capsys.readouterr().err and not any((tmp_path / "wide").iterdir())


def test_an_adapter_without_a_spatial_branch_or_no_adapter_at_all_is_refused_in_one_line(tmp_path, capsys):
    film = tmp_path / "film"
    wrap_model(small_trainable_codec(), PSICConfig(modulation="film"), key=KEY).save_pretrained(film)
    assert _tool().main([str(film), str(tmp_path / "wide"), "--rank", "8"]) == 2
    assert "no spatial branch" in capsys.readouterr().err
    assert _tool().main([str(tmp_path / "missing"), str(tmp_path / "wide"), "--rank", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("widen_adapter: error:") and err.count("\n") == 1 and not (tmp_path / "wide").exists()


def test_an_unwritable_output_is_one_line_and_leaves_nothing(fitted, tmp_path, capsys):
    _, folder = fitted
    (tmp_path / "file").write_text("not a folder")
    assert _tool().main([str(folder), str(tmp_path / "file" / "wide"), "--rank", "8"]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
