import torch
from torchvision.ops import roi_align, roi_pool

from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.box_ops import batched_pairwise_iou
from frcnn.modeling.roi_heads import BoxPredictor, RoIHeads
from frcnn.modeling.structures import Proposals, Targets


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
    # regression targets decode back to the ground truth each RoI matched (its highest IoU)
    for i in range(2):
        decoded = decode_boxes(s.regression_targets[i][fg[i]], s.boxes[i][fg[i]], (10.0, 10.0, 5.0, 5.0))
        iou = batched_pairwise_iou(s.boxes[i : i + 1], gt.boxes[i : i + 1])[0][fg[i]].masked_fill(~gt.valid[i], -1)
        torch.testing.assert_close(decoded, gt.boxes[i][iou.argmax(1)], atol=1e-3, rtol=0)
    assert (s.regression_targets[~fg] == 0).all()


def test_targets_and_labels_come_from_the_matched_ground_truth():
    """Two overlapping ground-truth boxes of different classes: each foreground RoI's label and decoded
    regression target are those of the box it overlaps most, not of the other one it also overlaps."""
    a, b = [20.0, 20.0, 100.0, 100.0], [50.0, 40.0, 130.0, 120.0]  # IoU 0.31 with each other
    gt = Targets(boxes=torch.tensor([[a, b], [b, a]]), labels=torch.tensor([[1, 3], [3, 1]]), valid=torch.ones(2, 2, dtype=torch.bool))
    g = torch.Generator().manual_seed(3)
    jittered = torch.tensor([a, b]).repeat(100, 1) + torch.randn(200, 4, generator=g) * 8  # [200, 4]
    jittered = torch.cat([jittered[:, :2], torch.maximum(jittered[:, 2:], jittered[:, :2] + 4)], 1)
    props = Proposals(boxes=jittered.expand(2, -1, -1), scores=torch.rand(2, 200, generator=g), valid=torch.ones(2, 200, dtype=torch.bool))
    s = heads().sample_rois(props, gt)
    for i in range(2):
        fg = s.labels[i] > 0
        iou = batched_pairwise_iou(s.boxes[i : i + 1], gt.boxes[i : i + 1])[0][fg]  # [F, 2]
        best = iou.argmax(1)
        assert set(best.tolist()) == {0, 1}  # both ground-truth boxes have foreground RoIs
        assert (iou.min(1).values > 0.1).sum() >= 10  # and many RoIs overlap the other box too
        assert s.labels[i][fg].tolist() == gt.labels[i][best].tolist()
        decoded = decode_boxes(s.regression_targets[i][fg], s.boxes[i][fg], (10.0, 10.0, 5.0, 5.0))
        torch.testing.assert_close(decoded, gt.boxes[i][best], atol=1e-3, rtol=0)


def test_background_iou_range():
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
    from frcnn.modeling.structures import SampledRois

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


def pooled_by(h, feats, boxes):
    """What ``h`` hands its box head for ``boxes`` ``[B, R, 4]``, and the predictor's outputs."""
    captured = {}

    class BoxHead(torch.nn.Module):
        def forward(self, x):
            captured["pooled"] = x
            return x.mean((2, 3))

    h.box_head = BoxHead()
    logits, deltas = h.predict(feats, boxes)
    return captured["pooled"], logits, deltas


def test_roi_pool_option_max_pools():
    """pooler=pool is the paper's RoI max pooling (``roi_pool``), not RoIAlign."""
    # Hand case: a 4x4 map 0..15, box [0, 48] px = feature cells 0..3 at stride 16, 2x2 bins of 2x2
    # cells each: the max of each quadrant (RoIAlign would average bilinear samples instead).
    feats = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 16, 4, 4)
    hand = RoIHeads(predictor=BoxPredictor(in_channels=16, num_classes=3), pooler="pool", pooler_resolution=2)
    pooled, _, _ = pooled_by(hand, feats, torch.tensor([[[0.0, 0.0, 48.0, 48.0]]]))
    assert pooled[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]

    # Random map, two images, several boxes: exactly torchvision's roi_pool, and clearly not roi_align.
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 16, 8, 8, generator=g)
    boxes = torch.tensor([[[0.0, 0.0, 64.0, 64.0], [8.0, 20.0, 100.0, 90.0]], [[30.0, 5.0, 120.0, 60.0], [3.0, 3.0, 40.0, 41.0]]])
    pooled, logits, deltas = pooled_by(heads(pooler="pool"), feats, boxes)
    assert logits.shape == (2, 2, 4) and deltas.shape == (2, 2, 4, 4)
    rois = torch.cat([torch.tensor([0.0, 0.0, 1.0, 1.0])[:, None], boxes.reshape(-1, 4)], 1)  # [4, 5]
    torch.testing.assert_close(pooled, roi_pool(feats, rois, (7, 7), 1 / 16), rtol=0, atol=0)
    align = roi_align(feats, rois, (7, 7), 1 / 16, 0, True)
    assert (pooled - align).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every RoI, not just some
    aligned, _, _ = pooled_by(heads(), feats, boxes)  # the default really is RoIAlign
    torch.testing.assert_close(aligned, align)


def test_pooling_stays_fp32_under_autocast():
    """bf16 box coordinates would shift RoIs by pixels; pooling must see the fp32 boxes."""
    h = heads()
    feats = torch.randn(1, 16, 80, 80).bfloat16()
    boxes = torch.tensor([[[1001.3, 517.7, 1150.9, 700.2]]])
    captured = {}

    class BoxHead(torch.nn.Module):
        def forward(self, x):
            captured["pooled"] = x
            return x.float().mean((2, 3))

    h.box_head = BoxHead()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h.predict(feats, boxes)
    rois = torch.cat([torch.zeros(1, 1), boxes[0]], 1)
    exact = roi_align(feats.float(), rois, (7, 7), 1 / 16, 0, True)
    shifted = roi_align(feats.float(), rois.bfloat16().float(), (7, 7), 1 / 16, 0, True)
    assert (exact - shifted).abs().max() > 0.05  # the hazard is real at these coordinates
    torch.testing.assert_close(captured["pooled"].float(), exact, atol=1e-5, rtol=1e-5)
