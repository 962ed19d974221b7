"""Pascal VOC, YOLO (Ultralytics) and LabelMe detection sets, converted into COCO-format dicts in memory.

The files are read by globox (MIT, https://github.com/laclouis5/globox; needs only numpy, tqdm and
rich), a library made for exactly this: it reads and writes COCO, Pascal VOC, YOLO, LabelMe, CVAT,
OpenImage and more, with one parser per file or line, so that an error can name the file and line, and
writers that the tests use to make VOC and YOLO sets. supervision (MIT) also reads VOC and YOLO, but is a
broad vision toolkit (annotators, trackers, video through PyAV) for what is here three parsers. globox is
optional: ``pip install 'frcnn[formats]'``; frcnn imports without it, and ``data.format=voc`` without it
ends with one line saying so.

Each split becomes a :class:`~frcnn.data.coco.CocoData` (images with width and height; annotations
with ``bbox`` XYWH in pixels, ``area`` and ``iscrowd``; categories ``1..K`` in class-name order) that
takes the same path as a COCO file: :func:`~frcnn.data.coco.check_annotations`, clipping and dropping
counted in the load report, bad-image handling, and pycocotools evaluation on the dict itself. What
globox leaves to the caller is done here and nowhere else:

* VOC: ``<difficult>1</difficult>`` objects become crowd regions (``iscrowd=1``: not trained on and
  ignored by evaluation, as VOC's own protocol ignores them). VOC pixel coordinates are 1-based and
  inclusive (``xmin=1, xmax=W`` spans the image), so ``<bndbox>`` becomes ``[xmin - 1, ymin - 1, xmax,
  ymax]`` in frcnn's 0-based continuous coordinates (detectron2's convention). The split's ids come from
  ``ImageSets/Main/<split>.txt`` (one id a line, spaces allowed; a class file's ``<id> -1|0|1`` lines too)
  or, without one, every XML of the folder; an id without an XML is an image without boxes. An id's image
  is ``<images>/<id>.<suffix>``, as every VOC loader finds it (``<filename>`` only when there is none: a
  renamed set keeps stale ``<filename>`` entries). A malformed file's message says which element is missing.
* YOLO: class names from ``names:`` (a list, or a dict ``{index: name}``) of the set's ``data.yaml``;
  image sizes from the image headers in display (EXIF) orientation, as Ultralytics reads them; every
  line is parsed by globox and checked here (class index in range, values within [0, 1]) so that an
  error names the file and line. An image without a label file has no boxes; a label file without an
  image is an error.
* LabelMe: rectangles, polygons, masks (LabelMe 5.3+: their points are the mask's rectangle) and circles
  (a centre and a point on it), as their bounding boxes; a shape without a type is a polygon, as LabelMe
  reads it. The split is the folder's JSON files. Shapes that are not regions (points, lines, line strips)
  are counted per type in the load report's dropped boxes (and by ``scripts/convert.py``), naming the first
  file that has them.

A split without images, or one whose class names would come from files that hold no object, is an error
naming the folder: it is a wrong path or layout, not a set to train on.
"""

from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig

from frcnn.data.coco import AnnotationError, CategoryMap, CocoData
from frcnn.data.images import ImageReadError, display_size
from frcnn.errors import ConfigError, MissingFileError, UserError

FORMATS = ("coco", "voc", "yolo", "labelme")  # data.format; all but coco are converted here
# Ultralytics' image suffixes that PIL reads.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
_YOLO_FIELDS = ("cx", "cy", "w", "h")
_BOUNDS_EPS = 1e-6  # globox returns pixels; dividing back by the size can land a hair outside [0, 1]
_CLASS_SET_LINE = re.compile(r"(.*\S)\s+(-1|0|1)")  # ImageSets/Main/<class>_<split>.txt: "<id> -1|0|1"


class FormatError(AnnotationError):
    """A VOC, YOLO or LabelMe file is malformed or inconsistent; the message names the file (and line)."""


@dataclass
class _Image:
    """One image of a split before it becomes COCO: boxes are ``(class name, x1, y1, x2, y2, crowd)``."""

    file_name: str
    width: int
    height: int
    source: Path  # the label file messages name (the image itself when it has none)
    boxes: list[tuple[str, float, float, float, float, bool]] = field(default_factory=list)


