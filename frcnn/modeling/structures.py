"""Typed contracts between the pipeline stages, and the box conventions they share.

The batched box maths these conventions imply lives in :mod:`frcnn.modeling.box_ops`.

Conventions used everywhere in frcnn:

* Boxes are ``(x1, y1, x2, y2)`` in absolute pixels of the image the tensor lives in, with
  continuous coordinates: a pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so a box's width is
  ``x2 - x1`` (no ``+1``, unlike py-faster-rcnn's integer convention).
* Label 0 is background, labels ``1..K`` are the object classes. The mapping between labels and a
  data set's category ids lives in :class:`frcnn.data.coco.CategoryMap` and travels in checkpoints.
* Per-image variable-length data is *padded* to a common length and carried with a boolean
  ``valid`` mask, so every stage works on the whole batch at once.

Shape shorthand: ``B`` images, ``L`` feature levels, ``G`` padded ground-truth boxes per image, ``A`` anchors per image,
``P`` proposals per image, ``R`` sampled RoIs per image, ``K`` object classes, ``D`` detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ImageBatch:
    """Images after preprocessing, ready for the backbone.

    Attributes:
        tensor: ``[B, 3, H, W]`` float, normalized, zero-padded at the bottom/right so that
            ``H`` and ``W`` are multiples of the size divisor.
        image_sizes: ``[B, 2]`` long, ``(height, width)`` of each resized image before padding.
            Boxes are clipped to this, not to the padded size.
        scales: ``[B, 2]`` float, ``(sy, sx)``: resized size / original size, per axis.
        original_sizes: ``[B, 2]`` long, ``(height, width)`` of each image as given.
    """

    tensor: Tensor
    image_sizes: Tensor
    scales: Tensor
    original_sizes: Tensor


@dataclass
class FeatureMaps:
    """The backbone's output: one feature map per level, finest first, each with its stride.

    C4 and VGG16 have one level (stride 16, the paper's design). A feature pyramid (Lin et al. 2017) has
    several, e.g. P2-P6 at strides 4, 8, 16, 32, 64, all with the same channel count so that one RPN
    head and one box head serve every level.

    Attributes:
        maps: ``L`` tensors ``[B, C, H_l, W_l]``, ``H_l = H / strides[l]`` for the padded input ``H x W``.
        strides: ``L`` ints, input pixels per feature cell, increasing.
    """

    maps: list[Tensor]
    strides: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.maps)


@dataclass
class Targets:
    """Ground truth for a batch, padded to ``G`` boxes per image.

    Attributes:
        boxes: ``[B, G, 4]`` float XYXY in the pixels of the (resized) network input.
        labels: ``[B, G]`` long in ``1..K`` (padding holds 0).
        valid: ``[B, G]`` bool, False for padding.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor


@dataclass
class Proposals:
    """Region proposals from the RPN, detached from the graph.

    Attributes:
        boxes: ``[B, P, 4]`` float XYXY in network-input pixels, clipped to the image.
        scores: ``[B, P]`` objectness probability in ``[0, 1]``, sorted descending per image.
        valid: ``[B, P]`` bool; padding (an image with fewer than ``P`` survivors) is False.
    """

    boxes: Tensor
    scores: Tensor
    valid: Tensor


@dataclass
class SampledRois:
    """The fixed-size RoI sample the box head trains on (``R`` per image, e.g. 128).

    Attributes:
        boxes: ``[B, R, 4]`` float XYXY in network-input pixels.
        labels: ``[B, R]`` long, ``0`` for background, ``1..K`` for foreground.
        regression_targets: ``[B, R, 4]`` encoded deltas to the matched ground truth
            (meaningful only where ``labels > 0``).
        valid: ``[B, R]`` bool; False only when an image had no candidate at all.
    """

    boxes: Tensor
    labels: Tensor
    regression_targets: Tensor
    valid: Tensor


@dataclass
class Detections:
    """Final detections, padded to ``D`` per image (e.g. 100).

    Attributes:
        boxes: ``[B, D, 4]`` float XYXY, in original-image pixels once postprocessed.
        scores: ``[B, D]`` float class probability, sorted descending per image.
        labels: ``[B, D]`` long in ``1..K``.
        valid: ``[B, D]`` bool.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    valid: Tensor

    def per_image(self) -> list[dict[str, Tensor]]:
        """Unpad into one ``{"boxes", "scores", "labels"}`` dict per image (host sync: unpadding)."""
        out = []
        for b in range(self.boxes.shape[0]):
            keep = self.valid[b]
            out.append(
                {"boxes": self.boxes[b][keep], "scores": self.scores[b][keep], "labels": self.labels[b][keep]}
            )
        return out


def pad_targets(targets: list[dict[str, Tensor]], device: torch.device) -> Targets:
    """Pad a list of per-image ``{"boxes": [G_i, 4], "labels": [G_i]}`` into :class:`Targets`.

    ``G = max(1, max_i G_i)``: one padded slot is kept even when no image has a box, so that
    reductions over ground truth never see an empty dimension.
    """
    num = max([1] + [int(target["boxes"].shape[0]) for target in targets])  # list lengths: no device sync
    batch = len(targets)
    boxes = torch.zeros(batch, num, 4, device=device)
    labels = torch.zeros(batch, num, dtype=torch.long, device=device)
    valid = torch.zeros(batch, num, dtype=torch.bool, device=device)
    for i, target in enumerate(targets):
        n = target["boxes"].shape[0]
        boxes[i, :n] = target["boxes"].to(device=device, dtype=torch.float32)
        labels[i, :n] = target["labels"].to(device)
        valid[i, :n] = True
    return Targets(boxes=boxes, labels=labels, valid=valid)
