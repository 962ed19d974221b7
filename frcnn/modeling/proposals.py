"""From RPN outputs to region proposals: decode, clip, drop small boxes, top-k, NMS, top-k.

Batched over images and levels: one ``topk`` per feature level over the padded ``[B, A_l]`` scores
and one ``torchvision.ops.batched_nms`` call whose ``idxs`` are the image (and level) indices, so
boxes of different images never suppress each other.

Shape shorthand: ``B`` images, ``L`` feature levels, ``A_l`` anchors per image on level ``l``, ``T``
candidates after the per-level top-k, ``P`` proposals kept per image.

NMS **within each level** (``nms_per_level=True``: torchvision, detectron2, mmdetection) lets a box
from P2 and a box from P3 over the same object both survive, so each level keeps its own candidates
until the final top-k; NMS **across levels** (``False``) treats all levels' candidates as one set,
as a single map's NMS does (C4: one level, the two are the same).

Proposals are made under ``no_grad``: Faster R-CNN (4-step and approximate joint training alike) treats
proposals as fixed inputs to the box head, so no gradient flows back through the box coordinates into the
RPN's regression branch; the RPN learns only from its own loss.

Dropped boxes are never removed (that would give each image its own length, and a host sync);
their logit becomes ``-inf`` and they come out with ``valid=False``. Worked example, one image,
one level, ``pre_nms_topk=3``, ``post_nms_topk=3``: logits ``[2.0, 0.5, 1.0, -1.0]`` where anchor 2's
box is under the minimum size → ``[2.0, 0.5, -inf, -1.0]``; top-3 → anchors ``[0, 1, 3]``; NMS keeps
all three → proposals ``[0, 1, 3]``, all valid. Had NMS suppressed anchor 1, the image would have two
survivors and a padding slot: proposals ``[0, 3, pad]``, ``valid = [True, True, False]``. Had
every anchor been too small, all three slots would hold ``-inf`` logits: ``valid`` all False.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.box_ops import at_most, clip_boxes, pack_per_image
from frcnn.modeling.structures import Proposals
from frcnn.modeling.threaded import batched_nms

PREFIX_FACTOR = 2  # NMS first runs on each group's best PREFIX_FACTOR * post_nms_topk candidates (see _capped_nms)


@torch.no_grad()
def generate_proposals(
    anchors: Sequence[Tensor],
    objectness: Sequence[Tensor],
    deltas: Sequence[Tensor],
    image_sizes: Tensor,
    min_box_size: Tensor,
    *,
    anchor_valid: Sequence[Tensor] | None = None,
    pre_nms_topk: int,
    nms_thresh: float,
    post_nms_topk: int,
    nms_per_level: bool = True,
    score_thresh: float = 0.0,
    filter_after_topk: bool = False,
) -> Proposals:
    """Turn per-anchor objectness and deltas into at most ``post_nms_topk`` proposals per image.

    Steps (py-faster-rcnn ``proposal_layer``; per level for a pyramid, as in Lin et al. 2017): decode
    with RPN weights (1, 1, 1, 1), clip to the image, drop boxes with a side below ``min_box_size``
    (16 px of the original image, given here in network-input pixels), keep each level's
    ``pre_nms_topk`` highest-scoring, NMS at ``nms_thresh``, keep the ``post_nms_topk`` highest-scoring
    survivors of all levels. Runs under ``no_grad``; NMS within each level or across levels
    (``nms_per_level``): see the module docstring.

    Args:
        anchors: per level ``[A_l, 4]`` XYXY, shared by all images.
        objectness: per level ``[B, A_l]`` logits.
        deltas: per level ``[B, A_l, 4]``.
        image_sizes: ``[B, 2]`` ``(height, width)`` of each resized image.
        min_box_size: ``[B]`` minimum side in network-input pixels.
        anchor_valid: optional per level ``[B, A_l]`` bool; anchors marked False (on an image's padding)
            make no proposal.
        score_thresh: boxes whose objectness probability is below this are dropped (0: none; torchvision's
            320 px MobileNetV3 detector: 0.05).
        filter_after_topk: drop small and low-scoring boxes after each level's top-k (torchvision,
            detectron2: the top-k ranks all anchors by score, and fewer than k may survive) instead of
            before it (py-faster-rcnn: the top-k holds k usable boxes where there are that many).

        One level may be given as bare tensors instead of one-element lists.

    Returns:
        :class:`Proposals` with ``P = min(post_nms_topk, Σ_l min(pre_nms_topk, A_l))``, sorted by score
        per image.
    Dropped boxes come out with ``valid=False`` (module docstring: a worked example).
    """
    if isinstance(objectness, Tensor):  # one level given as bare tensors
        anchors, objectness, deltas = [anchors], [objectness], [deltas]
        anchor_valid = None if anchor_valid is None else [anchor_valid]
    candidates = [
        _level_top_k(level_anchors, level_logits, level_deltas, image_sizes, min_box_size,
                     None if anchor_valid is None else anchor_valid[level], pre_nms_topk=pre_nms_topk,
                     score_thresh=score_thresh, filter_after_topk=filter_after_topk)
        for level, (level_anchors, level_logits, level_deltas) in enumerate(zip(anchors, objectness, deltas))
    ]
    top_logits = torch.cat([c[0] for c in candidates], dim=1)  # [B, T]: each level's top-k, level after level
    top_boxes = torch.cat([c[1] for c in candidates], dim=1)  # [B, T, 4]
    top_level = torch.cat([torch.full_like(c[0], level, dtype=torch.long) for level, c in enumerate(candidates)], dim=1)
    sizes = [c[0].shape[1] for c in candidates] if nms_per_level or len(candidates) == 1 else None  # sorted groups
    return _nms_and_pack(top_logits, top_boxes, top_level, num_groups=len(candidates) if nms_per_level else 1,
                         nms_thresh=nms_thresh, post_nms_topk=post_nms_topk, sizes=sizes)


def _level_top_k(anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: Tensor, min_box_size: Tensor,
                 anchor_valid: Tensor | None, *, pre_nms_topk: int, score_thresh: float,
                 filter_after_topk: bool) -> tuple[Tensor, Tensor]:
    """One level's candidates: ``[A, 4]`` anchors with ``[B, A]`` logits and ``[B, A, 4]`` deltas -> the
    ``[B, k]`` logits (sorted; ``-inf``: dropped) and ``[B, k, 4]`` boxes of its top ``k = min(pre_nms_topk, A)``."""
    boxes = clip_boxes(decode_boxes(deltas, anchors[None], (1.0, 1.0, 1.0, 1.0)), image_sizes)  # [B, A, 4]
    logits = logits.float()
    # A diverging model's NaN / inf: never a proposal (topk ranks NaN first; roi_align crashes on it).
    keep = torch.isfinite(logits) & torch.isfinite(boxes).all(dim=-1)  # [B, A]
    if anchor_valid is not None:
        keep = keep & anchor_valid
    if not filter_after_topk:
        keep = keep & _usable(boxes, logits, min_box_size, score_thresh)  # (no in-place &=: ONNX export)
    logits = logits.masked_fill(~keep, float("-inf"))
    top, index = logits.topk(at_most(pre_nms_topk, logits.shape[1]), dim=1)  # [B, k], sorted
    boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))  # [B, k, 4]
    if filter_after_topk:
        top = top.masked_fill(~_usable(boxes, top, min_box_size, score_thresh), float("-inf"))
    return top, boxes


def _nms_and_pack(logits: Tensor, boxes: Tensor, level: Tensor, *, num_groups: int, nms_thresh: float,
                  post_nms_topk: int, sizes: list[int] | None = None) -> Proposals:
    """NMS over each image's ``[B, T]`` candidates (within each of their ``[B, T]`` ``level`` when ``num_groups`` is
    the number of levels; across levels when it is 1), then its ``post_nms_topk`` best survivors, packed into
    ``[B, P]`` slots (padding: ``valid=False``). ``sizes``: each level's candidate count when every group is
    one score-sorted block of its image's row (the capped NMS of :func:`_capped_nms`); None: plain NMS."""
    batch, num_candidates = logits.shape
    image_index = torch.arange(batch, device=logits.device)[:, None].expand_as(logits).reshape(-1)
    group = image_index * num_groups + level.reshape(-1) if num_groups > 1 else image_index
    # Host sync: NMS returns a data-dependent number of survivors, sorted by score over all levels. Boxes
    # dropped above carry -inf and sort after every real box; they are marked invalid below rather than
    # removed (no extra sync).
    # NMS ranks by logit (torchvision ranks by probability: the same order, except that logits above ~17
    # all round to probability 1.0 and tie there).
    if sizes is not None and max(sizes) > PREFIX_FACTOR * post_nms_topk and not torch.jit.is_tracing():
        keep = _capped_nms(boxes, logits, level, group, sizes, nms_thresh, post_nms_topk)
    else:
        keep = batched_nms(boxes.reshape(-1, 4), logits.reshape(-1), group, nms_thresh)
    table = pack_per_image(keep, image_index, batch, at_most(post_nms_topk, num_candidates))  # [B, P], -1 = padding
    flat_logits = logits.reshape(-1)
    out_logits = torch.cat([flat_logits, torch.full_like(flat_logits[:1], float("-inf"))])[table]
    out_boxes = torch.cat([boxes.reshape(-1, 4), boxes.new_zeros(1, 4)])[table]
    valid = torch.isfinite(out_logits)  # padding and boxes under the minimum size carry -inf
    out_boxes = torch.where(valid[..., None], out_boxes, torch.zeros_like(out_boxes))  # (NaN * 0 is NaN)
    return Proposals(boxes=out_boxes, scores=torch.sigmoid(out_logits), valid=valid)


