"""COCO's matching of detections to ground truth, for every detection of a results file at once.

The error analysis (:mod:`frcnn.evaluation.tide`, :mod:`frcnn.evaluation.analysis`) is built on this one
matching. It is pycocotools' ``COCOeval`` for boxes at area "all", written over flat arrays:

- detections are matched per image and category, highest score first (ties: the results file's order),
  at most ``max_dets`` = 100 per image and category;
- a detection takes the unmatched ground-truth box of its category with the highest IoU ≥ the
  threshold (ties: the later annotation, as ``COCOeval``'s ``<`` comparison does); failing that, a crowd
  region of its category with crowd-IoU (intersection over the detection's area) ≥ the threshold makes
  it *ignored* (neither true nor false positive), and a crowd region may absorb any number of them;
- the precision-recall curve of a category is read at COCO's 101 recall points, after making
  precision non-increasing (:func:`precision_at_recalls`).

tests/evaluation/test_matching.py checks the curves against ``COCOeval.eval["precision"]``.

Shape shorthand: D detections (after the cap), G ground-truth boxes (crowd regions included),
T IoU thresholds, K categories, R = 101 recall points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from frcnn.errors import InputError

RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100


@dataclass(frozen=True)
class EvalData:
    """Ground truth and detections as flat arrays, category and image ids turned into indices.

    Attributes:
        category_ids: ``[K]`` the ground truth's category ids, sorted (index k ↔ ``category_ids[k]``).
        category_names, supercategories: ``[K]`` names; a category without a supercategory is its own.
        image_ids: ``[I]`` the ground truth's image ids, sorted; ``file_names``: ``[I]`` their files.
        gt_image, gt_category: ``[G]`` int indices; ``gt_box``: ``[G, 4]`` float64 ``[x, y, w, h]``;
            ``gt_crowd``: ``[G]`` bool; ``gt_id``: ``[G]`` annotation ids. In the annotation file's order.
        dt_image, dt_category: ``[D]`` int indices; ``dt_box``: ``[D, 4]`` ``[x, y, w, h]``;
            ``dt_score``: ``[D]``; ``dt_index``: ``[D]`` the entry's position in the results list.
            Sorted by image, then score (highest first), then position; only the first ``max_dets`` of
            each image and category are kept (``num_capped`` counts the rest).
    """

    category_ids: np.ndarray
    category_names: list[str]
    supercategories: list[str]
    image_ids: np.ndarray
    file_names: list[str]
    gt_image: np.ndarray
    gt_category: np.ndarray
    gt_box: np.ndarray
    gt_crowd: np.ndarray
    gt_id: np.ndarray
    dt_image: np.ndarray
    dt_category: np.ndarray
    dt_box: np.ndarray
    dt_score: np.ndarray
    dt_index: np.ndarray
    num_capped: int

    @property
    def num_categories(self) -> int:
        return len(self.category_ids)

    @property
    def num_gt_per_category(self) -> np.ndarray:
        """``[K]`` non-crowd ground-truth boxes of each category (the recall denominators)."""
        return np.bincount(self.gt_category[~self.gt_crowd], minlength=self.num_categories)


def eval_data(coco_gt: COCO, results: list[dict[str, Any]], *, max_dets: int = MAX_DETS) -> EvalData:
    """Flatten ``coco_gt`` and a COCO results list into :class:`EvalData`.

    Raises:
        InputError: a result names an image or category the ground truth lacks.
    """
    cats = sorted(coco_gt.dataset.get("categories", []), key=lambda c: c["id"])
    category_ids = np.array([c["id"] for c in cats], dtype=np.int64)
    image_ids = np.array(sorted(coco_gt.getImgIds()), dtype=np.int64)
    for key, known in (("image_id", image_ids), ("category_id", category_ids)):
        values = np.array([r[key] for r in results], dtype=np.int64)
        unknown = values[~np.isin(values, known)]
        if unknown.size:
            raise InputError(f"{unknown.size} detections have a {key} the ground truth lacks (first: {unknown[0]}); "
                             "results and ground truth must come from the same data set")
    anns = coco_gt.dataset.get("annotations", [])

    def index(ids: np.ndarray, values: list[int]) -> np.ndarray:
        return np.searchsorted(ids, np.asarray(values, dtype=np.int64)).astype(np.int64)

    gt_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    dt_box = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
    dt_image = index(image_ids, [r["image_id"] for r in results])
    dt_category = index(category_ids, [r["category_id"] for r in results])
    dt_score = np.array([r["score"] for r in results], dtype=np.float64)
    position = np.arange(len(results))
    # Sorted by image, score (highest first), position; the rank within (image, category) caps it.
    order = np.lexsort((position, -dt_score, dt_image))
    keep = _rank_in_group(dt_image[order] * len(category_ids) + dt_category[order]) < max_dets
    order = order[keep]
    return EvalData(
        category_ids=category_ids,
        category_names=[str(c["name"]) for c in cats],
        supercategories=[str(c.get("supercategory") or c["name"]) for c in cats],
        image_ids=image_ids,
        file_names=[str(coco_gt.imgs[int(i)].get("file_name", "")) for i in image_ids],
        gt_image=index(image_ids, [a["image_id"] for a in anns]),
        gt_category=index(category_ids, [a["category_id"] for a in anns]),
        gt_box=gt_box,
        gt_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        gt_id=np.array([a.get("id", i) for i, a in enumerate(anns)], dtype=np.int64),
        dt_image=dt_image[order],
        dt_category=dt_category[order],
        dt_box=dt_box[order],
        dt_score=dt_score[order],
        dt_index=position[order],
        num_capped=int((~keep).sum()),
    )


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """The position of each element among the earlier elements of its group: ``[3, 5, 3, 3] → [0, 0, 1, 2]``."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    start = np.r_[0, np.flatnonzero(sorted_group[1:] != sorted_group[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, len(group)]))
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - first
    return rank


