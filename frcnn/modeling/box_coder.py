"""Box regression parameterization of R-CNN (Girshick et al., 2014), used by the RPN and the box head.

For a reference box ``P`` (anchor or proposal) with centre ``(px, py)`` and size ``(pw, ph)`` and a
target box ``G``, the deltas are (Ren et al., 2015, eq. 2)::

    tx = wx * (gx - px) / pw        ty = wy * (gy - py) / ph
    tw = ww * log(gw / pw)          th = wh * log(gh / ph)

Decoding inverts this: ``ĝx = pw * tx / wx + px``, ``ĝw = pw * exp(tw / ww)``. The weights
``(wx, wy, ww, wh)`` are ``(1, 1, 1, 1)`` for the RPN and ``(10, 10, 5, 5)`` for the box head, i.e.
targets normalized by the standard deviations ``(0.1, 0.1, 0.2, 0.2)`` of py-faster-rcnn.
Widths are ``x2 - x1`` (continuous coordinates), the same convention as torchvision's BoxCoder.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp(dw) is clamped so a decoded box is at most 1000/16 times its reference: a wild delta early in
# training would otherwise overflow to inf and poison NMS (the same bound detectron2 and torchvision use).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(cx, cy, w, h)`` of ``[..., 4]`` XYXY boxes, in float32."""
    boxes = boxes.float()
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(reference: Tensor, target: Tensor, weights: tuple[float, float, float, float]) -> Tensor:
    """Deltas that turn ``reference`` boxes into ``target`` boxes.

    Args:
        reference: ``[..., 4]`` XYXY with positive width and height.
        target: ``[..., 4]`` XYXY, same shape.
        weights: ``(wx, wy, ww, wh)``.

    Returns:
        ``[..., 4]`` deltas ``(tx, ty, tw, th)``, float32.
    """
    wx, wy, ww, wh = weights
    px, py, pw, ph = _centre_size(reference)
    gx, gy, gw, gh = _centre_size(target)
    return torch.stack(
        [wx * (gx - px) / pw, wy * (gy - py) / ph, ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=-1
    )


def decode_boxes(
    deltas: Tensor,
    reference: Tensor,
    weights: tuple[float, float, float, float],
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Apply ``deltas`` to ``reference`` boxes (the inverse of :func:`encode_boxes`).

    Args:
        deltas: ``[..., 4]`` ``(tx, ty, tw, th)``; computed in float32 whatever the input dtype
            (under autocast the head may emit bf16/fp16, too coarse for pixel coordinates).
        reference: ``[..., 4]`` XYXY, broadcastable to ``deltas``.
        weights: ``(wx, wy, ww, wh)``.
        scale_clamp: upper bound on ``tw / ww`` and ``th / wh`` before ``exp``.

    Returns:
        ``[..., 4]`` decoded XYXY boxes, float32.
    """
    deltas = deltas.float()
    wx, wy, ww, wh = weights
    px, py, pw, ph = _centre_size(reference)
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=scale_clamp)
    dh = (deltas[..., 3] / wh).clamp(max=scale_clamp)
    cx = dx * pw + px
    cy = dy * ph + py
    w = torch.exp(dw) * pw
    h = torch.exp(dh) * ph
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
