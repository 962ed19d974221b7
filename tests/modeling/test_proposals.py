import pytest
import torch
from torchvision.ops import clip_boxes_to_image, nms, remove_small_boxes

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.proposals import generate_proposals


def reference(anchors, logits, deltas, size, min_size, pre, thresh, post):
    """Plain per-image proposal layer built from torchvision.ops."""
    boxes = clip_boxes_to_image(decode_boxes(deltas, anchors, (1.0, 1.0, 1.0, 1.0)), size)
    keep = remove_small_boxes(boxes, min_size)
    boxes, logits = boxes[keep], logits[keep]
    order = logits.argsort(descending=True)[:pre]
    boxes, logits = boxes[order], logits[order]
    keep = nms(boxes, logits, thresh)[:post]
    return boxes[keep], torch.sigmoid(logits[keep])


@pytest.mark.parametrize("post", [100, 1000], ids=["post_topk_binds", "nms_binds"])
def test_batched_equals_per_image_reference(device, post):
    g = torch.Generator().manual_seed(0)
    anchors = AnchorGenerator(sizes=[32, 64, 128])(12, 16).to(device)
    b, a = 3, anchors.shape[0]
    logits = torch.randn(b, a, generator=g).to(device)
    deltas = (torch.randn(b, a, 4, generator=g) * 0.5).to(device)
    sizes = torch.tensor([[192, 256], [180, 240], [150, 256]], device=device)
    min_sizes = torch.tensor([16.0, 20.0, 12.0], device=device)
    out = generate_proposals(anchors, logits, deltas, sizes, min_sizes, pre_nms_topk=600, nms_thresh=0.7, post_nms_topk=post)
    padded = min(post, 600)
    assert out.boxes.shape == (3, padded, 4)
    counts = []
    for i in range(b):
        rb, rs = reference(anchors, logits[i], deltas[i], tuple(sizes[i].tolist()), float(min_sizes[i]), 600, 0.7, post)
        n = rb.shape[0]
        counts.append(n)
        assert int(out.valid[i].sum()) == n
        torch.testing.assert_close(out.boxes[i, :n], rb)
        torch.testing.assert_close(out.scores[i, :n], rs)
        assert not out.valid[i, n:].any()
    if post == 1000:  # NMS, not the padded size, decides the count: ~450 of 600 survive, differently per image
        assert max(counts) < padded and len(set(counts)) == b


def test_valid_counts_are_the_nms_survivors():
    """A hand case: one near-duplicate per pair is suppressed, a tiny box is dropped, clipping kills two."""
    anchors = torch.tensor([
        [0.0, 0.0, 40.0, 40.0],
        [2.0, 0.0, 42.0, 40.0],  # IoU 0.90 with anchor 0: suppressed by whichever scores lower
        [60.0, 60.0, 100.0, 100.0],
        [60.0, 62.0, 100.0, 102.0],  # IoU 0.90 with anchor 2
        [0.0, 0.0, 8.0, 8.0],  # under the 16 px minimum, despite the highest score
    ])
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.2, 3.0], [1.0, 2.0, 0.5, 0.2, 3.0]])
    # image 1 is 50x50: anchors 2 and 3 clip to zero-size boxes and are dropped as too small
    out = generate_proposals(anchors, logits, torch.zeros(2, 5, 4), torch.tensor([[120, 120], [50, 50]]), torch.tensor([16.0, 16.0]),
                             pre_nms_topk=10, nms_thresh=0.7, post_nms_topk=10)
    assert out.boxes.shape == (2, 5, 4)
    assert out.valid.sum(1).tolist() == [2, 1]
    assert out.valid.tolist() == [[True, True, False, False, False], [True, False, False, False, False]]
    torch.testing.assert_close(out.boxes[0, :2], anchors[[0, 2]])
    torch.testing.assert_close(out.boxes[1, :1], anchors[[1]])
    torch.testing.assert_close(out.scores[0, :2], torch.sigmoid(torch.tensor([2.0, 0.5])))


