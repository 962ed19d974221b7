"""frcnn.evaluation.matching against pycocotools: IoU, the per-category PR curves at 0.5 and 0.75, the cap."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from frcnn.errors import InputError
from frcnn.evaluation.matching import (
    box_iou_xywh,
    eval_data,
    match,
    per_image_iou,
    precision_table,
)
from tests.evaluation.fixtures import coco_from, random_case


def test_box_iou_is_pycocotools_iou_with_crowd_regions():
    rng = np.random.default_rng(0)
    dt, gt = rng.uniform(1, 60, (7, 4)), rng.uniform(1, 60, (5, 4))
    crowd = np.array([0, 1, 0, 0, 1], bool)
    np.testing.assert_allclose(box_iou_xywh(dt, gt, crowd), mask_utils.iou(dt.tolist(), gt.tolist(), crowd.astype(np.uint8).tolist()), atol=1e-12)
    # By hand: half of a 10x10 box inside another; inside a crowd region the union is the detection's own area.
    one = np.array([[0.0, 0.0, 10.0, 10.0]])
    assert box_iou_xywh(one, np.array([[5.0, 0.0, 10.0, 10.0]]), np.array([False]))[0, 0] == pytest.approx(50 / 150)
    assert box_iou_xywh(one, np.array([[0.0, 0.0, 100.0, 100.0]]), np.array([True]))[0, 0] == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_precision_curves_equal_cocoeval(seed):
    gt, dets = random_case(seed)
    coco = coco_from(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
    data = eval_data(coco, dets)
    matches = match(data, (0.5, 0.75), per_image_iou(data))
    assert matches.dt_ignored.any() and (matches.gt_dt >= 0).any()  # the case has crowd-ignored and matched detections
    for t, coco_t in ((0, 0), (1, 5)):
        ours = precision_table(data, matches.true_positive(t), ~matches.dt_ignored[t], data.num_gt_per_category)
        theirs = ev.eval["precision"][coco_t, :, :, 0, 2].T  # [K, R] at area all, 100 detections
        np.testing.assert_array_equal(np.isnan(ours), theirs < 0)
        np.testing.assert_allclose(ours[~np.isnan(ours)], theirs[theirs >= 0], atol=1e-12)


def test_each_image_and_category_keeps_its_100_best_detections():
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 50, "height": 50}], "categories": [{"id": 2, "name": "x"}, {"id": 5, "name": "y"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}]}
    dets = [{"image_id": 1, "category_id": c, "bbox": [0, 0, 10, 10], "score": s / 200} for c in (2, 5) for s in range(120)]
    data = eval_data(coco_from(gt), dets)
    assert data.num_capped == 40 and len(data.dt_score) == 200
    assert data.dt_score.min() == 20 / 200  # the 20 lowest of each category went
    assert np.all(np.diff(data.dt_score[data.dt_category == 0]) <= 0)  # highest score first


@pytest.mark.parametrize("key, value", [("image_id", 999), ("category_id", 3)])
def test_unknown_ids_are_refused(key, value):
    gt, dets = random_case(0)
    dets[3] = {**dets[3], key: value}
    with pytest.raises(InputError, match=f"1 detections have a {key} the ground truth lacks \\(first: {value}\\)"):
        eval_data(coco_from(gt), dets)


def test_ties_and_thresholds_follow_cocoeval():
    # Two objects of equal IoU with the detection: COCOeval takes the later annotation. IoU exactly 0.5 matches at
    # 0.5; crowd-IoU exactly 0.5 with a crowd region makes a detection ignored.
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 400, "height": 400}], "categories": [{"id": 1, "name": "x"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 20], "area": 200, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 0, 10, 20], "area": 200, "iscrowd": 0},
                          {"id": 3, "image_id": 1, "category_id": 1, "bbox": [100, 100, 100, 100], "area": 1e4, "iscrowd": 1}]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [5, 0, 10, 20], "score": 0.9},  # IoU 1/3 with both objects
            {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8},  # IoU 0.5 with object 1
            {"image_id": 1, "category_id": 1, "bbox": [190, 100, 20, 10], "score": 0.7}]  # half inside the crowd region
    data = eval_data(coco_from(gt), dets)
    m = match(data, (1 / 3, 0.5), per_image_iou(data))
    assert m.dt_gt[0].tolist() == [1, 0, -1]  # at 1/3: the first detection takes the later object
    assert m.dt_gt[1].tolist() == [-1, 0, -1] and m.dt_ignored[1].tolist() == [False, False, True]
