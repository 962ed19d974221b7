"""COCO's analyze curves, the confusion matrix, calibration and the per-image counts, by hand and on random cases."""

import numpy as np
import pytest

from frcnn.evaluation.analysis import CURVES, IMAGE_COLUMNS, analyze, calibration
from tests.evaluation.fixtures import coco_from, random_case

A, B, C = 2, 5, 9  # a and b share a supercategory, c does not
CATEGORIES = [{"id": A, "name": "a", "supercategory": "s"}, {"id": B, "name": "b", "supercategory": "s"},
              {"id": C, "name": "c", "supercategory": "t"}]


def dataset(objects, detections, images=(1,)):
    gt = {"images": [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400} for i in images], "categories": CATEGORIES,
          "annotations": [{"id": j + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                          for j, (im, c, b) in enumerate(objects)]}
    dets = [{"image_id": im, "category_id": c, "bbox": b, "score": s} for im, c, b, s in detections]
    return coco_from(gt), dets


@pytest.mark.parametrize("seed", range(3))
def test_each_analyze_curve_forgives_more_and_the_last_is_perfect(seed):
    gt, dets = random_case(seed)
    a = analyze(coco_from(gt), dets)
    curves = a.curves[:, ~np.isnan(a.curves[0, :, 0])]  # [7, categories with ground truth, R]
    assert np.all(np.diff(curves, axis=0) >= -1e-12)  # C75 ≤ C50 ≤ Loc ≤ Sim ≤ Oth ≤ BG ≤ FN at every recall
    assert np.all(np.diff(curves, axis=2) <= 1e-12)  # each non-increasing in recall
    ap = list(a.curve_ap.values())
    assert ap == sorted(ap)
    assert a.curve_ap["C50"] == pytest.approx(a.tide.ap / 100, abs=0.02)  # AP50 (TIDE reads it at i / 100)


def test_sim_forgives_only_the_same_supercategory():
    # Objects a and c; detections of a: on the c object (0.9; c is of another supercategory), on the a object (0.8).
    coco, dets = dataset([(1, A, [0, 0, 100, 100]), (1, C, [200, 200, 100, 100])],
                         [(1, A, [200, 200, 100, 90], 0.9), (1, A, [0, 0, 100, 100], 0.8)])
    a = analyze(coco, dets)
    loc, sim, oth = (a.curves[CURVES.index(n), 0].mean() for n in ("Loc", "Sim", "Oth"))
    assert loc == pytest.approx(0.5) and sim == pytest.approx(0.5)  # precision 1/2 at recall 1: kept by Sim
    assert oth == pytest.approx(1.0)  # removed by Oth
    assert np.isnan(a.curves[:, 1]).all()  # b: no object, no curve
    c = a.curves[:, 2].mean(axis=1)  # c: one object, never found
    assert c[CURVES.index("BG")] == 0.0 and c[CURVES.index("FN")] == 1.0


def test_sim_and_oth_remove_confusions():
    # Object a; detections: b on it (0.9, same supercategory), c on it (0.8, other supercategory). Object b elsewhere
    # found by b (0.7). For category b: an FP on a similar object, then a TP.
    coco, dets = dataset([(1, A, [0, 0, 100, 100]), (1, B, [200, 200, 100, 100])],
                         [(1, B, [0, 0, 100, 100], 0.9), (1, C, [0, 0, 100, 100], 0.8), (1, B, [200, 200, 100, 100], 0.7)])
    a = analyze(coco, dets)
    k_b = 1
    loc, sim, oth = (a.curves[CURVES.index(n), k_b] for n in ("Loc", "Sim", "Oth"))
    assert loc.mean() == pytest.approx(0.5)  # precision 1/2 at recall 1
    assert sim.mean() == pytest.approx(1.0) and oth.mean() == pytest.approx(1.0)  # the FP on a similar object removed


def test_confusion_matrix_by_hand():
    objects = [(1, A, [0, 0, 100, 100]), (1, B, [200, 0, 100, 100]), (1, A, [0, 200, 100, 100])]
    detections = [
        (1, A, [0, 0, 100, 98], 0.9),  # a on a: the diagonal
        (1, A, [200, 0, 100, 90], 0.8),  # a on the b object: b confused for a
        (1, B, [300, 300, 50, 50], 0.7),  # b on nothing: background detected as b
        (1, A, [0, 200, 100, 100], 0.3),  # below the threshold: the second a object counts as missed
        (1, C, [0, 0, 100, 100], 0.6),  # c on the a object already found: background detected as c
    ]
    a = analyze(*dataset(objects, detections), score_thresh=0.5)
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1  # a → a
    expected[1, 0] = 1  # b → a
    expected[3, 1] = 1  # background → b
    expected[3, 2] = 1  # background → c
    expected[0, 3] = 1  # a → missed
    np.testing.assert_array_equal(a.confusion, expected)
    cm = a.to_json()["confusion_matrix"]
    assert cm["rows"] == ["a", "b", "c", "background"] and cm["columns"] == ["a", "b", "c", "missed"]
    assert cm["row_normalized"][0] == [0.5, 0.0, 0.0, 0.5] and cm["row_normalized"][2] == [None] * 4  # c: no object
    counts = dict(zip(IMAGE_COLUMNS, a.per_image[0]))
    assert counts["TP"] == 1 and counts["FN"] == 2  # the b object (not found by its class) and the low-scored a
    assert counts["Cls"] == 2 and counts["Bkg"] == 1  # a on b and c on a are TIDE's Cls; b on nothing is Bkg
    assert sum(counts.values()) == 4 + 2  # four detections above 0.5, two objects missed


def test_calibration_by_hand():
    c = calibration(np.array([0.05, 0.15, 0.95, 0.92]), np.array([False, False, True, False]), 10)
    assert c["count"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    np.testing.assert_allclose(c["mean_score"][[0, 1, 9]], [0.05, 0.15, 0.935])
    np.testing.assert_allclose(c["precision"][[0, 1, 9]], [0.0, 0.0, 0.5])
    assert np.isnan(c["precision"][2])
    assert c["ece"] == pytest.approx((0.05 + 0.15 + 2 * 0.435) / 4)
    assert c["mce"] == pytest.approx(0.435)
    assert calibration(np.zeros(0), np.zeros(0, bool))["ece"] == 0.0


def test_no_detections_and_json():
    gt, _ = random_case(0)
    a = analyze(coco_from(gt), [])
    assert a.tide.ap == 0.0 and a.curve_ap["C50"] == 0.0 and a.curve_ap["BG"] == 0.0
    j = a.to_json()
    assert j["calibration"]["ece"] == 0.0 and j["calibration"]["precision"] == [None] * 10
    assert sum(row["FN"] for row in j["per_image"]) == sum(not x["iscrowd"] for x in gt["annotations"])
    assert a.worst_images(5).size == 5


def test_worst_images_rank_by_errors():
    gt, dets = random_case(3)
    a = analyze(coco_from(gt), dets, score_thresh=0.3)
    errors = a.per_image[:, 1:].sum(1)
    worst = a.worst_images(4)
    assert errors[worst].tolist() == sorted(errors, reverse=True)[:4]