def test_images_do_not_suppress_each_other():
    anchors = torch.tensor([[0.0, 0.0, 50.0, 50.0]])
    logits = torch.tensor([[1.0], [2.0]])
    out = generate_proposals(
        anchors, logits, torch.zeros(2, 1, 4), torch.tensor([[100, 100]] * 2), torch.tensor([1.0, 1.0]),
        pre_nms_topk=10, nms_thresh=0.7, post_nms_topk=10,
    )
    assert out.valid.tolist() == [[True], [True]]


def test_all_boxes_too_small_gives_no_valid_proposal():
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0], [10.0, 10.0, 13.0, 13.0]])
    out = generate_proposals(
        anchors, torch.zeros(1, 2), torch.zeros(1, 2, 4), torch.tensor([[100, 100]]), torch.tensor([16.0]),
        pre_nms_topk=10, nms_thresh=0.7, post_nms_topk=10,
    )
    assert not out.valid.any()
    assert (out.boxes == 0).all()


def test_proposals_are_detached():
    anchors = torch.tensor([[0.0, 0.0, 50.0, 50.0]])
    logits = torch.zeros(1, 1, requires_grad=True)
    deltas = torch.zeros(1, 1, 4, requires_grad=True)
    out = generate_proposals(anchors, logits, deltas, torch.tensor([[100, 100]]), torch.tensor([1.0]),
                             pre_nms_topk=5, nms_thresh=0.7, post_nms_topk=5)
    assert not out.boxes.requires_grad and not out.scores.requires_grad


def pyramid_reference(anchors, logits, deltas, size, min_size, pre, thresh, post, per_level):
    """A plain loop over levels for one image: each level's top-``pre``, NMS within it (or over all), top-``post``."""
    boxes, scores, levels = [], [], []
    for level, (lvl_anchors, lvl_logits, lvl_deltas) in enumerate(zip(anchors, logits, deltas)):
        b = clip_boxes_to_image(decode_boxes(lvl_deltas, lvl_anchors, (1.0, 1.0, 1.0, 1.0)), size)
        keep = remove_small_boxes(b, min_size)
        b, s = b[keep], lvl_logits[keep]
        order = s.argsort(descending=True)[:pre]
        boxes.append(b[order])
        scores.append(s[order])
        levels.append(torch.full((len(order),), level))
    boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
    if per_level:
        keep = torch.cat([torch.nonzero(levels == lvl).squeeze(1)[nms(boxes[levels == lvl], scores[levels == lvl], thresh)]
                          for lvl in range(len(anchors))])
    else:
        keep = nms(boxes, scores, thresh)
    keep = keep[scores[keep].argsort(descending=True)][:post]
    return boxes[keep], torch.sigmoid(scores[keep])


