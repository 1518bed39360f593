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
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from psic_adapter import PSICConfig, wrap_model
from psic_adapter.errors import ConfigError, DataError
from psic_adapter.eval import tasks as T
from psic_adapter.eval.runner import classification_summary

from .conftest import randomize_adapter, tiny_clip

KEY = "owner key for the task tests"
N, M = 32, 48  # a narrow bmshj2018-hyperprior: the tasks do not depend on the width, and it decodes fast
SYNSETS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
VERSIONS = ["original", "base", "full", "encrypted"]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these tiny models gain nothing from two, and on a shared
    2-core machine OpenMP's barriers can make every small op 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _codec(seed=0):
    from psic_adapter.codecs import build_codec, prepare_for_coding

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


# ------------------------------------------------------------------ metric arithmetic
def test_classification_entry_on_hand_made_predictions():
    labels = torch.tensor([0, 1, 2, 3])
    preds = {"original": labels.clone(), "base": torch.tensor([0, 1, 2, 0]), "full": torch.tensor([0, 1, 2, 0]),
             "encrypted": torch.tensor([0, 2, 0, 3])}
    c = classification_summary(preds, labels, ["base", "full", "encrypted"], "hand")
    assert c["accuracy"] == {"original": 1.0, "base": 0.75, "full": 0.75, "encrypted": 0.5}
    assert c["n_base_right"] == 3
    assert c["asr"] == pytest.approx(2 / 3)  # base right on 0,1,2; encrypted wrong on 1,2 (3 was never counted)
    assert c["full_asr"] == 0.0 and c["full_agreement_with_base"] == 1.0
    # encrypted == base: nothing flipped
    same = dict(preds, encrypted=preds["base"].clone())
    assert classification_summary(same, labels, ["base", "full", "encrypted"], "hand")["asr"] == 0.0
    # [N, A] attribute matrices: every (image, attribute) pair is a sample
    y = torch.tensor([[1, -1], [1, 1]])
    attr = {"original": y, "base": y.clone(), "encrypted": torch.tensor([[-1, -1], [1, -1]])}
    c = classification_summary(attr, y, ["base", "encrypted"], "pairs")
    assert c["n_base_right"] == 4 and c["asr"] == 0.5 and c["accuracy"]["encrypted"] == 0.5


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
    r = T.imagenet_zero_shot(model, clip, imagenet_root, key=KEY)
    assert r["task"] == "imagenet" and r["n_images"] == 6
    task = r["imagenet"]
    assert task["over"] == "imagenet" and task["classes_decided_among"] == 1000 and task["n_folders"] == 3
    assert set(task["accuracy"]) == set(VERSIONS)
    assert set(task["per_class"]) == set(SYNSETS)
    assert {c["name"] for c in task["per_class"].values()} == set(SYNSETS.values())
    assert [row["label"] for row in r["per_image"]] == [n for n in SYNSETS.values() for _ in range(2)]
    for v in VERSIONS:  # the accuracies are the per-image top-1 rows counted
        assert task["accuracy"][v] == pytest.approx(np.mean([row[f"top1_{v}"] == row["label"] for row in r["per_image"]]))
    right = [row["top1_base"] == row["label"] for row in r["per_image"]]
    flipped = [row["top1_base"] == row["label"] and row["top1_encrypted"] != row["label"] for row in r["per_image"]]
    assert task["n_base_right"] == sum(right)
    if sum(right):
        assert task["asr"] == pytest.approx(sum(flipped) / sum(right))
    else:
        assert math.isnan(task["asr"])
    for k, v in r["classification"].items():  # the run's classification is the task's
        assert task[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(task[k]))
    for v in ("base", "full", "encrypted"):
        assert r["quality"][v]["psnr"]["n"] == 6
    assert r["bpp"]["mean"] > 0 and len(r["_grid"]) == 6
    h = T.task_headline(r)
    assert set(h) >= {"imagenet_top1_original", "imagenet_top1_encrypted", "imagenet_asr", "imagenet_full_asr"}


