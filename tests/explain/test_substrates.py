"""What removed pixels become (frcnn/explain/substrates.py): blur at any size, the training data's grey."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frcnn.explain.faithfulness import (
    deletion_insertion,
)
from tests.explain.helpers import region_detector


@pytest.mark.parametrize("size", [(40, 400), (400, 40), (1, 300), (192, 256)])
def test_blur_substrate_works_on_any_image_size(size):
    # Issue 29: σ = max(H, W) / 16 = 25 px made a 101 px kernel whose reflect padding (50 px) exceeded a
    # 40 px side, and gaussian_blur raised. The short side's kernel is now truncated to fit.
    from frcnn.explain.substrates import baseline_image

    height, width = size
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    rows, cols = slice(0, max(1, height // 4)), slice(0, max(1, width // 4))
    curves = deletion_insertion(lambda x: region_detector(rows, cols)(x)[:, 0], image, torch.rand(height, width),
                                substrate="blur", steps=4)
    assert 0 <= curves.deletion_auc <= 1
    blurred = baseline_image(image, "blur")
    assert blurred.shape == image.shape and torch.isfinite(blurred).all()
    assert blurred.std() < 0.5 * image.std()  # a blur: the pixel noise is averaged away


def test_grey_substrate_is_the_training_data_mean_as_roar_fills_with(tiny_data):
    # Issue 29: the docs said grey is the data set's mean, the code used ImageNet's. Now the mean of the
    # checkpoint's training images (ROAR's fill), or ImageNet's with the reason when they are not here.
    from omegaconf import OmegaConf

    from frcnn.data.images import read_rgb
    from frcnn.explain.substrates import (
        IMAGENET_MEAN,
        baseline_image,
        channel_mean,
        training_mean,
    )
    from frcnn.tasks.explain import grey_fill

    train = {"images": str(tiny_data / "train"), "annotations": str(tiny_data / "annotations" / "train.json")}
    cfg = OmegaConf.create({"data": {"format": "coco", "train": train}})
    pixels = np.concatenate([read_rgb(p).reshape(-1, 3) for p in sorted((tiny_data / "train").glob("*.png"))])
    expected = pixels.mean(axis=0) / 255
    grey = training_mean(cfg)
    assert not grey.fallback and "8 of the 8 images" in grey.source
    np.testing.assert_allclose(grey.rgb, expected, atol=1e-6)
    np.testing.assert_allclose(np.array(channel_mean(tiny_data / "train", tiny_data / "annotations" / "train.json")) / 255, expected)
    image = torch.rand(3, 4, 5)
    torch.testing.assert_close(baseline_image(image, "grey", mean=grey.tensor())[:, 2, 3], grey.tensor())
    assert not np.allclose(expected, IMAGENET_MEAN, atol=0.01)  # the test tells the two apart

    options = {"integrated_gradients": {"baseline": "grey"}, "drise": {"fill": "black"}}
    assert grey_fill("grey", options, cfg).rgb == grey.rgb
    torch.testing.assert_close(options["integrated_gradients"]["mean"], grey.tensor())
    assert "mean" not in options["drise"]
    assert grey_fill("blur", {"drise": {"fill": "black"}}, cfg) is None  # grey unused: nothing read

    elsewhere = OmegaConf.create({"data": {"format": "coco", "train": {"images": "/nowhere/train", "annotations": "x.json"}}})
    fallback = training_mean(elsewhere)
    assert fallback.fallback and fallback.rgb == IMAGENET_MEAN and "/nowhere/train" in fallback.source
    assert training_mean(OmegaConf.create({})).fallback

