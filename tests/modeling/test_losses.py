"""An image's four losses do not depend on the rest of its batch (padding, larger neighbours).

Sampling is made deterministic (keys that follow the candidates' order) so that the same image picks
the same anchors and RoIs whether it is batched alone or padded beside a larger image; the batch loss
must then be exactly the mean of the images' own losses.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frcnn.modeling.sampling
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.roi_heads import BoxPredictor, RoIHeads
from frcnn.modeling.rpn import RPN, RPNHead
from frcnn.modeling.structures import ImageBatch, Proposals, Targets

C = 8


@pytest.fixture(autouse=True)
def ordered_sampling(monkeypatch):
    """Keys increasing with the candidate index: every sample is 'the first k candidates in order'."""

    def keys(shape, device, generator):
        b, n = shape
        return (torch.arange(n, device=device, dtype=torch.float32) / n).expand(b, n).contiguous()

    monkeypatch.setattr(frcnn.modeling.sampling, "random_keys", keys)


def batch(sizes: list[tuple[int, int]], feats: list[torch.Tensor]) -> tuple[ImageBatch, torch.Tensor]:
    """Images of ``sizes`` padded to the largest; features zero on the padding (stride 16)."""
    hmax, wmax = max(h for h, _ in sizes), max(w for _, w in sizes)
    out = torch.zeros(len(sizes), C, hmax // 16, wmax // 16)
    for i, f in enumerate(feats):
        out[i, :, : f.shape[1], : f.shape[2]] = f
    images = ImageBatch(
        tensor=torch.zeros(len(sizes), 3, hmax, wmax),
        image_sizes=torch.tensor(sizes),
        scales=torch.ones(len(sizes), 2),
        original_sizes=torch.tensor(sizes),
    )
    return images, out


def targets(boxes: list[list[list[float]]], labels: list[list[int]]) -> Targets:
    g = max(len(b) for b in boxes)
    t = Targets(
        boxes=torch.zeros(len(boxes), g, 4), labels=torch.zeros(len(boxes), g, dtype=torch.long),
        valid=torch.zeros(len(boxes), g, dtype=torch.bool),
    )
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        t.boxes[i, : len(b)] = torch.tensor(b)
        t.labels[i, : len(b)] = torch.tensor(lab)
        t.valid[i, : len(b)] = True
    return t


SMALL, LARGE = (96, 128), (224, 320)
SMALL_GT, LARGE_GT = [[10.0, 12.0, 60.0, 70.0]], [[30.0, 40.0, 150.0, 120.0], [160.0, 100.0, 300.0, 210.0]]


@pytest.mark.parametrize("normalization", ["paper", "sampled"])
def test_rpn_losses_are_the_mean_of_each_images_own(normalization):
    torch.manual_seed(0)
    rpn = RPN(head=RPNHead(in_channels=C), anchor_generator=AnchorGenerator(sizes=[32, 64, 128]),
              loss_normalization=normalization, batch_size_per_image=64)
    f_small, f_large = torch.randn(C, 6, 8), torch.randn(C, 14, 20)
    alone_small = rpn(*batch([SMALL], [f_small]), targets([SMALL_GT], [[1]]))[1]
    alone_large = rpn(*batch([LARGE], [f_large]), targets([LARGE_GT], [[1, 2]]))[1]
    both = rpn(*batch([SMALL, LARGE], [f_small, f_large]), targets([SMALL_GT, LARGE_GT], [[1], [1, 2]]))[1]
    for name in ("loss_rpn_cls", "loss_rpn_reg"):
        assert alone_small[name] > 0 and alone_large[name] > 0
        torch.testing.assert_close(both[name], (alone_small[name] + alone_large[name]) / 2, msg=name)


def test_rpn_makes_no_proposals_from_padding():
    torch.manual_seed(0)
    rpn = RPN(head=RPNHead(in_channels=C), anchor_generator=AnchorGenerator(sizes=[32, 64, 128]), min_size=1)
    rpn.eval()
    f_small, f_large = torch.randn(C, 6, 8), torch.randn(C, 14, 20)
    alone = rpn(*batch([SMALL], [f_small]))[0]
    both = rpn(*batch([SMALL, LARGE], [f_small, f_large]))[0]
    n = int(alone.valid.sum())
    assert int(both.valid[0].sum()) == n
    torch.testing.assert_close(both.boxes[0, :n], alone.boxes[0, :n])


def test_roi_head_losses_are_the_mean_of_each_images_own():
    torch.manual_seed(0)
    box_head = nn.Sequential(nn.Flatten(), nn.Linear(C * 4 * 4, 16))  # no batch statistics
    heads = RoIHeads(box_head=box_head, predictor=BoxPredictor(in_channels=16, num_classes=3), pooler_resolution=4,
                     batch_size_per_image=32, positive_fraction=0.25)
    f_small, f_large = torch.randn(C, 6, 8), torch.randn(C, 14, 20)

    def proposals(boxes: list[list[list[float]]]) -> Proposals:
        p = max(len(b) for b in boxes)
        out = Proposals(boxes=torch.zeros(len(boxes), p, 4), scores=torch.zeros(len(boxes), p),
                        valid=torch.zeros(len(boxes), p, dtype=torch.bool))
        for i, b in enumerate(boxes):
            out.boxes[i, : len(b)] = torch.tensor(b)
            out.valid[i, : len(b)] = True
        return out

    # interior proposals: RoIAlign never reads the padding next to the small image
    g = torch.Generator().manual_seed(1)
    def random_boxes(h, w, n):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 60.0, h - 60.0]) + 4
        wh = torch.rand(n, 2, generator=g) * 40 + 8
        return torch.cat([xy, xy + wh], 1).tolist()

    # the small image has only foreground candidates (jittered copies of its box): 8 valid slots of 32
    jitter = torch.randn(20, 4, generator=g) * 2
    p_small = SMALL_GT + (torch.tensor(SMALL_GT) + jitter).tolist()
    p_large = LARGE_GT + random_boxes(*LARGE, 50)
    losses = {}
    for key, sizes, feats, props, gts, labels in [
        ("small", [SMALL], [f_small], [p_small], [SMALL_GT], [[1]]),
        ("large", [LARGE], [f_large], [p_large], [LARGE_GT], [[1, 2]]),
        ("both", [SMALL, LARGE], [f_small, f_large], [p_small, p_large], [SMALL_GT, LARGE_GT], [[1], [1, 2]]),
    ]:
        images, features = batch(sizes, feats)
        losses[key] = heads(images, features, proposals(props), targets(gts, labels))[1]
        if key == "small":
            sample = heads.sample_rois(proposals(props), targets(gts, labels))
            assert sample.valid.sum() == 8 and (sample.labels > 0).sum() == 8
    for name in ("loss_cls", "loss_box_reg"):
        assert losses["small"][name] > 0 and losses["large"][name] > 0
        torch.testing.assert_close(losses["both"][name], (losses["small"][name] + losses["large"][name]) / 2, msg=name)