@pytest.mark.parametrize("per_level", [True, False], ids=["nms_per_level", "nms_across_levels"])
def test_pyramid_proposals_equal_a_plain_loop_over_levels(per_level):
    g = torch.Generator().manual_seed(3)
    gen = AnchorGenerator(sizes=[[12], [24], [48], [96]], stride=[4, 8, 16, 32])
    shapes = [(128 // s, 160 // s) for s in gen.strides]
    anchors = [gen.grid(level, h, w) for level, (h, w) in enumerate(shapes)]
    b = 2
    logits = [torch.randn(b, len(a), generator=g) for a in anchors]
    deltas = [torch.randn(b, len(a), 4, generator=g) * 0.3 for a in anchors]
    sizes = torch.tensor([[128, 160], [100, 150]])
    min_sizes = torch.tensor([4.0, 6.0])
    pre, post = 150, 300  # the top-k binds on the three finer levels; post > the survivors of some images
    out = generate_proposals(anchors, logits, deltas, sizes, min_sizes, pre_nms_topk=pre, nms_thresh=0.7,
                             post_nms_topk=post, nms_per_level=per_level)
    assert out.boxes.shape[1] == min(post, sum(min(pre, len(a)) for a in anchors))
    for i in range(b):
        rb, rs = pyramid_reference(anchors, [x[i] for x in logits], [x[i] for x in deltas], tuple(sizes[i].tolist()),
                                   float(min_sizes[i]), pre, 0.7, post, per_level)
        n = len(rb)
        assert int(out.valid[i].sum()) == n
        torch.testing.assert_close(out.scores[i, :n], rs)
        torch.testing.assert_close(out.boxes[i, :n], rb)


def test_nms_within_levels_keeps_overlapping_boxes_of_different_levels():
    # the same box predicted on two levels: NMS per level keeps both, NMS across levels keeps one
    box_anchor = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    args = ([box_anchor, box_anchor], [torch.tensor([[2.0]]), torch.tensor([[1.0]])], [torch.zeros(1, 1, 4)] * 2,
            torch.tensor([[64, 64]]), torch.tensor([1.0]))
    within = generate_proposals(*args, pre_nms_topk=10, nms_thresh=0.7, post_nms_topk=10, nms_per_level=True)
    across = generate_proposals(*args, pre_nms_topk=10, nms_thresh=0.7, post_nms_topk=10, nms_per_level=False)
    assert within.valid.sum() == 2 and across.valid.sum() == 1
    assert torch.allclose(across.scores[0, 0], torch.sigmoid(torch.tensor(2.0)))


def test_filters_before_or_after_the_topk_hand_computed():
    """pre_nms_topk=2, logits [3, 2, 1], anchor 0 under the minimum size: filtered before the top-k (py-faster-rcnn)
    the top-2 is anchors 1 and 2; after it (torchvision, detectron2) the top-2 is anchors 0 and 1, and 0 is dropped.
    A score floor at p = 0.8 (sigmoid(2) = 0.88, sigmoid(1) = 0.73) keeps anchor 1 only, either way."""
    anchors = torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 90.0]])
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    deltas = torch.zeros(1, 3, 4)
    sizes = torch.tensor([[100, 100]])
    common = {"pre_nms_topk": 2, "nms_thresh": 0.7, "post_nms_topk": 3}

    def kept(**kw):
        p = generate_proposals(anchors, logits, deltas, sizes, torch.tensor([8.0]), **common, **kw)
        return p.boxes[0][p.valid[0]].tolist()

    assert kept() == [[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 90.0]]
    assert kept(filter_after_topk=True) == [[0.0, 0.0, 40.0, 40.0]]
    assert kept(score_thresh=0.8) == kept(score_thresh=0.8, filter_after_topk=True) == [[0.0, 0.0, 40.0, 40.0]]


def test_non_finite_boxes_never_become_proposals():
    """A diverged model's NaN / inf deltas or logits: those anchors make no proposal, and no NaN reaches roi_align."""
    anchors = torch.tensor([[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 90.0], [10.0, 10.0, 60.0, 60.0]])
    logits = torch.tensor([[float("nan"), 1.0, 2.0]])
    deltas = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [float("inf"), 0.0, 0.0, 0.0]]])
    p = generate_proposals(anchors, logits, deltas, torch.tensor([[100, 100]]), torch.tensor([1.0]),
                           pre_nms_topk=3, nms_thresh=0.7, post_nms_topk=3)
    assert p.valid[0].tolist() == [True, False, False]
    assert torch.isfinite(p.boxes).all() and p.boxes[0, 0].tolist() == [50.0, 50.0, 90.0, 90.0]


