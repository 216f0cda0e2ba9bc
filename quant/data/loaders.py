"""List the images of a dataset on disk: records (file, class, official split, mask).

Only file names, headers and masks are read here; pixels are decoded later, lazily, by
ImageSet. Every lister returns a `Listing` whose records are sorted by path.

Layouts (dataset.kind):
  folder     <root>/<class>/*.{png,jpg,jpeg,bmp,tif,tiff}; optional masks in
             <root>/masks/<class>/<same stem>.<ext> (a folder named "masks" is never a
             class). dataset.ok_classes names the ok folders.
  kolektor   KolektorSDD2: <root>/{train,test}/<id>.png + <id>_GT.png; an all-zero GT
             mask is ok, anything else "defect". Official train/test split.
  severstal  <root>/train.csv (ImageId,ClassId,EncodedPixels; the older
             ImageId_ClassId,EncodedPixels form is accepted too) + <root>/train_images/.
             Images without a row are ok. An image's type is the ClassId with the most
             mask pixels (ties: the lower ClassId); classes are named defect_<ClassId>.
  mvtec      MVTec-AD category: <root>/train/good, <root>/test/<type>,
             <root>/ground_truth/<type>/<stem>_mask.png. "good" is ok. The official
             split trains on good images only, so it cannot train a classifier: the
             images are pooled and split like a folder dataset.
  casting    <root>/{train,test}/{def_front,ok_front}; ok_front is ok. Official split;
             flagged for the near-duplicate check (its test split leaks).

Labels for the task (`assign_classes`): binary -> ("ok", "defect"), ok_index 0; type ->
the dataset's classes sorted by name, ok_index = the one ok class (None without one).
Tiles (`tile_records`): a tile's class is the mask class with the most pixels inside it;
a tile with no mask pixel is ok (when the dataset has an ok class); an image without
mask, or a single tile covering the whole image, keeps the image's class.
"""
from __future__ import annotations

import csv
import errno
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core.errors import UserError
from quant.data.images import IMAGE_EXTENSIONS, Box, image_size, is_image_file, read_mask, tile_boxes
from quant.data.rle import parse_rle, rle_decode

MASKS_DIR = "masks"
IMAGES_DIR = "images"


def _images_and_masks_layout(root: Path) -> bool:
    """<root> holds only images/ and masks/, and images/ holds class folders."""
    dirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return dirs == {IMAGES_DIR, MASKS_DIR} and any(p.is_dir() for p in (root / IMAGES_DIR).iterdir())
BINARY_CLASSES = ("ok", "defect")