def read_split(
    fmt: str,
    *,
    images: str | Path,
    annotations: str | Path,
    image_set: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    names_file: str | Path | None = None,
    split: str = "<split>",
) -> CocoData:
    """One split of a ``fmt`` data set as a COCO-format dict in memory.

    Args:
        fmt: ``"voc"``, ``"yolo"`` or ``"labelme"``.
        images: the split's image folder (``file_name`` entries are relative to it).
        annotations: the folder of its label files (VOC ``Annotations/``, YOLO ``labels/<split>/``, the
            LabelMe JSON folder).
        image_set: VOC only: the ``ImageSets/Main/<split>.txt`` listing its ids; None: every XML.
        class_names: the classes, label ``i`` being ``class_names[i - 1]``; None: VOC and LabelMe take the
            sorted names found in the files, YOLO the ``names:`` of ``names_file``. Pass the training
            split's names when reading another split, so that both map classes to the same labels.
        names_file: YOLO only: the ``data.yaml`` holding ``names:``.
        split: the split's name in the config (``data.<split>.images``), for messages.

    Raises:
        FormatError: a malformed file, naming it (and the line, for YOLO).
        MissingFileError: a folder or file named here does not exist.
        UserError: globox is not installed.
    """
    if fmt not in ("voc", "yolo", "labelme"):
        raise ConfigError(f"data.format={fmt} cannot be converted; allowed: voc | yolo | labelme")
    globox = _globox(fmt)
    images, annotations = Path(images), Path(annotations)
    for path, key in ((images, "images"), (annotations, "annotations")):
        if not path.is_dir():
            raise MissingFileError(f"{path} is not a folder; check data.{split}.{key} (data.format={fmt})")
    names = None if class_names is None else _check_names([str(n) for n in class_names], "data.class_names")
    unreadable: list[str] = []
    not_boxes: dict[str, int] = {}
    if fmt == "voc":
        image_set = None if image_set is None else Path(image_set)
        records = _voc_images(globox, images, annotations, image_set, unreadable, f"data.{split}.image_set")
    elif fmt == "yolo":
        names = names or _yolo_names(names_file)
        records = _yolo_images(globox, images, annotations, names, unreadable)
    else:
        records = _labelme_images(globox, images, annotations, not_boxes)
    where = f"data.{split} (data.format={fmt})"
    if not records and not unreadable:
        raise FormatError(f"{where}: {_nothing_found(fmt, images, annotations, image_set, split)}")
    if names is None:
        names = sorted({box[0] for rec in records for box in rec.boxes})
        if not names:
            raise FormatError(f"{where}: no object in the files of {annotations}, so no class names; check the "
                              "folder, or list the classes in data.class_names=[...]")
    return _to_coco(records, names, str(annotations), unreadable, not_boxes)


def _nothing_found(fmt: str, images: Path, annotations: Path, image_set: str | Path | None, split: str) -> str:
    """What an empty split lacks, and the key to check."""
    if fmt == "voc" and image_set is not None:
        return f"{image_set} lists no ids; list the split's ids there, one a line"
    if fmt == "voc":
        return f"no XML file in {annotations}; check data.{split}.annotations"
    if fmt == "yolo":
        return f"no image ({', '.join(IMAGE_SUFFIXES)}) in {images}; check data.{split}.images"
    return f"no JSON file in {annotations}; check data.{split}.annotations"


def _globox(fmt: str) -> ModuleType:
    try:
        import globox
    except ImportError as err:
        raise UserError(
            f"data.format={fmt} reads its files with globox, which is not installed: pip install 'frcnn[formats]' "
            "(or uv sync --extra formats)"
        ) from err
    return globox


def _check_names(names: list[str], what: str) -> list[str]:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{what} names {dup} more than once; each class needs one name")
    if not names:
        raise ConfigError(f"{what} is empty; list the class names")
    return names


