"""Tests for psic_adapter.data: caption folders, CSVs, ImageFolder prompts, sample photos, loaders."""

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from psic_adapter import data as D
from psic_adapter.errors import ConfigError, DataError
from psic_adapter.bitstream.images import save_array


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_array(arr, path)
    return path


def _check_item(item, h=None, w=None):
    assert set(item) == {"image", "text", "label", "path"}
    x = item["image"]
    assert x.dtype == torch.float32 and x.dim() == 3 and x.shape[0] == 3
    if h is not None:
        assert tuple(x.shape[1:]) == (h, w)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert isinstance(item["text"], str) and item["text"]
    assert isinstance(item["label"], int)


@pytest.fixture
def caption_dir(tmp_path):
    root = tmp_path / "cc3m"
    _write(root / "a.png", _rgb(20, 30, 1))
    (root / "a.txt").write_text("  a red square on a table \n", encoding="utf-8")
    _write(root / "b.jpg", _rgb(24, 16, 2))
    (root / "b.txt").write_text("a photo, with a comma", encoding="utf-8")
    grey = np.full((12, 14), 200, dtype=np.uint8)
    _write(root / "00001" / "grey.png", grey)  # recursive
    (root / "00001" / "grey.txt").write_text("a grey picture", encoding="utf-8")
    rgba = np.concatenate([_rgb(10, 10, 3), np.full((10, 10, 1), 7, np.uint8)], axis=2)
    _write(root / "00001" / "rgba.png", rgba)
    (root / "00001" / "rgba.txt").write_text("a transparent picture", encoding="utf-8")
    deep = np.full((8, 9, 3), 32768, dtype=np.uint16)
    deep[0, 0] = 65535
    _write(root / "deep.png", deep)
    (root / "deep.txt").write_text("a 16-bit picture", encoding="utf-8")
    _write(root / "nocap.png", _rgb(8, 8, 4))  # no caption: skipped
    _write(root / "00001" / "nocap2.jpg", _rgb(8, 8, 5))  # no caption: skipped
    (root / "notes.txt").write_text("not a caption of anything", encoding="utf-8")
    return root


# --------------------------------------------------------------------------- CaptionFolder


def test_caption_folder_items_and_skips(caption_dir):
    with pytest.warns(D.DataWarning, match=r"skipped 2 of 7 images") as rec:
        ds = D.CaptionFolder(caption_dir)
    assert len([r for r in rec if issubclass(r.category, D.DataWarning)]) == 1  # warned once
    assert len(ds) == 5 and ds.skipped == 2
    by_name = {Path(ds[i]["path"]).name: ds[i] for i in range(len(ds))}
    assert set(by_name) == {"a.png", "b.jpg", "grey.png", "rgba.png", "deep.png"}
    assert by_name["a.png"]["text"] == "a red square on a table"  # stripped
    assert by_name["b.jpg"]["text"] == "a photo, with a comma"
    for item in by_name.values():
        _check_item(item)
        assert item["label"] == -1
    _check_item(by_name["a.png"], 20, 30)
    a = by_name["a.png"]["image"]
    assert torch.allclose(a, torch.from_numpy(_rgb(20, 30, 1)).permute(2, 0, 1).float() / 255)
    g = by_name["grey.png"]["image"]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert torch.allclose(g, torch.full_like(g, 200 / 255))
    assert by_name["rgba.png"]["image"].shape == (3, 10, 10)  # alpha dropped
    deep = by_name["deep.png"]["image"]
    assert deep[0, 0, 0] == 1.0 and abs(float(deep[0, 1, 1]) - 32768 / 65535) < 1e-6  # 16-bit scale


def test_caption_folder_transform_and_default_collate(caption_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.DataWarning)
        ds = D.CaptionFolder(caption_dir, transform=D.CenterCrop(6))
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (5, 3, 6, 6)
    assert len(batch["text"]) == 5


def test_caption_folder_errors(tmp_path):
    empty = tmp_path / "empty dir"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found") as ei:
        D.CaptionFolder(empty)
    assert str(empty) in str(ei.value)
    with pytest.raises(DataError, match="no such folder") as ei:
        D.CaptionFolder(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(ei.value)
    flat = tmp_path / "flat"
    _write(flat / "x.png", _rgb(4, 4))
    with pytest.raises(DataError, match="none of the 1 images has a caption"):
        D.CaptionFolder(flat)


# --------------------------------------------------------------------------- CaptionCSV

TRICKY = [
    'a cat, a dog, and a "quoted" word',
    "commas,,, everywhere, really",
    'she said "hi, there"\nand left',  # a newline inside a quoted field
]


def test_caption_csv_keeps_commas_and_quotes(tmp_path):
    imgs = tmp_path / "imgs"
    rows = []
    for i, cap in enumerate(TRICKY):
        _write(imgs / f"{i}.png", _rgb(9, 11, i))
        rows.append({"image": f"imgs/{i}.png", "caption": cap})
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "caption"])
        w.writeheader()
        w.writerows(rows)
    ds = D.CaptionCSV(path)
    assert [ds[i]["text"] for i in range(len(ds))] == [c.strip() for c in TRICKY]
    _check_item(ds[0], 9, 11)
    assert ds[2]["path"] == str(imgs / "2.png")


