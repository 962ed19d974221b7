import torch

from frcnn.modeling.preprocess import Preprocessor, to_original_pixels
from frcnn.modeling.structures import Detections


def test_resize_rule_and_padding():
    p = Preprocessor(min_size=600, max_size=1000).eval()
    batch, _ = p([torch.rand(3, 300, 400), torch.rand(3, 200, 1000)])
    # 300x400 -> short side 600: 600x800; 200x1000 -> long side capped: 200x1000 stays (scale 1)
    assert batch.image_sizes.tolist() == [[600, 800], [200, 1000]]
    assert batch.tensor.shape == (2, 3, 608, 1024)  # padded to multiples of 32
    torch.testing.assert_close(batch.scales[0], torch.tensor([2.0, 2.0]))
    assert (batch.tensor[1, :, 200:, :] == 0).all()


def test_uint8_and_float_inputs_agree():
    p = Preprocessor(min_size=64, max_size=64).eval()
    img = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    a, _ = p([img])
    b, _ = p([img.float() / 255])
    torch.testing.assert_close(a.tensor, b.tensor)


def test_boxes_scaled_and_mapped_back():
    p = Preprocessor(min_size=200, max_size=1000).eval()
    boxes = torch.tensor([[10.0, 20.0, 50.0, 80.0]])
    batch, targets = p([torch.rand(3, 100, 150)], [{"boxes": boxes, "labels": torch.tensor([1])}])
    torch.testing.assert_close(targets[0]["boxes"], boxes * 2)
    det = Detections(boxes=targets[0]["boxes"][None], scores=torch.ones(1, 1), labels=torch.ones(1, 1, dtype=torch.long),
                     valid=torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(to_original_pixels(det, batch).boxes[0], boxes)


def test_multi_scale_training_draws_from_choices():
    p = Preprocessor(min_size=(64, 96, 128), max_size=1000).train()
    seen = {p([torch.rand(3, 50, 50)])[0].image_sizes[0, 0].item() for _ in range(40)}
    assert seen == {64, 96, 128}
    assert p.eval()([torch.rand(3, 50, 50)])[0].image_sizes[0, 0].item() == 128