def box_iou_xywh(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``[D, G]`` IoU of ``[x, y, w, h]`` boxes, as pycocotools computes it (same float operations).

    For a crowd region (``crowd[g]``) the union is the detection's own area: a detection inside a crowd
    of people overlaps it fully, however large the crowd.
    """
    dx, dy, dw, dh = (dt[:, None, i] for i in range(4))
    gx, gy, gw, gh = (gt[None, :, i] for i in range(4))
    iw = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
    ih = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = np.where(crowd[None, :], dw * dh, dw * dh + gw * gh - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


@dataclass(frozen=True)
class Matches:
    """COCO's matching at each IoU threshold.

    Attributes:
        thresholds: ``[T]``.
        dt_gt: ``[T, D]`` the index (into the ground-truth arrays) of the box a detection matched, -1 if none.
        dt_ignored: ``[T, D]`` bool: matched no box but lies on a crowd region of its category.
        gt_dt: ``[T, G]`` the detection that matched each ground-truth box, -1 if none (always -1 for crowd).
    """

    thresholds: tuple[float, ...]
    dt_gt: np.ndarray
    dt_ignored: np.ndarray
    gt_dt: np.ndarray

    def at(self, threshold: float) -> int:
        """The row of ``threshold``."""
        return self.thresholds.index(threshold)

    def true_positive(self, t: int) -> np.ndarray:
        return self.dt_gt[t] >= 0

    def false_positive(self, t: int) -> np.ndarray:
        return (self.dt_gt[t] < 0) & ~self.dt_ignored[t]


def image_slices(image: np.ndarray, num_images: int) -> np.ndarray:
    """``[I + 1]`` bounds: the rows of image i are ``bounds[i]:bounds[i + 1]`` of arrays sorted by image."""
    return np.searchsorted(image, np.arange(num_images + 1))


def per_image_iou(data: EvalData) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each image: ``(detection rows [Di], ground-truth rows [Gi], IoU [Di, Gi])`` (crowd-IoU for crowd regions)."""
    gt_order = np.argsort(data.gt_image, kind="stable")  # each image's boxes in the annotation file's order
    gt_bounds = image_slices(data.gt_image[gt_order], len(data.image_ids))
    dt_bounds = image_slices(data.dt_image, len(data.image_ids))
    out = []
    for i in range(len(data.image_ids)):
        d = np.arange(dt_bounds[i], dt_bounds[i + 1])
        g = gt_order[gt_bounds[i] : gt_bounds[i + 1]]
        out.append((d, g, box_iou_xywh(data.dt_box[d], data.gt_box[g], data.gt_crowd[g])))
    return out


def match(data: EvalData, thresholds: tuple[float, ...], ious: list | None = None) -> Matches:
    """Match every detection at every threshold, as ``COCOeval.evaluateImg`` does (see the module docstring).

    Args:
        ious: :func:`per_image_iou` of ``data``, when the caller has it already.
    """
    ious = per_image_iou(data) if ious is None else ious
    T, D, G = len(thresholds), len(data.dt_score), len(data.gt_box)
    dt_gt = np.full((T, D), -1, dtype=np.int64)
    dt_ignored = np.zeros((T, D), dtype=bool)
    gt_dt = np.full((T, G), -1, dtype=np.int64)
    for d, g, iou in ious:
        if len(d) == 0 or len(g) == 0:
            continue
        same = data.dt_category[d][:, None] == data.gt_category[g][None, :]
        crowd = data.gt_crowd[g]
        # Each detection's candidate boxes, best IoU first; among equal IoUs the later annotation first.
        box_iou = np.where(same & ~crowd[None, :], iou, -1.0)[:, ::-1]
        rank = np.argsort(-box_iou, axis=1, kind="stable")
        cand = (len(g) - 1 - rank).tolist()
        cand_iou = np.take_along_axis(box_iou, rank, axis=1).tolist()
        crowd_best_iou = np.where(same & crowd[None, :], iou, -1.0).max(axis=1).tolist()
        rows, cols = d.tolist(), g.tolist()
        for t, thr in enumerate(thresholds):
            thr = min(thr, 1 - 1e-10)  # as COCOeval: an IoU of exactly 1 matches at threshold 1
            free = [True] * len(cols)
            for r, row in enumerate(rows):  # highest score first: greedy, so the order matters
                matched = False
                for j, v in zip(cand[r], cand_iou[r]):
                    if v < thr:
                        break
                    if free[j]:
                        free[j], matched = False, True
                        dt_gt[t, row], gt_dt[t, cols[j]] = cols[j], row
                        break
                if not matched and crowd_best_iou[r] >= thr:
                    dt_ignored[t, row] = True
    return Matches(tuple(thresholds), dt_gt, dt_ignored, gt_dt)


def precision_at_recalls(correct: np.ndarray, num_gt: int, points: np.ndarray = RECALL_POINTS) -> np.ndarray:
    """``[R]`` precision at COCO's 101 recall points of one category's scored detections.

    Args:
        correct: ``[N]`` bool, the category's counted detections (ignored ones left out), highest
            score first: true positive or not.
        num_gt: the recall denominator (> 0).
        points: ``[R]`` the recall points (COCO's ``np.linspace(0, 1, 101)``).

    Precision is made non-increasing in recall (p(r) = max over r' ≥ r), then read at the first
    detection whose recall reaches each point; 0 beyond the last recall reached.
    """
    tp = np.cumsum(correct, dtype=np.float64)
    fp = np.cumsum(~correct, dtype=np.float64)
    recall = tp / num_gt
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, points, side="left")
    out = np.zeros(len(points))
    ok = idx < len(precision)
    out[ok] = precision[idx[ok]]
    return out


