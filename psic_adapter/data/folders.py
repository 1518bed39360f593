"""Folders of images: ImageFolder trees of ImageNet classes, and any folder of images (flat or nested)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ..errors import DataError
from .common import (
    DEFAULT_PROMPT,
    IMAGE_EXTENSIONS,
    DataWarning,
    ItemDataset,
    PathLike,
    check_folder,
    is_image_file,
    walk_files,
)
from .imagenet import format_prompt, imagenet_class_name, imagenet_index


class ImageFolderPrompts(ItemDataset):
    """An ImageFolder tree (``root/<class>/**/x.jpg``) with a prompt as the text.

    Classes are the sub-folders of ``root`` in sorted order (as torchvision's
    ImageFolder), so ``label`` is the class index. Class names come from the
    folder names (see :func:`imagenet_class_name`); the text of an item is
    ``prompt.format(name)``.

    Attributes: ``classes`` (names), ``folders`` (folder names), ``prompts``
    (one per class), ``class_to_idx`` (folder -> index) and ``imagenet_index``
    (the ImageNet-1k index of each class whose folder is a synset, else -1:
    what an ImageNet classifier's output should be compared with when the
    tree holds only some of the 1000 classes).
    """

    def __init__(
        self,
        root: PathLike,
        prompt: str = DEFAULT_PROMPT,
        transform: Optional[Callable] = None,
        imagenet_names: str = "timm",
    ):
        self.root = check_folder(root, "an ImageFolder tree: one sub-folder of images per class")
        self.transform = transform
        self.prompt = prompt
        folders = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise DataError(f"{self.root}: no class sub-folders (expected an ImageFolder tree: {self.root}/<class>/<image>)")
        self.folders = folders
        self.classes = [imagenet_class_name(f, imagenet_names) for f in folders]
        self.prompts = [format_prompt(prompt, name) for name in self.classes]
        self.class_to_idx = {f: i for i, f in enumerate(folders)}
        self.imagenet_index = [imagenet_index(f) for f in folders]
        items: List[Tuple[str, str, int]] = []
        empty: List[str] = []
        for label, folder in enumerate(folders):
            files = [f for f in walk_files(self.root / folder) if is_image_file(f.name)]
            if not files:
                empty.append(folder)
            items.extend((str(f), self.prompts[label], label) for f in files)
        if not items:
            raise DataError(f"{self.root}: no images in any of its {len(folders)} class sub-folders")
        if empty:
            warnings.warn(
                f"ImageFolderPrompts {self.root}: {len(empty)} class folders hold no images "
                f"(e.g. {empty[0]!r}); they keep their class index",
                DataWarning,
                stacklevel=2,
            )
        self.items = items

    def __repr__(self) -> str:
        return f"ImageFolderPrompts({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"

    @property
    def unmapped(self) -> List[str]:
        """Class folders that name no ImageNet-1k class (neither a synset nor a class name)."""
        return [f for f, i in zip(self.folders, self.imagenet_index) if i < 0]



class PlainImages(ItemDataset):
    """Any folder of images, flat or nested, without captions or labels.

    Items have an empty ``text`` and ``label`` -1: for a classifier target "right"
    is then the target's answer on the original image (the evaluation protocol),
    and training attacks the target's own answers. Hidden files and folders are
    skipped; files that are not images by their extension are ignored.
    """

    def __init__(self, root: PathLike, transform: Optional[Callable] = None):
        self.root = check_folder(root, "a folder of images")
        self.transform = transform
        files = [f for f in walk_files(self.root) if is_image_file(f.name)]
        if not files:
            raise DataError(f"{self.root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
        self.items = [(str(f), "", -1) for f in files]

    def __repr__(self) -> str:
        return f"PlainImages({str(self.root)!r}, {len(self)} images)"




def folder_kind(root: Path) -> str:
    """'caption', 'imagefolder' or 'plain' for a folder (a DataError when it holds no image).

    A folder with ``.txt`` captions beside its images is a caption folder. Sub-folders
    named by ImageNet classes (synsets such as ``n02123045``, or class names such as
    ``tabby_cat``) make an ImageFolder tree whose labels are those classes; sub-folders
    named otherwise are just folders of images (plain). Some named by classes and some
    not is ambiguous, and refused.
    """
    files = walk_files(root)
    images = [f for f in files if is_image_file(f.name)]
    if not images:
        raise DataError(
            f"{root}: no images found (expected a folder of images, a caption folder of a.jpg + a.txt pairs, "
            f"or an ImageFolder tree {root}/<class>/<image>)"
        )
    present = set(files)
    if any(f.with_suffix(".txt") in present for f in images):
        return "caption"
    folders = sorted({f.relative_to(root).parts[0] for f in images if f.parent != root})
    if not folders:
        return "plain"
    mapped = [f for f in folders if imagenet_index(f) >= 0]
    if not mapped:
        return "plain"
    if len(mapped) < len(folders):
        unmapped = [f for f in folders if imagenet_index(f) < 0]
        raise DataError(
            f"{root}: {len(mapped)} sub-folders name ImageNet classes but {len(unmapped)} do not "
            f"(e.g. {unmapped[0]!r}): name every class folder by its synset (n02123045) or ImageNet "
            "class name, or use a folder whose sub-folders are not classes"
        )
    return "imagefolder"
