"""Batched box maths over padded ``[B, N, 4]`` XYXY tensors (the conventions of :mod:`frcnn.modeling.structures`).

``torchvision.ops`` holds the single-image kernels (``box_iou``, ``clip_boxes_to_image``, ``batched_nms``);
these are their forms with a leading batch dimension, tested equal to them image by image, plus the
packing of ``batched_nms`` survivors into a padded per-image table.
"""

from __future__ import annotations

import torch
from torch import Tensor


def batched_pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU between every pair of boxes of the same image, for the whole batch.

    ``torchvision.ops.box_iou`` computes one image's ``[N, M]`` matrix; this is the same formula
    broadcast over a leading batch dimension (tested equal to ``box_iou`` image by image).

    Args:
        boxes1: ``[B, N, 4]`` XYXY.
        boxes2: ``[B, M, 4]`` XYXY.

    Returns:
        ``[B, N, M]`` IoU in ``[0, 1]`` (0 where the union is empty).
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]).clamp(min=0) * (boxes1[..., 3] - boxes1[..., 1]).clamp(min=0)
    area2 = (boxes2[..., 2] - boxes2[..., 0]).clamp(min=0) * (boxes2[..., 3] - boxes2[..., 1]).clamp(min=0)
    lt = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])  # [B, N, M, 2]
    rb = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])  # [B, N, M, 2]
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), torch.zeros_like(inter))


def elementwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[..., 4]`` and ``b[..., 4]`` paired element by element (broadcast), differentiable.

    Example: ``elementwise_iou([0, 0, 2, 2], [1, 0, 3, 2])`` = overlap 2 / union 6 = 1/3.
    """
    x1 = torch.maximum(a[..., 0], b[..., 0])
    y1 = torch.maximum(a[..., 1], b[..., 1])
    x2 = torch.minimum(a[..., 2], b[..., 2])
    y2 = torch.minimum(a[..., 3], b[..., 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip ``[B, N, 4]`` boxes to each image's ``(height, width)`` from ``[B, 2]``.

    The batched form of ``torchvision.ops.clip_boxes_to_image`` (one size per image).
    """
    h = image_sizes[:, 0, None].to(boxes.dtype)
    w = image_sizes[:, 1, None].to(boxes.dtype)
    x1 = torch.minimum(boxes[..., 0].clamp(min=0), w)
    y1 = torch.minimum(boxes[..., 1].clamp(min=0), h)
    x2 = torch.minimum(boxes[..., 2].clamp(min=0), w)
    y2 = torch.minimum(boxes[..., 3].clamp(min=0), h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def at_most(k: int, n: int | Tensor) -> int | Tensor:
    """``min(k, n)`` for a count ``k`` and a size ``n``; while tracing (ONNX export) ``n`` is a graph
    value and so is the result, so the exported graph takes the minimum of each input's own size."""
    if isinstance(n, Tensor) and torch.jit.is_tracing():
        return torch.clamp(n, max=k)
    return min(k, int(n))


def pack_per_image(keep: Tensor, image_of: Tensor, num_images: int, k: int) -> Tensor:
    """Lay out the first ``k`` survivors of each image in a padded ``[num_images, k]`` table.

    ``keep`` comes from ``batched_nms`` (indices sorted by score over the whole batch) and
    ``image_of[keep]`` says which image each belongs to. A stable sort by image keeps the score order
    inside each image; the rank of a survivor inside its image is its position minus the image's first
    position. Works on device, with no host synchronization beyond the one ``batched_nms`` made.

    Returns:
        ``[num_images, k]`` long indices into the flat candidates, ``-1`` where an image has fewer
        than ``k`` survivors: callers append one sentinel row to the candidates, which ``-1`` picks.

    Worked example of the sentinel-row gather: candidates ``scores = [0.9, 0.8, 0.7]`` of images
    ``image_of = [0, 1, 0]``, all kept (``keep = [0, 1, 2]``), ``k = 2`` → table ``[[0, 2], [1, -1]]``.
    Append a sentinel to the candidates, ``[0.9, 0.8, 0.7, 0.0]``, and index with the table: ``-1``
    is the last row, so image 0 gets ``[0.9, 0.7]`` and image 1 ``[0.8, 0.0]`` with ``valid = table >= 0``
    ``= [[True, True], [True, False]]`` — one gather for the whole batch, no per-image loop.
    """
    keep_image = image_of[keep]
    # Sort by image, keeping the score order inside each: the key (image, position) is unique, so any
    # sort gives this order (ONNX's TopK-based sort is not stable).
    position = torch.arange(keep.numel(), device=keep.device)
    order = torch.argsort(keep_image * keep.numel() + position)
    keep, keep_image = keep[order], keep_image[order]
    # Survivors per image (a comparison table rather than bincount, which ONNX lacks): [num_images]
    counts = (keep_image[None, :] == torch.arange(num_images, device=keep.device)[:, None]).sum(dim=1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep.numel(), device=keep.device) - starts[keep_image]
    # Ranks past k land in a spare column that is dropped.
    slot = keep_image * (k + 1) + rank.clamp(max=k)
    table = torch.full((num_images * (k + 1),), -1, dtype=torch.long, device=keep.device)
    table[slot] = keep
    return table.view(num_images, k + 1)[:, :k]