def _to_coco(records: list[_Image], names: list[str], source: str, unreadable: list[str], not_boxes: dict[str, int]) -> CocoData:
    """Images ``1..N`` in ``records`` order, annotations ``1..M`` (pycocotools' COCOeval takes id 0 for
    "unmatched"), categories ``1..K`` in ``names`` order."""
    category = {name: i for i, name in enumerate(names, start=1)}
    images, annotations = [], []
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": rec.file_name, "width": rec.width, "height": rec.height})
        for name, x1, y1, x2, y2, crowd in rec.boxes:
            if name not in category:
                raise FormatError(
                    f"{rec.source}: class {name!r} is not one of the {len(names)} classes {names}; add it to "
                    "data.class_names (a class the training split lacks cannot be evaluated), or fix the file"
                )
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category[name],
                 "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": int(crowd)}
            )
    categories = [{"id": i, "name": name, "supercategory": "none"} for name, i in category.items()]
    return CocoData({"images": images, "annotations": annotations, "categories": categories}, source, tuple(unreadable),
                    tuple(not_boxes.items()))


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _relative(image: Path, folder: Path) -> str:
    """``image``'s ``file_name`` under ``folder`` (one outside it is refused by CocoDetection, naming it)."""
    return Path(os.path.relpath(image, folder)).as_posix()


def _sized_image(folder: Path, image: Path, unreadable: list[str]) -> _Image | None:
    """An image without boxes yet, its size from its header; None (and a line in ``unreadable``) when unreadable."""
    try:
        width, height = display_size(image)
    except ImageReadError as err:
        unreadable.append(str(err))
        return None
    return _Image(_relative(image, folder), width, height, image)


# ---------------------------------------------------------------------------------------------- VOC


def _voc_images(
    globox: ModuleType, images: Path, annotations: Path, image_set: Path | None, unreadable: list[str], key: str
) -> list[_Image]:
    if image_set is None:
        ids = sorted(p.stem for p in annotations.glob("*.xml"))
    elif not image_set.is_file():
        raise MissingFileError(f"image set {image_set} not found; list the split's ids there, one a line, or pass "
                               f"{key}=null to take every XML of the folder")
    else:
        ids = [_image_set_id(line.strip(), annotations, images) for line in image_set.read_text().splitlines() if line.strip()]
    records = []
    for image_id in ids:
        xml = annotations / f"{image_id}.xml"
        if xml.is_file():
            records.append(_voc_image(globox, xml, images))
            continue
        image = _find_image(images, image_id)
        if image is None:
            raise FormatError(f"{image_set}: id {image_id} has neither {xml} nor an image {images / image_id}.*; "
                              "remove the line or add the files")
        rec = _sized_image(images, image, unreadable)
        if rec is not None:
            records.append(rec)
    return records


def _image_set_id(line: str, annotations: Path, images: Path) -> str:
    """The id on a stripped image-set line: the whole line (ids may hold spaces), or ``<id>`` of a class
    file's ``<id> -1|0|1`` line when the whole line names neither an XML nor an image."""
    match = _CLASS_SET_LINE.fullmatch(line)
    if match and not (annotations / f"{line}.xml").is_file() and _find_image(images, line) is None:
        return match.group(1)
    return line


def _voc_image(globox: ModuleType, xml: Path, images: Path) -> _Image:
    try:
        ann = globox.Annotation.from_pascal_voc(xml)
        root = ET.parse(xml).getroot()
    except (globox.ParsingError, ValueError, AssertionError, ET.ParseError) as err:
        raise FormatError(f"{xml}: {_voc_problem(xml)}; see the Pascal VOC layout in docs/training.md") from err
    # globox reads every <object> (ET's iter order) but not <difficult>: take it from the same elements.
    difficult = [(obj.findtext("difficult") or "0").strip() == "1" for obj in root.iter("object")]
    width, height = ann.image_size
    # The image is the id's, as VOC loaders find it (a renamed set keeps stale <filename>s); else <filename>
    # as written, or its stem (ImageNet's tools write it without a suffix). None found: the COCO path's
    # missing file when it is read.
    image = _find_image(images, xml.stem) or images / ann.image_id
    if not image.is_file():
        image = _find_image(images, Path(ann.image_id).stem) or image
    boxes = [  # <name> as a class name without the whitespace of a pretty-printed file
        (box.label.strip(), box.xmin - 1.0, box.ymin - 1.0, box.xmax, box.ymax, crowd)  # 1-based inclusive -> 0-based
        for box, crowd in zip(ann.boxes, difficult)
    ]
    return _Image(_relative(image, images), width, height, xml, boxes)


