import math

import pytest
import torch

from frcnn.errors import ConfigError
from frcnn.modeling.anchors import AnchorGenerator, cell_anchors


def test_cell_anchors_hand_computed():
    a = cell_anchors([16], [0.5, 1.0, 2.0])
    # ratio h/w = 0.5: w = 16/sqrt(.5) = 22.627, h = 16*sqrt(.5) = 11.314
    w, h = 16 / math.sqrt(0.5), 16 * math.sqrt(0.5)
    expected = torch.tensor([[-w / 2, -h / 2, w / 2, h / 2], [-8, -8, 8, 8], [-h / 2, -w / 2, h / 2, w / 2]])
    torch.testing.assert_close(a, expected)


def test_areas_equal_size_squared_and_ratios():
    a = cell_anchors([128, 256, 512], [0.5, 1.0, 2.0])
    w = a[:, 2] - a[:, 0]
    h = a[:, 3] - a[:, 1]
    torch.testing.assert_close(w * h, torch.tensor([128.0**2] * 3 + [256.0**2] * 3 + [512.0**2] * 3))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0] * 3))


def test_tiling_centres_and_order():
    gen = AnchorGenerator(sizes=[32], aspect_ratios=[1.0], stride=16, offset=0.5)
    anchors = gen(2, 3)  # 2 rows, 3 columns, 1 anchor per cell
    assert anchors.shape == (6, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # (y, x, a) order: row-major, centres at (j + 0.5) * 16
    expected = torch.tensor([[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]], dtype=torch.float32)
    torch.testing.assert_close(centres, expected)
    torch.testing.assert_close(anchors[0], torch.tensor([-8.0, -8.0, 24.0, 24.0]))


def test_nine_anchors_per_location_default():
    gen = AnchorGenerator()
    assert gen.num_anchors == 9
    assert gen(4, 5).shape == (4 * 5 * 9, 4)
    # the anchors of one cell come consecutively
    first = gen(4, 5)[:9]
    torch.testing.assert_close((first[:, :2] + first[:, 2:]) / 2, torch.full((9, 2), 8.0))


def test_offset_zero_matches_torchvision_centres():
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchors
    from torchvision.models.detection.image_list import ImageList

    ours = AnchorGenerator(sizes=[64], aspect_ratios=[1.0], stride=16, offset=0.0)(3, 4)
    tv = TVAnchors(sizes=((64,),), aspect_ratios=((1.0,),))
    images = ImageList(torch.zeros(1, 3, 48, 64), [(48, 64)])
    theirs = tv(images, [torch.zeros(1, 8, 3, 4)])[0]
    torch.testing.assert_close(ours, theirs)


def test_pyramid_anchors_match_torchvisions_generator_level_by_level():
    """Per level, the same anchors as torchvision's AnchorGenerator with the same sizes, ratios and offset 0.

    torchvision rounds its cell anchors to whole pixels; frcnn keeps them exact (area = size²), so frcnn's
    are rounded here before comparing (shifts are whole multiples of even strides, so rounding commutes)."""
    from torchvision.models.detection.anchor_utils import (
        AnchorGenerator as TorchvisionAnchors,
    )
    from torchvision.models.detection.image_list import ImageList

    sizes, ratios, strides = [[12], [24], [48], [96], [192]], (0.5, 1.0, 2.0), (4, 8, 16, 32, 64)
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=ratios, stride=strides, offset=0.0)
    assert ours.num_levels == 5 and ours.num_anchors == 3
    height, width = 192, 256
    shapes = [(height // s, width // s) for s in strides]
    theirs = TorchvisionAnchors(sizes=tuple(tuple(s) for s in sizes), aspect_ratios=(ratios,) * 5)
    maps = [torch.zeros(1, 1, h, w) for h, w in shapes]
    expected = theirs(ImageList(torch.zeros(1, 3, height, width), [(height, width)]), maps)[0]
    mine = torch.cat([ours.grid(level, h, w) for level, (h, w) in enumerate(shapes)])
    assert torch.equal(mine.round(), expected)


def test_torchvision_conventions_give_torchvisions_anchors_exactly():
    """``round_to_pixels`` and ``stride_from_image`` (conf/experiment/torchvision/*): torchvision's anchors, bit for
    bit, on a pyramid whose P6 has an odd parent (an 800 px high input: P5 has 25 rows, P6 13, stride 61 not 64),
    and with 5 sizes x 3 ratios per location (MobileNetV3's), where torchvision orders ratio-major and frcnn
    size-major (frcnn.zoo reorders the RPN head's channels to match)."""
    from torchvision.models.detection.anchor_utils import (
        AnchorGenerator as TorchvisionAnchors,
    )
    from torchvision.models.detection.image_list import ImageList

    height, width = 800, 1088
    for sizes, strides in (([[32], [64], [128], [256], [512]], (4, 8, 16, 32, 64)),
                           ([[32, 64, 128, 256, 512]] * 3, (32, 32, 64))):
        ratios = (0.5, 1.0, 2.0)
        ours = AnchorGenerator(sizes=sizes, aspect_ratios=ratios, stride=strides, offset=0.0, round_to_pixels=True,
                               stride_from_image=True)
        shapes = [(height // s, width // s) if s < 64 else (-(-height // 64), -(-width // 64)) for s in strides]
        assert shapes[-1] == (13, 17)  # max-pooled from 25 x 34: strides 800 // 13 = 61 and 1088 // 17 = 64
        theirs = TorchvisionAnchors(sizes=tuple(tuple(s) for s in sizes), aspect_ratios=(ratios,) * len(sizes))
        maps = [torch.zeros(1, 1, h, w) for h, w in shapes]
        expected = theirs(ImageList(torch.zeros(1, 3, height, width), [(height, width)]), maps)[0]
        mine = torch.cat([ours.grid(level, h, w, image_size=(height, width)) for level, (h, w) in enumerate(shapes)])
        a = ours.num_anchors
        order = [r * (a // 3) + s for s in range(a // 3) for r in range(3)]  # frcnn's anchor k is torchvision's order[k]
        start = 0
        for h, w in shapes:  # per level: [H*W, A, 4], torchvision's anchors in frcnn's order
            n = h * w * a
            level = expected[start : start + n].reshape(h * w, a, 4)[:, order].reshape(-1, 4)
            assert torch.equal(mine[start : start + n], level)
            start += n
        assert start == len(expected)
    with pytest.raises(RuntimeError, match="needs the padded input's image_size"):
        ours.grid(0, 2, 2)


def test_three_sizes_per_level_and_mismatches_are_refused():
    gen = AnchorGenerator(sizes=[[16, 20, 25], [32, 40, 50]], stride=[8, 16])
    assert gen.num_anchors == 9 and gen.strides == (8, 16)
    assert gen.grid(1, 2, 3).shape == (2 * 3 * 9, 4)
    with pytest.raises(ConfigError, match="one list of sizes per level"):
        AnchorGenerator(sizes=[[16], [32]], stride=[4, 8, 16])
    with pytest.raises(ConfigError, match="same number of sizes"):
        AnchorGenerator(sizes=[[16], [32, 64]], stride=[4, 8])
    with pytest.raises(RuntimeError, match="levels"):
        gen.stride  # a one-level property on a pyramid