def category_order(data: EvalData) -> np.ndarray:
    """Detection rows by category, then score (highest first), then image: the order of COCO's accumulate."""
    return np.lexsort((np.arange(len(data.dt_score)), -data.dt_score, data.dt_category))


def precision_table(
    data: EvalData, correct: np.ndarray, counted: np.ndarray, num_gt: np.ndarray, order: np.ndarray | None = None
) -> np.ndarray:
    """``[K, R]`` precision curve of each category; NaN rows for categories without ground truth.

    Args:
        correct: ``[D]`` bool true positive; counted: ``[D]`` bool, the detections in the curves
            (false: ignored or removed); num_gt: ``[K]`` recall denominators.
        order: :func:`category_order` of ``data``, when the caller has it.
    """
    order = category_order(data) if order is None else order
    return category_curves(data.dt_category, correct, order[counted[order]], num_gt)


def category_curves(category: np.ndarray, correct: np.ndarray, rows: np.ndarray, num_gt: np.ndarray,
                    points: np.ndarray = RECALL_POINTS) -> np.ndarray:
    """``[K, R]`` precision per category of the detections ``rows`` (sorted by category, then score, highest
    first); NaN rows for categories without ground truth (``num_gt[k] == 0``)."""
    K = len(num_gt)
    bounds = np.searchsorted(category[rows], np.arange(K + 1))
    table = np.full((K, len(points)), np.nan)
    for k in range(K):
        if num_gt[k] > 0:
            table[k] = precision_at_recalls(correct[rows[bounds[k] : bounds[k + 1]]], int(num_gt[k]), points)
    return table