def _voc_problem(xml: Path) -> str:
    """Why globox refused ``xml`` (its messages do not say), in VOC's element names."""
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as err:
        return f"not well-formed XML ({err})"
    if root.findtext("filename") is None:
        return "no <filename>"
    size = root.find("size")
    if size is None or size.findtext("width") is None or size.findtext("height") is None:
        return "no <size> with <width> and <height>; add the image's size in pixels"
    try:
        if int(size.findtext("width")) <= 0 or int(size.findtext("height")) <= 0:
            return "<size> is not positive; write the image's width and height in pixels"
    except ValueError:
        return "<size> <width> and <height> must be whole numbers of pixels"
    for i, obj in enumerate(root.iter("object"), start=1):
        name, box = obj.findtext("name"), obj.find("bndbox")
        if name is None:
            return f"object {i} has no <name>"
        corners = [None if box is None else box.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        if None in corners:
            return f"object {i} ({name}) has no <bndbox> with <xmin>, <ymin>, <xmax> and <ymax>"
        try:
            x1, y1, x2, y2 = (float(c) for c in corners)
        except ValueError:
            return f"object {i} ({name}): <bndbox> {corners} are not numbers"
        if x2 < x1 or y2 < y1:
            return f"object {i} ({name}): <bndbox> {corners} has xmax < xmin or ymax < ymin"
    return "not a Pascal VOC annotation"


# --------------------------------------------------------------------------------------------- YOLO


def _yolo_names(names_file: str | Path | None) -> list[str]:
    """The class names of a YOLO set: ``names:`` of its ``data.yaml``, a list or ``{index: name}``."""
    import yaml  # PyYAML comes with Hydra

    if names_file is None or not Path(names_file).is_file():
        raise MissingFileError(f"YOLO class names file {names_file} not found; put the set's data.yaml (with names:) "
                               "there, point data.names_file at it, or give data.class_names=[...]")
    try:
        names = (yaml.safe_load(Path(names_file).read_text()) or {}).get("names")
    except (yaml.YAMLError, AttributeError) as err:
        raise FormatError(f"{names_file}: not a YAML mapping with names: ({err})") from err
    if isinstance(names, dict):
        try:
            by_index = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError) as err:
            raise FormatError(f"{names_file}: names: keys must be class indices 0..K-1, got {list(names)}") from err
        if sorted(by_index) != list(range(len(by_index))):
            raise FormatError(f"{names_file}: names: keys must be 0..{len(by_index) - 1} without gaps, got {sorted(by_index)}")
        names = [by_index[i] for i in range(len(by_index))]
    if not isinstance(names, list):
        raise FormatError(f"{names_file}: no names: list (or {{index: name}} dict) of the classes")
    return _check_names([str(n) for n in names], f"{names_file}: names:")


def _yolo_images(globox: ModuleType, images: Path, labels: Path, names: list[str], unreadable: list[str]) -> list[_Image]:
    """Images and label files are paired by their path under ``images`` / ``labels`` without the suffix."""
    label_files = {p.relative_to(labels).with_suffix("").as_posix(): p for p in sorted(labels.rglob("*.txt"))}
    image_files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    keys = {p.relative_to(images).with_suffix("").as_posix() for p in image_files}
    orphans = sorted(set(label_files) - keys)
    if orphans:
        raise FormatError(
            f"{label_files[orphans[0]]}: a label file without an image {images / orphans[0]}.* "
            f"({len(orphans)} such files); add the image or remove the label file"
        )
    records = []
    for image in image_files:
        rec = _sized_image(images, image, unreadable)
        label_file = label_files.get(image.relative_to(images).with_suffix("").as_posix())
        if rec is not None and label_file is not None:
            rec.source = label_file
            rec.boxes = _yolo_boxes(globox, label_file, (rec.width, rec.height), names)
        if rec is not None:
            records.append(rec)
    return records


def _yolo_boxes(globox: ModuleType, path: Path, size: tuple[int, int], names: list[str]) -> list[tuple]:
    """The boxes of one label file, each line ``class cx cy w h`` parsed by globox and checked here."""
    boxes = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):  # -sig: Notepad's BOM
        if not line.strip():
            continue
        where = f"{path}:{n}: {line.strip()!r}"
        try:  # AssertionError: globox refuses a negative width or height (or confidence) by assert
            box = globox.BoundingBox.from_yolo_darknet(line, image_size=size)
        except (globox.ParsingError, AssertionError) as err:
            raise FormatError(f"{where} is not 'class cx cy w h' (five numbers, w and h >= 0)") from err
        if not box.is_ground_truth:
            raise FormatError(f"{where} has six values; a label line is 'class cx cy w h'")
        try:
            index = float(box.label)
        except ValueError:
            index = math.nan
        if not (index.is_integer() and 0 <= index < len(names)):
            raise FormatError(f"{where}: class {box.label} is out of range; the {len(names)} classes are 0..{len(names) - 1}")
        cx, cy, w, h = box.xywh
        for key, value in zip(_YOLO_FIELDS, (cx / size[0], cy / size[1], w / size[0], h / size[1])):
            if not -_BOUNDS_EPS <= value <= 1 + _BOUNDS_EPS:
                raise FormatError(f"{where}: {key}={value:.6g} is outside [0, 1]; YOLO coordinates are normalized by the image size")
        boxes.append((names[int(index)], *box.ltrb, False))
    return boxes


