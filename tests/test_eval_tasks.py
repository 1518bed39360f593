"""The paper's other benchmark tasks (issue #5): ImageNet zero-shot, CelebA attributes, captioning.

Offline and small: 64x64 generated images, a narrow random hyperprior with a
randomized adapter, the tiny random CLIP of conftest, and a tiny random BLIP
captioner built from a config with a WordPiece vocabulary written here. The
models are random, so the numbers are meaningless: the tests check the parsing,
the metric arithmetic on hand-made cases, and that each task runs end to end.
"""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from psic_adapter import PSICConfig, wrap_model
from psic_adapter.data.captions import read_references
from psic_adapter.data.celeba import read_celeba_attributes, read_celeba_partition
from psic_adapter.errors import ConfigError, DataError
from psic_adapter.eval import table
from psic_adapter.eval import tasks as T
from psic_adapter.eval.protocol import PSICDecoder
from psic_adapter.eval.record import Classification, EvalResult, Stat, load_results
from psic_adapter.eval.runner import EvalConfig, classification_of
from psic_adapter.eval.tasks.common import subset

from .conftest import randomize_adapter, tiny_clip

KEY = "owner key for the task tests"
N, M = 32, 48  # a narrow bmshj2018-hyperprior: the tasks do not depend on the width, and it decodes fast
SYNSETS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
VERSIONS = ["original", "base", "full", "encrypted"]
SEEN = [*VERSIONS, "control"]  # what every classification measures


# ------------------------------------------------------------------ fixtures
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _codec(seed=0):
    from psic_adapter.codec import build_codec, prepare_for_coding

    torch.manual_seed(seed)
    return prepare_for_coding(build_codec("bmshj2018-hyperprior", N=N, M=M))


def _write_image(path, seed, size=(64, 64)):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size, mode="bicubic",
                                        align_corners=False).clamp(0, 1)
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def model():
    m = randomize_adapter(wrap_model(_codec(), PSICConfig(), key=KEY, N=N, M=M), std=0.5)
    yield m
    m.unwrap()


@pytest.fixture(scope="module")
def identity_model():
    """A fresh (untrained) adapter: every decode equals the base codec's."""
    m = wrap_model(_codec(), PSICConfig(), key=KEY)
    yield m
    m.unwrap()


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    for k, syn in enumerate(SYNSETS):
        (root / syn).mkdir()
        for j in range(2):
            _write_image(root / syn / f"ILSVRC2012_val_{k}{j}.JPEG", 10 * k + j)
    return root


ATTR_ROWS = {  # hand-written: 4 images x 40 attributes, +1 / -1
    "000001.jpg": [-1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, 1, 1,
                   -1, 1, -1, -1, 1, -1, -1, 1, -1, -1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1],
    "000002.jpg": [-1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, -1, 1,
                   -1, 1, -1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, -1, 1],
    "000003.jpg": [-1, -1, -1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                   1, -1, -1, 1, 1, -1, -1, 1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, 1],
    "000004.jpg": [1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, 1, -1, -1, 1, -1, -1, -1, 1,
                   1, 1, -1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1],
}
PARTITION = {"000001.jpg": 0, "000002.jpg": 2, "000003.jpg": 1, "000004.jpg": 2}


def _write_celeba(root, names=T.CELEBA_ATTRIBUTES, rows=ATTR_ROWS, count=None):
    root.mkdir(parents=True, exist_ok=True)
    lines = [str(len(rows) if count is None else count), " ".join(names) + " "]
    for f, r in rows.items():
        lines.append(f + " " + " ".join(f"{v:2d}" for v in r))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    return root / "list_attr_celeba.txt"


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    _write_celeba(root)
    (root / "list_eval_partition.txt").write_text("".join(f"{f} {s}\n" for f, s in PARTITION.items()))
    (root / "img_align_celeba").mkdir()
    for i, f in enumerate(ATTR_ROWS):
        _write_image(root / "img_align_celeba" / f, 100 + i, size=(72, 60))
    return root


CAPTIONS = {
    "1000_a.jpg": ["A dog runs on the grass .", "a brown dog is running", "the dog plays outside",
                   "A dog in a field", "a happy dog runs"],
    "1001_b.jpg": ["Two children play in the water .", "kids splash in a pool", "two kids swim",
                   "children playing in water", "the kids are in the pool"],
    "1002_c.jpg": ["A man rides a red bike on the street", "a cyclist on a road", "a man on a bicycle",
                   "someone riding a bike", "a man cycles down the street"],
}


