"""Captioned images: a folder of ``a.jpg`` + ``a.txt`` pairs, or a CSV / TSV of image and caption columns."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import ConfigError, DataError
from .common import IMAGE_EXTENSIONS, DataWarning, ItemDataset, PathLike, check_folder, is_image_file, read_caption, read_text, walk_files


class CaptionFolder(ItemDataset):
    """Images with a same-stem caption file beside them (``a.jpg`` + ``a.txt``).

    The CC3M layout that img2dataset writes. The folder is searched recursively
    (hidden files and folders are ignored); the caption is the ``.txt`` file's
    text, stripped. Images without a caption file (or with an empty one) are
    skipped, and one :class:`DataWarning` says how many. No captioned image at
    all is a :class:`DataError`.
    """

    def __init__(self, root: PathLike, transform: Optional[Callable] = None):
        self.root = check_folder(root, "a folder of images with same-stem .txt captions")
        self.transform = transform
        files = walk_files(self.root)
        present = set(files)
        items: List[Tuple[str, str, int]] = []
        missing: List[Path] = []
        empty: List[Path] = []
        n_images = 0
        for f in files:
            if not is_image_file(f.name):
                continue
            n_images += 1
            txt = f.with_suffix(".txt")
            if txt not in present:
                missing.append(f)
                continue
            caption = read_caption(txt)
            if not caption:
                empty.append(f)
                continue
            items.append((str(f), caption, -1))
        if not items:
            if n_images == 0:
                raise DataError(f"{self.root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
            raise DataError(
                f"{self.root}: none of the {n_images} images has a caption "
                "(expected a same-stem .txt beside each image, e.g. a.jpg + a.txt)"
            )
        if missing or empty:
            parts = []
            if missing:
                parts.append(f"{len(missing)} without a .txt caption (e.g. {missing[0]})")
            if empty:
                parts.append(f"{len(empty)} with an empty caption (e.g. {empty[0]})")
            warnings.warn(
                f"CaptionFolder {self.root}: skipped {len(missing) + len(empty)} of {n_images} images: "
                + "; ".join(parts),
                DataWarning,
                stacklevel=2,
            )
        self.items = items
        self.skipped = len(missing) + len(empty)

    def __repr__(self) -> str:
        return f"CaptionFolder({str(self.root)!r}, {len(self)} images)"


IMAGE_COLUMNS = ("image", "filepath", "path")
CAPTION_COLUMNS = ("caption", "title", "text")


def _pick_column(fields: Dict[str, str], wanted: Optional[str], choices: Sequence[str]) -> Optional[str]:
    """The real header name for ``wanted`` (or the first of ``choices``), case-insensitively."""
    for name in ([wanted] if wanted else list(choices)):
        key = name.strip().lower()
        if key in fields:
            return fields[key]
    return None


class CaptionCSV(ItemDataset):
    """Image paths and captions from a CSV (or TSV) file with a header.

    The header must name an image column (``image``, ``filepath`` or ``path``)
    and a caption column (``caption``, ``title`` or ``text``), in any case;
    ``image_key``/``caption_key`` name others. An optional integer ``label``
    column fills ``label``. The delimiter is a tab for ``.tsv`` files or when the
    header is tab-separated (open_clip's default), else a comma; pass
    ``delimiter`` to force one. Fields are parsed with :mod:`csv`, so quoted
    captions keep their commas and quotes.

    Relative paths are taken from the CSV's folder, or from ``root`` when given.
    A missing column, a malformed row, or a missing image file is a
    :class:`DataError` that names the CSV and the line.
    """

    def __init__(
        self,
        csv_path: PathLike,
        root: Optional[PathLike] = None,
        transform: Optional[Callable] = None,
        image_key: Optional[str] = None,
        caption_key: Optional[str] = None,
        delimiter: Optional[str] = None,
    ):
        self.csv_path = Path(csv_path).expanduser()
        if not self.csv_path.is_file():
            what = "a folder" if self.csv_path.is_dir() else "no such file"
            raise DataError(f"{self.csv_path}: {what} (expected a CSV file with image and caption columns)")
        self.root = Path(root).expanduser() if root is not None else self.csv_path.parent
        if root is not None and not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder (the root for the paths in {self.csv_path})")
        self.transform = transform
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as fh:
                text = fh.read()
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.csv_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise DataError(f"{self.csv_path}: cannot read ({exc})") from None
        header_line = text.splitlines()[0] if text.strip() else ""
        if not header_line.strip():
            raise DataError(f"{self.csv_path}: empty file (expected a header with image and caption columns)")
        if delimiter is None:
            delimiter = self._guess_delimiter(header_line)
        self.delimiter = delimiter
        self.items = self._parse(text, delimiter, image_key, caption_key)

    def _guess_delimiter(self, header: str) -> str:
        if self.csv_path.suffix.lower() == ".tsv":
            return "\t"
        if "\t" in header:
            cols = {c.strip().lower() for c in header.split("\t")}
            if cols & set(IMAGE_COLUMNS + CAPTION_COLUMNS):
                return "\t"
        return ","

    def _parse(self, text: str, delimiter: str, image_key, caption_key) -> List[Tuple[str, str, int]]:
        import io

        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            header = next(reader)
        except csv.Error as exc:
            raise DataError(f"{self.csv_path}: malformed header ({exc})") from None
        fields = {h.strip().lower(): h for h in header}
        img_col = _pick_column(fields, image_key, IMAGE_COLUMNS)
        cap_col = _pick_column(fields, caption_key, CAPTION_COLUMNS)
        if img_col is None or cap_col is None:
            need = []
            if img_col is None:
                need.append(f"an image column ({image_key!r})" if image_key else "an image column (image, filepath or path)")
            if cap_col is None:
                need.append(f"a caption column ({caption_key!r})" if caption_key else "a caption column (caption, title or text)")
            raise DataError(
                f"{self.csv_path}: header lacks {' and '.join(need)}; found columns {header} "
                f"(delimiter {delimiter!r})"
            )
        i_img, i_cap = header.index(img_col), header.index(cap_col)
        i_lab = header.index(fields["label"]) if "label" in fields else None
        items: List[Tuple[str, str, int]] = []
        empty_caps: List[int] = []
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(f"{self.csv_path}, line {reader.line_num}: malformed CSV ({exc})") from None
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue  # blank line
            if len(row) != len(header):
                raise DataError(
                    f"{self.csv_path}, line {line}: {len(row)} fields where the header has {len(header)} "
                    "(quote captions that contain the delimiter)"
                )
            rel = row[i_img].strip()
            if not rel:
                raise DataError(f"{self.csv_path}, line {line}: empty {img_col!r} field")
            path = Path(rel).expanduser()
            if not path.is_absolute():
                path = self.root / path
            if not path.is_file():
                raise DataError(f"{self.csv_path}, line {line}: image {rel!r} not found (looked for {path})")
            caption = row[i_cap].strip()
            if not caption:
                empty_caps.append(line)
                continue
            label = -1
            if i_lab is not None and row[i_lab].strip():
                try:
                    label = int(row[i_lab])
                except ValueError:
                    raise DataError(f"{self.csv_path}, line {line}: label {row[i_lab]!r} is not an integer") from None
            items.append((str(path), caption, label))
        if empty_caps:
            warnings.warn(
                f"CaptionCSV {self.csv_path}: skipped {len(empty_caps)} rows with an empty caption "
                f"(e.g. line {empty_caps[0]})",
                DataWarning,
                stacklevel=3,
            )
        if not items:
            raise DataError(f"{self.csv_path}: no rows with an image and a caption")
        return items

    def __repr__(self) -> str:
        return f"CaptionCSV({str(self.csv_path)!r}, {len(self)} images)"


def _read_name_list(path: Path) -> List[str]:
    return [ln.strip() for ln in read_text(path, "image list").splitlines() if ln.strip()]


def read_references(
    references: Union[None, PathLike, Mapping[str, Sequence[str]]],
    images_root: PathLike,
    split: Optional[Union[str, PathLike]] = None,
) -> List[Tuple[str, List[str]]]:
    """``[(image path, [reference captions])]`` in the order of the references.

    ``references`` may be:

    * ``None``: ``images_root`` is a caption folder (``a.jpg`` + ``a.txt``), one reference each;
    * Flickr8k's ``Flickr8k.token.txt`` (``image.jpg#0<TAB>caption``; also
      Flickr30k's ``results_20130124.token``): five references per image;
    * a COCO caption JSON (``images`` + ``annotations``) or Karpathy's
      ``dataset_flickr8k.json`` (``images[].sentences``);
    * a CSV / TSV with image and caption columns (:class:`~psic_adapter.data.CaptionCSV`);
      rows naming the same image give it several references;
    * a mapping ``{image name or path: [captions]}``.

    Image names are looked up under ``images_root``. ``split`` keeps a part:
    a file listing image names one per line (Flickr8k's
    ``Flickr_8k.devImages.txt`` is the paper's validation set), or a split
    name (``val``, ``test``...) of a Karpathy JSON. Listed images missing from
    ``images_root`` are skipped with one warning.
    """
    root = Path(images_root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (the images to caption)")
    split_names: Optional[set] = None
    split_tag: Optional[str] = None
    if split is not None:
        sp = Path(split).expanduser()
        if sp.is_file():
            split_names = {Path(n).name for n in _read_name_list(sp)}
        else:
            split_tag = str(split)

    grouped: Dict[str, List[str]] = {}

    def add(name: str, caption: str) -> None:
        caption = caption.strip()
        if caption:
            grouped.setdefault(name, []).append(caption)

    if references is None:
        for path, text, _ in CaptionFolder(root).items:
            add(path, text)
    elif isinstance(references, Mapping):
        for name, caps in references.items():
            for c in ([caps] if isinstance(caps, str) else caps):
                add(str(name), c)
    else:
        ref = Path(references).expanduser()
        if ref.is_dir():
            for path, text, _ in CaptionFolder(ref).items:
                add(path, text)
        elif not ref.is_file():
            raise DataError(f"{ref}: no such captions file")
        elif ref.suffix.lower() == ".json":
            try:
                data = json.loads(read_text(ref, "captions file"))
            except json.JSONDecodeError as exc:
                raise DataError(f"{ref}: not JSON ({exc})") from None
            images = data.get("images") if isinstance(data, dict) else None
            if not isinstance(images, list):
                raise DataError(f"{ref}: expected a COCO caption JSON or Karpathy's dataset JSON (an 'images' list)")
            if "annotations" in data:  # COCO
                files = {im["id"]: im["file_name"] for im in images}
                for a in data["annotations"]:
                    if a.get("image_id") in files:
                        add(files[a["image_id"]], str(a.get("caption", "")))
            else:  # Karpathy
                for im in images:
                    if split_tag is not None and im.get("split") != split_tag:
                        continue
                    name = im.get("filename") or im.get("file_name")
                    if im.get("filepath"):
                        name = f"{im['filepath']}/{name}"
                    for s in im.get("sentences", []):
                        add(name, str(s.get("raw") or " ".join(s.get("tokens", []))))
                split_tag = None
        elif ref.suffix.lower() in (".csv", ".tsv"):
            for path, text, _ in CaptionCSV(ref, root=root).items:
                add(path, text)
        else:  # Flickr8k / Flickr30k token file
            for ln, line in enumerate(read_text(ref, "captions file").splitlines(), start=1):
                if not line.strip():
                    continue
                if "\t" not in line:
                    raise DataError(f"{ref}, line {ln}: expected 'image.jpg#N<TAB>caption' (Flickr8k.token.txt)")
                name, caption = line.split("\t", 1)
                add(name.split("#", 1)[0].strip(), caption)
    if split_tag is not None:
        raise ConfigError(f"split {str(split)!r} is neither a file of image names nor a split of a Karpathy JSON")
    out, missing = [], []
    for name, caps in grouped.items():
        if split_names is not None and Path(name).name not in split_names:
            continue
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = root / path
        if path.is_file():
            out.append((str(path), caps))
        else:
            missing.append(name)
    if missing:
        warnings.warn(f"captioning: {len(missing)} images with references are not in {root} (e.g. {missing[0]}); "
                      "skipped", stacklevel=2)
    if not out:
        raise DataError(f"no image with reference captions found in {root}")
    return out


