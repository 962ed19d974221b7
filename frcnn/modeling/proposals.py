"""From RPN outputs to region proposals: decode, clip, drop small boxes, top-k, NMS, top-k.

Batched over images: a single ``topk`` over the padded ``[B, A]`` scores and one
``torchvision.ops.batched_nms`` call whose ``idxs`` are the image indices, so boxes of different
images never suppress each other.

Shape shorthand: ``B`` images, ``A`` anchors per image, ``P`` proposals kept per image.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.box_ops import at_most, clip_boxes, pack_per_image
from frcnn.modeling.structures import Proposals


@torch.no_grad()
def generate_proposals(
    anchors: Tensor,
    objectness: Tensor,
    deltas: Tensor,
    image_sizes: Tensor,
    min_box_size: Tensor,
    *,
    anchor_valid: Tensor | None = None,
    pre_nms_topk: int,
    nms_thresh: float,
    post_nms_topk: int,
) -> Proposals:
    """Turn per-anchor objectness and deltas into at most ``post_nms_topk`` proposals per image.

    Runs under ``no_grad``: Faster R-CNN (4-step and approximate joint training alike) treats
    proposals as fixed inputs to the box head, so no gradient flows back through the box coordinates
    into the RPN's regression branch; the RPN learns only from its own loss.

    Steps (py-faster-rcnn ``proposal_layer``): decode with RPN weights (1, 1, 1, 1), clip to the
    image, drop boxes with a side below ``min_box_size`` (16 px of the original image, given here in
    network-input pixels), keep the ``pre_nms_topk`` highest-scoring, NMS at ``nms_thresh``, keep the
    ``post_nms_topk`` highest-scoring survivors.

    Args:
        anchors: ``[A, 4]`` XYXY, shared by all images.
        objectness: ``[B, A]`` logits.
        deltas: ``[B, A, 4]``.
        image_sizes: ``[B, 2]`` ``(height, width)`` of each resized image.
        min_box_size: ``[B]`` minimum side in network-input pixels.
        anchor_valid: optional ``[B, A]`` bool; anchors marked False (on an image's padding) make no
            proposal.

    Returns:
        :class:`Proposals` with ``P = min(post_nms_topk, A)``, sorted by score per image.

    Dropped boxes are never removed (that would give each image its own length, and a host sync);
    their logit becomes ``-inf`` and they come out with ``valid=False``. Worked example, one image,
    ``pre_nms_topk=3``, ``post_nms_topk=3``: logits ``[2.0, 0.5, 1.0, -1.0]`` where anchor 2's box is
    under the minimum size → ``[2.0, 0.5, -inf, -1.0]``; top-3 → anchors ``[0, 1, 3]``; NMS keeps all
    three → proposals ``[0, 1, 3]``, all valid. Had NMS suppressed anchor 1, the image would have two
    survivors and a padding slot: proposals ``[0, 3, pad]``, ``valid = [True, True, False]``. Had
    every anchor been too small, all three slots would hold ``-inf`` logits: ``valid`` all False.
    """
    batch, num_anchors = objectness.shape
    boxes = clip_boxes(decode_boxes(deltas, anchors[None], (1.0, 1.0, 1.0, 1.0)), image_sizes)  # [B, A, 4]
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    big_enough = (widths >= min_box_size[:, None]) & (heights >= min_box_size[:, None])
    if anchor_valid is not None:
        big_enough = big_enough & anchor_valid
    logits = objectness.float().masked_fill(~big_enough, float("-inf"))

    num_top = at_most(pre_nms_topk, num_anchors)
    top_logits, top_idx = logits.topk(num_top, dim=1)  # [B, num_top], sorted
    top_boxes = boxes.gather(1, top_idx[..., None].expand(-1, -1, 4))  # [B, num_top, 4]

    image_index = torch.arange(batch, device=logits.device)[:, None].expand(-1, num_top).reshape(-1)
    # Host sync: NMS returns a data-dependent number of survivors. Boxes dropped above carry -inf and
    # sort after every real box; they are marked invalid below rather than removed (no extra sync).
    keep = batched_nms(top_boxes.reshape(-1, 4), top_logits.reshape(-1), image_index, nms_thresh)
    num_out = at_most(post_nms_topk, num_top)
    table = pack_per_image(keep, image_index, batch, num_out)  # [B, num_out], -1 = padding
    flat_logits = top_logits.reshape(-1)
    out_logits = torch.cat([flat_logits, torch.full_like(flat_logits[:1], float("-inf"))])[table]
    out_boxes = torch.cat([top_boxes.reshape(-1, 4), top_boxes.new_zeros(1, 4)])[table]
    valid = torch.isfinite(out_logits)  # padding and boxes under the minimum size carry -inf
    return Proposals(boxes=out_boxes * valid[..., None], scores=torch.sigmoid(out_logits), valid=valid)
