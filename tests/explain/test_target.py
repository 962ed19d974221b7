"""The detection target (frcnn/explain/target.py, outputs.py): IoU x cosine over RoIs, each detection traced to its RoI and scored on its own."""

from __future__ import annotations

import math

import pytest
import torch

from frcnn.explain import Detection, DetectionScore, find_detections
from frcnn.explain.target import similarity
from tests.conftest import small_model
from tests.explain.helpers import masked_inputs


def test_similarity_is_iou_times_cosine_maximised_over_rois():
    det_boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    det_labels = torch.tensor([1])  # one-hot class vector (0, 1, 0): background, class 1, class 2
    # Two RoIs; class 1's boxes: r0 overlaps by 1/3 with the same class vector, r1 matches exactly with
    # half its mass on background (cosine 0.5 / sqrt(0.5) = 0.7071). Class 2's boxes are far away.
    roi_boxes = torch.tensor([[[[1.0, 0.0, 3.0, 2.0], [50, 50, 60, 60]], [[0.0, 0.0, 2.0, 2.0], [50, 50, 60, 60]]]])
    roi_probs = torch.tensor([[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]])
    both = torch.tensor([[True, True]])
    assert similarity(det_boxes, det_labels, roi_boxes, roi_probs, both).item() == pytest.approx(math.sqrt(0.5))
    only_r0 = torch.tensor([[True, False]])
    assert similarity(det_boxes, det_labels, roi_boxes, roi_probs, only_r0).item() == pytest.approx(1 / 3)
    objectness = torch.tensor([[1.0, 0.2]])  # r1: 0.7071 * 0.2 = 0.141 < r0's 1/3
    assert similarity(det_boxes, det_labels, roi_boxes, roi_probs, both, objectness).item() == pytest.approx(1 / 3)
    # A class-2 detection is compared with the class-2 boxes, which are elsewhere: no overlap.
    assert similarity(det_boxes, torch.tensor([2]), roi_boxes, roi_probs, both).item() == 0.0


def test_class_term_is_the_one_hot_cosine_so_a_background_like_roi_scores_low():
    # Issue 29: the detection's class vector p_d = (bg 0.25, c 0.75, 0) against an RoI that turned
    # background-like once the object was masked, p_r = (0.55, 0.40, 0.05), with the same box (IoU 1).
    # The cosine with p_d stayed at 0.4375 / (0.7906 * 0.6819) = 0.81 (an object-class-only cosine would
    # give 0.3 / (0.75 * 0.4031) = 0.99); the one-hot class vector gives p_r[c] / ||p_r|| = 0.40 / 0.6819.
    box = torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    roi_boxes = box.expand(2, 4)[None, None]  # [1 image, 1 RoI, K=2 class boxes, 4], both the detection's
    valid = torch.tensor([[True]])

    def s(probs):
        return similarity(box, torch.tensor([1]), roi_boxes, torch.tensor([[probs]]), valid).item()

    assert s([0.55, 0.40, 0.05]) == pytest.approx(0.40 / math.sqrt(0.55**2 + 0.40**2 + 0.05**2))  # 0.587
    assert s([0.25, 0.75, 0.0]) == pytest.approx(0.75 / math.sqrt(0.25**2 + 0.75**2))  # its own RoI: 0.949
    assert s([1.0, 0.0, 0.0]) == 0.0 and s([0.0, 1.0, 0.0]) == pytest.approx(1.0)


