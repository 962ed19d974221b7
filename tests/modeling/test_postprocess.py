import torch

from frcnn.modeling.postprocess import postprocess_detections


def test_per_class_nms_threshold_and_limit():
    rois = torch.tensor([[[10.0, 10.0, 50.0, 50.0], [12.0, 12.0, 52.0, 52.0], [100.0, 100.0, 150.0, 150.0]]])
    # classes: bg, A, B. RoI 0 and 1 overlap heavily (same class A -> suppressed; class B kept separately)
    logits = torch.log(torch.tensor([[[0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.97, 0.02, 0.01]]]))
    deltas = torch.zeros(1, 3, 3, 4)
    det = postprocess_detections(
        logits, deltas, rois, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[200, 200]]),
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), score_thresh=0.05, nms_thresh=0.5, detections_per_image=100,
    )
    n = int(det.valid.sum())
    got = sorted(zip(det.labels[0, :n].tolist(), [round(s, 3) for s in det.scores[0, :n].tolist()]))
    # A: 0.8 (RoI 0; RoI 1's 0.6 suppressed); B: 0.1 (RoI 0) and 0.3 (RoI 1) overlap -> only 0.3 kept
    assert got == [(1, 0.8), (2, 0.3)]
    assert det.scores[0, 0] >= det.scores[0, 1]
    det = postprocess_detections(
        logits, deltas, rois, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[200, 200]]),
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), score_thresh=0.05, nms_thresh=0.5, detections_per_image=1,
    )
    assert det.valid.sum() == 1 and det.labels[0, 0] == 1


def test_no_candidates_gives_empty_detections():
    logits = torch.tensor([[[10.0, -10.0]]])
    det = postprocess_detections(
        logits, torch.zeros(1, 1, 2, 4), torch.tensor([[[0.0, 0.0, 5.0, 5.0]]]), torch.ones(1, 1, dtype=torch.bool),
        torch.tensor([[10, 10]]), bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    )
    assert not det.valid.any() and det.boxes.shape == (1, 100, 4)


def test_boxes_clipped_and_class_specific():
    rois = torch.tensor([[[10.0, 10.0, 90.0, 90.0]]])
    deltas = torch.zeros(1, 1, 2, 4)
    deltas[0, 0, 1] = torch.tensor([10.0, 0.0, 0.0, 0.0])  # shift right by one width (weights 10)
    det = postprocess_detections(
        torch.tensor([[[0.0, 5.0]]]), deltas, rois, torch.ones(1, 1, dtype=torch.bool), torch.tensor([[100, 120]]),
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    )
    torch.testing.assert_close(det.boxes[0, 0], torch.tensor([90.0, 10.0, 120.0, 90.0]))
