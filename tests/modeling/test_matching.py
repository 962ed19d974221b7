import torch

from frcnn.modeling.matching import BACKGROUND, FOREGROUND, IGNORE, match

RPN = dict(fg_iou_thresh=0.7, bg_iou_thresh_hi=0.3, bg_iou_thresh_lo=0.0)


def run(iou, box_valid=None, gt_valid=None, low_quality=True, **kw):
    iou = torch.tensor(iou, dtype=torch.float32)[None]
    b, n, g = iou.shape
    box_valid = torch.ones(1, n, dtype=torch.bool) if box_valid is None else torch.tensor([box_valid])
    gt_valid = torch.ones(1, g, dtype=torch.bool) if gt_valid is None else torch.tensor([gt_valid])
    return match(iou, box_valid=box_valid, gt_valid=gt_valid, allow_low_quality_matches=low_quality, **(kw or RPN))


def test_thresholds():
    # rows: anchors, columns: gt. A best-for-gt anchor exists at 0.8 so low-quality rule adds nothing new.
    m = run([[0.8, 0.0], [0.7, 0.1], [0.69, 0.2], [0.3, 0.0], [0.29, 0.0], [0.0, 0.9]], low_quality=False)
    assert m.labels[0].tolist() == [FOREGROUND, FOREGROUND, IGNORE, IGNORE, BACKGROUND, FOREGROUND]
    assert m.gt_index[0].tolist()[:2] == [0, 0] and m.gt_index[0, 5] == 1


def test_best_anchor_rule_including_ties():
    # gt 1's best IoU is 0.4 (anchors 1 and 2 tie): both positive although < 0.7
    m = run([[0.9, 0.1], [0.2, 0.4], [0.0, 0.4], [0.1, 0.2]])
    assert m.labels[0].tolist() == [FOREGROUND, FOREGROUND, FOREGROUND, BACKGROUND]
    m = run([[0.9, 0.1], [0.2, 0.4], [0.0, 0.4], [0.1, 0.2]], low_quality=False)
    assert m.labels[0].tolist() == [FOREGROUND, IGNORE, IGNORE, BACKGROUND]


def test_best_anchor_rule_skips_zero_overlap_and_padding():
    m = run([[0.0, 0.0], [0.0, 0.5]], gt_valid=[True, False])
    # gt 0 overlaps nothing: no forced positive; gt 1 is padding: ignored entirely
    assert m.labels[0].tolist() == [BACKGROUND, BACKGROUND]


def test_invalid_boxes_ignored_and_never_best():
    # anchor 0 crosses the border: it would be the best anchor, but is ignored; anchor 1 becomes best
    m = run([[0.9], [0.5], [0.1]], box_valid=[False, True, True])
    assert m.labels[0].tolist() == [IGNORE, FOREGROUND, BACKGROUND]
    assert m.max_iou[0, 0] == -1


def test_no_ground_truth_all_negative():
    m = run([[0.0], [0.0]], gt_valid=[False])
    assert m.labels[0].tolist() == [BACKGROUND, BACKGROUND]


def test_roi_head_thresholds():
    kw = dict(fg_iou_thresh=0.5, bg_iou_thresh_hi=0.5, bg_iou_thresh_lo=0.1)
    m = run([[0.5], [0.49], [0.1], [0.09]], low_quality=False, **kw)
    assert m.labels[0].tolist() == [FOREGROUND, BACKGROUND, BACKGROUND, IGNORE]
