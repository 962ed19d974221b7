"""OPE scores and the size response (frcnn/tracking/evaluate.py), by hand."""

from __future__ import annotations

import numpy as np
import pytest

from frcnn.tracking.evaluate import iou_xywh, ope_scores
from frcnn.tracking.tracker import SiamRPNTracker, TrackerSettings
from tests.tracking.helpers import SizeSeer, bright_box_sequence


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_size_response_is_the_share_of_a_wrong_size_the_proposals_correct(tmp_path, share):
    from frcnn.tracking.evaluate import size_response

    stub = SizeSeer(share)
    tracker = SiamRPNTracker(stub, TrackerSettings())
    stub.tracker = tracker
    # The target moves and changes size every frame; frames 4 and 8 are probed (every=4), frame 12 has no target.
    boxes = [[40 + 9 * t, 30 + 5 * t, 50 + 3 * t, 40 + 2 * t] for t in range(12)] + [[0, 0, 0, 0]]
    seq = bright_box_sequence(tmp_path, boxes)
    response = size_response(tracker, [seq], factors=(0.5, 2.0), every=4)
    assert list(response) == [0.5, 2.0]
    for value in response.values():  # the rectangle's edges blur by a pixel in the resampled crop
        assert value == pytest.approx(share, abs=1e-9 if share == 0 else 0.08)
    short = bright_box_sequence(tmp_path / "short", boxes[:4])  # no 5th frame: nothing to probe
    with pytest.raises(ValueError, match="no frame with the target"):
        size_response(tracker, [short], every=4)
    with pytest.raises(ValueError, match="not 1"):
        size_response(tracker, [seq], factors=(0.5, 1.0))


def test_ope_scores_hand_computed():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=float)
    pred = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [30, 30, 10, 10]], dtype=float)  # IoU (first dropped) 1/3, 0
    np.testing.assert_allclose(iou_xywh(pred, gt), [1, 1 / 3, 0])
    s = ope_scores([(pred, gt)], seconds=1.0)
    # success at thresholds 0, 0.05, ..., 1: IoU 1/3 exceeds 0 .. 0.3 (7 thresholds), IoU 0 exceeds none
    assert s.success_auc == pytest.approx(7 * 0.5 / 21)
    assert s.precision == pytest.approx(0.5)  # centre errors 5 and 42.4 px
    assert s.fps == pytest.approx(3.0)
    perfect = ope_scores([(gt, gt)], seconds=1.0)
    assert perfect.success_auc == pytest.approx(20 / 21) and perfect.precision == 1.0 and perfect.norm_precision == 1.0

