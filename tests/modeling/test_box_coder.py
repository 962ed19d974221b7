import torch
from torchvision.models.detection._utils import BoxCoder

from frcnn.modeling.box_coder import DEFAULT_SCALE_CLAMP, decode_boxes, encode_boxes


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 500
    wh = torch.rand(n, 2, generator=generator) * 290 + 10  # size ratios < 1000/16: inside the decode clamp
    return torch.cat([xy, xy + wh], dim=1)


def test_hand_computed_encode():
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[5.0, 0.0, 15.0, 40.0]])
    d = encode_boxes(ref, gt, (1.0, 1.0, 1.0, 1.0))
    # centres (5,10) -> (10,20); sizes (10,20) -> (10,40)
    torch.testing.assert_close(d, torch.tensor([[0.5, 0.5, 0.0, torch.log(torch.tensor(2.0)).item()]]))
    d10 = encode_boxes(ref, gt, (10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(d10, d * torch.tensor([10.0, 10.0, 5.0, 5.0]))


def test_round_trip():
    g = torch.Generator().manual_seed(0)
    ref, gt = random_boxes(1000, g), random_boxes(1000, g)
    for w in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        torch.testing.assert_close(decode_boxes(encode_boxes(ref, gt, w), ref, w), gt, rtol=1e-4, atol=1e-3)


def test_matches_torchvision_boxcoder():
    g = torch.Generator().manual_seed(1)
    ref, gt = random_boxes(500, g), random_boxes(500, g)
    for w in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        tv = BoxCoder(weights=w, bbox_xform_clip=DEFAULT_SCALE_CLAMP)
        torch.testing.assert_close(encode_boxes(ref, gt, w), tv.encode_single(gt, ref), rtol=1e-5, atol=1e-5)
        deltas = torch.randn(500, 4, generator=g)
        torch.testing.assert_close(decode_boxes(deltas, ref, w), tv.decode_single(deltas, ref), rtol=1e-5, atol=1e-3)


def test_decode_clamps_huge_scale():
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = decode_boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref, (1.0, 1.0, 1.0, 1.0))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(1000.0), rtol=1e-4, atol=1e-2)


def test_decode_in_float32_under_half_input():
    ref = torch.tensor([[100.0, 100.0, 300.0, 300.0]])
    out = decode_boxes(torch.zeros(1, 4, dtype=torch.bfloat16), ref, (10.0, 10.0, 5.0, 5.0))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