def test_imagenet_arbitrary_folders_and_limit(model, clip, tmp_path):
    for k, folder in enumerate(["cat", "dog", "red_car"]):
        (tmp_path / folder).mkdir()
        for j in range(2):
            _write_image(tmp_path / folder / f"{folder}{j}.png", 50 + 10 * k + j)
    r = T.imagenet_zero_shot(model, clip, tmp_path, key=None, limit=3)
    task = r["imagenet"]
    assert task["over"] == "folders" and task["classes_decided_among"] == 3
    assert r["n_images"] == 3 and "full" not in r["quality"] and "full" not in task["accuracy"]
    assert task["label_source"].startswith("folder index")
    assert {row["label"] for row in r["per_image"]} <= {"cat", "dog", "red car"}
    assert {row["top1_base"] for row in r["per_image"]} <= {"cat", "dog", "red car"}
    chosen = [int(row["name"][-1]) + 2 * ["cat", "dog", "red_car"].index(row["name"][:-1]) for row in r["per_image"]]
    assert chosen == T._subset(6, 3, seed=0)  # a seeded draw across the classes, kept in order
    with pytest.raises(ConfigError, match="2 class names"):
        T.imagenet_zero_shot(model, clip, tmp_path, config=T.EvalConfig(class_names=["a", "b"]))


def test_subset_is_seeded_and_sorted():
    assert T._subset(5, None, 0) == [0, 1, 2, 3, 4] and T._subset(5, 9, 0) == [0, 1, 2, 3, 4]
    a = T._subset(100, 10, seed=3)
    assert a == sorted(a) and len(set(a)) == 10 and a == T._subset(100, 10, seed=3) and a != T._subset(100, 10, seed=4)
    with pytest.raises(ConfigError):
        T._subset(5, 0, 0)


# ------------------------------------------------------------------ CelebA
def test_celeba_parsing(tmp_path):
    t = T.read_celeba_attributes(_write_celeba(tmp_path / "a"))
    assert t.names == list(T.CELEBA_ATTRIBUTES) and len(t.names) == 40
    assert t.files == list(ATTR_ROWS)
    assert t.labels.dtype == torch.long and t.labels.shape == (4, 40)
    assert torch.equal(t.labels, torch.tensor(list(ATTR_ROWS.values())))
    assert t.labels[3, t.names.index("Eyeglasses")] == 1 and t.labels[0, t.names.index("Eyeglasses")] == -1
    # the Kaggle CSV re-export
    csv_path = tmp_path / "list_attr_celeba.csv"
    csv_path.write_text("image_id," + ",".join(T.CELEBA_ATTRIBUTES) + "\n"
                        + "".join(f"{f}," + ",".join(map(str, r)) + "\n" for f, r in ATTR_ROWS.items()))
    c = T.read_celeba_attributes(csv_path)
    assert c.names == t.names and torch.equal(c.labels, t.labels)
    # the partition file
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("".join(f"{f} {s}\n" for f, s in PARTITION.items()))
    assert T.read_celeba_partition(part) == PARTITION
    # broken tables name the line
    with pytest.raises(DataError, match="announces 5 images"):
        T.read_celeba_attributes(_write_celeba(tmp_path / "b", count=5))
    bad = dict(ATTR_ROWS, **{"000002.jpg": ATTR_ROWS["000002.jpg"][:39]})
    with pytest.raises(DataError, match="line 4: 39 values for 40"):
        T.read_celeba_attributes(_write_celeba(tmp_path / "c", rows=bad))
    bad = dict(ATTR_ROWS, **{"000003.jpg": [2] + ATTR_ROWS["000003.jpg"][1:]})
    with pytest.raises(DataError, match="line 5"):
        T.read_celeba_attributes(_write_celeba(tmp_path / "d", rows=bad))


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
    r = T.celeba_attributes(model, clip, celeba_root, key=KEY)  # the test split: 000002 and 000004
    task = r["celeba"]
    assert r["task"] == "celeba" and task["split"] == "test" and r["n_images"] == 2
    assert [row["name"] for row in r["per_image"]] == ["000002", "000004"]
    assert task["attributes"] == list(T.CELEBA_ATTRIBUTES) and len(task["per_attribute"]) == 40
    for v in VERSIONS:  # pair accuracy == attributes right / (images x 40)
        right = sum(row[f"attributes_right_{v}"] for row in r["per_image"])
        assert task["accuracy"][v] == pytest.approx(right / 80)
        assert task["mean_attribute_accuracy"][v] == pytest.approx(task["accuracy"][v])
    assert task["n_base_right"] == sum(row["attributes_right_base"] for row in r["per_image"])
    assert 0.0 <= task["asr"] <= 1.0
    assert task["per_attribute"]["Eyeglasses"]["n_positive"] == 1
    assert task["per_attribute"]["Male"]["prompts"] == ["a photo of a man", "a photo of a woman"]
    assert set(T.task_headline(r)) >= {"celeba_acc_base", "celeba_acc_encrypted", "celeba_asr"}

    every = T.celeba_attributes(model, clip, celeba_root, key=None, split="all", limit=2)
    assert every["n_images"] == 2 and every["celeba"]["split"] == "all" and "full" not in every["celeba"]["accuracy"]


