"""RoI pooling from one feature map or from a feature pyramid, with the FPN paper's level assignment.

One level (C4, VGG16): every RoI is pooled from the stride-16 map. A pyramid (Lin et al. 2017, eq. 1):
an RoI of width ``w`` and height ``h`` in input pixels is pooled from level

    k = floor(k0 + log2(sqrt(w h) / 224)),   k0 = 4,

clamped to the pooled levels ``[k_min, k_max]``, where level ``k`` has stride ``2^k``: a 224 px RoI (an
ImageNet-sized object) reads P4 (stride 16, the C4 map), one half that size P3, twice that size P5.

Shape shorthand: ``M`` RoIs over the batch, ``C`` channels, ``S`` pooled size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import roi_pool

from frcnn.errors import ConfigError
from frcnn.modeling.structures import FeatureMaps
from frcnn.modeling.threaded import roi_align


def assign_levels(
    boxes: Tensor,
    *,
    min_level: int,
    max_level: int,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """The pyramid level ``k`` each box is pooled from (eq. 1 of the FPN paper, clamped).

    Args:
        boxes: ``[M, 4]`` XYXY in input pixels.
        min_level / max_level: ``k_min`` and ``k_max``, the levels available (stride ``2^k``).
        canonical_size / canonical_level: ``224`` and ``k0 = 4``.
        eps: added before the floor so that a box of exactly ``224 · 2^j`` px lands on level ``k0 + j``
            despite rounding in ``log2`` (the value torchvision uses).

    Returns:
        ``[M]`` long in ``[min_level, max_level]``. Example: boxes of 112, 224 and 448 px squares →
        levels 3, 4, 5; a 20 px box → 0, clamped to ``min_level`` (2 for P2-P5).
    """
    size = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)).sqrt()
    level = torch.floor(canonical_level + torch.log2(size / canonical_size) + eps)
    return level.clamp(min=min_level, max=max_level).to(torch.long)


def roi_levels(
    boxes: Tensor,
    strides: Sequence[int],
    levels: Sequence[int],
    *,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """For each box, which of the pooled ``levels`` it is pooled from: ``[M]`` long indices into ``levels``.

    Args:
        boxes: ``[M, 4]`` XYXY in input pixels.
        strides: every feature level's stride.
        levels: the pooled levels (indices into ``strides``); their strides must be consecutive powers of 2.
    """
    pooled = [strides[level] for level in levels]
    exponents = [round(math.log2(stride)) for stride in pooled]
    if any(2**e != s for e, s in zip(exponents, pooled)) or exponents != list(range(exponents[0], exponents[0] + len(pooled))):
        raise ConfigError(
            f"RoIs are pooled from levels of strides {pooled}: multi-level pooling needs consecutive powers of two "
            "(set model.roi_heads.pooled_levels)"
        )
    level = assign_levels(
        boxes, min_level=exponents[0], max_level=exponents[-1], canonical_size=canonical_size, canonical_level=canonical_level
    )
    return level - exponents[0]


def pool_rois(
    features: FeatureMaps,
    rois: Tensor,
    *,
    output_size: int,
    levels: Sequence[int] | None = None,
    mode: Literal["align", "pool"] = "align",
    sampling_ratio: int = 0,
    aligned: bool = True,
    canonical_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """Pool each RoI from its level: ``rois [M, 5]`` ``(image, x1, y1, x2, y2)`` → ``[M, C, S, S]``.

    Args:
        features: the backbone's maps.
        rois: ``[M, 5]`` float, image index then XYXY in input pixels.
        output_size: ``S``.
        levels: indices into ``features.maps`` that RoIs are pooled from (FPN: P2-P5 of P2-P6, as in the
            paper, where P6 serves the RPN only); None: every level. Their strides must be consecutive
            powers of two.
        mode: ``"align"`` (``torchvision.ops.roi_align``, spread over the CPU's threads by
            :func:`frcnn.modeling.threaded.roi_align`) or ``"pool"`` (``roi_pool``).
        sampling_ratio / aligned: RoIAlign's (see :class:`frcnn.modeling.roi_heads.RoIHeads`).
        canonical_size / canonical_level: the level assignment's 224 and ``k0``.

    The same outputs as ``torchvision.ops.MultiScaleRoIAlign`` with the same maps, sampling ratio and
    ``aligned`` (tests/modeling/test_poolers.py).
    """
    chosen = list(range(len(features))) if levels is None else [int(level) for level in levels]
    maps = [features.maps[level] for level in chosen]
    scales = [1.0 / features.strides[level] for level in chosen]

    def pool(fmap: Tensor, boxes: Tensor, scale: float) -> Tensor:
        size = (output_size, output_size)
        if mode == "align":
            return roi_align(fmap, boxes, size, scale, sampling_ratio, aligned)
        return roi_pool(fmap, boxes, size, scale)

    if len(maps) == 1:
        return pool(maps[0], rois, scales[0])
    level_of = roi_levels(
        rois[:, 1:], features.strides, chosen, canonical_size=canonical_size, canonical_level=canonical_level
    )  # [M] index into `chosen`
    channels = maps[0].shape[1]
    out = rois.new_zeros(rois.shape[0], channels, output_size, output_size, dtype=maps[0].dtype)
    for i, (fmap, scale) in enumerate(zip(maps, scales)):
        # Host sync: how many RoIs each level pools is data-dependent (as in torchvision's MultiScaleRoIAlign).
        index = torch.nonzero(level_of == i).squeeze(1)
        pooled = pool(fmap, rois[index], scale)  # [M_l, C, S, S]
        if torch.jit.is_tracing():  # ONNX: a scatter into a new tensor (index assignment does not export)
            out = out.scatter(0, index[:, None, None, None].expand_as(pooled), pooled)
        else:  # in place: no copy of the whole output per level
            out[index] = pooled
    return out