def test_capped_nms_runs_on_the_prefix_and_gives_the_plain_proposals(monkeypatch):
    """Test time (post 20 of 150 per level): NMS runs first on each group's best 2 x 20, then on all candidates
    of the groups whose prefix kept fewer than 20 (here image 1's level 1, whose 100 best boxes are one box);
    the proposals are those of plain NMS over every candidate."""
    import frcnn.modeling.proposals as proposals

    g = torch.Generator().manual_seed(5)
    gen = AnchorGenerator(sizes=[[12], [24], [48]], stride=[4, 8, 16])
    shapes = [(64 // s, 96 // s) for s in gen.strides]
    anchors = [gen.grid(level, h, w) for level, (h, w) in enumerate(shapes)]
    b = 2
    logits = [torch.randn(b, len(a), generator=g) for a in anchors]
    deltas = [torch.randn(b, len(a), 4, generator=g) * 0.3 for a in anchors]
    anchors[1] = anchors[1].clone()
    anchors[1][:100] = anchors[1][0]  # image 1, level 1: its 100 best candidates one box (NMS keeps one), then others
    deltas[1][1, :100] = 0.0
    logits[1][1, :100] += 10.0
    sizes, min_sizes = torch.tensor([[64, 96], [60, 90]]), torch.tensor([4.0, 6.0])
    calls = []
    plain_nms = proposals.batched_nms
    monkeypatch.setattr(proposals, "batched_nms", lambda boxes, *a: calls.append(len(boxes)) or plain_nms(boxes, *a))
    kwargs = dict(pre_nms_topk=150, nms_thresh=0.7, post_nms_topk=20)
    capped = generate_proposals(anchors, logits, deltas, sizes, min_sizes, **kwargs)
    monkeypatch.setattr(proposals, "PREFIX_FACTOR", 10**6)  # never capped: plain NMS over all candidates
    plain = generate_proposals(anchors, logits, deltas, sizes, min_sizes, **kwargs)
    assert [len(a) for a in anchors] == [1152, 288, 72]
    assert torch.equal(capped.valid, plain.valid)
    assert torch.equal(capped.boxes, plain.boxes) and torch.equal(capped.scores, plain.scores)
    assert calls == [b * (40 + 40 + 40), 150, b * (150 + 150 + 72)]  # prefixes; image 1's level 1 again; plain


def test_capped_nms_does_not_count_dropped_boxes_as_kept():
    """filter_after_topk drops boxes after the top-k, so -inf logits sit anywhere in a level's block: a prefix
    whose survivors are mostly dropped boxes must still be run again in full (here 10 candidates, the 2nd-4th
    too small, 2 proposals: a prefix of 4 keeps one usable box, the full run two)."""
    anchors = torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 4.0, 4.0], [30.0, 0.0, 34.0, 4.0], [60.0, 0.0, 64.0, 4.0],
                            *[[10.0 * i, 40.0, 10.0 * i + 20.0, 60.0] for i in range(6)]])
    logits = torch.arange(10, 0, -1, dtype=torch.float32)[None]  # sorted: anchor order is score order
    args = ([anchors], [logits], [torch.zeros(1, 10, 4)], torch.tensor([[100, 100]]), torch.tensor([8.0]))
    out = generate_proposals(*args, pre_nms_topk=10, nms_thresh=0.3, post_nms_topk=2, filter_after_topk=True)
    assert out.valid.tolist() == [[True, True]]
    torch.testing.assert_close(out.boxes[0], anchors[[0, 4]])


def test_nms_across_levels_is_never_capped(monkeypatch):
    """Across levels a group holds several sorted blocks, not one: no prefix of it is its best candidates."""
    import frcnn.modeling.proposals as proposals

    g = torch.Generator().manual_seed(6)
    anchors = [torch.rand(300, 2, generator=g).repeat(1, 2) * 50 + torch.tensor([0.0, 0.0, 12.0, 12.0]) for _ in range(2)]
    calls = []
    plain_nms = proposals.batched_nms
    monkeypatch.setattr(proposals, "batched_nms", lambda boxes, *a: calls.append(len(boxes)) or plain_nms(boxes, *a))
    generate_proposals(anchors, [torch.randn(1, 300, generator=g)] * 2, [torch.zeros(1, 300, 4)] * 2, torch.tensor([[64, 64]]),
                       torch.tensor([1.0]), pre_nms_topk=300, nms_thresh=0.7, post_nms_topk=10, nms_per_level=False)
    assert calls == [600]