def test_celeba_untrained_adapter_flips_no_attribute(identity_model, clip, celeba_root, tmp_path):
    r = T.celeba_attributes(identity_model, clip, celeba_root, key=KEY)
    c = r["celeba"]
    assert c["n_base_right"] > 0  # 80 pairs, +-1 each: a random CLIP gets some right
    assert c["asr"] == 0.0 and c["encrypted_agreement_with_base"] == 1.0
    assert all(e["asr"] == 0.0 or math.isnan(e["asr"]) for e in c["per_attribute"].values())


def test_celeba_missing_images_and_bad_input(model, clip, celeba_root, tmp_path):
    root = tmp_path / "partial"
    _write_celeba(root)
    (root / "img_align_celeba").mkdir()
    for f in list(ATTR_ROWS)[:2]:
        (root / "img_align_celeba" / f).write_bytes((celeba_root / "img_align_celeba" / f).read_bytes())
    with pytest.warns(UserWarning, match="2 of 4 listed images are missing"):
        r = T.celeba_attributes(model, clip, root, split="all")
    assert r["celeba"]["n_missing"] == 2 and r["n_images"] == 2
    with pytest.raises(DataError, match="list_attr_celeba"):
        T.celeba_attributes(model, clip, tmp_path / "partial" / "img_align_celeba")
    with pytest.raises(ConfigError, match="split"):
        T.celeba_attributes(model, clip, celeba_root, split="holdout")


# ------------------------------------------------------------------ captioning
def test_read_references_in_every_layout(flickr, tmp_path):
    with pytest.warns(UserWarning, match="1 images with references are not in"):
        items = T.read_references(flickr["tokens"], flickr["images"])
    assert [p.split("/")[-1] for p, _ in items] == list(CAPTIONS)
    assert [caps for _, caps in items] == list(CAPTIONS.values())
    dev = T.read_references(flickr["tokens"], flickr["images"], split=flickr["dev"])
    assert [p.split("/")[-1] for p, _ in dev] == ["1000_a.jpg", "1002_c.jpg"]
    # our CSV layout: one reference each (rows naming the same image add references)
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text('image,caption\n1000_a.jpg,"a dog, running"\n1001_b.jpg,kids\n1000_a.jpg,a dog\n')
    items = T.read_references(csv_path, flickr["images"])
    assert [(p.split("/")[-1], c) for p, c in items] == [("1000_a.jpg", ["a dog, running", "a dog"]), ("1001_b.jpg", ["kids"])]
    # a caption folder (references=None)
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_image(folder / "x.png", 1)
    (folder / "x.txt").write_text("a small picture\n")
    assert [c for _, c in T.read_references(None, folder)] == [["a small picture"]]
    # COCO JSON, Karpathy JSON with its split
    coco = tmp_path / "captions_val.json"
    coco.write_text(json.dumps({"images": [{"id": 7, "file_name": "1001_b.jpg"}],
                                "annotations": [{"image_id": 7, "caption": "kids swim"}, {"image_id": 7, "caption": "a pool"}]}))
    assert [c for _, c in T.read_references(coco, flickr["images"])] == [["kids swim", "a pool"]]
    karpathy = tmp_path / "dataset_flickr8k.json"
    karpathy.write_text(json.dumps({"images": [
        {"filename": "1000_a.jpg", "split": "val", "sentences": [{"raw": "a dog"}]},
        {"filename": "1002_c.jpg", "split": "test", "sentences": [{"raw": "a man"}]}]}))
    assert [c for _, c in T.read_references(karpathy, flickr["images"], split="val")] == [["a dog"]]
    with pytest.raises(DataError, match="no image with reference captions"), pytest.warns(UserWarning):
        T.read_references({"nowhere.jpg": ["x"]}, flickr["images"])


