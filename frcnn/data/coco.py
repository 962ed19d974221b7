"""A COCO-format detection data set on pycocotools, with the label mapping that travels in checkpoints.

Each item is ``(image, target)``: ``image`` a ``[3, H, W]`` uint8 tensor in display orientation,
``target`` a dict with ``boxes`` ``[G, 4]`` float32 XYXY in that image's pixels, ``labels`` ``[G]``
int64 in ``1..K``, and ``image_id`` (the annotation file's id). Crowd annotations (``iscrowd=1``) are
not training targets; the evaluator reads them from the annotation file as ignore regions.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from frcnn.data.images import DEFAULT_MAX_PIXELS, ImageReadError, display_size, read_rgb, to_chw
from frcnn.errors import MissingFileError, UserError


class AnnotationError(UserError, ValueError):
    """The annotation file is inconsistent (duplicate or dangling ids, unknown categories)."""


@dataclass(frozen=True)
class CategoryMap:
    """Contiguous labels ``1..K`` ↔ a data set's category ids (COCO's run 1..90 with gaps).

    Label ``i`` (1-based) is ``category_ids[i - 1]`` named ``names[i - 1]``; label 0 is background.
    """

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_categories(cls, categories: list[dict[str, Any]]) -> "CategoryMap":
        """Sorted by category id, the order every COCO tool uses."""
        cats = sorted(categories, key=lambda c: c["id"])
        return cls(tuple(int(c["id"]) for c in cats), tuple(str(c["name"]) for c in cats))

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def label(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1

    def category_id(self, label: int) -> int:
        return self.category_ids[label - 1]

    def name(self, label: int) -> str:
        return self.names[label - 1]

    def to_dict(self) -> dict[str, list]:
        """Plain types only, so a checkpoint holding it loads with ``weights_only=True``."""
        return {"category_ids": list(self.category_ids), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "CategoryMap":
        return cls(tuple(int(i) for i in d["category_ids"]), tuple(str(n) for n in d["names"]))


@dataclass(frozen=True)
class CocoData:
    """A COCO instances dict already in memory (a converted VOC, YOLO or LabelMe split, :mod:`frcnn.data.formats`).

    ``source`` is what error messages name instead of an annotation file (the folder the split was read
    from). ``unreadable`` lists the images the converter had to leave out because their size could not be
    read, one ``"<path>: <why>"`` each; :class:`CocoDetection` treats them as unreadable images. ``not_boxes``
    counts the annotations the converter could not make boxes of, per reason (e.g. LabelMe points): they
    go into the load report's dropped boxes, so a split never loses them without a word.
    """

    dataset: dict[str, Any]
    source: str
    unreadable: tuple[str, ...] = ()
    not_boxes: tuple[tuple[str, int], ...] = ()


@dataclass
class LoadReport:
    """What loading dropped or changed, per reason (printed and written to the run directory)."""

    boxes_clipped: int = 0
    boxes_dropped: Counter = field(default_factory=Counter)
    crowd_regions: int = 0
    empty_images: int = 0
    images_dropped_empty: int = 0
    images_unreadable: list = field(default_factory=list)

    def summary(self) -> str:
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.boxes_dropped.items())) or "none"
        return (
            f"boxes clipped to the image: {self.boxes_clipped}; boxes dropped: {dropped}; crowd regions kept "
            f"out of training: {self.crowd_regions}; images without boxes: {self.empty_images} "
            f"({self.images_dropped_empty} dropped); unreadable images left out before training (pre-flight "
            f"check or conversion): {len(self.images_unreadable)}" + "".join(f"\n  {line}" for line in self.images_unreadable)
        )


def check_annotations(data: dict[str, Any], source: str) -> None:
    """Refuse duplicate image/annotation ids, annotations of missing images or unknown categories."""
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise AnnotationError(f"{source}: no '{key}' list; is this a COCO instances file?")
    for kind in ("images", "annotations", "categories"):
        dup = [i for i, n in Counter(x["id"] for x in data[kind]).items() if n > 1]
        if dup:
            raise AnnotationError(f"{source}: duplicate {kind[:-1]} ids {sorted(dup)[:10]}; ids must be unique")
    image_ids = {im["id"] for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise AnnotationError(
                f"{source}: annotation {ann['id']} refers to image {ann['image_id']}, which is not in 'images'"
            )
        if ann["category_id"] not in cat_ids:
            raise AnnotationError(
                f"{source}: annotation {ann['id']} (image {ann['image_id']}) has category {ann['category_id']}, "
                f"which is not in 'categories' {sorted(cat_ids)}"
            )


def load_coco(annotation_file: str | Path | CocoData) -> COCO:
    """A pycocotools ``COCO`` index of ``annotation_file`` (a COCO JSON file, or a dict already in memory),
    after :func:`check_annotations`."""
    if isinstance(annotation_file, CocoData):
        data = annotation_file.dataset
        check_annotations(data, annotation_file.source)
    else:
        annotation_file = Path(annotation_file)
        if not annotation_file.is_file():
            raise MissingFileError(f"annotation file {annotation_file} not found; check data.*.annotations")
        with open(annotation_file) as f:
            data = json.load(f)
        check_annotations(data, str(annotation_file))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """Images and boxes of one split of a COCO-format data set.

    Args:
        image_root: folder the annotation file's ``file_name`` entries are relative to.
        annotation_file: COCO instances JSON, or a converted split in memory (:class:`CocoData`).
        transforms: callable ``(image HxWx3 uint8, boxes [G,4] xyxy, labels [G]) -> same``.
        drop_empty: leave out images with no (non-crowd) box; by default they are kept as negatives.
        category_map: the label mapping to use (e.g. the training split's for validation); by default
            built from this file's categories.
        min_box_size: boxes narrower or shorter than this (pixels, after clipping) are dropped.
        max_pixels: refuse images whose header claims more pixels than this (decompression bombs).
        strict: an invalid box (empty, under ``min_box_size``, NaN/Inf, outside the image) is an error
            naming the image and annotation ids, instead of being dropped and counted.
        on_unreadable: what a missing, truncated, corrupt or oversized image does: ``"error"`` (an
            error naming the file: standalone evaluation), ``"replace"`` (training: the next readable
            image takes its place in the batch, never a grey fill, and the skipped id is reported in
            ``target["skipped"]``) or ``"skip"`` (periodic evaluation during training: the item's image
            is ``None`` and its id is in ``target["skipped"]``; the evaluator leaves it out and counts it).
        preflight: decode every image once now, drop the unreadable ones and count them.
        max_bad_image_fraction: with ``preflight``, fail when more than this share is unreadable.
    """

    def __init__(
        self,
        image_root: str | Path,
        annotation_file: str | Path | CocoData,
        *,
        transforms: Callable | None = None,
        drop_empty: bool = False,
        category_map: CategoryMap | None = None,
        min_box_size: float = 1.0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        strict: bool = False,
        on_unreadable: str = "error",
        preflight: bool = False,
        max_bad_image_fraction: float = 0.01,
    ) -> None:
        self.image_root = Path(image_root)
        # What messages name: the JSON file, or the folder a converted split was read from.
        self.annotation_file = annotation_file.source if isinstance(annotation_file, CocoData) else Path(annotation_file)
        self.coco = load_coco(annotation_file)
        data = self.coco.dataset
        own = CategoryMap.from_categories(data["categories"])
        # The split's categories must be the model's, or some of them (a split without a class; COCO's 80 under
        # an imported torchvision model's 90 ids), with the same names.
        model_has = set(zip(category_map.category_ids, category_map.names)) if category_map is not None else set()
        if category_map is not None and not set(zip(own.category_ids, own.names)) <= model_has:
            raise AnnotationError(
                f"{self.annotation_file}: categories {list(zip(own.category_ids, own.names))[:6]}... are not among the "
                f"model's {list(zip(category_map.category_ids, category_map.names))[:6]}...; evaluate on a split with "
                "the training categories (the same ids and names)"
            )
        self.categories = category_map or own
        self.transforms = transforms
        self.min_box_size = min_box_size
        self.max_pixels = max_pixels
        self.strict = strict
        if on_unreadable not in ("error", "replace", "skip"):
            raise ValueError(f"on_unreadable must be 'error', 'replace' or 'skip', got {on_unreadable!r}")
        self.on_unreadable = on_unreadable
        self.report = LoadReport()
        self.records = []
        for image_id in sorted(self.coco.imgs):
            rec = self._record(image_id)
            if not len(rec["labels"]):
                self.report.empty_images += 1
                if drop_empty:
                    self.report.images_dropped_empty += 1
                    continue
            self.records.append(rec)
        converted = isinstance(annotation_file, CocoData)  # the converter's own left-outs
        left_out = annotation_file.unreadable if converted else ()
        self.report.boxes_dropped.update(dict(annotation_file.not_boxes) if converted else {})
        for line in left_out:
            if on_unreadable == "error":
                raise ImageReadError(line)
            warnings.warn(f"left out an unreadable image: {line}", stacklevel=2)
            self.report.images_unreadable.append(line)
        if preflight:
            self._preflight(max_bad_image_fraction)
        elif left_out and on_unreadable == "replace":  # training: the converter's count against the same limit
            self._check_bad_fraction(len(left_out), len(self.records) + len(left_out), max_bad_image_fraction)

    def check_sizes(self) -> None:
        """Compare every image's size, read from its header (cheap: no pixel is decoded), with the annotation
        file's ``width`` / ``height``; raise :class:`AnnotationError` for the first that differs. Unreadable
        headers are left to the loader's bad-image handling. Run before training, so that a wrong size ends
        the run before its first step rather than at the step that meets the image."""
        for rec in self.records:
            try:
                width, height = display_size(rec["path"])
            except ImageReadError:
                continue
            if (height, width) != (rec["height"], rec["width"]):
                raise self._size_error(rec, width, height)

    def _size_error(self, rec: dict[str, Any], width: int, height: int) -> AnnotationError:
        return AnnotationError(
            f"{rec['path']}: image {rec['image_id']} is {width}x{height} (width x height, after EXIF rotation) but "
            f"{self.annotation_file} says width {rec['width']}, height {rec['height']}; fix the image's width and "
            "height there"
        )

    def _preflight(self, max_bad_fraction: float) -> None:
        """Decode every image; drop and count the unreadable; fail above ``max_bad_fraction``."""
        good, left_out = [], len(self.report.images_unreadable)  # by the converter, before this check
        for rec in self.records:
            try:
                read_rgb(rec["path"], max_pixels=self.max_pixels)
            except ImageReadError as err:
                self.report.images_unreadable.append(f"image {rec['image_id']}: {err}")
                continue
            good.append(rec)
        self._check_bad_fraction(len(self.records) - len(good) + left_out, len(self.records) + left_out, max_bad_fraction)
        self.records = good

    def _check_bad_fraction(self, bad: int, total: int, max_bad_fraction: float) -> None:
        if bad > max_bad_fraction * max(total, 1):
            raise ImageReadError(
                f"{bad} of {total} images listed in {self.annotation_file} are unreadable, more than "
                f"data.max_bad_image_fraction={max_bad_fraction}; first: {self.report.images_unreadable[0]}"
            )

    def _record(self, image_id: int) -> dict[str, Any]:
        info = self.coco.imgs[image_id]
        rel = Path(info["file_name"])
        path = (self.image_root / rel).resolve()
        root = self.image_root.resolve()
        if root not in path.parents:
            raise AnnotationError(
                f"{self.annotation_file}: image {image_id} file_name {info['file_name']!r} resolves outside the "
                f"image root {root}"
            )
        w, h = float(info["width"]), float(info["height"])
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0):
                self.report.crowd_regions += 1
                continue
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            if not all(math.isfinite(v) for v in (x, y, bw, bh)):
                self._drop(image_id, ann, "non-finite")
                continue
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
            if (x1, y1, x2, y2) != (x, y, x + bw, y + bh) and x2 > x1 and y2 > y1:
                self.report.boxes_clipped += 1
            if x2 - x1 < self.min_box_size or y2 - y1 < self.min_box_size:
                reason = "outside the image" if (x >= w or y >= h or x + bw <= 0 or y + bh <= 0) else "too small or empty"
                self._drop(image_id, ann, reason)
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(self.categories.label(ann["category_id"]))
        return {
            "image_id": image_id,
            "path": path,
            "width": int(info["width"]),
            "height": int(info["height"]),
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
        }

    def _drop(self, image_id: int, ann: dict[str, Any], reason: str) -> None:
        if self.strict:
            raise AnnotationError(
                f"{self.annotation_file}: annotation {ann['id']} of image {image_id} has an invalid bbox {ann['bbox']} "
                f"({reason}); fix it, or set data.strict=false to drop such boxes and count them"
            )
        self.report.boxes_dropped[reason] += 1

    def load_summary(self) -> str:
        """One line for the log: the number of images and what loading dropped or changed (:class:`LoadReport`)."""
        return f"{len(self)} images; {self.report.summary()}"

    def __len__(self) -> int:
        return len(self.records)

    def aspect_ratio_group(self, index: int) -> int:
        """0 for landscape-or-square images, 1 for portrait (for aspect-ratio grouped batching)."""
        rec = self.records[index]
        return int(rec["height"] > rec["width"])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Item ``key``: an index, or ``(index, augmentation_seed)`` as the training sampler yields.

        With a seed, the item's augmentation is a pure function of it (the sampler derives it from the
        run's seed, the epoch and the index), so a resumed run augments every sample exactly as an
        uninterrupted one, whatever the number of DataLoader workers.
        """
        index, aug_seed = key if isinstance(key, tuple) else (key, None)
        skipped: list[int] = []
        for attempt in range(len(self.records)):
            rec = self.records[(index + attempt) % len(self.records)]
            try:
                image = read_rgb(rec["path"], max_pixels=self.max_pixels)
                break
            except ImageReadError as err:
                if self.on_unreadable == "error":
                    raise
                skipped.append(rec["image_id"])
                warnings.warn(f"skipping unreadable image {rec['image_id']}: {err}", stacklevel=2)
                if self.on_unreadable == "skip":
                    return None, {"image_id": torch.tensor(rec["image_id"]), "skipped": torch.tensor(skipped)}
        else:
            raise ImageReadError(f"no image listed in {self.annotation_file} could be read")
        if image.shape[:2] != (rec["height"], rec["width"]):
            raise self._size_error(rec, image.shape[1], image.shape[0])
        boxes, labels = rec["boxes"], rec["labels"]
        if self.transforms is not None:
            if aug_seed is not None and hasattr(self.transforms, "set_seed"):
                self.transforms.set_seed(aug_seed)
            image, boxes, labels = self.transforms(image, boxes, labels)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
            "image_id": torch.tensor(rec["image_id"]),
            "skipped": torch.tensor(skipped, dtype=torch.long),
        }
        return to_chw(image), target


def collate(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Keep images of different sizes as a list; the model pads them."""
    images, targets = zip(*batch)
    return list(images), list(targets)
