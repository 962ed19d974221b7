import torch

from frcnn.box_coder import decode_boxes
from frcnn.roi_heads import BoxPredictor, RoIHeads
from frcnn.structures import Proposals, Targets


def heads(**kw):
    return RoIHeads(predictor=BoxPredictor(in_channels=16, num_classes=3), pooler_resolution=7, **kw)


def random_proposals(b, p, g):
    xy = torch.rand(b, p, 2, generator=g) * 150
    wh = torch.rand(b, p, 2, generator=g) * 80 + 16
    boxes = torch.cat([xy, xy + wh], -1)
    return Proposals(boxes=boxes, scores=torch.rand(b, p, generator=g), valid=torch.ones(b, p, dtype=torch.bool))


def test_sample_counts_labels_and_targets():
    g = torch.Generator().manual_seed(0)
    props = random_proposals(2, 500, g)
    gt = Targets(
        boxes=torch.tensor([[[20.0, 20.0, 90.0, 100.0], [100.0, 50.0, 200.0, 150.0]], [[30.0, 30.0, 60.0, 70.0], [0, 0, 0, 0]]]),
        labels=torch.tensor([[1, 3], [2, 0]]),
        valid=torch.tensor([[True, True], [True, False]]),
    )
    s = heads().sample_rois(props, gt)
    assert s.boxes.shape == (2, 128, 4) and s.valid.all()
    fg = s.labels > 0
    assert (fg.sum(1) <= 32).all() and (fg.sum(1) >= 1).all()  # ground truth is appended: >= 1 fg
    assert set(s.labels[1].unique().tolist()) <= {0, 2}
    # regression targets decode back to the matched ground truth
    decoded = decode_boxes(s.regression_targets[0][fg[0]], s.boxes[0][fg[0]], (10.0, 10.0, 5.0, 5.0))
    iou_gt = torch.stack([torch.tensor([20.0, 20, 90, 100]), torch.tensor([100.0, 50, 200, 150])])
    assert all(any(torch.allclose(d, g_, atol=1e-3) for g_ in iou_gt) for d in decoded)
    assert (s.regression_targets[~fg] == 0).all()


def test_background_iou_range():
    from frcnn.structures import batched_pairwise_iou

    g = torch.Generator().manual_seed(1)
    props = random_proposals(1, 400, g)
    gt = Targets(boxes=torch.tensor([[[50.0, 50.0, 120.0, 120.0]]]), labels=torch.tensor([[1]]), valid=torch.tensor([[True]]))
    s = heads().sample_rois(props, gt)
    iou = batched_pairwise_iou(s.boxes, gt.boxes)[0, :, 0]
    bg = s.labels[0] == 0
    assert (iou[bg] < 0.5).all() and (iou[bg] >= 0.1).all()
    assert (iou[~bg] >= 0.5).all()


def test_image_without_ground_truth_samples_background_only():
    g = torch.Generator().manual_seed(2)
    props = random_proposals(1, 300, g)
    gt = Targets(boxes=torch.zeros(1, 1, 4), labels=torch.zeros(1, 1, dtype=torch.long), valid=torch.zeros(1, 1, dtype=torch.bool))
    s = heads().sample_rois(props, gt)
    assert s.valid.all() and (s.labels == 0).all()


def test_losses_foreground_only_regression():
    h = heads()
    from frcnn.structures import SampledRois

    labels = torch.tensor([[2, 0, 0, 1]])
    sample = SampledRois(
        boxes=torch.zeros(1, 4, 4), labels=labels, regression_targets=torch.tensor([[[1.0, 0, 0, 0], [9, 9, 9, 9], [9, 9, 9, 9], [0, 0, 0, 0]]]),
        valid=torch.ones(1, 4, dtype=torch.bool),
    )
    logits = torch.zeros(1, 4, 4)
    deltas = torch.zeros(1, 4, 4, 4)
    losses = h.losses(logits, deltas, sample)
    torch.testing.assert_close(losses["loss_cls"], torch.log(torch.tensor(4.0)))
    # only RoI 0 contributes: smooth_l1(0 - 1, beta=1) = 0.5; divided by the 4 sampled RoIs
    torch.testing.assert_close(losses["loss_box_reg"], torch.tensor(0.5 / 4))
    deltas[0, 0, 1] = 5.0  # a wrong class's deltas do not count
    torch.testing.assert_close(h.losses(logits, deltas, sample)["loss_box_reg"], torch.tensor(0.5 / 4))


def test_roi_pool_option():
    h = heads(pooler="pool")
    feats = torch.randn(1, 16, 8, 8)
    box_head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1))
    logits, deltas = h._predict(feats, torch.tensor([[[0.0, 0.0, 64.0, 64.0]]]), box_head)
    assert logits.shape == (1, 1, 4) and deltas.shape == (1, 1, 4, 4)


def test_pooling_stays_fp32_under_autocast():
    """bf16 box coordinates would shift RoIs by pixels; pooling must see the fp32 boxes."""
    from torchvision.ops import roi_align

    h = heads()
    feats = torch.randn(1, 16, 80, 80).bfloat16()
    boxes = torch.tensor([[[1001.3, 517.7, 1150.9, 700.2]]])
    captured = {}

    def box_head(x):
        captured["pooled"] = x
        return x.float().mean((2, 3))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        h._predict(feats, boxes, box_head)
    rois = torch.cat([torch.zeros(1, 1), boxes[0]], 1)
    exact = roi_align(feats.float(), rois, (7, 7), 1 / 16, 0, True)
    shifted = roi_align(feats.float(), rois.bfloat16().float(), (7, 7), 1 / 16, 0, True)
    assert (exact - shifted).abs().max() > 0.05  # the hazard is real at these coordinates
    torch.testing.assert_close(captured["pooled"].float(), exact, atol=1e-5, rtol=1e-5)
