"""Anchors: ``len(sizes) * len(aspect_ratios)`` reference boxes (9 by default) at every feature-map cell.

Ren et al. (2015), section 3.1.1: 3 scales (box areas 128², 256², 512²) and 3 aspect ratios
(1:2, 1:1, 2:1) at each position of the stride-16 feature map.

**Centre convention.** Feature cell ``(i, j)`` covers input pixels ``[j*s, (j+1)*s) x [i*s, (i+1)*s)``
for stride ``s``; its anchors are centred at ``((j + offset) * s, (i + offset) * s)``. The default
``offset = 0.5`` puts the centre in the middle of the cell, which is where the receptive field of a
stride-16 convolutional feature is centred in continuous pixel coordinates. (py-faster-rcnn centres
at ``j*16 + 7.5`` in its ``+1`` integer convention, which is the same point; torchvision and
detectron2 default to ``offset = 0``, the cell's top-left corner.)

For aspect ratio ``r = h / w`` and size ``s`` an anchor has ``w = s / sqrt(r)``, ``h = s * sqrt(r)``,
so its area is exactly ``s²`` (no rounding to integers).

Ordering: anchors are laid out ``(y, x, a)``, row-major over the feature map with the ``A`` cell
anchors innermost; this matches how the RPN head's outputs are flattened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """The ``A = len(sizes) * len(aspect_ratios)`` anchors centred at the origin.

    Returns:
        ``[A, 4]`` float32 XYXY, ordered size-major: ``(s0, r0), (s0, r1), ..., (s1, r0), ...``.
    """
    rows = []
    for s in sizes:
        for r in aspect_ratios:
            w = s / math.sqrt(r)
            h = s * math.sqrt(r)
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Tiles the cell anchors over a single stride-``stride`` feature map.

    Args:
        sizes: anchor side lengths ``sqrt(area)`` in input pixels (paper: 128, 256, 512).
        aspect_ratios: ``h / w`` ratios (paper: 0.5, 1, 2).
        stride: feature-map stride in input pixels (16 for C4 and VGG16 conv5_3).
        offset: cell-centre offset, see the module docstring.
    """

    def __init__(
        self,
        *,
        sizes: Sequence[float] = (128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        stride: int = 16,
        offset: float = 0.5,
    ) -> None:
        super().__init__()
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.stride = stride
        self.offset = offset
        self.register_buffer("cell", cell_anchors(sizes, aspect_ratios), persistent=False)

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell (``A``)."""
        return self.cell.shape[0]

    def forward(self, feature_height: int, feature_width: int) -> Tensor:
        """All anchors of one feature map (shared by every image of the batch).

        Returns:
            ``[feature_height * feature_width * A, 4]`` XYXY in input pixels, ordered ``(y, x, a)``.
        """
        device = self.cell.device
        shift_x = (torch.arange(feature_width, device=device, dtype=torch.float32) + self.offset) * self.stride
        shift_y = (torch.arange(feature_height, device=device, dtype=torch.float32) + self.offset) * self.stride
        sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [H, W] each
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
        return (shifts + self.cell[None]).reshape(-1, 4)  # [H*W*A, 4]
