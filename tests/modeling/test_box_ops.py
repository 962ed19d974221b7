import pytest
import torch
from torchvision.ops import box_iou, clip_boxes_to_image

from frcnn.modeling.box_ops import (
    batched_pairwise_iou,
    clip_boxes,
    elementwise_iou,
    pack_per_image,
)
from frcnn.modeling.structures import pad_targets


def rand_boxes(b, n, g):
    xy = torch.rand(b, n, 2, generator=g) * 100
    wh = torch.rand(b, n, 2, generator=g) * 60
    return torch.cat([xy, xy + wh], dim=-1)


def test_batched_iou_equals_box_iou():
    g = torch.Generator().manual_seed(0)
    a, b = rand_boxes(3, 50, g), rand_boxes(3, 7, g)
    iou = batched_pairwise_iou(a, b)
    for i in range(3):
        torch.testing.assert_close(iou[i], box_iou(a[i], b[i]))


def test_iou_of_empty_boxes_is_zero():
    z = torch.zeros(1, 2, 4)
    assert (batched_pairwise_iou(z, z) == 0).all()


def test_clip_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    boxes = rand_boxes(2, 30, g) * 2 - 50
    sizes = torch.tensor([[80, 120], [100, 60]])
    out = clip_boxes(boxes, sizes)
    for i in range(2):
        torch.testing.assert_close(out[i], clip_boxes_to_image(boxes[i], tuple(sizes[i].tolist())))


def test_pack_per_image():
    # candidates 0..5 of images [0, 1, 0, 1, 1, 0]; keep sorted by score globally: 3, 0, 4, 5, 1
    image_of = torch.tensor([0, 1, 0, 1, 1, 0])
    keep = torch.tensor([3, 0, 4, 5, 1])
    table = pack_per_image(keep, image_of, 3, 2)
    assert table.tolist() == [[0, 5], [3, 4], [-1, -1]]


def test_pad_targets_keeps_one_slot_for_empty_batch():
    t = pad_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], torch.device("cpu"))
    assert t.boxes.shape == (1, 1, 4) and not t.valid.any()


def test_elementwise_iou_by_hand_and_against_torchvision():
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([1.0, 0.0, 3.0, 2.0])
    assert elementwise_iou(a, b).item() == pytest.approx(1 / 3)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], dim=1)
    other = boxes.roll(1, dims=0)
    torch.testing.assert_close(elementwise_iou(boxes, other), box_iou(boxes, other).diagonal())