def test_a_detection_scores_the_same_explained_alone_and_with_others():
    # Issue 29: with one RoI budget shared by the detections, the proposals around the two large boxes
    # (IoU up to 0.72) took both slots of max_rois=2 from the thin box (its best proposal: IoU 0.27),
    # which then scored 0 on masked inputs instead of ~0.15 alone. Each detection keeps its own nearest.
    torch.manual_seed(0)
    model = small_model().eval()  # untrained: any proposals will do
    boxes = [[4.0, 4.0, 10.0, 92.0], [40.0, 20.0, 120.0, 90.0], [44.0, 24.0, 124.0, 94.0]]
    detections = [Detection(box=torch.tensor(b), label=c, score=0.9, probs=torch.eye(4)[c], index=i)
                  for i, (b, c) in enumerate(zip(boxes, [1, 2, 3]))]
    masked = masked_inputs(96, 128)
    with torch.no_grad():
        for max_rois in (2, 8):
            together = DetectionScore(model, detections, max_rois=max_rois)(masked)
            for m, detection in enumerate(detections):
                alone = DetectionScore(model, [detection], max_rois=max_rois)(masked)[:, 0]
                assert (alone > 0).all()
                torch.testing.assert_close(together[:, m], alone, atol=1e-5, rtol=0)


def test_each_detection_is_traced_to_the_roi_that_produced_it(trained_model):
    model, image, _ = trained_model
    detections = find_detections(model, image, top=3, score_thresh=0.05)
    assert detections, "the shared quick model finds nothing on its first validation image"
    with torch.no_grad():
        similarity_scores = DetectionScore(model, detections)(image[None])[0]
        roi_scores = DetectionScore(model, detections, target="roi_score")(image[None])[0]
    # On its own image a detection is its RoI's output exactly: IoU 1, and the one-hot cosine p[c] / ||p|| ...
    own = torch.stack([d.probs[d.label] / d.probs.norm() for d in detections])
    torch.testing.assert_close(similarity_scores, own, atol=1e-4, rtol=0)
    # ... also through only the 4 nearest RoIs (its own is the nearest), and on a perturbed copy the
    # cut is a maximum over a subset: never above the full score.
    noisy = (image + 0.2 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    with torch.no_grad():
        cut = DetectionScore(model, detections, max_rois=4)(torch.stack([image, noisy]))
        full = DetectionScore(model, detections)(noisy[None])[0]
    torch.testing.assert_close(cut[0], own, atol=1e-4, rtol=0)
    assert (cut[1] <= full + 1e-6).all()
    # ... and the fixed RoI's class probability is the detection's score.
    torch.testing.assert_close(roi_scores, torch.tensor([d.score for d in detections]), atol=1e-4, rtol=0)
    proposals = find_detections(model, image, top=2, score_thresh=0.0, kind="proposal")
    with torch.no_grad():
        proposal_scores = DetectionScore(model, proposals)(image[None])[0]
    # A proposal's own anchor decodes to it (IoU 1), so the similarity is at least its objectness.
    assert (proposal_scores >= torch.tensor([p.score for p in proposals]) - 1e-4).all()


def test_detection_output_is_the_detection_on_its_own_image(trained_model):
    from frcnn.explain.target import DetectionOutput

    model, image, _ = trained_model
    detections = find_detections(model, image, top=2, score_thresh=0.05)
    score = DetectionScore(model, detections)
    with torch.no_grad():
        box = torch.stack([DetectionOutput(score, c)(image[None])[0] for c in ("x1", "y1", "x2", "y2")], dim=1)
        logit = DetectionOutput(score, "logit")(image[None])[0]
    torch.testing.assert_close(box, torch.stack([d.box for d in detections]).float(), atol=0.05, rtol=0)  # the box it predicted
    with torch.no_grad():
        per_roi, out = score.roi_similarity(image[None])
    for m, d in enumerate(detections):  # the followed RoI's logit of the detection's class: its softmax is the detection's score
        roi_logits = out.logits[0, per_roi[0, :, m].argmax()]
        assert logit[m] == roi_logits[d.label]
        assert torch.log_softmax(roi_logits, dim=0)[d.label].exp() == pytest.approx(d.score, abs=1e-4)
    with pytest.raises(ValueError, match="attribute must be one of logit, x1, y1, x2, y2"):
        DetectionOutput(score, "width")
    with pytest.raises(ValueError, match="similarity target"):
        DetectionOutput(DetectionScore(model, detections, target="roi_score"), "x1")

