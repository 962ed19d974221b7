"""TIDE (Bolya et al., ECCV 2020): each false positive and missed object sorted into one error type, and
the AP50 an oracle fixing only that type would add (dAP).

Built on :mod:`frcnn.evaluation.matching` (COCO's matching at IoU 0.5). A detection that is not a
true positive takes the first type that fits, with ``pos`` = 0.5 and
``bg`` = 0.1, IoU taken against the image's non-crowd boxes:

=====  ==========================================================================  ==================
type   the detection ...                                                           the oracle's fix
=====  ==========================================================================  ==================
Loc    overlaps a box of its class with the best IoU in [bg, pos]                  moved onto the box
Cls    overlaps a box of another class with IoU ≥ pos                              relabelled
Dupe   overlaps a box of its class that a higher-scored detection matched, ≥ pos   removed
Bkg    overlaps every box by IoU ≤ bg                                              removed
Both   none of the above (wrong class and poorly placed, or ...)                   removed
Miss   (a box) no detection matched it and no Cls / Loc error points at it         left out of recall
=====  ==========================================================================  ==================

A detection on a crowd region (left out of AP by COCO's rules) still takes a type, as in tidecv: a
Cls or Loc fix may make it a true positive. A Cls or Loc fix makes the detection a true positive only when its box is unmatched and it is the
highest-scored Cls / Loc error on that box; otherwise the fix removes it (one object, one true positive).
Each main dAP fixes one type alone against the original AP (clamped at 0, as tidecv does); ``FP``
removes every false positive, ``FN`` takes every unmatched box out of the recall denominator.

AP here is TIDE's AP50: COCO's 101-point AP at IoU 0.5 (at tidecv's recall points), averaged over the categories with ground truth
or detections (a category with detections and no ground truth counts 0). Values are AP points (0-100),
as TIDE reports them. tests/evaluation/test_tide.py compares every dAP with the original ``tidecv``; they agree to 1e-13
except where tidecv differs from COCO's matching, which is kept here: tidecv keeps 100 detections per image
(here: per image and category, as COCO), ignores a detection on a crowd region above crowd-IoU 0.5 (here: at
0.5 too), takes the first of two boxes of equal IoU (here: the last), and on tied scores lets a fix reorder
the ties (here one order throughout; measured up to 0.9 points on scores of two decimals).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frcnn.evaluation.matching import EvalData, Matches, category_curves

# tidecv's recall points are i / 100; COCO's np.linspace(0, 1, 101) differs from them in the last bit, which
# moves the point where a recall lands exactly on one (7 of 20 objects found: 0.35 vs 0.35000000000000003).
TIDE_RECALL_POINTS = np.arange(101) / 100
MAIN_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_ERRORS = ("FP", "FN")
# Per-detection codes (Tide.dt_type): a true positive, then the five types of the others.
TP, CLS, LOC, BOTH, DUPE, BKG = range(6)
DETECTION_TYPES = ("TP", "Cls", "Loc", "Both", "Dupe", "Bkg")


@dataclass(frozen=True)
class Tide:
    """TIDE's result on one results file.

    Attributes:
        ap: TIDE's AP50 (points).
        dap: ``{type: dAP}`` for the six main types and ``FP`` / ``FN`` (points).
        counts: ``{type: number of errors}`` for the six main types.
        per_class_ap: ``[K]`` AP50 per category (NaN: no ground truth).
        per_class_dap: ``{type: [K] dAP}``.
        per_class_counts: ``{type: [K] counts}`` (detections by their category, misses by the box's).
        dt_type: ``[D]`` each detection's code (``TP`` … ``BKG``, index into ``DETECTION_TYPES``).
        dt_ignored: ``[D]`` bool, on a crowd region (not in AP; its type is still given).
        dt_target: ``[D]`` the box a Loc / Cls / Dupe error points at (the matched box for a TP), else -1.
        gt_missed: ``[G]`` bool, the boxes counted as Miss.
    """

    ap: float
    dap: dict[str, float]
    counts: dict[str, int]
    per_class_ap: np.ndarray
    per_class_dap: dict[str, np.ndarray]
    per_class_counts: dict[str, np.ndarray]
    dt_type: np.ndarray
    dt_ignored: np.ndarray
    dt_target: np.ndarray
    gt_missed: np.ndarray


def classify(
    data: EvalData, matches: Matches, ious: list, *, pos: float = 0.5, bg: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """``(dt_type [D], dt_target [D])``: each detection's code and the box it refers to (see the module docstring)."""
    t = matches.at(pos)
    dt_type = np.where(matches.true_positive(t), TP, BKG)
    dt_target = matches.dt_gt[t].copy()
    gt_used = matches.gt_dt[t] >= 0
    wrong = ~matches.true_positive(t)  # false positives and crowd-ignored detections
    for d, g, iou in ious:
        fp = wrong[d]
        g_nc = ~data.gt_crowd[g]
        if not fp.any() or not g_nc.any():
            continue  # no box to be wrong about: every false positive is Bkg
        rows, g, iou = d[fp], g[g_nc], iou[fp][:, g_nc]
        same = data.dt_category[rows][:, None] == data.gt_category[g][None, :]
        n = np.arange(len(rows))
        s_iou = np.where(same, iou, 0.0)
        o_iou = np.where(same, 0.0, iou)
        u_iou = np.where(same & gt_used[g][None, :], iou, 0.0)
        s_idx, o_idx, u_idx = s_iou.argmax(1), o_iou.argmax(1), u_iou.argmax(1)
        s_best, o_best, u_best = s_iou[n, s_idx], o_iou[n, o_idx], u_iou[n, u_idx]
        loc = (s_best >= bg) & (s_best <= pos)
        cls = ~loc & (o_best >= pos)
        dupe = ~loc & ~cls & (u_best >= pos)
        bkg = ~loc & ~cls & ~dupe & (iou.max(1) <= bg)
        code = np.select([loc, cls, dupe, bkg], [LOC, CLS, DUPE, BKG], BOTH)
        target = np.select([loc, cls, dupe], [g[s_idx], g[o_idx], g[u_idx]], -1)
        dt_type[rows], dt_target[rows] = code, target
    return dt_type, dt_target


def tide(data: EvalData, matches: Matches, ious: list, *, pos: float = 0.5, bg: float = 0.1) -> Tide:
    """TIDE's error types, counts and dAP of ``data``, overall and per category.

    Args:
        matches: :func:`~frcnn.evaluation.matching.match` of ``data`` at thresholds including ``pos``.
        ious: :func:`~frcnn.evaluation.matching.per_image_iou` of ``data``.
    """
    K = data.num_categories
    t = matches.at(pos)
    dt_type, dt_target = classify(data, matches, ious, pos=pos, bg=bg)
    gt_used = matches.gt_dt[t] >= 0
    num_gt = data.num_gt_per_category

    best, usable = _fixable(dt_type, dt_target, gt_used, data.dt_score)
    gt_missed = ~data.gt_crowd & ~gt_used & ~usable
    unmatched = ~data.gt_crowd & ~gt_used

    counted = ~matches.dt_ignored[t]
    correct = dt_type == TP
    category = data.dt_category
    base_ap, base_pc = _ap(data.dt_score, category, correct, counted, num_gt, K)

    def fixed(kind: int) -> tuple[float, np.ndarray]:
        keep, ok, cat = counted & (dt_type != kind), correct.copy(), category
        if kind in (CLS, LOC):
            promote = (dt_type == kind) & best
            keep |= promote
            ok |= promote
            if kind == CLS:
                cat = category.copy()
                cat[promote] = data.gt_category[dt_target[promote]]
        return _ap(data.dt_score, cat, ok, keep, num_gt, K)

    results = {
        "Cls": fixed(CLS),
        "Loc": fixed(LOC),
        "Both": fixed(BOTH),
        "Dupe": fixed(DUPE),
        "Bkg": fixed(BKG),
        "Miss": _ap(data.dt_score, category, correct, counted, num_gt - _count(data.gt_category[gt_missed], K), K),
        # Every false positive scored below every true positive (tidecv scores them 0): gone from the curves of
        # categories with ground truth, still a 0 for a category that has detections and no ground truth.
        "FP": _ap(correct.astype(np.float64), category, correct, counted, num_gt, K),
        "FN": _ap(data.dt_score, category, correct, counted, num_gt - _count(data.gt_category[unmatched], K), K),
    }
    dap, per_class_dap = {}, {}
    for name, (ap, pc) in results.items():
        low = 0.0 if name in MAIN_ERRORS else -np.inf  # tidecv clamps the main types only
        dap[name] = max(ap - base_ap, low)
        per_class_dap[name] = np.maximum(np.nan_to_num(pc - base_pc), low)
    codes = {"Cls": CLS, "Loc": LOC, "Both": BOTH, "Dupe": DUPE, "Bkg": BKG}
    per_class_counts = {name: _count(category[dt_type == code], K) for name, code in codes.items()}
    per_class_counts["Miss"] = _count(data.gt_category[gt_missed], K)
    counts = {name: int(per_class_counts[name].sum()) for name in MAIN_ERRORS}
    pc_ap = np.where(num_gt > 0, base_pc, np.nan)
    return Tide(base_ap, dap, counts, pc_ap, per_class_dap, per_class_counts, dt_type, ~counted, dt_target, gt_missed)


def _fixable(dt_type: np.ndarray, dt_target: np.ndarray, gt_used: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One object, one true positive: a fixed Cls / Loc error counts only if its box is free (not ``gt_used``)
    and it is the highest-scored Cls / Loc error on that box (the first in score order on ties). Returns the
    ``[D]`` detections that a fix promotes and the ``[G]`` boxes that some Cls / Loc error could take."""
    fixable = np.isin(dt_type, (CLS, LOC)) & (dt_target >= 0)
    fixable[fixable] = ~gt_used[dt_target[fixable]]
    rows = np.flatnonzero(fixable)
    rows = rows[np.lexsort((rows, -score[rows], dt_target[rows]))]
    first = np.r_[True, dt_target[rows][1:] != dt_target[rows][:-1]] if len(rows) else np.zeros(0, bool)
    best = np.zeros(len(dt_type), dtype=bool)
    best[rows[first]] = True
    usable = np.zeros(len(gt_used), dtype=bool)
    usable[dt_target[fixable]] = True
    return best, usable


def _count(category: np.ndarray, K: int) -> np.ndarray:
    return np.bincount(category, minlength=K)


def _ap(
    score: np.ndarray, category: np.ndarray, correct: np.ndarray, keep: np.ndarray, num_gt: np.ndarray, K: int
) -> tuple[float, np.ndarray]:
    """TIDE's mean AP50 (points) of the kept detections, and ``[K]`` per-category AP (NaN: category not counted)."""
    rows = np.flatnonzero(keep)
    rows = rows[np.lexsort((rows, -score[rows], category[rows]))]
    per_class = 100 * category_curves(category, correct, rows, num_gt, TIDE_RECALL_POINTS).mean(axis=1)
    has_detections = np.bincount(category[rows], minlength=K) > 0
    per_class[(num_gt == 0) & has_detections] = 0.0  # detections of a category without ground truth: all false, as in tidecv
    counted = per_class[~np.isnan(per_class)]
    return (float(counted.mean()) if counted.size else 0.0), per_class