class ScriptedCaptioner:
    """Captions by call order: captioning() asks for original, base, (full,) encrypted in turn."""

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
    cap = ScriptedCaptioner([refs, refs, refs, "purple elephants sleep quietly today"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = T.captioning(model, None, cap, flickr["images"], flickr["tokens"], key=KEY, batch_size=8)
    task = r["captioning"]
    assert cap.calls == 4 and r["n_images"] == 3 and task["captioner"] == "scripted"
    assert task["scores"]["base"] == task["scores"]["original"] == task["scores"]["full"]
    assert task["scores"]["encrypted"]["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert task["scores"]["encrypted"]["cider"] == pytest.approx(0.0, abs=1e-9)
    assert task["full_vs_base"]["bleu4"] == pytest.approx(1.0, abs=1e-6) and task["full_vs_base"]["identical"] == 1.0
    assert task["encrypted_vs_base"]["bleu4"] == pytest.approx(0.0, abs=1e-6)
    assert task["encrypted_vs_base"]["identical"] == 0.0
    expected = T.caption_scores([refs] * 3, list(CAPTIONS.values()))
    assert task["scores"]["base"] == expected  # the first image's own reference scores 1 of 3
    assert r["per_image"][0]["caption_encrypted"] == "purple elephants sleep quietly today"
    assert r["per_image"][0]["references"] == CAPTIONS["1000_a.jpg"]
    h = T.task_headline(r)
    assert h["bleu4_encrypted_vs_base"] == pytest.approx(0.0, abs=1e-6) and "cider_full" in h


def test_captioning_with_a_tiny_hugging_face_model(model, flickr, tiny_captioner):
    pytest.importorskip("pycocoevalcap")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = T.captioning(model, None, tiny_captioner, flickr["images"], flickr["tokens"], key=KEY, limit=2,
                         max_new_tokens=8, split=flickr["dev"], batch_size=2)
    task = r["captioning"]
    assert r["task"] == "caption" and r["n_images"] == 2
    assert set(task["scores"]) == set(VERSIONS)
    for v in VERSIONS:
        s = task["scores"][v]
        assert set(s) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "n"} and s["n"] == 2
        assert 0.0 <= s["bleu4"] <= 1.0 and s["cider"] >= 0.0
    for row in r["per_image"]:
        for v in VERSIONS:
            caption = row[f"caption_{v}"]
            assert isinstance(caption, str) and set(T.tokenize_caption(caption)) <= set(WORDS)
    assert any(row["caption_base"] for row in r["per_image"])  # the biased random decoder says words
    assert 0.0 <= task["encrypted_vs_base"]["bleu4"] <= 1.0
    # the same model, loaded once, as a callable
    cap = T.HFCaptioner(tiny_captioner, max_new_tokens=8)
    again = T.captioning(model, None, cap, flickr["images"], flickr["tokens"], key=KEY, split=flickr["dev"],
                         include_original=False)
    assert [row["caption_base"] for row in again["per_image"]] == [row["caption_base"] for row in r["per_image"]]
    with pytest.raises(ConfigError, match="could not load the captioner"):
        T.HFCaptioner(flickr["root"] / "no-such-model")


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    from psic_adapter.codecs import save_codec

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
    assert "report:" in out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert (tmp_path / "report" / "report.html").is_file()
    run = metrics["runs"]["run"]
    entry = {"imagenet": "imagenet", "celeba": "celeba", "caption": "captioning"}[task]
    assert run["task"] == task and entry in run
    assert metrics["meta"]["task"] == task and metrics["meta"]["key_given"] is True
    headline = metrics["meta"]["task_headline"]
    assert headline == run["task_headline"] and headline
    first = next(iter(headline))
    assert f"{first}=" in out
    assert "psnr_full" in metrics["summary"]


def test_cli_task_usage(saved_adapter, tmp_path, capsys):
    rc = _eval(saved_adapter, tmp_path / "r", "--task", "imagenet", "--target", "clip:ViT-B-32")
    assert rc == 1 and "--task imagenet needs --data DIR" in capsys.readouterr().err
    rc = _eval(saved_adapter, tmp_path / "r", "--task", "caption", "--data", tmp_path)
    assert rc == 1 and "--captioner" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # classify still needs a target: a usage error
        _eval(saved_adapter, tmp_path / "r")
    assert info.value.code == 2 and "--target" in capsys.readouterr().err