def test_caption_csv_open_clip_tsv_and_root(tmp_path):
    imgs = tmp_path / "elsewhere"
    _write(imgs / "x.jpg", _rgb(8, 8))
    _write(imgs / "y.png", _rgb(8, 8, 1))
    path = tmp_path / "meta" / "train.csv"
    path.parent.mkdir()
    path.write_text("Filepath\tTitle\tlabel\nx.jpg\ta title, with comma\t3\ny.png\tanother\t\n", encoding="utf-8")
    ds = D.CaptionCSV(path, root=imgs)
    assert ds.delimiter == "\t"
    assert [ds[i]["text"] for i in range(2)] == ["a title, with comma", "another"]
    assert [ds[i]["label"] for i in range(2)] == [3, -1]
    path2 = tmp_path / "p.csv"
    path2.write_text("path,text\nelsewhere/x.jpg,hello\n", encoding="utf-8")
    assert D.CaptionCSV(path2)[0]["text"] == "hello"


def test_caption_csv_errors(tmp_path):
    _write(tmp_path / "ok.png", _rgb(4, 4))
    bad_cols = tmp_path / "cols.csv"
    bad_cols.write_text("file,description\nok.png,hi\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"header lacks an image column \(image, filepath or path\) and a caption column") as ei:
        D.CaptionCSV(bad_cols)
    assert "cols.csv" in str(ei.value) and "description" in str(ei.value)
    missing = tmp_path / "missing.csv"
    missing.write_text("image,caption\nok.png,fine\nnope.png,gone\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3: image 'nope.png' not found"):
        D.CaptionCSV(missing)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("image,caption\nok.png,unquoted, comma\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: 3 fields where the header has 2"):
        D.CaptionCSV(ragged)
    with pytest.raises(DataError, match="no such file"):
        D.CaptionCSV(tmp_path / "absent.csv")


# --------------------------------------------------------------------------- ImageFolderPrompts


@pytest.fixture
def class_tree(tmp_path):
    root = tmp_path / "val"
    _write(root / "golden_retriever" / "1.png", _rgb(10, 12, 1))
    _write(root / "golden_retriever" / "2.jpg", _rgb(10, 12, 2))
    _write(root / "n01440764" / "3.png", _rgb(6, 6, 3))
    _write(root / "tabby_cat" / "nested" / "4.png", _rgb(7, 5, 4))
    return root


def test_image_folder_prompts(class_tree):
    ds = D.ImageFolderPrompts(class_tree)
    assert ds.classes == ["golden retriever", "tench", "tabby cat"]
    assert ds.prompts == ["a photo of a golden retriever.", "a photo of a tench.", "a photo of a tabby cat."]
    assert ds.imagenet_index == [207, 0, 281]  # synset and class-name folders map to ImageNet
    assert len(ds) == 4
    got = [(Path(ds[i]["path"]).name, ds[i]["label"], ds[i]["text"]) for i in range(len(ds))]
    assert got == [
        ("1.png", 0, "a photo of a golden retriever."),
        ("2.jpg", 0, "a photo of a golden retriever."),
        ("3.png", 1, "a photo of a tench."),
        ("4.png", 2, "a photo of a tabby cat."),
    ]
    _check_item(ds[3], 7, 5)
    ds2 = D.ImageFolderPrompts(class_tree, prompt="itap of a {}")
    assert ds2[2]["text"] == "itap of a tench"
    with pytest.raises(ConfigError):
        D.ImageFolderPrompts(class_tree, prompt="no placeholder")


def test_imagenet_names():
    # two WordNet "crane"s: timm's first lemma collides, CLIP's curated names do not
    assert D.imagenet_class_name("n02012849") == "crane"
    assert D.imagenet_class_name("n03126707") == "crane"
    assert D.imagenet_class_name("n02012849", "clip") == "crane bird"
    assert D.imagenet_class_name("n03126707", "clip") == "construction crane"
    assert D.imagenet_class_name("n99999999") == "n99999999"  # not an ImageNet-1k synset
    assert D.imagenet_class_name("sea_lion") == "sea lion"


# --------------------------------------------------------------------------- build_dataset


def test_build_dataset_picks_the_layout(caption_dir, class_tree, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.DataWarning)
        assert isinstance(D.build_dataset(str(caption_dir)), D.CaptionFolder)
    ds = D.build_dataset(class_tree, crop=4)
    assert isinstance(ds, D.ImageFolderPrompts)
    assert ds[0]["image"].shape == (3, 4, 4)
    csv_path = tmp_path / "x.csv"
    csv_path.write_text("image,caption\nval/n01440764/3.png,a fish\n", encoding="utf-8")
    assert isinstance(D.build_dataset(str(csv_path), crop=5, split="test"), D.CaptionCSV)
    samples = D.build_dataset("samples", crop=32, split="test")
    assert isinstance(samples, D.SamplePhotos) and samples.names == list(D.TEST_PHOTOS)
    with pytest.raises(DataError, match="expected 'samples', a folder"):
        D.build_dataset(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images found") as ei:
        D.build_dataset(str(empty))
    assert str(empty) in str(ei.value)
    # any folder of images, flat or nested, loads: labels unknown (the target's answers are "right")
    flat = tmp_path / "flat"
    _write(flat / "x.png", _rgb(4, 4))
    _write(flat / "holiday" / "y.png", _rgb(4, 4))
    plain = D.build_dataset(str(flat), split="all")
    assert isinstance(plain, D.PlainImages) and len(plain) == 2 and {plain[i]["label"] for i in range(2)} == {-1}
    # folders that name ImageNet classes and folders that do not: ambiguous, refused
    mixed = tmp_path / "mixed"
    _write(mixed / "n01440764" / "a.png", _rgb(4, 4))
    _write(mixed / "holiday" / "b.png", _rgb(4, 4))
    with pytest.raises(DataError, match="1 sub-folders name ImageNet classes but 1 do not"):
        D.build_dataset(str(mixed))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="not a .csv"):
        D.build_dataset(str(tmp_path / "x.json"))


# --------------------------------------------------------------------------- sample photos


def test_sample_photos_load_offline():
    assert set(D.sample_names("all")) == {p.name for p in D.SAMPLE_PHOTOS}  # all twenty load here
    assert len(D.SAMPLE_PHOTOS) == 20 and len(D.EXTRA_PHOTOS) == 11
    x, caption = D.sample_photo("chelsea")
    assert x.shape == (1, 3, 300, 451) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05
    assert "cat" in caption
    assert D.sample_photo("motorcycle")[0].shape == (1, 3, 500, 741)
    assert D.sample_photo("grace_hopper")[0].shape == (1, 3, 600, 512)
    D.sample_photo("chelsea")[0].zero_()  # callers get a copy: the cache is unharmed
    assert float(D.sample_photo("chelsea")[0].max()) > 0.5
    assert D.samples.photo_uint8("chelsea") is D.samples.photo_uint8("chelsea")  # decoded once
    with pytest.raises(DataError, match="unknown sample photo"):
        D.sample_photo("lena")


def test_sample_photo_splits_are_disjoint():
    train, test, extra = D.SamplePhotos("train"), D.SamplePhotos("test"), D.SamplePhotos("extra")
    assert set(train.names).isdisjoint(test.names) and set(train.names).isdisjoint(extra.names)
    assert set(test.names).isdisjoint(extra.names)
    assert sorted(train.names + test.names + extra.names) == sorted(D.SamplePhotos("all").names)
    assert len(test.names) == 3 and len(train.names) == 6 and len(extra.names) == 11
    # held out: every photo `--data samples` never trains on, whole and unlabelled where ImageNet has no class
    heldout = D.build_dataset("samples", split="heldout")
    assert heldout.names == test.names + extra.names and not set(heldout.names) & set(D.TRAIN_PHOTOS)
    assert all(p.imagenet_index == -1 for p in extra.photos)
    for name in extra.names:  # real photos, grey ones as RGB
        x = D.samples.photo_uint8(name)
        assert x.shape[0] == 3 and min(x.shape[1:]) >= 150 and float(x.float().std()) > 5
    with pytest.raises(ConfigError):
        D.SamplePhotos("validation")


def test_sample_photo_crops_are_deterministic():
    ds = D.SamplePhotos("train", crop=(48, 64), seed=0, repeats=3)
    assert len(ds) == 3 * len(ds.names)
    item = ds[4]
    _check_item(item, 48, 64)
    assert item["path"] == f"sample:{ds.names[4 % len(ds.names)]}"
    assert torch.equal(ds[4]["image"], D.SamplePhotos("train", crop=(48, 64), seed=0, repeats=3)[4]["image"])
    # another repeat of the same photo is another crop
    n = len(ds.names)
    assert ds[1]["text"] == ds[1 + n]["text"] and not torch.equal(ds[1]["image"], ds[1 + n]["image"])
    other_seed = D.SamplePhotos("train", crop=(48, 64), seed=1, repeats=3)
    assert not torch.equal(ds[4]["image"], other_seed[4]["image"])
    before = ds[4]["image"]
    ds.set_epoch(1)
    assert ds.epoch == 1 and not torch.equal(before, ds[4]["image"])
    ds.set_epoch(0)
    assert torch.equal(before, ds[4]["image"])


def test_sample_photo_crop_larger_than_photo_and_labels():
    ds = D.SamplePhotos("train", crop=512)
    i = ds.names.index("chelsea")  # 300 x 451: resized up first
    item = ds[i]
    _check_item(item, 512, 512)
    assert item["label"] == 281 and item["text"] == D.sample_photo("chelsea")[1]
    whole = D.SamplePhotos("test")[0]
    assert whole["image"].shape == D.sample_photo(whole["path"][len("sample:"):])[0].shape[1:]
    center = D.SamplePhotos("test", crop=32, center_crop=True)
    assert torch.equal(center[0]["image"], D.CenterCrop(32)(D.sample_photo(center.names[0])[0][0]))


# --------------------------------------------------------------------------- transforms


def test_transforms():
    x = torch.rand(3, 6, 8)
    c = D.CenterCrop((2, 4))(x)
    assert torch.equal(c, x[:, 2:4, 2:6])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = D.RandomCrop(3)(x, generator=g1), D.RandomCrop(3)(x, generator=g2)
    assert a.shape == (3, 3, 3) and torch.equal(a, b)
    small = torch.rand(3, 5, 10)
    up = D.RandomCrop(8)(small)
    assert up.shape == (3, 8, 8) and float(up.min()) >= 0 and float(up.max()) <= 1
    padded = D.CenterCrop(8, small="pad")(small)
    assert padded.shape == (3, 8, 8) and torch.equal(padded[:, 1:6, :], small[:, :, 1:9])
    assert torch.equal(D.RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(D.RandomHorizontalFlip(p=0.0)(x), x)
    t = D.train_transform(4)
    assert t(torch.rand(3, 20, 30)).shape == (3, 4, 4)
    assert D.eval_transform(6)(torch.rand(3, 20, 30)).shape == (3, 6, 6)
    y = torch.rand(3, 7, 9)
    assert torch.equal(D.eval_transform()(y), y)
    with pytest.raises(ConfigError):
        D.RandomCrop(0)


# --------------------------------------------------------------------------- loader


def test_make_loader_batches(class_tree):
    ds = D.ImageFolderPrompts(class_tree, transform=D.train_transform(5))
    loader = D.make_loader(ds, batch_size=3, shuffle=True, seed=7)
    batches = list(loader)
    assert [b["image"].shape for b in batches] == [(3, 3, 5, 5), (1, 3, 5, 5)]
    assert isinstance(batches[0]["text"], list) and len(batches[0]["text"]) == 3
    assert batches[0]["label"].dtype == torch.long
    order = [p for b in batches for p in b["path"]]
    again = [p for b in D.make_loader(ds, batch_size=3, shuffle=True, seed=7) for p in b["path"]]
    assert order == again and sorted(order) == sorted(ds.paths)
    assert len(list(D.make_loader(ds, batch_size=3, shuffle=False, drop_last=True))) == 1
    uneven = D.ImageFolderPrompts(class_tree)
    with pytest.raises(DataError, match="different sizes"):
        next(iter(D.make_loader(uneven, batch_size=4, shuffle=False)))


def test_set_epoch_reaches_persistent_workers():
    ds = D.SamplePhotos("test", crop=16, seed=3, repeats=2)
    expect = {e: torch.stack([_epoch_item(ds, e, i) for i in range(len(ds))]) for e in (0, 1)}
    ds.set_epoch(0)
    loader = D.make_loader(ds, batch_size=len(ds), shuffle=False, num_workers=2)
    assert loader.persistent_workers
    got0 = next(iter(loader))["image"]
    ds.set_epoch(1)
    got1 = next(iter(loader))["image"]
    assert torch.equal(got0, expect[0]) and torch.equal(got1, expect[1])
    assert not torch.equal(got0, got1)


def _epoch_item(ds, epoch, index):
    ds.set_epoch(epoch)
    return ds[index]["image"]
