"""What the explanation tests share: toy detectors whose evidence sits in a known region, masked inputs."""

from __future__ import annotations

import torch
from torch import nn

from frcnn.explain.methods import (
    random_masks,
)


def masked_inputs(height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, height, width, generator=g)
    return image[None] * random_masks(4, height, width, grid=4, generator=g)


class Toy(nn.Module):
    """A one-output "detector" from a function of the image batch."""

    num_targets = 1

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, images):
        return self.fn(images)[:, None]


def region_detector(rows: slice, cols: slice) -> Toy:
    """Scores the mean of the region's pixels: the evidence is all in that one region."""
    return Toy(lambda x: x[:, :, rows, cols].mean(dim=(1, 2, 3)))

