"""What the explanation methods score a perturbed image with: every RoI's (or anchor's) outputs before NMS.

NMS picks a different RoI when the input changes, so a detection is followed through all of them
(:mod:`frcnn.explain.target`). Both functions walk the model's own stages
(:meth:`~frcnn.modeling.model.FasterRCNN.preprocess` → ``features`` → ``propose`` → ``predict_rois``),
so they hold for every backbone, one feature map or a pyramid.

Shape shorthand: ``B`` images, ``P`` RoIs per image, ``A`` anchors per image (all levels), ``K`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.box_ops import batched_pairwise_iou, clip_boxes
from frcnn.modeling.model import FasterRCNN
from frcnn.modeling.preprocess import box_scale, boxes_to_original
from frcnn.modeling.structures import ImageBatch, Proposals


@dataclass
class RoIOutputs:
    """Every RoI's outputs before score thresholding and NMS, in original-image pixels.

    Differentiable with respect to the input images, except where noted.

    Attributes:
        proposals: ``[B, P, 4]`` the RoIs (RPN proposals), fixed inputs to the box head: no gradient.
        boxes: ``[B, P, K, 4]`` each RoI decoded with each class's deltas, clipped to the image.
        probs: ``[B, P, K+1]`` softmax class vector, index 0 background; logits: ``[B, P, K+1]`` before the softmax.
        objectness: ``[B, P]`` the RPN's objectness probability of each proposal (no gradient).
        valid: ``[B, P]`` bool; False for padding.
        owner: ``[B, P]`` long, with a ``near`` cut: the index of the ``near`` box each RoI was kept for
            (each box is followed through its own RoIs only); None: every RoI serves every box.
    """

    proposals: Tensor
    boxes: Tensor
    probs: Tensor
    logits: Tensor
    objectness: Tensor
    valid: Tensor
    owner: Tensor | None = None


@dataclass
class AnchorOutputs:
    """The RPN's raw output for every anchor of every level, in original-image pixels (to explain proposals).

    Attributes:
        boxes: ``[B, A, 4]`` each anchor decoded with its deltas, clipped to the image.
        objectness: ``[B, A]`` objectness probability, differentiable with respect to the images.
        valid: ``[B, A]`` bool: the anchor's location lies in the image (not on padding).
    """

    boxes: Tensor
    objectness: Tensor
    valid: Tensor


def roi_outputs(
    model: FasterRCNN, images: Sequence[Tensor], *, near: Tensor | None = None, max_rois: int | None = None
) -> RoIOutputs:
    """Every RoI's class vector and class-specific boxes, before thresholding and NMS.

    The RPN's proposals come out as at test time (or train time, in train mode); gradients flow
    from ``probs`` and ``boxes`` back to ``images`` through the box head and the backbone, not through
    the proposal coordinates (fixed inputs to the box head, as in training).

    Args:
        model: the detector.
        images: ``B`` RGB tensors ``[3, H_i, W_i]``, float in ``[0, 1]`` (or uint8).
        near: optional ``[M, 4]`` boxes in original pixels; with ``max_rois``, only the ``max_rois``
            proposals of each image that overlap each box most (IoU > 0) go through the box head, per
            box (:func:`nearest_proposals`). The box head runs once per RoI and dominates the cost; an
            explanation that follows a few detections needs only the RoIs around them.
        max_rois: see ``near``.

    Returns:
        :class:`RoIOutputs` with boxes in each original image's pixels (``P = M * max_rois`` when cut,
        with ``owner`` set).
    """
    batch, _ = model.preprocess(images)
    features = model.features(batch)
    proposals, _ = model.propose(batch, features)
    owner = None
    if near is not None and max_rois is not None and max_rois < proposals.boxes.shape[1]:
        proposals, owner = nearest_proposals(proposals, near, batch, max_rois)
    logits, deltas = model.predict_rois(features, proposals.boxes)  # [B, P, K+1], [B, P, K+1, 4]
    b, p, k = deltas.shape[0], deltas.shape[1], deltas.shape[2] - 1
    boxes = decode_boxes(deltas[:, :, 1:], proposals.boxes[:, :, None, :], model.roi_heads.bbox_reg_weights)
    boxes = boxes_to_original(clip_boxes(boxes.reshape(b, p * k, 4), batch.image_sizes), batch).reshape(b, p, k, 4)
    return RoIOutputs(
        proposals=boxes_to_original(proposals.boxes, batch),
        boxes=boxes,
        probs=F.softmax(logits, dim=-1),
        logits=logits,
        objectness=proposals.scores,
        valid=proposals.valid,
        owner=owner,
    )


def anchor_outputs(model: FasterRCNN, images: Sequence[Tensor]) -> AnchorOutputs:
    """The RPN's decoded box and objectness probability for every anchor of every level (differentiable).

    Args:
        model: the detector.
        images: as for :func:`roi_outputs`.
    """
    batch, _ = model.preprocess(images)
    anchors, logits, deltas, in_image = model.rpn.predict(batch, model.features(batch)).concatenated()  # A anchors
    boxes = clip_boxes(decode_boxes(deltas, anchors[None], (1.0, 1.0, 1.0, 1.0)), batch.image_sizes)
    return AnchorOutputs(boxes=boxes_to_original(boxes, batch), objectness=torch.sigmoid(logits), valid=in_image)


def nearest_proposals(proposals: Proposals, near: Tensor, batch: ImageBatch, count: int) -> tuple[Proposals, Tensor]:
    """For each of the ``M`` boxes ``near`` (``[M, 4]`` original pixels), each image's ``count`` proposals of
    highest IoU with it.

    Every box gets its own ``count`` (a proposal near two boxes is kept twice), so the RoIs a box is
    followed through do not depend on which other boxes are explained in the same call. With one budget
    shared by the boxes, the proposals around one box could take every slot on a perturbed input and
    leave another box scored against RoIs far from it.

    Returns:
        the ``[B, M * count]`` proposals grouped by box (valid where IoU > 0), and ``[B, M * count]`` long:
        the box each was kept for.
    """
    factor = box_scale(batch)  # [B, 1, 4]
    iou = batched_pairwise_iou(proposals.boxes, near[None].to(factor) * factor)  # [B, P, M]
    iou = iou.masked_fill(~proposals.valid[..., None], -1.0)
    best, index = iou.topk(count, dim=1)  # [B, count, M]: each box's own nearest
    best, index = best.transpose(1, 2).flatten(1), index.transpose(1, 2).flatten(1)  # [B, M * count], box-major
    owner = torch.arange(near.shape[0], device=index.device).repeat_interleave(count).expand_as(index)
    return Proposals(
        boxes=proposals.boxes.gather(1, index[..., None].expand(-1, -1, 4)),
        scores=proposals.scores.gather(1, index),
        valid=best > 0,
    ), owner
