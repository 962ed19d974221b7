"""Anchors: ``len(sizes) * len(aspect_ratios)`` reference boxes (9 by default) at every feature-map cell,
on one feature map or on every level of a feature pyramid.

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
anchors innermost; this matches how the RPN head's outputs are flattened. A pyramid's anchors are
one such block per level, finest level first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from frcnn.errors import ConfigError


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], *, round_to_pixels: bool = False) -> Tensor:
    """The ``A = len(sizes) * len(aspect_ratios)`` anchors centred at the origin.

    Args:
        round_to_pixels: round each coordinate to the nearest integer (torchvision's and Detectron's
            ``generate_anchors`` do; e.g. size 32, ratio 0.5: ``±22.63 x ±11.31`` → ``±23 x ±11``).

    Returns:
        ``[A, 4]`` float32 XYXY, ordered size-major: ``(s0, r0), (s0, r1), ..., (s1, r0), ...``.
    """
    rows = []
    for s in sizes:
        for r in aspect_ratios:
            w = s / math.sqrt(r)
            h = s * math.sqrt(r)
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    anchors = torch.tensor(rows, dtype=torch.float32)
    return anchors.round() if round_to_pixels else anchors


class AnchorGenerator(nn.Module):
    """Tiles cell anchors over one feature map (C4, VGG16) or over every level of a feature pyramid.

    One level (the paper): ``sizes=(128, 256, 512)``, ``stride=16``, 9 anchors per location. A pyramid
    (Lin et al. 2017, sec. 4.1): ``stride=[4, 8, 16, 32, 64]`` and ``sizes`` given per level, e.g.
    ``[[32], [64], [128], [256], [512]]`` (one size per level x 3 ratios = 3 anchors per location, the
    FPN paper) or three sizes per level (9). Every level must have the same number of anchors per
    location: the RPN head is shared across levels.

    Args:
        sizes: anchor side lengths ``sqrt(area)`` in input pixels: a flat list for one level, or one list
            per level.
        aspect_ratios: ``h / w`` ratios (paper: 0.5, 1, 2), the same on every level.
        stride: feature-map stride in input pixels (16 for C4 and VGG16 conv5_3), or one per level.
        offset: cell-centre offset, see the module docstring.
        round_to_pixels: round the cell anchors' coordinates to integers (torchvision, Detectron).
        stride_from_image: take each level's stride as ``padded input size // map size``, per axis, instead
            of ``stride`` (torchvision's rule; it differs from the nominal 64 on a max-pooled level whose
            parent map has an odd size: an 800 px high input has a 25-row P5 and a 13-row P6, stride 61).
            ``stride`` still names the levels (and is checked against the backbone's).
    """

    def __init__(
        self,
        *,
        sizes: Sequence[float] | Sequence[Sequence[float]] = (128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        stride: int | Sequence[int] = 16,
        offset: float = 0.5,
        round_to_pixels: bool = False,
        stride_from_image: bool = False,
    ) -> None:
        super().__init__()
        strides = (int(stride),) if isinstance(stride, (int, float)) else tuple(int(s) for s in stride)
        nested = not isinstance(sizes[0], (int, float))
        per_level = [tuple(float(s) for s in level) for level in sizes] if nested else [tuple(float(s) for s in sizes)]
        if len(per_level) != len(strides):
            raise ConfigError(
                f"anchor sizes are given for {len(per_level)} feature level(s) but there are {len(strides)} strides "
                f"{list(strides)}: give one list of sizes per level"
            )
        counts = {len(level) for level in per_level}
        if len(counts) != 1:
            raise ConfigError(
                f"anchor sizes {[list(level) for level in per_level]} give a different number of anchors per level; "
                "the RPN head is shared across levels, so every level needs the same number of sizes"
            )
        self.level_sizes = tuple(per_level)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.strides = strides
        self.offset = offset
        self.round_to_pixels = round_to_pixels
        self.stride_from_image = stride_from_image
        for level, level_sizes in enumerate(per_level):
            cell = cell_anchors(level_sizes, aspect_ratios, round_to_pixels=round_to_pixels)
            self.register_buffer(f"cell{level}", cell, persistent=False)

    @property
    def num_levels(self) -> int:
        """``L``, the feature levels anchors are tiled on."""
        return len(self.strides)

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map cell (``A``), the same on every level."""
        return self.cell0.shape[0]

    @property
    def sizes(self) -> tuple[float, ...]:
        """The sizes of a one-level generator (the tracker's and the C4 model's)."""
        return self._single("sizes", self.level_sizes[0])

    @property
    def stride(self) -> int:
        """The stride of a one-level generator (the tracker's and the C4 model's)."""
        return self._single("stride", self.strides[0])

    def _single(self, name, value):
        if self.num_levels != 1:
            raise RuntimeError(f"{name}: this generator has {self.num_levels} levels; read level_sizes / strides")
        return value

    def grid(self, level: int, feature_height: int, feature_width: int, image_size: Sequence[int] | None = None) -> Tensor:
        """The anchors of one level's ``feature_height x feature_width`` map (shared by every image).

        Args:
            image_size: ``(height, width)`` of the padded input batch; needed with ``stride_from_image``.

        Returns:
            ``[feature_height * feature_width * A, 4]`` XYXY in input pixels, ordered ``(y, x, a)``.
        """
        cell = getattr(self, f"cell{level}")
        stride_y = stride_x = self.strides[level]
        if self.stride_from_image:
            if image_size is None:
                raise RuntimeError("stride_from_image: grid() needs the padded input's image_size")
            stride_y, stride_x = image_size[0] // feature_height, image_size[1] // feature_width
        shift_x = (torch.arange(feature_width, device=cell.device, dtype=torch.float32) + self.offset) * stride_x
        shift_y = (torch.arange(feature_height, device=cell.device, dtype=torch.float32) + self.offset) * stride_y
        sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")  # [H, W] each
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
        return (shifts + cell[None]).reshape(-1, 4)  # [H*W*A, 4]

    def forward(self, feature_height: int, feature_width: int) -> Tensor:
        """All anchors of a one-level generator's map: :meth:`grid` of level 0."""
        self._single("forward", None)
        return self.grid(0, feature_height, feature_width)
