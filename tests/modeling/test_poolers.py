"""RoI pooling from a pyramid: the FPN paper's level assignment by hand, multi-level RoIAlign against torchvision."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from frcnn.errors import ConfigError
from frcnn.modeling.poolers import assign_levels, pool_rois, roi_levels
from frcnn.modeling.structures import FeatureMaps


def square(size: float, x: float = 10.0, y: float = 20.0) -> list[float]:
    return [x, y, x + size, y + size]


def test_level_assignment_by_hand():
    # k = floor(4 + log2(sqrt(wh) / 224)): 112 -> 3, 224 -> 4, 448 -> 5; a 223 px box is still level 3
    boxes = torch.tensor([square(112), square(224), square(448), square(223.9), square(896)])
    assert assign_levels(boxes, min_level=2, max_level=6).tolist() == [3, 4, 5, 3, 6]
    # clamped to the available levels: a 10 px box to the finest, a 2000 px box to the coarsest
    boxes = torch.tensor([square(10), square(2000), [0.0, 0.0, 0.0, 5.0]])  # the last has no area
    assert assign_levels(boxes, min_level=2, max_level=5).tolist() == [2, 5, 2]
    # a 56 x 224 box has sqrt(wh) = 112: level 3 (area, not the longer side)
    assert assign_levels(torch.tensor([[0.0, 0.0, 56.0, 224.0]]), min_level=2, max_level=5).tolist() == [3]


def test_roi_levels_index_into_the_pooled_levels_and_refuse_gaps():
    boxes = torch.tensor([square(112), square(224), square(448)])
    assert roi_levels(boxes, (4, 8, 16, 32, 64), [0, 1, 2, 3]).tolist() == [1, 2, 3]  # P3, P4, P5 of P2-P5
    assert roi_levels(boxes, (4, 8, 16, 32, 64), [2, 3]).tolist() == [0, 0, 1]  # clamped to P4-P5
    with pytest.raises(ConfigError, match="consecutive powers of two"):
        roi_levels(boxes, (4, 8, 16, 32, 64), [0, 2])


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_multilevel_roi_align_matches_torchvision(sampling_ratio):
    g = torch.Generator().manual_seed(0)
    height, width, strides = 640, 768, (4, 8, 16, 32)
    maps = [torch.randn(2, 3, height // s, width // s, generator=g) for s in strides]
    # boxes of every size from 4 px to the whole image, in both images
    xy = torch.rand(60, 2, generator=g) * torch.tensor([width, height]) * 0.2
    size = torch.exp(torch.rand(60, 1, generator=g) * 4.3) * 8  # 8-590 px
    aspect = torch.exp(torch.rand(60, 1, generator=g) - 0.5)
    wh = torch.cat([size * aspect, size / aspect], dim=1)
    boxes = torch.cat([xy, (xy + wh).clamp(max=torch.tensor([width, height]))], dim=1)
    image = (torch.arange(60) % 2).float()[:, None]
    ours = pool_rois(FeatureMaps(maps, strides), torch.cat([image, boxes], dim=1), output_size=7,
                     sampling_ratio=sampling_ratio, aligned=False)
    peer = MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size=7, sampling_ratio=sampling_ratio)
    theirs = peer(OrderedDict(zip(["p2", "p3", "p4", "p5"], maps)), [boxes[::2], boxes[1::2]], [(height, width)] * 2)
    # torchvision returns the RoIs image by image: reorder ours the same way
    order = torch.cat([torch.arange(0, 60, 2), torch.arange(1, 60, 2)])
    levels = roi_levels(boxes, strides, [0, 1, 2, 3])
    assert len(set(levels.tolist())) == 4, "the boxes should reach every level"
    torch.testing.assert_close(ours[order], theirs, rtol=0, atol=1e-6)


def test_one_level_pools_with_its_own_stride():
    fmap = torch.randn(1, 3, 8, 8)
    rois = torch.tensor([[0.0, 16.0, 16.0, 80.0, 96.0]])
    from torchvision.ops import roi_align

    expected = roi_align(fmap, rois, (7, 7), 1 / 16, 2, True)
    torch.testing.assert_close(pool_rois(FeatureMaps([fmap], (16,)), rois, output_size=7, sampling_ratio=2), expected)


def test_gradients_reach_every_level_through_the_scatter():
    maps = [torch.randn(1, 2, 64 // s, 64 // s, requires_grad=True) for s in (4, 8, 16, 32)]
    rois = torch.tensor([[0.0, *square(20, 0, 0)], [0.0, *square(60, 0, 0)]])  # levels 2 and 2 -> P2, and a big one
    rois = torch.cat([rois, torch.tensor([[0.0, 0.0, 0.0, 64.0, 64.0]])])
    pool_rois(FeatureMaps(maps, (4, 8, 16, 32)), rois, output_size=2).sum().backward()
    assert maps[0].grad.abs().sum() > 0  # the small boxes read P2
    assert maps[3].grad is None or maps[3].grad.abs().sum() == 0  # no box this size: 64 px -> P2 too (clamped)