@dataclass(frozen=True)
class MaskRef:
    """Where an image's defect mask comes from: a mask file, or RLE strings per class."""

    path: str | None = None  # any non-zero pixel is the record's class
    rles: tuple[tuple[str, str], ...] = ()  # (class name, Kaggle RLE)
    voc: str | None = None  # a Pascal VOC file whose boxes are the mask (quant.data.voc_boxes)
    where: str = ""  # for messages (e.g. "train.csv, ImageId 0002cc93b.jpg")

    def layers(self, cls: str, shape: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
        """(class name, bool mask [H, W]) pairs for an image of `shape`."""
        if self.path is not None:
            mask = read_mask(self.path)
            if mask.shape != tuple(shape):
                raise UserError(f"mask {self.path} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}: masks must match their image")
            return [(cls, mask)]
        if self.voc is not None:
            from quant.data.voc_boxes import box_mask, read_voc

            return [(cls, box_mask(read_voc(Path(self.voc)), shape))]
        return [(name, rle_decode(rle, shape, f"{self.where}, class {name}")) for name, rle in self.rles]


@dataclass(frozen=True)
class MaskSource:
    """An item's defect mask at its source image's size: the union of its mask layers; an
    image known to be defect-free (an ok image of a dataset with masks) has an empty one."""

    ref: MaskRef | None
    cls: str

    def __call__(self, shape: tuple[int, int]) -> np.ndarray:
        layers = self.ref.layers(self.cls, shape) if self.ref is not None else []
        out = np.zeros(shape, dtype=bool)
        for _, m in layers:
            out |= m
        return out


@dataclass(frozen=True)
class Record:
    path: str
    cls: str  # the dataset's class name (folder name, defect type, "ok")
    key: str  # path relative to the dataset root, for messages
    split: str | None = None  # official split ("train" / "test"), None if the layout has none
    mask: MaskRef | None = None
    tile: int | None = None  # tile index within the image (tile geometry only)
    box: Box | None = None  # the tile's crop (top, left, bottom, right)


@dataclass
class Listing:
    root: Path
    records: list[Record]
    classes: tuple[str, ...]  # sorted
    ok_classes: frozenset[str]
    has_official_test: bool = False
    no_official_test: str = ""  # why use_official_test cannot be honoured, if it cannot
    near_dup_check: bool = False
    notes: list[str] = field(default_factory=list)


def _entries(directory: Path) -> list[os.DirEntry]:
    """The entries of a dataset folder; an unreadable folder or a symlink loop is a UserError."""
    try:
        with os.scandir(directory) as it:
            entries = list(it)
        for e in entries:
            if e.is_symlink():
                try:
                    os.stat(e.path)
                except OSError as err:
                    if err.errno == errno.ELOOP:
                        raise UserError(f"{e.path} is a symlink loop (it leads back to itself): remove the link "
                                        "or point it at a file") from None
        return entries
    except OSError as e:
        raise UserError(f"cannot read the dataset folder {directory} ({e.strerror}): fix its permissions; it is an "
                        "input (dataset.path), not an output") from None


def _images_in(directory: Path, notes: list[str]) -> list[Path]:
    images, other = [], []
    for e in _entries(directory):  # DirEntry.is_file() needs no extra stat
        if not e.name.startswith("."):
            is_image = e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
            (images if is_image else other).append(Path(e.path))
    images.sort()
    other.sort()
    if other:
        notes.append(f"ignored {len(other)} non-image entries in {directory} (e.g. {other[0].name}); images must end in {', '.join(IMAGE_EXTENSIONS)}")
    return images


def _require_dir(path: Path, layout: str) -> None:
    if not path.is_dir():
        raise UserError(f"{path} not found: expected the {layout} layout; check dataset.path and dataset.kind")


def _check_classes(root: Path, counts: dict[str, int]) -> None:
    if not counts:
        raise UserError(f"no images in {root}: expected one folder per class, <root>/<class>/<image>.png")
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise UserError(f"class folder {root / empty[0]} has no images: add images or remove the folder")
    if len(counts) < 2:
        raise UserError(f"{root} has only one class folder ({next(iter(counts))}): a classifier needs at least two, e.g. ok and defect")


def _no_case_clash(root: Path, names: list[str]) -> None:
    """ok/ and OK/ are one folder on macOS and Windows, and here one of them would not be ok."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise UserError(f"{root}: class folders {other!r} and {name!r} differ only in case (one class on "
                            "case-insensitive file systems, two labels here): merge them or rename one")


def _class_folders(root: Path, split: str | None, notes: list[str]) -> tuple[list[Record], dict[str, int]]:
    _require_dir(root, "class-per-folder")
    mask_root = root / MASKS_DIR
    if _images_and_masks_layout(root):  # <root>/images/<class>/x + <root>/masks/<class>/x (magnetic tile)
        notes.append(f"{root}: images/<class> with masks/<class> (masks attached to their images)")
        root = root / IMAGES_DIR
    entries = [Path(e.path) for e in _entries(root)]
    dirs = sorted(p for p in entries if p.is_dir() and not p.name.startswith(".") and p.name != MASKS_DIR)
    _no_case_clash(root, [d.name for d in dirs])
    stray = [p for p in entries if is_image_file(p)]
    if stray and not dirs:
        raise UserError(f"{root} holds images directly: put them in one folder per class, <root>/<class>/{stray[0].name}")
    if stray:
        notes.append(f"ignored {len(stray)} images directly in {root} (e.g. {stray[0].name}): images belong in class folders")
    records, counts = [], {}
    base = root if split is None else root.parent
    for d in dirs:
        images = _images_in(d, notes)
        counts[d.name] = len(images)
        masks = {}
        mask_dir = mask_root / d.name
        if mask_dir.is_dir():
            masks = {p.stem: p for p in (Path(e.path) for e in _entries(mask_dir)) if is_image_file(p)}
        for p in images:
            m = masks.get(p.stem)
            records.append(Record(str(p), d.name, p.relative_to(base).as_posix(), split, MaskRef(path=str(m)) if m else None))
    return records, counts


def list_folder(root: Path, ok_classes: tuple[str, ...]) -> Listing:
    notes: list[str] = []
    records, counts = _class_folders(root, None, notes)
    _check_classes(root, counts)
    return Listing(root, records, tuple(sorted(counts)), frozenset(ok_classes), notes=notes,
                   no_official_test="a class-per-folder dataset has no official test split")


def list_casting(root: Path) -> Listing:
    notes: list[str] = []
    records: list[Record] = []
    for split in ("train", "test"):
        recs, counts = _class_folders(root / split, split, notes)
        _check_classes(root / split, counts)
        if set(counts) != {"def_front", "ok_front"}:
            raise UserError(f"{root / split} should hold exactly def_front/ and ok_front/ (found {', '.join(sorted(counts))}): check dataset.path")
        records += recs
    return Listing(root, records, ("def_front", "ok_front"), frozenset({"ok_front"}), has_official_test=True,
                   near_dup_check=True, notes=notes)


def list_kolektor(root: Path) -> Listing:
    notes: list[str] = []
    records: list[Record] = []
    for split in ("train", "test"):
        d = root / split
        _require_dir(d, "KolektorSDD2 (<root>/{train,test}/<id>.png + <id>_GT.png)")
        for p in _images_in(d, notes):
            if p.stem.endswith("_GT"):
                if not p.with_name(p.stem[:-3] + p.suffix).exists():
                    notes.append(f"ignored mask {p} without its image")
                continue
            gt = p.with_name(f"{p.stem}_GT{p.suffix}")
            if not gt.is_file():
                raise UserError(f"{p} has no ground-truth mask {gt.name} beside it: restore it, or delete the image")
            cls = "defect" if read_mask(gt).any() else "ok"
            records.append(Record(str(p), cls, p.relative_to(root).as_posix(), split, MaskRef(path=str(gt))))
        if not any(r.split == split for r in records):
            raise UserError(f"no images in {d}: expected KolektorSDD2 files <id>.png with <id>_GT.png")
    counts = {c: sum(r.cls == c for r in records) for c in BINARY_CLASSES}
    if min(counts.values()) == 0:
        raise UserError(f"{root} has no {'defective' if counts['defect'] == 0 else 'ok'} images (all GT masks {'empty' if counts['defect'] == 0 else 'non-empty'}): a classifier needs both")
    return Listing(root, records, BINARY_CLASSES, frozenset({"ok"}), has_official_test=True, notes=notes)


def _severstal_rows(csv_path: Path) -> dict[str, dict[int, tuple[str, int]]]:
    """ImageId -> {ClassId: (EncodedPixels, csv line)}."""
    try:
        return _read_severstal_csv(csv_path)
    except UnicodeDecodeError as e:
        raise UserError(f"{csv_path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): "
                        "save it as UTF-8") from None
    except csv.Error as e:
        raise UserError(f"{csv_path}: not a readable CSV file ({e}): fix or regenerate it") from None


def _read_severstal_csv(csv_path: Path) -> dict[str, dict[int, tuple[str, int]]]:
    rows: dict[str, dict[int, tuple[str, int]]] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM (Excel's UTF-8) is not a column name
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        if {"ImageId", "ClassId", "EncodedPixels"} <= fields:
            split_id = lambda row: (row["ImageId"], row["ClassId"])  # noqa: E731
        elif {"ImageId_ClassId", "EncodedPixels"} <= fields:
            split_id = lambda row: tuple((row["ImageId_ClassId"] or "").rsplit("_", 1))  # noqa: E731
        else:
            raise UserError(f"{csv_path}: expected columns ImageId,ClassId,EncodedPixels (found {','.join(reader.fieldnames or ())})")
        for row in reader:
            line = reader.line_num
            ids = split_id(row)
            if len(ids) != 2 or not ids[0]:
                raise UserError(f"{csv_path} line {line}: cannot read the image id and class id: fix or delete the row")
            image_id, class_id = ids
            try:
                if not (class_id or "").strip().isascii():
                    raise ValueError
                cid = int(class_id)
            except (ValueError, TypeError):
                raise UserError(f"{csv_path} line {line}: ClassId {class_id!r} is not an integer: fix or delete the row") from None
            rle = (row["EncodedPixels"] or "").strip()
            if not rle:
                continue  # the older format lists every image x class, empty when absent
            if cid in rows.setdefault(image_id, {}):
                raise UserError(f"{csv_path} line {line}: second row for {image_id} class {cid}: merge the two rows")
            rows[image_id][cid] = (rle, line)
    return rows


def list_severstal(root: Path) -> Listing:
    csv_path, image_dir = root / "train.csv", root / "train_images"
    if not csv_path.is_file():
        raise UserError(f"{csv_path} not found: a Severstal dataset needs train.csv and train_images/ in dataset.path")
    _require_dir(image_dir, "Severstal (<root>/train.csv + <root>/train_images/)")
    notes: list[str] = []
    rows = _severstal_rows(csv_path)
    images = {p.name: p for p in _images_in(image_dir, notes)}
    for image_id in rows:
        if image_id not in images:
            raise UserError(f"{csv_path} names {image_id}, which is not in {image_dir}: restore the image or delete its rows")
    records = []
    for name in sorted(images):
        p = images[name]
        cls, mask = "ok", None
        if name in rows:
            h, w = image_size(p)
            rles, areas = [], []
            for cid, (rle, line) in sorted(rows[name].items()):
                n = int(parse_rle(rle, h * w, f"{csv_path} line {line} ({name}, class {cid})")[1].sum())
                rles.append((f"defect_{cid}", rle))
                areas.append(n)
            cls = rles[int(np.argmax(areas))][0]
            mask = MaskRef(rles=tuple(rles), where=f"{csv_path.name}, {name}")
        records.append(Record(str(p), cls, f"train_images/{name}", None, mask))
    classes = tuple(sorted({"ok"} | {name for r in records if r.mask for name, _ in r.mask.rles}))
    n_ok = sum(r.cls == "ok" for r in records)
    if n_ok in (0, len(records)):
        raise UserError(f"{root}: {'no' if n_ok == 0 else 'every'} image in train_images/ is ok (without a train.csv row): a classifier needs ok and defective images")
    return Listing(root, records, classes, frozenset({"ok"}), notes=notes,
                   no_official_test="Severstal's test_images have no labels, so there is no labelled official test split")


def list_mvtec(root: Path) -> Listing:
    if not (root / "train").is_dir() and any((d / "train" / "good").is_dir() for d in root.iterdir() if d.is_dir()):
        raise UserError(f"{root} holds several MVTec categories: set dataset.path to one of them, e.g. {root / 'bottle'}")
    _require_dir(root / "train" / "good", "MVTec-AD (<root>/train/good, <root>/test/<type>)")
    _require_dir(root / "test", "MVTec-AD (<root>/train/good, <root>/test/<type>)")
    notes: list[str] = []
    records: list[Record] = []
    sources = [("good", root / "train" / "good")]
    sources += [(d.name, d) for d in sorted((root / "test").iterdir()) if d.is_dir() and not d.name.startswith(".")]
    counts: dict[str, int] = {}
    for cls, d in sources:
        images = _images_in(d, notes)
        counts[cls] = counts.get(cls, 0) + len(images)
        if not images:
            raise UserError(f"{d} has no images: add images or remove the folder")
        for p in images:
            mask = None
            if cls != "good":
                m = root / "ground_truth" / cls / f"{p.stem}_mask.png"
                mask = MaskRef(path=str(m)) if m.is_file() else None
            records.append(Record(str(p), cls, p.relative_to(root).as_posix(), None, mask))
    _check_classes(root / "test", counts)
    missing = sum(r.mask is None and r.cls != "good" for r in records)
    if missing:
        notes.append(f"{missing} defective MVTec images have no ground_truth mask (tiles of them keep the image label)")
    return Listing(root, records, tuple(sorted(counts)), frozenset({"good"}), notes=notes,
                   no_official_test="MVTec's official train split holds only good images, so a classifier cannot learn from it")


def list_dataset(kind: str, root: Path, ok_classes: tuple[str, ...] = ("ok",), boxes: Path | None = None) -> Listing:
    """The listing for dataset.kind (synthetic datasets are folder datasets once generated);
    `boxes`: a folder of VOC box files whose rectangles become the defect images' masks."""
    listing = _list(kind, root, ok_classes)
    if boxes is not None:
        from quant.data.voc_boxes import attach_boxes

        listing.records = attach_boxes(listing.records, Path(boxes), listing.ok_classes, listing.notes)
    return listing


def _list(kind: str, root: Path, ok_classes: tuple[str, ...]) -> Listing:
    root = Path(root)
    if root.is_symlink() and not root.exists():
        raise UserError(f"dataset.path {root} is a broken symlink or a symlink loop: check the path")
    if not root.is_dir():
        raise UserError(f"dataset.path {root} is not a directory: check the path (relative paths start at the current directory)")
    if kind in ("folder", "synthetic"):
        return list_folder(root, ok_classes)
    listers = {"kolektor": list_kolektor, "severstal": list_severstal, "mvtec": list_mvtec, "casting": list_casting}
    if kind not in listers:
        raise UserError(f"dataset.kind {kind!r} is not known: choose one of synthetic, folder, {', '.join(listers)}")
    return listers[kind](root)


def assign_classes(listing: Listing, task: str) -> tuple[tuple[str, ...], int | None, dict[str, int]]:
    """(class_names, ok_index, label of each dataset class) for task binary / type."""
    present_ok = [c for c in listing.classes if c in listing.ok_classes]
    if task == "binary":
        if not present_ok:
            raise UserError(
                f"{listing.root}: no ok class for task binary: none of dataset.ok_classes ({', '.join(sorted(listing.ok_classes))}) "
                f"is among the classes ({', '.join(listing.classes)}); set dataset.ok_classes or use dataset.task: type")
        if len(present_ok) == len(listing.classes):
            raise UserError(f"{listing.root}: every class ({', '.join(listing.classes)}) is in dataset.ok_classes: the binary task needs a defect class")
        return BINARY_CLASSES, 0, {c: 0 if c in listing.ok_classes else 1 for c in listing.classes}
    if task != "type":
        raise UserError(f"dataset.task {task!r} is not known: choose binary or type")
    if len(present_ok) > 1:
        raise UserError(f"{listing.root}: task type needs at most one ok class, found {', '.join(present_ok)}: merge those folders or list one in dataset.ok_classes")
    names = listing.classes
    return names, names.index(present_ok[0]) if present_ok else None, {c: i for i, c in enumerate(names)}


def tile_records(records: list[Record], size: tuple[int, int], ok_class: str | None,
                 sizes: dict[str, tuple[int, int]] | None = None) -> list[Record]:
    """Expand each record into one record per tile, labelled from its mask (see module doc).

    `sizes` (path -> (height, width)) saves reading the headers again.
    """
    out = []
    for r in records:
        h, w = sizes[r.path] if sizes and r.path in sizes else image_size(r.path)
        boxes = tile_boxes(h, w, size)
        layers = r.mask.layers(r.cls, (h, w)) if r.mask is not None and len(boxes) > 1 else []
        for k, box in enumerate(boxes):
            cls = r.cls
            if layers:
                t, l, b, rt = box
                counts = [int(m[t:b, l:rt].sum()) for _, m in layers]
                if max(counts) > 0:
                    cls = layers[int(np.argmax(counts))][0]
                elif ok_class is not None:
                    cls = ok_class
            out.append(replace(r, cls=cls, key=f"{r.key}#t{k}", tile=k, box=box))
    return out
