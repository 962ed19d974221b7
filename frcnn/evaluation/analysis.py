"""Why the AP is what it is: TIDE's error types, COCO's analyze breakdown, a confusion matrix, score
calibration and each image's errors, from one matching of a results file to its ground truth.

:func:`analyze` is the entry point (``scripts/evaluate.py analyze=true``); :mod:`frcnn.evaluation.report`
draws what it returns. Shape shorthand: K categories, R = 101 recall points, I images, D detections.

COCO's analyze breakdown (Hoiem et al., ECCV 2012; the COCO API's ``analyze``) reads one
precision-recall curve per category under seven ever more forgiving judges, each removing one more
kind of error, so the area between two curves is what that kind costs:

=====  ==================================================================================
C75    PR at IoU 0.75
C50    PR at IoU 0.50
Loc    PR at IoU 0.10 (localization errors forgiven, duplicates still count)
Sim    Loc, and false positives on an object of another category of the same supercategory removed
Oth    Loc, and false positives on an object of any other category removed
BG     all false positives removed (precision 1 up to the recall Oth reaches)
FN     all errors removed (precision 1 at every recall)
=====  ==================================================================================

"On an object" means IoU ≥ 0.1 with a non-crowd box; a category without a supercategory is its own (then
Sim = Loc). (mmdetection's port of analyze relabels those objects as crowd regions, so it measures overlap
against the detection's area instead: a small detection inside a large object of another class counts as
confused there, and as a false positive here.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from frcnn.evaluation.matching import (
    RECALL_POINTS,
    EvalData,
    Matches,
    category_order,
    eval_data,
    match,
    per_image_iou,
    precision_at_recalls,
    precision_table,
)
from frcnn.evaluation.tide import (
    DETECTION_TYPES,
    MAIN_ERRORS,
    SPECIAL_ERRORS,
    TP,
    Tide,
    tide,
)

CURVES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
IMAGE_COLUMNS = (*DETECTION_TYPES, "FN")  # per image: detections by type at the score threshold, then missed boxes


@dataclass(frozen=True)
class Analysis:
    """Everything :func:`analyze` found; :meth:`to_json` is what ``metrics.json`` keeps.

    Attributes:
        data: the flattened ground truth and detections.
        tide: TIDE's types and dAP (:class:`frcnn.evaluation.tide.Tide`).
        curves: ``[7, K, R]`` precision of each of ``CURVES`` per category (NaN: no ground truth).
        score_thresh: the score above which detections count in ``confusion`` and ``per_image``.
        confusion: ``[K + 1, K + 1]`` counts, row = ground truth (last: background, a detection on no
            object), column = detection (last: missed, an object no detection found), at IoU 0.5.
        calibration: ``bins [B + 1]`` edges, ``count``, ``mean_score``, ``precision`` ``[B]``, ``ece``, ``mce``.
        per_image: ``[I, len(IMAGE_COLUMNS)]`` counts at ``score_thresh``.
        gt_found: ``[G]`` bool, matched at IoU 0.5 by a detection scored ≥ ``score_thresh``.
    """

    data: EvalData
    tide: Tide
    curves: np.ndarray
    score_thresh: float
    confusion: np.ndarray
    calibration: dict[str, Any]
    per_image: np.ndarray
    gt_found: np.ndarray

    @property
    def curve_ap(self) -> dict[str, float]:
        """Area under each analyze curve, averaged over the categories with ground truth."""
        with np.errstate(all="ignore"):
            return {name: _nanmean(self.curves[i].mean(axis=1)) for i, name in enumerate(CURVES)}

    def worst_images(self, n: int) -> np.ndarray:
        """Indices of the ``n`` images with the most errors (false positives + missed) at ``score_thresh``."""
        errors = self.per_image[:, 1:].sum(axis=1)  # every column but TP
        order = np.lexsort((np.arange(len(errors)), -errors))
        return order[: min(n, int((errors > 0).sum()))]

    def to_json(self) -> dict[str, Any]:
        """Plain numbers for ``metrics.json``: overall and per category (by name)."""
        names = self.data.category_names
        t = self.tide
        return {
            "tide": {
                "ap50": t.ap,
                "dap": t.dap,
                "counts": t.counts,
                "per_class": {
                    n: {"ap50": _num(t.per_class_ap[k]), **{f"dap_{e}": float(t.per_class_dap[e][k]) for e in (*MAIN_ERRORS, *SPECIAL_ERRORS)},
                        **{f"count_{e}": int(t.per_class_counts[e][k]) for e in MAIN_ERRORS}}
                    for k, n in enumerate(names)
                },
            },
            "coco_analyze": {
                "ap": self.curve_ap,
                "per_class": {n: {c: _num(self.curves[i, k].mean()) for i, c in enumerate(CURVES)} for k, n in enumerate(names)},
            },
            "confusion_matrix": {
                "iou": 0.5,
                "score_thresh": self.score_thresh,
                "rows": [*names, "background"],
                "columns": [*names, "missed"],
                "counts": self.confusion.tolist(),
                "row_normalized": [[_num(v) for v in row] for row in _row_shares(self.confusion)],
            },
            "calibration": {k: ([_num(x) for x in v] if isinstance(v, np.ndarray) else v) for k, v in self.calibration.items()},
            "per_image": [
                {"image_id": int(self.data.image_ids[i]), **{c: int(v) for c, v in zip(IMAGE_COLUMNS, self.per_image[i])}}
                for i in range(len(self.data.image_ids))
            ],
            "detections_over_cap": self.data.num_capped,
        }


def analyze(coco_gt: COCO, results: list[dict[str, Any]], *, score_thresh: float = 0.5, calibration_bins: int = 10) -> Analysis:
    """Match ``results`` to ``coco_gt`` once (IoU 0.75, 0.5, 0.1) and derive every analysis from it.

    Args:
        results: a COCO results list whose image and category ids are all in ``coco_gt`` (as
            :func:`frcnn.evaluation.coco_eval.evaluate_results` checks).
        score_thresh: detections below it are left out of the confusion matrix and the per-image counts
            (the rest of the analysis uses every detection, as AP does).
    """
    data = eval_data(coco_gt, results)
    ious = per_image_iou(data)
    matches = match(data, (0.75, 0.5, 0.1), ious)
    errors = tide(data, matches, ious)
    t = matches.at(0.5)
    gt_found = np.zeros(len(data.gt_box), bool)
    gt_found[matches.dt_gt[t][matches.true_positive(t) & (data.dt_score >= score_thresh)]] = True
    return Analysis(
        data=data,
        tide=errors,
        curves=analyze_curves(data, matches, ious),
        score_thresh=score_thresh,
        confusion=confusion_matrix(data, matches, ious, score_thresh),
        calibration=calibration(data.dt_score[~errors.dt_ignored], (errors.dt_type == TP)[~errors.dt_ignored], calibration_bins),
        per_image=per_image_counts(data, errors, gt_found, score_thresh),
        gt_found=gt_found,
    )


def analyze_curves(data: EvalData, matches: Matches, ious: list) -> np.ndarray:
    """``[7, K, R]`` the curves of ``CURVES`` (module docstring); ``matches`` at IoU 0.75, 0.5 and 0.1."""
    num_gt = data.num_gt_per_category
    order = category_order(data)
    curves = []
    for thr in (0.75, 0.5, 0.1):
        t = matches.at(thr)
        curves.append(precision_table(data, matches.true_positive(t), ~matches.dt_ignored[t], num_gt, order))
    t = matches.at(0.1)
    tp, counted = matches.true_positive(t), ~matches.dt_ignored[t]
    on_similar, on_other = _on_other_objects(data, matches.false_positive(t), ious, 0.1)
    curves.append(precision_table(data, tp, counted & ~on_similar, num_gt, order))
    curves.append(precision_table(data, tp, counted & ~on_other, num_gt, order))
    found = np.bincount(data.dt_category[tp], minlength=data.num_categories)
    curves.append(np.stack([precision_at_recalls(np.ones(found[k], bool), num_gt[k]) if num_gt[k] else np.full(len(RECALL_POINTS), np.nan)
                            for k in range(data.num_categories)]))
    curves.append(np.where(num_gt[:, None] > 0, 1.0, np.nan) * np.ones(len(RECALL_POINTS)))
    return np.stack(curves)


def _on_other_objects(data: EvalData, candidates: np.ndarray, ious: list, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """``([D], [D])`` bool: a candidate detection overlaps (IoU ≥ ``min_iou``) a non-crowd box of another
    category of its supercategory / of any other category."""
    supercategory = np.unique(np.array(data.supercategories), return_inverse=True)[1]
    similar, other = np.zeros(len(candidates), bool), np.zeros(len(candidates), bool)
    for d, g, iou in ious:
        rows = candidates[d]
        if not rows.any() or len(g) == 0:
            continue
        d, iou = d[rows], iou[rows]
        dc, gc = data.dt_category[d][:, None], data.gt_category[g][None, :]
        hit = (iou >= min_iou) & (dc != gc) & ~data.gt_crowd[g][None, :]
        other[d] = hit.any(axis=1)
        similar[d] = (hit & (supercategory[dc] == supercategory[gc])).any(axis=1)
    return similar, other


def confusion_matrix(data: EvalData, matches: Matches, ious: list, score_thresh: float, iou: float = 0.5) -> np.ndarray:
    """``[K + 1, K + 1]`` ground truth × detection counts of the detections scored ≥ ``score_thresh``.

    Each object counts once. First COCO's matching at ``iou`` (the diagonal: detections matching is greedy
    by score, so keeping only the high-scored ones keeps their matches); then, in score order, each left-over
    detection takes the left-over object of any category it overlaps most (IoU ≥ ``iou``): a confusion.
    Detections still left are background (last row); objects still left are missed (last column).
    Crowd-ignored detections are not counted.
    """
    K = data.num_categories
    t = matches.at(iou)
    high = data.dt_score >= score_thresh
    tp = matches.true_positive(t) & high
    cm = np.zeros((K + 1, K + 1), dtype=np.int64)
    np.add.at(cm, (data.dt_category[tp], data.dt_category[tp]), 1)
    found = np.zeros(len(data.gt_box), bool)
    found[matches.dt_gt[t][tp]] = True
    left = matches.false_positive(t) & high
    for d, g, ov in ious:
        rows = left[d]
        free = ~found[g] & ~data.gt_crowd[g]
        if rows.any() and free.any():
            ov = np.where(free[None, :], ov[rows], -1.0)
            for r, row in enumerate(d[rows].tolist()):  # highest score first
                j = int(ov[r].argmax())
                if ov[r, j] >= iou:
                    cm[data.gt_category[g[j]], data.dt_category[row]] += 1
                    found[g[j]], left[row] = True, False
                    ov[:, j] = -1.0
    np.add.at(cm, (K, data.dt_category[left]), 1)
    missed = ~found & ~data.gt_crowd
    np.add.at(cm, (data.gt_category[missed], K), 1)
    return cm


def calibration(score: np.ndarray, correct: np.ndarray, num_bins: int = 10) -> dict[str, Any]:
    """Reliability of detection scores: per equal-width score bin, the precision against the mean score.

    Args:
        score: ``[N]`` in [0, 1]; correct: ``[N]`` bool (true positive at IoU 0.5).

    Returns:
        ``bins`` ``[B + 1]`` edges; per bin ``count``, ``mean_score``, ``precision`` (NaN when empty);
        ``ece`` = Σ_b (n_b / N)·|precision_b − mean_score_b| and ``mce`` = max_b |…| (0 with no detection).
    """
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    b = np.clip(np.floor(np.asarray(score) * num_bins).astype(np.int64), 0, num_bins - 1)
    count = np.bincount(b, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(b, weights=score, minlength=num_bins) / count
        precision = np.bincount(b, weights=np.asarray(correct, np.float64), minlength=num_bins) / count
    gap = np.abs(precision - mean_score)
    filled = count > 0
    ece = float((count[filled] * gap[filled]).sum() / count.sum()) if count.sum() else 0.0
    mce = float(gap[filled].max()) if filled.any() else 0.0
    return {"bins": edges, "count": count, "mean_score": mean_score, "precision": precision, "ece": ece, "mce": mce}


def per_image_counts(data: EvalData, errors: Tide, gt_found: np.ndarray, score_thresh: float) -> np.ndarray:
    """``[I, len(IMAGE_COLUMNS)]``: each image's detections scored ≥ ``score_thresh`` by TIDE type (crowd-ignored
    ones left out), and its non-crowd objects not ``gt_found`` (``FN``)."""
    I, n_types = len(data.image_ids), len(DETECTION_TYPES)
    keep = (data.dt_score >= score_thresh) & ~errors.dt_ignored
    counts = np.zeros((I, n_types + 1), dtype=np.int64)
    np.add.at(counts, (data.dt_image[keep], errors.dt_type[keep]), 1)
    missed = ~data.gt_crowd & ~gt_found
    np.add.at(counts, (data.gt_image[missed], n_types), 1)
    return counts


def _row_shares(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (NaN for an empty row)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return counts / counts.sum(axis=1, keepdims=True)


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _num(v: float) -> float | int | None:
    """A JSON number: NaN (undefined) becomes null, integers stay integers."""
    if isinstance(v, (int, np.integer)):
        return int(v)
    return None if np.isnan(v) else float(v)

