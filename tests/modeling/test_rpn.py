import torch

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.rpn import RPN, RPNHead
from frcnn.modeling.structures import ImageBatch, Targets


def make_rpn(**kw):
    return RPN(head=RPNHead(in_channels=8), anchor_generator=AnchorGenerator(sizes=[32, 64, 128]), **kw)


def targets(boxes, valid=None):
    boxes = torch.tensor(boxes, dtype=torch.float32)
    b, g = boxes.shape[:2]
    return Targets(
        boxes=boxes,
        labels=torch.ones(b, g, dtype=torch.long),
        valid=torch.ones(b, g, dtype=torch.bool) if valid is None else torch.tensor(valid),
    )


def images(b, h, w):
    return ImageBatch(
        tensor=torch.zeros(b, 3, h, w),
        image_sizes=torch.tensor([[h, w]] * b),
        scales=torch.ones(b, 2),
        original_sizes=torch.tensor([[h, w]] * b),
    )


def test_head_shapes_and_anchor_order():
    head = RPNHead(in_channels=8, num_anchors=9)
    x = torch.randn(2, 8, 3, 5)
    logits, deltas = head(x)
    assert logits.shape == (2, 3 * 5 * 9) and deltas.shape == (2, 3 * 5 * 9, 4)
    raw = head.objectness(torch.relu(head.conv(x)))  # [2, 9, 3, 5]
    # anchor index (y, x, a) = ((y * W) + x) * A + a
    assert logits[1, ((2 * 5) + 4) * 9 + 7] == raw[1, 7, 2, 4]
    raw_d = head.deltas(torch.relu(head.conv(x))).view(2, 9, 4, 3, 5)
    torch.testing.assert_close(deltas[0, ((1 * 5) + 3) * 9 + 2], raw_d[0, 2, :, 1, 3])


def test_border_anchors_ignored():
    rpn = make_rpn(straddle_thresh=0.0)
    anchors = rpn.anchor_generator(4, 4)  # 64x64 image
    t = rpn.assign_targets(anchors, torch.tensor([[64, 64]]), targets([[[0.0, 0.0, 64.0, 64.0]]]))
    sampled = t.sampled_pos | t.sampled_neg
    inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= 64) & (anchors[:, 3] <= 64)
    assert sampled[0, ~inside].sum() == 0
    assert t.sampled_pos.sum() > 0
    keep_all = make_rpn(straddle_thresh=-1).assign_targets(anchors, torch.tensor([[64, 64]]), targets([[[0.0, 0.0, 64.0, 64.0]]]))
    assert (keep_all.sampled_pos | keep_all.sampled_neg)[0, ~inside].sum() > 0


def test_every_gt_gets_a_positive_anchor():
    rpn = make_rpn()
    anchors = rpn.anchor_generator(8, 8)
    # a small box that no anchor overlaps at 0.7
    t = rpn.assign_targets(anchors, torch.tensor([[128, 128]]), targets([[[40.0, 40.0, 52.0, 50.0]]]))
    assert t.sampled_pos.sum() >= 1


def test_losses_paper_and_sampled_normalization():
    """Hand computation of eq. 1 per image: image 0 is 64x64 (N_reg = 4*4 = 16 locations), image 1 is
    32x48 padded to 64x64 (N_reg = 2*3 = 6, not the padded 16); the batch loss is the mean."""
    torch.manual_seed(0)
    feats = torch.randn(2, 8, 4, 4)
    tg = targets([[[10.0, 10.0, 50.0, 40.0]], [[2.0, 4.0, 30.0, 28.0]]])
    batch = images(2, 64, 64)
    batch.image_sizes[1] = torch.tensor([32, 48])
    paper = make_rpn(loss_normalization="paper", straddle_thresh=-1)
    sampled = make_rpn(loss_normalization="sampled", straddle_thresh=-1)
    sampled.load_state_dict(paper.state_dict())
    torch.manual_seed(1)
    _, lp = paper(batch, feats, tg)
    torch.manual_seed(1)
    _, ls = sampled(batch, feats, tg)
    torch.manual_seed(1)
    logits, deltas = paper.head(feats)
    t = paper.assign_targets(paper.anchor_generator(4, 4), batch.image_sizes, tg,
                             anchor_valid=paper.locations_in_image(4, 4, batch.image_sizes))
    assert paper.num_locations(batch.image_sizes).tolist() == [16, 6]
    cls, reg_paper, reg_sampled = 0.0, 0.0, 0.0
    for i, n_reg in enumerate([16, 6]):
        s = t.sampled_pos[i] | t.sampled_neg[i]
        assert s.sum() > 0 and t.sampled_pos[i].sum() > 0
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[i], t.sampled_pos[i].float(), reduction="none")
        cls += bce[s].sum() / s.sum() / 2
        d = (deltas[i] - t.deltas[i])[t.sampled_pos[i]].abs()
        sl1 = torch.where(d < 1 / 9, 0.5 * d**2 * 9, d - 0.5 / 9).sum()
        reg_paper += 10 * sl1 / n_reg / 2  # lambda = 10, N_reg = the image's own locations
        reg_sampled += sl1 / s.sum() / 2  # lambda = 1, N = the image's sampled anchors
    # padded cells of image 1 (rows 2-3, columns 3) are never sampled
    cells = t.sampled_pos[1].view(4, 4, 9) | t.sampled_neg[1].view(4, 4, 9)
    assert not cells[2:].any() and not cells[:, 3:].any()
    torch.testing.assert_close(lp["loss_rpn_cls"], cls)
    torch.testing.assert_close(ls["loss_rpn_cls"], cls)
    torch.testing.assert_close(lp["loss_rpn_reg"], reg_paper)
    torch.testing.assert_close(ls["loss_rpn_reg"], reg_sampled)


def test_empty_ground_truth_zero_reg_loss():
    rpn = make_rpn()
    tg = targets([[[0.0, 0.0, 0.0, 0.0]]], valid=[[False]])
    _, losses = rpn(images(1, 64, 64), torch.randn(1, 8, 4, 4), tg)
    assert losses["loss_rpn_reg"].item() == 0.0
    assert torch.isfinite(losses["loss_rpn_cls"]) and losses["loss_rpn_cls"] > 0


def test_train_and_test_proposal_counts():
    rpn = make_rpn(post_nms_topk_train=50, post_nms_topk_test=7, nms_thresh=0.99, min_size=0)
    feats = torch.randn(1, 8, 8, 8)
    rpn.train()
    p, _ = rpn(images(1, 128, 128), feats)
    assert p.boxes.shape[1] == 50
    rpn.eval()
    p, _ = rpn(images(1, 128, 128), feats)
    assert p.boxes.shape[1] == 7