def _capped_nms(boxes: Tensor, logits: Tensor, level: Tensor, group: Tensor, sizes: list[int], nms_thresh: float,
                cap: int) -> Tensor:
    """The NMS survivors that can reach an image's top ``cap``, as ``batched_nms`` over all candidates finds them.

    Greedy NMS keeps a box unless a kept box of higher score covers it, so NMS over a group's best ``m``
    candidates keeps exactly the full run's survivors among those ``m``. An image's top ``cap`` survivors hold
    at most ``cap`` of any one group, all of them in the group's score order before the rest: where the
    prefix kept ``cap`` or more, the boxes after it cannot reach the output. NMS therefore runs on each
    group's best ``m = PREFIX_FACTOR * cap`` candidates, then again on all candidates of the groups whose
    prefix kept fewer than ``cap`` (the cost of NMS grows as the square of the boxes: at test time the
    demo's 1000 candidates per level and 100 proposals per image make it a 25th where the prefix suffices).
    Dropped candidates (``-inf``; with ``filter_after_topk`` anywhere in the block) are not counted as kept.

    Args:
        boxes / logits / level: ``[B, T, 4]``, ``[B, T]``, ``[B, T]``: each group a score-sorted block of ``sizes[l]``.
        group: ``[B * T]`` group of each candidate (image and level). cap: ``post_nms_topk``.

    Returns:
        Survivors' flat indices sorted by decreasing logit (the proposals that come out are those of plain NMS).
    """
    flat_boxes, flat_logits = boxes.reshape(-1, 4), logits.reshape(-1)
    starts = torch.tensor([0, *sizes[:-1]], device=logits.device).cumsum(0)
    rank = torch.arange(logits.shape[1], device=logits.device) - starts[level]  # [B, T] place in its group
    prefix = torch.nonzero((rank < PREFIX_FACTOR * cap).reshape(-1)).squeeze(1)
    keep = prefix[batched_nms(flat_boxes[prefix], flat_logits[prefix], group[prefix], nms_thresh)]
    # Host sync: which groups must be run again is data-dependent.
    group_size = torch.tensor(sizes, device=logits.device)[level.reshape(-1)]  # [B * T]
    finite = keep[torch.isfinite(flat_logits[keep])]  # a dropped box (-inf) is no proposal: it does not count
    kept = torch.bincount(group[finite], minlength=logits.shape[0] * len(sizes))
    again = (kept[group] < cap) & (group_size > PREFIX_FACTOR * cap)  # [B * T]: candidates of short groups
    if not bool(again.any()):
        return keep
    redo = torch.nonzero(again).squeeze(1)
    keep = torch.cat([keep[~again[keep]], redo[batched_nms(flat_boxes[redo], flat_logits[redo], group[redo], nms_thresh)]])
    return keep[flat_logits[keep].argsort(descending=True)]


def _usable(boxes: Tensor, logits: Tensor, min_box_size: Tensor, score_thresh: float) -> Tensor:
    """``[B, T]`` bool: both sides of the ``[B, T, 4]`` boxes reach ``min_box_size`` ``[B]``, and the
    objectness probability reaches ``score_thresh``."""
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    usable = (widths >= min_box_size[:, None]) & (heights >= min_box_size[:, None])
    if score_thresh > 0:
        usable = usable & (torch.sigmoid(logits) >= score_thresh)
    return usable