@pytest.fixture(scope="module")
def flickr(tmp_path_factory):
    root = tmp_path_factory.mktemp("flickr")
    images = root / "Flicker8k_Dataset"
    images.mkdir()
    for i, name in enumerate(CAPTIONS):
        _write_image(images / name, 200 + i, size=(64, 80))
    lines = [f"{name}#{j}\t{c}" for name, caps in CAPTIONS.items() for j, c in enumerate(caps)]
    lines.append("9999_missing.jpg#0\ta picture nobody has")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text("1000_a.jpg\n1002_c.jpg\n")
    return {"root": root, "images": images, "tokens": root / "Flickr8k.token.txt",
            "dev": root / "Flickr_8k.devImages.txt"}


WORDS = ("a an the dog dogs cat man woman child children two red blue brown green water grass street field "
         "bike ball runs running plays playing sits on in of with is are and at to by near play swim ride").split()


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory):
    """A random BLIP captioner saved with save_pretrained: config + WordPiece vocabulary, no download."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-blip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "[DEC]"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast.from_pretrained(str(folder), bos_token="[DEC]")
    processor = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    )
    config = transformers.BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, encoder_hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                         sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16),
        projection_dim=16, image_text_hidden_size=16,
    )
    torch.manual_seed(0)
    blip = transformers.BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # make the random decoder prefer words over [UNK] and the special tokens
        blip.text_decoder.cls.predictions.bias[: 5] -= 5.0
        blip.text_decoder.cls.predictions.bias[-1] -= 5.0
    out = folder / "model"
    blip.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _nan_or_equal(a, b):
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


def _fake_target(kind, class_names=None):
    """Enough of a target for the checks that refuse it before any image is read."""
    return type("FakeTarget", (), {"kind": kind, "name": f"fake-{kind}", "class_names": class_names,
                                   "device": torch.device("cpu")})()


# ------------------------------------------------------------------ metric arithmetic
def test_classification_entry_on_hand_made_predictions():
    labels = torch.tensor([0, 1, 2, 3])
    preds = {"original": labels.clone(), "base": torch.tensor([0, 1, 2, 0]), "full": torch.tensor([0, 1, 2, 0]),
             "encrypted": torch.tensor([0, 2, 0, 3]), "control": torch.tensor([0, 1, 0, 3])}
    c = classification_of(preds, labels, ["base", "full", "encrypted"], "hand")
    assert isinstance(c, Classification) and c.label_source == "hand"
    assert c.accuracy == {"original": 1.0, "base": 0.75, "full": 0.75, "encrypted": 0.5, "control": 0.75}
    assert c.n_base_right == 3
    assert c.asr == pytest.approx(2 / 3)  # base right on 0,1,2; encrypted wrong on 1,2 (3 was never counted)
    assert c.control_asr == pytest.approx(1 / 3)  # the control flips image 2 only
    assert c.full_asr == 0.0 and c.agreement_with_base["full"] == 1.0
    assert "base" not in c.agreement_with_base
    assert c.agreement_with_base["encrypted"] == 0.25 and c.agreement_with_base["control"] == 0.5
    # encrypted == base: nothing flipped
    same = dict(preds, encrypted=preds["base"].clone())
    assert classification_of(same, labels, ["base", "full", "encrypted"], "hand").asr == 0.0
    # no key: no full version, and no control given: both rates undefined
    nokey = {k: v for k, v in preds.items() if k not in ("full", "control")}
    c = classification_of(nokey, labels, ["base", "encrypted"], "hand")
    assert set(c.accuracy) == {"original", "base", "encrypted"}
    assert math.isnan(c.full_asr) and math.isnan(c.control_asr)
    # [N, A] attribute matrices: every (image, attribute) pair is a sample
    y = torch.tensor([[1, -1], [1, 1]])
    attr = {"original": y, "base": y.clone(), "encrypted": torch.tensor([[-1, -1], [1, -1]]), "control": y.clone()}
    c = classification_of(attr, y, ["base", "encrypted"], "pairs")
    assert c.n_base_right == 4 and c.asr == 0.5 and c.accuracy["encrypted"] == 0.5 and c.control_asr == 0.0


def test_tokenize_caption_is_ptb_like():
    assert T.tokenize_caption("A dog's ball, on the GRASS.") == ["a", "dog", "'s", "ball", "on", "the", "grass"]
    assert T.tokenize_caption("They don't play (outside)!") == ["they", "do", "n't", "play", "outside"]
    assert T.tokenize_caption("a black-and-white dog ... at 3.5 m") == ["a", "black-and-white", "dog", "at", "3.5", "m"]
    assert T.tokenize_caption("  ") == []


def test_bleu_and_cider_extremes_and_a_hand_computed_value():
    pytest.importorskip("pycocoevalcap")
    refs = [["a dog runs on the green grass"], ["two children swim in a blue pool"], ["a man rides his bike home"]]
    same = T.caption_scores([r[0] for r in refs], refs)
    assert same["bleu4"] == pytest.approx(1.0, abs=1e-6) and same["bleu1"] == pytest.approx(1.0, abs=1e-6)
    assert same["cider"] == pytest.approx(10.0, abs=1e-6)  # CIDEr-D's maximum (cosine 1 at every n, x10)
    assert same["n"] == 3
    disjoint = T.caption_scores(["purple elephants sleep quietly today", "seven old clocks tick loudly",
                                 "snow falls over distant mountains"], refs)
    assert disjoint["bleu1"] == pytest.approx(0.0, abs=1e-6)
    assert disjoint["bleu4"] == pytest.approx(0.0, abs=1e-6) and disjoint["cider"] == pytest.approx(0.0, abs=1e-9)
    # BLEU-4 by hand: p1..p4 = 5/6, 3/5, 2/4, 1/3; candidate longer than the reference: no brevity penalty
    one = T.caption_scores(["A dog runs on the grass."], [["a dog runs on grass"]])
    assert one["bleu4"] == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-6)
    assert one["bleu1"] == pytest.approx(5 / 6, rel=1e-6)
    # CIDEr's document frequencies come from the corpus: one image alone always scores 0
    assert one["cider"] == 0.0
    # several references: the best-matching one carries BLEU; punctuation and case do not count
    multi = T.caption_scores(["Two children swim in a blue pool!"], [["kids in water", "two children swim in a blue pool"]])
    assert multi["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(T.caption_scores([], [])["bleu4"])
    with pytest.raises(ValueError):
        T.caption_scores(["a"], [])


# ------------------------------------------------------------------ ImageNet
def test_imagenet_zero_shot_over_the_1000_classes(model, clip, imagenet_root):
    r = T.imagenet_zero_shot(PSICDecoder(model, KEY), clip, imagenet_root)
    assert isinstance(r, EvalResult) and r.task == "imagenet" and r.method == "PSIC"
    assert list(r.scales) == ["native"] and r.primary == "native" and set(r.versions) == {"base", "full", "encrypted"}
    m = r.main
    assert m.n_images == 6 and len(r.per_image) == 6
    task, c = m.task, m.classification
    assert task["over"] == "imagenet" and task["classes_decided_among"] == 1000 and task["n_folders"] == 3
    assert task["root"] == str(imagenet_root) and task["prompt"] == "a photo of a {}."
    assert c.label_source.startswith("ImageNet-1k labels")
    assert set(c.accuracy) == set(SEEN)
    assert set(task["per_class"]) == set(SYNSETS)
    assert {e["name"] for e in task["per_class"].values()} == set(SYNSETS.values())
    assert all(e["n"] == 2 for e in task["per_class"].values())
    rows = r.per_image
    assert [row["label"] for row in rows] == [n for n in SYNSETS.values() for _ in range(2)]
    for v in SEEN:  # the accuracies are the per-image top-1 rows counted
        assert c.accuracy[v] == pytest.approx(np.mean([row[f"top1_{v}"] == row["label"] for row in rows]))
    for syn, e in task["per_class"].items():  # and so are the per-class ones
        mine = [row for row in rows if row["label"] == SYNSETS[syn]]
        for v in VERSIONS:
            assert e["accuracy"][v] == pytest.approx(np.mean([row[f"top1_{v}"] == row["label"] for row in mine]))
    right = [row["top1_base"] == row["label"] for row in rows]

    def flips(v):
        return sum(row["top1_base"] == row["label"] and row[f"top1_{v}"] != row["label"] for row in rows)

    assert c.n_base_right == sum(right)
    for rate, v in ((c.asr, "encrypted"), (c.control_asr, "control"), (c.full_asr, "full")):
        if sum(right):
            assert rate == pytest.approx(flips(v) / sum(right))
        else:
            assert math.isnan(rate)
    for v in ("full", "encrypted", "control"):
        assert c.agreement_with_base[v] == pytest.approx(np.mean([row[f"top1_{v}"] == row["top1_base"] for row in rows]))
    for v in ("base", "full", "encrypted", "control"):
        assert m.quality[v]["psnr"].n == 6
        assert m.quality[v]["psnr"].mean == pytest.approx(np.mean([row[f"psnr_{v}"] for row in rows]))
    for v in ("base", "full", "encrypted"):  # one bitstream: every version costs the same bits
        assert m.bpp[v].n == 6 and m.bpp[v].mean > 0 and m.bpp[v].mean == pytest.approx(m.bpp["base"].mean)
    # the result survives metrics.json
    back = EvalResult.from_dict(json.loads(json.dumps(r.to_dict(), allow_nan=False)))
    assert back.task == "imagenet" and back.main.task["per_class"].keys() == task["per_class"].keys()
    assert _nan_or_equal(back.main.classification.asr, c.asr)


def test_imagenet_arbitrary_folders_and_limit(model, clip, tmp_path):
    for k, folder in enumerate(["cat", "dog", "red_car"]):
        (tmp_path / folder).mkdir()
        for j in range(2):
            _write_image(tmp_path / folder / f"{folder}{j}.png", 50 + 10 * k + j)
    r = T.imagenet_zero_shot(PSICDecoder(model, None), clip, tmp_path, limit=3)
    m = r.main
    task, c = m.task, m.classification
    assert task["over"] == "folders" and task["classes_decided_among"] == 3
    assert m.n_images == 3 and set(r.versions) == {"base", "encrypted"}
    assert "full" not in m.quality and "full" not in m.bpp and "full" not in c.accuracy
    assert math.isnan(c.full_asr) and "control" in c.accuracy
    assert c.label_source.startswith("folder index")
    assert {row["label"] for row in r.per_image} <= {"cat", "dog", "red car"}
    assert {row["top1_base"] for row in r.per_image} <= {"cat", "dog", "red car"}
    chosen = [int(row["name"][-1]) + 2 * ["cat", "dog", "red_car"].index(row["name"][:-1]) for row in r.per_image]
    assert chosen == subset(6, 3, seed=0)  # a seeded draw across the classes, kept in order
    with pytest.raises(ConfigError, match="2 class names"):
        T.imagenet_zero_shot(PSICDecoder(model, None), clip, tmp_path, config=EvalConfig(class_names=["a", "b"]))
    # an ImageNet classifier decides among its own 1000 classes: it needs synset folders
    with pytest.raises(ConfigError, match="synset folders"):
        T.imagenet_zero_shot(PSICDecoder(model, None), _fake_target("classifier"), tmp_path)


def test_imagenet_classifier_needs_1000_classes(model, imagenet_root):
    with pytest.raises(ConfigError, match="not ImageNet's 1000"):
        T.imagenet_zero_shot(PSICDecoder(model, None), _fake_target("classifier", ["a", "b"]), imagenet_root)


def test_subset_is_seeded_and_sorted():
    assert subset(5, None, 0) == [0, 1, 2, 3, 4] and subset(5, 9, 0) == [0, 1, 2, 3, 4]
    a = subset(100, 10, seed=3)
    assert a == sorted(a) and len(set(a)) == 10 and a == subset(100, 10, seed=3) and a != subset(100, 10, seed=4)
    with pytest.raises(ConfigError):
        subset(5, 0, 0)


# ------------------------------------------------------------------ CelebA
def test_celeba_parsing(tmp_path):
    t = read_celeba_attributes(_write_celeba(tmp_path / "a"))
    assert t.names == list(T.CELEBA_ATTRIBUTES) and len(t.names) == 40
    assert t.files == list(ATTR_ROWS)
    assert t.labels.dtype == torch.long and t.labels.shape == (4, 40)
    assert torch.equal(t.labels, torch.tensor(list(ATTR_ROWS.values())))
    assert t.labels[3, t.names.index("Eyeglasses")] == 1 and t.labels[0, t.names.index("Eyeglasses")] == -1
    # the Kaggle CSV re-export
    csv_path = tmp_path / "list_attr_celeba.csv"
    csv_path.write_text("image_id," + ",".join(T.CELEBA_ATTRIBUTES) + "\n"
                        + "".join(f"{f}," + ",".join(map(str, r)) + "\n" for f, r in ATTR_ROWS.items()))
    c = read_celeba_attributes(csv_path)
    assert c.names == t.names and torch.equal(c.labels, t.labels)
    # re-exports with 0/1 values read as -1/+1
    zero_one = tmp_path / "z" / "list_attr_celeba.csv"
    zero_one.parent.mkdir()
    zero_one.write_text("image_id," + ",".join(T.CELEBA_ATTRIBUTES) + "\n"
                        + "".join(f"{f}," + ",".join(str(max(v, 0)) for v in r) + "\n" for f, r in ATTR_ROWS.items()))
    assert torch.equal(read_celeba_attributes(zero_one).labels, t.labels)
    # the partition file
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("".join(f"{f} {s}\n" for f, s in PARTITION.items()))
    assert read_celeba_partition(part) == PARTITION
    bad_part = tmp_path / "bad_partition.txt"
    bad_part.write_text("000001.jpg 0\n000002.jpg 7\n")
    with pytest.raises(DataError, match="line 2"):
        read_celeba_partition(bad_part)
    # broken tables name the line
    with pytest.raises(DataError, match="announces 5 images"):
        read_celeba_attributes(_write_celeba(tmp_path / "b", count=5))
    bad = dict(ATTR_ROWS, **{"000002.jpg": ATTR_ROWS["000002.jpg"][:39]})
    with pytest.raises(DataError, match="line 4: 39 values for 40"):
        read_celeba_attributes(_write_celeba(tmp_path / "c", rows=bad))
    bad = dict(ATTR_ROWS, **{"000003.jpg": [2] + ATTR_ROWS["000003.jpg"][1:]})
    with pytest.raises(DataError, match="line 5"):
        read_celeba_attributes(_write_celeba(tmp_path / "d", rows=bad))


def test_celeba_prompt_table_covers_the_40_attributes():
    pairs = T.celeba_prompts(T.CELEBA_ATTRIBUTES)
    assert len(pairs) == 40 and set(T.CELEBA_PROMPTS) == set(T.CELEBA_ATTRIBUTES)
    assert all(p != n for p, n in pairs) and len({s for pair in pairs for s in pair}) == 80
    assert T.CELEBA_PROMPTS["Eyeglasses"] == ("a photo of a person with eyeglasses", "a photo of a person without eyeglasses")
    assert T.celeba_prompts(["Freckles"]) == [("a photo of a person with freckles", "a photo of a person without freckles")]
    assert T.celeba_prompts(["Male"], {"Male": ("a man", "a woman")}) == [("a man", "a woman")]
    with pytest.raises(ConfigError):
        T.celeba_prompts(["Male"], {"Male": ("same", "same")})


def test_celeba_attributes_end_to_end(model, clip, celeba_root):
    r = T.celeba_attributes(PSICDecoder(model, KEY), clip, celeba_root)  # the test split: 000002 and 000004
    m = r.main
    task, c = m.task, m.classification
    assert r.task == "celeba" and task["split"] == "test" and m.n_images == 2 and task["n_missing"] == 0
    assert task["attribute_file"] == str(celeba_root / "list_attr_celeba.txt")
    assert [row["name"] for row in r.per_image] == ["000002", "000004"]
    assert task["attributes"] == list(T.CELEBA_ATTRIBUTES) and len(task["per_attribute"]) == 40
    assert c.label_source.startswith("CelebA attribute labels")
    assert set(c.accuracy) == set(SEEN)
    for v in SEEN:  # pair accuracy == attributes right / (images x 40)
        right = sum(row[f"attributes_right_{v}"] for row in r.per_image)
        assert c.accuracy[v] == pytest.approx(right / 80)
        assert task["mean_attribute_accuracy"][v] == pytest.approx(c.accuracy[v])
    assert c.n_base_right == sum(row["attributes_right_base"] for row in r.per_image)
    per = task["per_attribute"]
    assert sum(e["n_base_right"] for e in per.values()) == c.n_base_right
    assert 0.0 <= c.asr <= 1.0 and 0.0 <= c.control_asr <= 1.0
    assert task["mean_attribute_asr"] == pytest.approx(Stat.of([e["asr"] for e in per.values()]).mean, nan_ok=True)
    assert task["mean_attribute_control_asr"] == pytest.approx(
        Stat.of([e["control_asr"] for e in per.values()]).mean, nan_ok=True)
    assert per["Eyeglasses"]["n_positive"] == 1
    assert per["Male"]["prompts"] == ["a photo of a man", "a photo of a woman"]
    assert set(per["Male"]["accuracy"]) == set(SEEN)
    for v in ("base", "full", "encrypted", "control"):
        assert m.quality[v]["psnr"].n == 2

    every = T.celeba_attributes(PSICDecoder(model, None), clip, celeba_root, split="all", limit=2)
    assert every.main.n_images == 2 and every.main.task["split"] == "all"
    assert "full" not in every.main.classification.accuracy and "full" not in every.main.quality
    assert [row["name"] for row in every.per_image] == [f"00000{i + 1}" for i in subset(4, 2, seed=0)]


def test_celeba_custom_prompts(model, clip, celeba_root):
    r = T.celeba_attributes(PSICDecoder(model, None), clip, celeba_root, limit=1,
                            prompts={"Male": ("a man", "a woman")})
    assert r.main.task["per_attribute"]["Male"]["prompts"] == ["a man", "a woman"]
    with pytest.raises(ConfigError, match="CLIP target"):
        T.celeba_attributes(PSICDecoder(model, None), _fake_target("classifier"), celeba_root)


def test_celeba_untrained_adapter_flips_no_attribute(identity_model, clip, celeba_root):
    r = T.celeba_attributes(PSICDecoder(identity_model, KEY), clip, celeba_root)
    c = r.main.classification
    assert c.n_base_right > 0  # 80 pairs, +-1 each: a random CLIP gets some right
    assert c.asr == 0.0 and c.agreement_with_base["encrypted"] == 1.0
    # the encrypted change has no energy: the control is the base decode
    assert c.control_asr == 0.0 and c.accuracy["control"] == c.accuracy["base"]
    assert all(e["asr"] == 0.0 or math.isnan(e["asr"]) for e in r.main.task["per_attribute"].values())


def test_task_results_print_no_nan(model, clip, celeba_root):
    r = T.celeba_attributes(PSICDecoder(model, None), clip, celeba_root, limit=1)
    from psic_adapter.eval.report.html import headline_sentences

    text = table.summary(r, "run") + "\n" + "\n".join(headline_sentences(r))
    assert not re.search(r"\bnan", text), text  # an unmeasured number reads n/a (or is measured)


def test_celeba_missing_images_and_bad_input(model, clip, celeba_root, tmp_path):
    decoder = PSICDecoder(model, None)
    root = tmp_path / "partial"
    _write_celeba(root)
    (root / "img_align_celeba").mkdir()
    for f in list(ATTR_ROWS)[:2]:
        (root / "img_align_celeba" / f).write_bytes((celeba_root / "img_align_celeba" / f).read_bytes())
    with pytest.warns(UserWarning, match="2 of 4 listed images are missing"):
        r = T.celeba_attributes(decoder, clip, root, split="all")
    assert r.main.task["n_missing"] == 2 and r.main.n_images == 2
    with pytest.raises(DataError, match="list_attr_celeba"):
        T.celeba_attributes(decoder, clip, tmp_path / "partial" / "img_align_celeba")
    with pytest.raises(ConfigError, match="split"):
        T.celeba_attributes(decoder, clip, celeba_root, split="holdout")


# ------------------------------------------------------------------ captioning
def test_read_references_in_every_layout(flickr, tmp_path):
    with pytest.warns(UserWarning, match="1 images with references are not in"):
        items = read_references(flickr["tokens"], flickr["images"])
    assert [p.split("/")[-1] for p, _ in items] == list(CAPTIONS)
    assert [caps for _, caps in items] == list(CAPTIONS.values())
    dev = read_references(flickr["tokens"], flickr["images"], split=flickr["dev"])
    assert [p.split("/")[-1] for p, _ in dev] == ["1000_a.jpg", "1002_c.jpg"]
    # our CSV layout: one reference each (rows naming the same image add references)
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text('image,caption\n1000_a.jpg,"a dog, running"\n1001_b.jpg,kids\n1000_a.jpg,a dog\n')
    items = read_references(csv_path, flickr["images"])
    assert [(p.split("/")[-1], c) for p, c in items] == [("1000_a.jpg", ["a dog, running", "a dog"]), ("1001_b.jpg", ["kids"])]
    # a caption folder (references=None)
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_image(folder / "x.png", 1)
    (folder / "x.txt").write_text("a small picture\n")
    assert [c for _, c in read_references(None, folder)] == [["a small picture"]]
    # COCO JSON, Karpathy JSON with its split
    coco = tmp_path / "captions_val.json"
    coco.write_text(json.dumps({"images": [{"id": 7, "file_name": "1001_b.jpg"}],
                                "annotations": [{"image_id": 7, "caption": "kids swim"}, {"image_id": 7, "caption": "a pool"}]}))
    assert [c for _, c in read_references(coco, flickr["images"])] == [["kids swim", "a pool"]]
    karpathy = tmp_path / "dataset_flickr8k.json"
    karpathy.write_text(json.dumps({"images": [
        {"filename": "1000_a.jpg", "split": "val", "sentences": [{"raw": "a dog"}]},
        {"filename": "1002_c.jpg", "split": "test", "sentences": [{"raw": "a man"}]}]}))
    assert [c for _, c in read_references(karpathy, flickr["images"], split="val")] == [["a dog"]]
    with pytest.raises(ConfigError, match="neither a file of image names nor a split"):
        read_references(flickr["tokens"], flickr["images"], split="val")
    with pytest.raises(DataError, match="no image with reference captions"), pytest.warns(UserWarning):
        read_references({"nowhere.jpg": ["x"]}, flickr["images"])


class ScriptedCaptioner:
    """Captions by call order: captioning() asks for original, base, (full,) encrypted, control in turn."""

    name = "scripted"

    def __init__(self, per_version):
        self.per_version, self.calls = per_version, 0

    def __call__(self, images):
        caps = self.per_version[self.calls % len(self.per_version)]
        self.calls += 1
        return [caps] * len(images)


def test_captioning_metrics_on_a_scripted_captioner(model, flickr):
    pytest.importorskip("pycocoevalcap")
    refs = "A dog runs on the grass ."
    cap = ScriptedCaptioner([refs, refs, refs, "purple elephants sleep quietly today", refs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = T.captioning(PSICDecoder(model, KEY), cap, flickr["images"], references=flickr["tokens"], batch_size=8)
    m = r.main
    task = m.task
    assert r.task == "caption" and r.target == "scripted"
    assert cap.calls == 5 and m.n_images == 3 and task["captioner"] == "scripted"
    assert task["references_per_image"] == 5.0
    assert set(task["scores"]) == set(SEEN)
    assert task["control_vs_base"]["identical"] == 1.0  # the scripted control captions equal the base ones
    assert task["scores"]["base"] == task["scores"]["original"] == task["scores"]["full"]
    assert task["scores"]["encrypted"]["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert task["scores"]["encrypted"]["cider"] == pytest.approx(0.0, abs=1e-9)
    assert task["full_vs_base"]["bleu4"] == pytest.approx(1.0, abs=1e-6) and task["full_vs_base"]["identical"] == 1.0
    assert task["encrypted_vs_base"]["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert task["encrypted_vs_base"]["identical"] == 0.0
    expected = T.caption_scores([refs] * 3, list(CAPTIONS.values()))
    assert task["scores"]["base"] == expected  # the first image's own reference scores 1 of 3
    assert [row["name"] for row in r.per_image] == [n[:-4] for n in CAPTIONS]
    assert r.per_image[0]["caption_encrypted"] == "purple elephants sleep quietly today"
    assert r.per_image[0]["references"] == CAPTIONS["1000_a.jpg"]
    # no classes: the classification is empty, the quality (and the control's) is measured
    c = m.classification
    assert c.n_base_right == 0 and c.accuracy == {} and math.isnan(c.asr)
    for v in ("base", "full", "encrypted", "control"):
        assert m.quality[v]["psnr"].n == 3

    # batches of 2 (two captioner calls per version), no original, no key: the captions stay with their images
    cap = ScriptedCaptioner([refs, "purple elephants sleep quietly today", refs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = T.captioning(PSICDecoder(model, None), cap, flickr["images"], references=flickr["tokens"], batch_size=2,
                         include_original=False)
    task = r.main.task
    assert cap.calls == 6 and set(task["scores"]) == {"base", "encrypted", "control"} and "full_vs_base" not in task
    assert [row["caption_base"] for row in r.per_image] == [refs] * 3
    assert [row["caption_encrypted"] for row in r.per_image] == ["purple elephants sleep quietly today"] * 3
    assert all("caption_original" not in row for row in r.per_image)
    assert [row["references"] for row in r.per_image] == list(CAPTIONS.values())


def test_captioning_refuses_a_captioner_that_is_not_callable(model, flickr):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="callable"):
            T.captioning(PSICDecoder(model, None), "Salesforce/blip-image-captioning-base", flickr["images"],
                         references=flickr["tokens"])


class WrongCountCaptioner:
    name = "short"

    def __call__(self, images):
        return ["a dog"] * (len(images) - 1)


def test_captioning_refuses_a_wrong_number_of_captions(model, flickr):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="returned 1 captions for 2 images"):
            T.captioning(PSICDecoder(model, None), WrongCountCaptioner(), flickr["images"],
                         references=flickr["tokens"], split=flickr["dev"])


def test_captioning_with_a_tiny_hugging_face_model(model, flickr, tiny_captioner):
    pytest.importorskip("pycocoevalcap")
    decoder = PSICDecoder(model, KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = T.captioning(decoder, T.HFCaptioner(tiny_captioner, max_new_tokens=8), flickr["images"],
                         references=flickr["tokens"], limit=2, split=flickr["dev"], batch_size=2)
    task = r.main.task
    assert r.task == "caption" and r.main.n_images == 2 and task["max_new_tokens"] == 8
    assert task["captioner"] == str(tiny_captioner)
    assert set(task["scores"]) == set(SEEN)
    for v in VERSIONS:
        s = task["scores"][v]
        assert set(s) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "n"} and s["n"] == 2
        assert 0.0 <= s["bleu4"] <= 1.0 and s["cider"] >= 0.0
    for row in r.per_image:
        for v in VERSIONS:
            caption = row[f"caption_{v}"]
            assert isinstance(caption, str) and set(T.tokenize_caption(caption)) <= set(WORDS)
    assert any(row["caption_base"] for row in r.per_image)  # the biased random decoder says words
    assert 0.0 <= task["encrypted_vs_base"]["bleu4"] <= 1.0
    # the same model loaded again, without the original: the same (deterministic) captions
    again = T.captioning(decoder, T.HFCaptioner(tiny_captioner, max_new_tokens=8), flickr["images"],
                         references=flickr["tokens"], split=flickr["dev"], include_original=False)
    assert "original" not in again.main.task["scores"]
    assert [row["caption_base"] for row in again.per_image] == [row["caption_base"] for row in r.per_image]
    with pytest.raises(ConfigError, match="could not load the captioner"):
        T.HFCaptioner(flickr["root"] / "no-such-model")


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    from psic_adapter.codec import save_codec

    folder = tmp_path_factory.mktemp("adapter")
    ckpt = save_codec(_codec(), folder / "hp-narrow.safetensors")
    key_file = folder / "owner.key"
    key_file.write_text(KEY + "\n")
    m = randomize_adapter(wrap_model(_codec(), PSICConfig(), key=KEY.encode(), N=N, M=M))
    adapter = m.save_pretrained(folder / "run" / "adapter")
    m.unwrap()
    return {"adapter": adapter, "ckpt": ckpt, "key_file": key_file}


def _eval(saved, out, *extra):
    from psic_adapter.cli import main

    argv = ["eval", "--adapter", saved["adapter"], "--checkpoint", saved["ckpt"], "--key-file", saved["key_file"],
            "--out", out, *extra]
    return main([str(a) for a in argv])


@pytest.mark.parametrize("task", ["imagenet", "celeba", "caption"])
def test_cli_tasks_write_a_report(task, saved_adapter, clip, imagenet_root, celeba_root, flickr, tiny_captioner,
                                  tmp_path, monkeypatch, capsys):
    import psic_adapter.targets

    monkeypatch.setattr(psic_adapter.targets, "build_target", lambda *a, **k: clip)
    extra = {
        "imagenet": ["--target", "clip:ViT-B-32", "--data", imagenet_root, "--count", "2"],
        "celeba": ["--target", "clip:ViT-B-32", "--data", celeba_root],
        "caption": ["--data", flickr["images"], "--captions", flickr["tokens"], "--captioner", tiny_captioner,
                    "--split", flickr["dev"], "--max-new-tokens", "6"],
    }[task]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = _eval(saved_adapter, tmp_path / "report", "--task", task, *extra)
    out = capsys.readouterr().out
    assert rc == 0
    assert "report:" in out and "run: PSIC against" in out and "native" in out  # the table, then the page
    html = (tmp_path / "report" / "report.html").read_text()
    raw = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert raw["schema"] == 2 and len(raw["runs"]) == 1
    [r] = load_results(tmp_path / "report")
    assert r.task == task and r.primary == "native" and set(r.versions) == {"base", "full", "encrypted"}
    assert r.meta["key_given"] is True and r.meta["name"] == "run" and r.meta["data"] == str(extra[extra.index("--data") + 1])
    m = r.main
    assert m.quality["full"]["psnr"].n == m.n_images and len(r.per_image) == m.n_images
    if task == "imagenet":
        assert m.n_images == 2 and m.task["over"] == "imagenet" and set(m.classification.accuracy) == set(SEEN)
        assert "Per class" in html
    elif task == "celeba":
        assert m.n_images == 2 and m.task["split"] == "test" and len(m.task["per_attribute"]) == 40
        assert "control" in m.classification.accuracy and "Per attribute" in html
    else:
        assert m.n_images == 2 and m.task["max_new_tokens"] == 6 and set(m.task["scores"]) == set(SEEN)
        assert "Captions" in html


def test_cli_task_usage(saved_adapter, tmp_path, capsys):
    def one_line_error(rc, *words):
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("psic: error:") and err.strip().count("\n") == 0, err
        assert all(w in err for w in words), err

    one_line_error(_eval(saved_adapter, tmp_path / "r", "--task", "imagenet", "--target", "clip:ViT-B-32"),
                   "--task imagenet needs --data DIR")
    one_line_error(_eval(saved_adapter, tmp_path / "r", "--task", "caption", "--data", tmp_path), "--captioner")
    one_line_error(_eval(saved_adapter, tmp_path / "r", "--task", "celeba", "--target", "clip:ViT-B-32",
                         "--data", tmp_path, tmp_path), "one --data folder")
    for flag in (["--crop", "64"], ["--scales", "native"]):
        one_line_error(_eval(saved_adapter, tmp_path / "r", "--task", "imagenet", "--target", "clip:ViT-B-32",
                             "--data", tmp_path, *flag), "--crop and --scales", "--task classify only")
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit) as info:  # a task that needs a target: a usage error
        _eval(saved_adapter, tmp_path / "r", "--task", "celeba", "--data", tmp_path)
    assert info.value.code == 2 and "--target" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # classify still needs a target: a usage error
        _eval(saved_adapter, tmp_path / "r")
    assert info.value.code == 2 and "--target" in capsys.readouterr().err


def test_cli_task_report_shows_the_gallery(saved_adapter, clip, celeba_root, tmp_path, monkeypatch, capsys):
    import psic_adapter.targets

    monkeypatch.setattr(psic_adapter.targets, "build_target", lambda *a, **k: clip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = _eval(saved_adapter, tmp_path / "report", "--task", "celeba", "--target", "clip:ViT-B-32",
                   "--data", celeba_root, "--count", "1")
    assert rc == 0, capsys.readouterr().err
    html = (tmp_path / "report" / "report.html").read_text()
    assert "What changed" in html and "<img" in html  # the versions of the images, as for --task classify