# ------------------------------------------------------------------------------------------ LabelMe


_LABELME_REGIONS = ("rectangle", "polygon", "mask")  # boxed by their points' extent (a mask's: its rectangle)


def _labelme_images(globox: ModuleType, images: Path, annotations: Path, not_boxes: dict[str, int]) -> list[_Image]:
    """Each JSON file's image and boxes; shapes that are not regions counted into ``not_boxes``."""
    records = []
    for path in sorted(annotations.glob("*.json")):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
            image_id, width, height = str(content["imagePath"]), int(content["imageWidth"]), int(content["imageHeight"])
            shapes = list(content["shapes"])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise FormatError(f"{path}: not a LabelMe annotation ({err!r}); it needs imagePath, imageWidth, imageHeight "
                              "and a list of shapes") from err
        # imagePath is relative to the JSON file (LabelMe writes Windows separators on Windows).
        image = path.parent / image_id.replace("\\", "/")
        boxes = [box for n, shape in enumerate(shapes) if (box := _labelme_box(globox, path, n, shape, not_boxes))]
        records.append(_Image(_relative(image, images), width, height, path, boxes))
    return records


def _labelme_box(globox: ModuleType, path: Path, n: int, shape: dict, not_boxes: dict[str, int]) -> tuple | None:
    """Shape ``n`` of ``path`` as ``(label, x1, y1, x2, y2, False)``: a rectangle's, polygon's or mask's points'
    extent (globox's), a circle's (centre and a point on it) square; None for a shape that is not a region
    (point, line, linestrip, ...), counted into ``not_boxes`` under a reason naming the first file."""
    kind = (shape.get("shape_type") if isinstance(shape, dict) else None) or "polygon"  # LabelMe's reading of none
    try:
        label = str(shape["label"])
        if kind in _LABELME_REGIONS:
            box = globox.BoundingBox.from_labelme(shape)
            return (label, *box.ltrb, False)
        if kind == "circle":
            (cx, cy), (px, py) = shape["points"]
            cx, cy, r = float(cx), float(cy), math.hypot(float(px) - float(cx), float(py) - float(cy))
            return (label, cx - r, cy - r, cx + r, cy + r, False)
    except (globox.ParsingError, AssertionError, KeyError, TypeError, ValueError) as err:
        points = "[[cx, cy], [x, y]] (its centre and a point on it)" if kind == "circle" else "[[x, y], ...]"
        raise FormatError(f"{path}: shape {n} ({kind}) needs a label and points {points} ({err!r})") from err
    reason = next((r for r in not_boxes if r.startswith(f"LabelMe {kind!r} shapes ")), None)
    reason = reason or f"LabelMe {kind!r} shapes (not a region; first in {path})"
    not_boxes[reason] = not_boxes.get(reason, 0) + 1
    return None


def split_annotations(cfg: DictConfig, split: str, categories: CategoryMap | None = None) -> str | CocoData:
    """What :class:`CocoDetection` reads for ``split`` of ``cfg.data``: the annotation file's path
    (``data.format=coco``, the default), or the VOC / YOLO / LabelMe split converted in memory
    (:func:`frcnn.data.formats.read_split`). ``categories`` (the training split's, or a checkpoint's)
    gives the class names, so that every split maps classes to the same labels."""
    fmt = cfg.data.get("format", "coco")
    split_cfg = cfg.data[split]
    if fmt == "coco":
        return split_cfg.annotations
    names = categories.names if categories is not None else cfg.data.get("class_names")
    return read_split(
        fmt,
        images=split_cfg.images,
        annotations=split_cfg.annotations,
        image_set=split_cfg.get("image_set"),
        class_names=None if names is None else [str(n) for n in names],
        names_file=cfg.data.get("names_file"),
        split=split,
    )
