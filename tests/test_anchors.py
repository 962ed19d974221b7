import math

import torch

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
