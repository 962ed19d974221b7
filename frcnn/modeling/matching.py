"""IoU matching of anchors (or proposals) to ground truth, batched over images.

Shape shorthand: ``B`` images, ``N`` anchors or proposals per image, ``G`` padded ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Named labels for matched boxes.
FOREGROUND = 1
BACKGROUND = 0
IGNORE = -1


@dataclass
class Matches:
    """Result of :func:`match`.

    Attributes:
        gt_index: ``[B, N]`` long, index of the highest-IoU ground truth of each box (0 when the
            image has none; only meaningful where ``labels == FOREGROUND``).
        labels: ``[B, N]`` int8: ``FOREGROUND``, ``BACKGROUND`` or ``IGNORE``.
        max_iou: ``[B, N]`` float, that highest IoU (``-1`` for boxes excluded by ``box_valid``).
    """

    gt_index: Tensor
    labels: Tensor
    max_iou: Tensor


@torch.no_grad()
def match(
    iou: Tensor,
    *,
    box_valid: Tensor,
    gt_valid: Tensor,
    fg_iou_thresh: float,
    bg_iou_thresh_hi: float,
    bg_iou_thresh_lo: float,
    allow_low_quality_matches: bool,
) -> Matches:
    """Label each box foreground, background or ignored by its best IoU with the ground truth.

    Rules (Ren et al., 2015, sec. 3.1.2, and py-faster-rcnn's ``anchor_target_layer``):

    * ``max_iou >= fg_iou_thresh`` → foreground (RPN: 0.7; RoI head: 0.5);
    * ``bg_iou_thresh_lo <= max_iou < bg_iou_thresh_hi`` → background (RPN: [0, 0.3); RoI head: [0.1, 0.5));
    * anything else → ignored;
    * with ``allow_low_quality_matches`` (the RPN), every ground-truth box's highest-IoU box(es),
      ties included, are foreground even below ``fg_iou_thresh``, as long as that IoU is > 0. This
      overrides the background label, so that every object has at least one positive anchor.

    Boxes with ``box_valid == False`` (anchors crossing the image border, padding) get ``max_iou = -1``
    and are always ignored; they never win the best-anchor rule. Padded ground truth never matches.

    Args:
        iou: ``[B, N, G]`` IoU of every box with every ground-truth slot.
        box_valid: ``[B, N]`` bool.
        gt_valid: ``[B, G]`` bool.

    Returns:
        :class:`Matches`.
    """
    iou = iou.masked_fill(~gt_valid[:, None, :], 0.0)
    iou = iou.masked_fill(~box_valid[:, :, None], -1.0)
    max_iou, gt_index = iou.max(dim=2)  # [B, N]

    labels = torch.full_like(gt_index, IGNORE, dtype=torch.int8)
    labels[(max_iou >= bg_iou_thresh_lo) & (max_iou < bg_iou_thresh_hi)] = BACKGROUND
    if allow_low_quality_matches:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # [B, 1, G]
        is_best = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=2)  # [B, N]
        labels[is_best] = FOREGROUND
    labels[max_iou >= fg_iou_thresh] = FOREGROUND
    return Matches(gt_index=gt_index, labels=labels, max_iou=max_iou)
