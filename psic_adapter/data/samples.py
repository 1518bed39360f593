"""Twenty real photos bundled with scikit-image, scikit-learn and matplotlib: data with no download.

Nine are the classic sample photos (6 ``train``, 3 ``test``); eleven more (``extra``) are the other real
photographs scikit-image ships (a cameraman, coins, the moon, textures, a page, a retina, a tissue sample),
many of them grey: never trained on, they give evaluations of the shipped adapter and of the demo's fit
more photos than three (``heldout`` = ``test`` + ``extra``, fourteen photos). The synthetic images
scikit-image also ships (a chessboard, a colour wheel, a logo, a phantom, a horse's silhouette) are left out.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..bitstream.images import array_to_tensor, read_array
from ..errors import ConfigError, DataError, ImageError
from .common import Size, apply_transform, as_size
from .imagenet import package_file
from .transforms import crop


@dataclass(frozen=True)
class SamplePhoto:
    """A real photo shipped inside an installed package."""

    name: str
    caption: str
    word: str  # an ImageNet-ish object word
    imagenet_index: int  # nearest ImageNet-1k class, -1 where ImageNet has none
    source: str  # where the pixels come from
    split: str  # "train", "test" or "extra"


# Fixed split: the three test photos (a cup, a vehicle, a person) are never
# trained on, so evaluation on split="test" is on unseen photos. All three come
# from scikit-image and matplotlib (hard dependencies), so the test split does
# not change where scikit-learn is absent.
SAMPLE_PHOTOS: Tuple[SamplePhoto, ...] = (
    SamplePhoto("astronaut", "an astronaut in an orange spacesuit in front of an American flag", "astronaut", -1,
                "skimage.data.astronaut", "train"),
    SamplePhoto("chelsea", "a close-up photo of a tabby cat", "cat", 281, "skimage.data.chelsea", "train"),
    SamplePhoto("rocket", "a rocket on its launch pad at dusk", "rocket", 657, "skimage.data.rocket", "train"),
    SamplePhoto("hubble_deep_field", "a telescope photo of many distant galaxies in space", "galaxy", -1,
                "skimage.data.hubble_deep_field", "train"),
    SamplePhoto("china", "a Chinese pagoda on a hill above a lake", "palace", 698,
                "sklearn.datasets.load_sample_image('china.jpg')", "train"),
    SamplePhoto("flower", "a close-up photo of an orange dahlia flower", "flower", -1,
                "sklearn.datasets.load_sample_image('flower.jpg')", "train"),
    SamplePhoto("coffee", "a cup of espresso on a red saucer on a wooden table", "espresso", 967,
                "skimage.data.coffee", "test"),
    SamplePhoto("motorcycle", "a red motorcycle parked in a garage", "motorcycle", 665,
                "skimage.data.stereo_motorcycle (left view)", "test"),
    SamplePhoto("grace_hopper", "a portrait of an old woman in a navy uniform in front of an American flag",
                "military uniform", 652, "matplotlib sample_data/grace_hopper.jpg", "test"),
    # extra: never trained on, for measuring (no ImageNet label claimed: "right" is the target's answer on the
    # original photo)
    SamplePhoto("camera", "a black and white photo of a man with a camera on a tripod in a park", "camera", -1,
                "skimage.data.camera", "extra"),
    SamplePhoto("coins", "a black and white photo of old coins on a dark background", "coin", -1,
                "skimage.data.coins", "extra"),
    SamplePhoto("moon", "a black and white photo of the surface of the moon", "moon", -1, "skimage.data.moon",
                "extra"),
    SamplePhoto("brick", "a black and white photo of a brick wall", "brick wall", -1, "skimage.data.brick", "extra"),
    SamplePhoto("grass", "a black and white photo of grass", "grass", -1, "skimage.data.grass", "extra"),
    SamplePhoto("gravel", "a black and white photo of gravel", "gravel", -1, "skimage.data.gravel", "extra"),
    SamplePhoto("page", "a black and white photo of a printed page of text", "page", -1, "skimage.data.page",
                "extra"),
    SamplePhoto("text", "a black and white photo of handwritten formulas on paper", "handwriting", -1,
                "skimage.data.text", "extra"),
    SamplePhoto("clock", "a black and white photo of a wall clock, blurred by motion", "clock", -1,
                "skimage.data.clock (clock_motion.png)", "extra"),
    SamplePhoto("retina", "a colour photo of the retina of a human eye", "retina", -1, "skimage.data.retina",
                "extra"),
    SamplePhoto("ihc", "a microscope photo of stained human tissue", "tissue", -1,
                "skimage.data.immunohistochemistry", "extra"),
)
_PHOTO_BY_NAME: Dict[str, SamplePhoto] = {p.name: p for p in SAMPLE_PHOTOS}
TRAIN_PHOTOS: Tuple[str, ...] = tuple(p.name for p in SAMPLE_PHOTOS if p.split == "train")
TEST_PHOTOS: Tuple[str, ...] = tuple(p.name for p in SAMPLE_PHOTOS if p.split == "test")
EXTRA_PHOTOS: Tuple[str, ...] = tuple(p.name for p in SAMPLE_PHOTOS if p.split == "extra")
#: the splits of the sample photos: "heldout" is every photo `--data samples` never trains on
SPLITS = {"train": ("train",), "test": ("test",), "extra": ("extra",), "heldout": ("test", "extra"),
          "all": ("train", "test", "extra")}
_SKIMAGE = {"astronaut": "astronaut", "chelsea": "chelsea", "rocket": "rocket", "hubble_deep_field": "hubble_deep_field",
            "coffee": "coffee", "camera": "camera", "coins": "coins", "moon": "moon", "brick": "brick",
            "grass": "grass", "gravel": "gravel", "page": "page", "text": "text", "clock": "clock",
            "retina": "retina", "ihc": "immunohistochemistry"}


def _read_sample_array(name: str) -> np.ndarray:
    if name == "motorcycle":
        import skimage.data

        return skimage.data.stereo_motorcycle()[0]  # (left, right, disparity): the left view
    if name in _SKIMAGE:
        import skimage.data

        return getattr(skimage.data, _SKIMAGE[name])()
    # The files are read where the packages keep them (importing sklearn.datasets
    # costs seconds); their public loaders are the fallback.
    if name in ("china", "flower"):
        path = package_file("sklearn", "datasets", "images", f"{name}.jpg")
        if path is not None:
            return read_array(path)
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        path = package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
        if path is None:
            from matplotlib import cbook

            path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        return read_array(path)
    raise DataError(f"unknown sample photo {name!r} (known: {', '.join(_PHOTO_BY_NAME)})")


@functools.lru_cache(maxsize=None)
def photo_uint8(name: str) -> torch.Tensor:
    """A sample photo as a ``3xHxW`` uint8 tensor, decoded once per process."""
    if name not in _PHOTO_BY_NAME:
        raise DataError(f"unknown sample photo {name!r} (known: {', '.join(_PHOTO_BY_NAME)})")
    try:
        arr = _read_sample_array(name)
    except ImportError as exc:
        raise DataError(f"sample photo {name!r} needs {exc.name or exc} installed") from None
    except (OSError, ValueError, ImageError) as exc:
        raise DataError(f"sample photo {name!r} could not be read ({exc})") from None
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise DataError(f"sample photo {name!r}: expected 8-bit pixels, got {arr.dtype}")
    x, _ = array_to_tensor(arr)  # grey -> RGB, alpha dropped
    return (x[0] * 255.0).round().to(torch.uint8).contiguous()


@functools.lru_cache(maxsize=None)
def _photo_available(name: str) -> bool:
    try:
        photo_uint8(name)
        return True
    except DataError:
        return False


def sample_names(split: str = "all") -> List[str]:
    """The sample photos of a split (:data:`SPLITS`) that load here (china/flower need scikit-learn)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    names = [p.name for p in SAMPLE_PHOTOS if p.split in SPLITS[split]]
    return [n for n in names if _photo_available(n)]


