"""From box-head outputs to final detections: softmax, class-specific decoding, per-class NMS.

Shape shorthand: ``B`` images, ``R`` RoIs per image, ``K`` object classes (``K + 1`` with
background), ``D`` detections per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.box_ops import clip_boxes, pack_per_image
from frcnn.modeling.structures import Detections
from frcnn.modeling.threaded import batched_nms


@torch.no_grad()
def postprocess_detections(
    class_logits: Tensor,
    box_deltas: Tensor,
    rois: Tensor,
    roi_valid: Tensor,
    image_sizes: Tensor,
    *,
    bbox_reg_weights: tuple[float, float, float, float],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_image: int = 100,
    min_box_size: float = 0.0,
) -> Detections:
    """Per-class detections in network-input pixels (py-faster-rcnn ``test.py`` / ``im_detect``).

    Every RoI yields one candidate per object class: the class's softmax probability and the RoI
    decoded with that class's deltas, clipped to the image. Candidates scoring ≤ ``score_thresh``
    (0.05) or with an empty box are dropped; NMS at ``nms_thresh`` (0.5) runs per class and per image
    (one ``batched_nms`` with group ``image * K + class``); the ``detections_per_image`` (100) best
    survivors of each image are kept.

    Args:
        class_logits: ``[B, R, K+1]``.
        box_deltas: ``[B, R, K+1, 4]`` class-specific deltas.
        rois: ``[B, R, 4]`` the boxes the deltas apply to.
        roi_valid: ``[B, R]`` bool.
        image_sizes: ``[B, 2]`` ``(height, width)``.
        min_box_size: candidates with a side under this many network-input pixels are dropped as well
            (0: only empty boxes; torchvision: 0.01).

    Returns:
        :class:`Detections` with ``D = detections_per_image``.
    """
    batch, num_rois, num_logits = class_logits.shape
    num_classes = num_logits - 1  # K: background has no detections
    scores = F.softmax(class_logits.float(), dim=-1)[..., 1:]  # [B, R, K]
    boxes = decode_boxes(box_deltas[:, :, 1:], rois[:, :, None, :], bbox_reg_weights)  # [B, R, K, 4]
    boxes = clip_boxes(boxes.reshape(batch, num_rois * num_classes, 4), image_sizes).reshape(batch, num_rois, num_classes, 4)
    widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    nonempty = (widths > 0) & (heights > 0) & (widths >= min_box_size) & (heights >= min_box_size)
    keep_mask = (scores > score_thresh) & nonempty & roi_valid[..., None]  # [B, R, K]

    image_of = torch.arange(batch, device=scores.device)[:, None, None].expand_as(scores)
    class_of = torch.arange(num_classes, device=scores.device)[None, None, :].expand_as(scores)
    # Host sync: the number of candidates above the score threshold is data-dependent (test time only).
    candidate = keep_mask.reshape(-1).nonzero().squeeze(1)
    candidate_boxes = boxes.reshape(-1, 4)[candidate]
    candidate_scores = scores.reshape(-1)[candidate]
    candidate_image = image_of.reshape(-1)[candidate]
    keep = batched_nms(candidate_boxes, candidate_scores, candidate_image * num_classes + class_of.reshape(-1)[candidate], nms_thresh)
    # [B, D] indices into the candidates, -1 = padding; -1 picks the zero row appended below.
    table = pack_per_image(keep, candidate_image, batch, detections_per_image)
    candidate_labels = class_of.reshape(-1)[candidate] + 1
    return Detections(
        boxes=torch.cat([candidate_boxes, candidate_boxes.new_zeros(1, 4)])[table],
        scores=torch.cat([candidate_scores, candidate_scores.new_zeros(1)])[table],
        labels=torch.cat([candidate_labels, candidate_labels.new_zeros(1)])[table],
        valid=table >= 0,
    )