def sample_photo(name: str) -> Tuple[torch.Tensor, str]:
    """One whole sample photo: ``(1x3xHxW float tensor in [0, 1], caption)``."""
    if name not in _PHOTO_BY_NAME:
        raise DataError(f"unknown sample photo {name!r} (known: {', '.join(_PHOTO_BY_NAME)})")
    return photo_uint8(name).float().div_(255.0)[None], _PHOTO_BY_NAME[name].caption


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers, the same on every platform and process."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & 0x7FFFFFFFFFFFFFFF


class SamplePhotos(Dataset):
    """The bundled real photos (see :data:`SAMPLE_PHOTOS`), with no download.

    ``split`` is ``"train"`` (6 photos), ``"test"`` (3 photos never used for
    training: coffee, motorcycle, grace_hopper), ``"extra"`` (11 more never used
    for training), ``"heldout"`` (test + extra) or ``"all"``. Items carry the
    photo's caption as ``text``, its nearest ImageNet-1k class as ``label``
    (-1 where there is none), and ``"sample:<name>"`` as ``path``.

    Without ``crop`` an item is the whole photo (sizes differ: batch size 1).
    With ``crop`` it is a random crop of that size (photos smaller than the crop
    are first resized up on the short side), or the centre crop with
    ``center_crop=True``. ``repeats`` puts that many crops of each photo in an
    epoch (index ``i`` is photo ``i % n_photos``). The crop, and any transform
    of this module given as ``transform``, draw from a generator seeded from
    ``(seed, epoch, index)``: the same item is the same tensor every time;
    :meth:`set_epoch` changes every crop. The epoch is kept in shared memory,
    so it reaches DataLoader workers, persistent ones included.
    """

    def __init__(
        self,
        split: str = "train",
        crop: Optional[Size] = None,
        transform: Optional[Callable] = None,
        seed: int = 0,
        repeats: int = 1,
        center_crop: bool = False,
    ):
        if int(repeats) < 1:
            raise ConfigError(f"repeats must be at least 1, not {repeats!r}")
        self.split = split
        self.names = sample_names(split)
        if not self.names:
            raise DataError(f"no sample photos could be loaded for split {split!r}")
        self.captions = [_PHOTO_BY_NAME[n].caption for n in self.names]
        self.photos = [_PHOTO_BY_NAME[n] for n in self.names]
        self.crop = as_size(crop) if crop is not None else None
        self.center_crop = bool(center_crop)
        self.transform = transform
        self.seed = int(seed)
        self.repeats = int(repeats)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Draw different crops from now on (call once per epoch, before iterating)."""
        self._epoch[0] = int(epoch)

    def __len__(self) -> int:
        return len(self.names) * self.repeats

    def generator(self, index: int) -> torch.Generator:
        """The generator that item ``index`` draws from in the current epoch."""
        return torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, index))

    def __getitem__(self, index: int) -> Dict[str, object]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        k = index % len(self.names)
        name = self.names[k]
        g = self.generator(index)
        image = photo_uint8(name)
        if self.crop is not None:
            image = crop(image, self.crop, g if not self.center_crop else None)
        image = image.float().div_(255.0) if image.dtype == torch.uint8 else image
        image = apply_transform(self.transform, image, g)
        return {"image": image, "text": self.captions[k], "label": self.photos[k].imagenet_index, "path": f"sample:{name}"}

    def __repr__(self) -> str:
        return f"SamplePhotos(split={self.split!r}, {len(self.names)} photos x {self.repeats}, crop={self.crop})"




def repeats_for(batch: int, split: str = "train", batches_per_epoch: int = 8) -> int:
    """Crops per photo so that an epoch of the sample photos holds ``batches_per_epoch`` batches.

    Counts the photos that load here (four training photos without scikit-learn, six with it).
    """
    n = len(sample_names(split))
    if n == 0:
        raise DataError(f"no sample photos could be loaded for split {split!r}")
    return max(1, math.ceil(batches_per_epoch * int(batch) / n))
