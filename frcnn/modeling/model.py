"""Faster R-CNN: preprocess → backbone trunk → RPN → RoI heads (→ postprocess).

Shape shorthand: ``B`` images, ``K`` object classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import torch.nn.functional as F

from frcnn.errors import InputError
from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.box_ops import batched_pairwise_iou, clip_boxes
from frcnn.modeling.preprocess import Preprocessor, box_scale, boxes_to_original, to_original_pixels
from frcnn.modeling.roi_heads import RoIHeads
from frcnn.modeling.rpn import RPN
from frcnn.modeling.structures import AnchorOutputs, ImageBatch, Proposals, RoIOutputs, pad_targets


@dataclass
class ModelOutput:
    """What :class:`FasterRCNN` returns.

    Attributes:
        losses: ``{"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg"}`` scalar tensors when
            targets were given, else empty.
        detections: one ``{"boxes" [D_i, 4], "scores" [D_i], "labels" [D_i]}`` per image, boxes in the
            original image's pixels and labels in ``1..K``; None unless asked for.
    """

    losses: dict[str, Tensor]
    detections: list[dict[str, Tensor]] | None


class FasterRCNN(nn.Module):
    """The two-stage detector of Ren et al. (2015).

    Args:
        backbone: a module with ``trunk``, ``box_head``, ``out_channels`` (see :mod:`frcnn.modeling.backbones`).
            Its box head moves to ``roi_heads`` here (unless ``roi_heads`` was built with its own): from then
            on ``model.backbone`` is the shared trunk and ``model.roi_heads.box_head`` the per-RoI head.
        rpn: :class:`frcnn.modeling.rpn.RPN`.
        roi_heads: :class:`frcnn.modeling.roi_heads.RoIHeads`.
        preprocessor: :class:`frcnn.modeling.preprocess.Preprocessor`.
        channels_last: run the convolutions in ``torch.channels_last`` memory format (faster on
            tensor-core GPUs); call ``model.to(memory_format=torch.channels_last)`` as well.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RPN,
        roi_heads: RoIHeads,
        preprocessor: Preprocessor,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        # One owner per module: the backbone built the head from the same pretrained network as the
        # trunk (res5 in C4, fc6/fc7 in VGG16), and the RoI stage runs it.
        box_head = backbone.box_head
        del backbone.box_head
        if roi_heads.box_head is None:
            roi_heads.box_head = box_head
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.preprocessor = preprocessor
        self.channels_last = channels_last

    @property
    def num_classes(self) -> int:
        """``K``, the number of object classes (labels ``1..K``)."""
        return self.roi_heads.predictor.num_classes

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
        *,
        detect: bool | None = None,
    ) -> ModelOutput:
        """Losses and/or detections for a batch of images.

        Args:
            images: ``B`` RGB tensors ``[3, H_i, W_i]`` (float in [0, 1] or uint8), any sizes.
            targets: optional ``B`` dicts with ``"boxes"`` ``[G_i, 4]`` XYXY in original pixels and
                ``"labels"`` ``[G_i]`` in ``1..K`` (``G_i`` may be 0). Given → the four losses.
            detect: return detections. Default: when no targets are given. Pass ``True`` with targets
                (e.g. in eval mode) for validation loss and detections in one call.

        Train/test behaviour is chosen by ``self.training`` only where the paper has explicit
        train/test settings (proposal counts, multi-scale resize); losses and detections are each
        computed whenever asked for.

        Raises:
            InputError: targets of the wrong count or shape, or a label outside ``1..K`` (naming the
                target's index in the batch and its ``"image_id"`` when it has one).
        """
        if detect is None:
            detect = targets is None
        bad_labels = None
        if targets is not None:
            _check_targets(targets, len(images))
            bad_labels = _labels_out_of_range(targets, self.num_classes)
        batch, scaled_targets = self.preprocessor(images, targets)
        features = self.features(batch)
        padded = pad_targets(scaled_targets, batch.tensor.device) if scaled_targets is not None else None
        proposals, rpn_losses = self.rpn(batch, features, padded)
        # Host sync, placed after the RPN's own (its NMS output has a data-dependent size) so the GPU has
        # little left to drain, and before the RoI head's cross_entropy, where a label past K is a
        # device-side assert that names no image. (On an H100 a sync at the top of forward cost 2-5% of
        # a training step; here it is within noise.)
        if bad_labels is not None and bool(bad_labels):
            raise _label_error(targets, self.num_classes)
        detections, roi_losses = self.roi_heads(
            batch, features, proposals, padded, detect=detect
        )
        per_image = to_original_pixels(detections, batch).per_image() if detections is not None else None
        return ModelOutput(losses={**rpn_losses, **roi_losses}, detections=per_image)

    def features(self, batch: ImageBatch) -> Tensor:
        """The shared trunk's feature map ``[B, C, Hf, Wf]`` of a preprocessed batch."""
        x = batch.tensor
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def roi_outputs(
        self, images: Sequence[Tensor], *, near: Tensor | None = None, max_rois: int | None = None
    ) -> RoIOutputs:
        """Every RoI's class vector and class-specific boxes, before thresholding and NMS.

        The RPN's proposals come out as at test time (or train time, in train mode); gradients flow
        from ``probs`` and ``boxes`` back to ``images`` through the box head and the trunk, not through
        the proposal coordinates (fixed inputs to the box head, as in training).

        Args:
            images: ``B`` RGB tensors ``[3, H_i, W_i]``, float in ``[0, 1]`` (or uint8).
            near: optional ``[M, 4]`` boxes in original pixels; with ``max_rois``, only the ``max_rois``
                proposals of each image that overlap them most (IoU > 0) go through the box head. The box
                head runs once per RoI and dominates the cost; an explanation that follows a few
                detections needs only the RoIs around them.
            max_rois: see ``near``.

        Returns:
            :class:`RoIOutputs` with boxes in each original image's pixels (``P = max_rois`` when cut).
        """
        batch, _ = self.preprocessor(images)
        features = self.features(batch)
        proposals, _ = self.rpn(batch, features)
        if near is not None and max_rois is not None and max_rois < proposals.boxes.shape[1]:
            proposals = _nearest_proposals(proposals, near, batch, max_rois)
        logits, deltas = self.roi_heads.predict(features, proposals.boxes)  # [B, P, K+1], [B, P, K+1, 4]
        b, p, k = deltas.shape[0], deltas.shape[1], deltas.shape[2] - 1
        boxes = decode_boxes(deltas[:, :, 1:], proposals.boxes[:, :, None, :], self.roi_heads.bbox_reg_weights)
        boxes = boxes_to_original(clip_boxes(boxes.reshape(b, p * k, 4), batch.image_sizes), batch).reshape(b, p, k, 4)
        return RoIOutputs(
            proposals=boxes_to_original(proposals.boxes, batch),
            boxes=boxes,
            probs=F.softmax(logits, dim=-1),
            objectness=proposals.scores,
            valid=proposals.valid,
        )

    def anchor_outputs(self, images: Sequence[Tensor]) -> AnchorOutputs:
        """The RPN's decoded box and objectness probability for every anchor (differentiable), before NMS.

        Args:
            images: as for :meth:`roi_outputs`.
        """
        batch, _ = self.preprocessor(images)
        features = self.features(batch)
        logits, deltas = self.rpn.head(features)  # [B, A], [B, A, 4]
        hf, wf = features.shape[-2:]
        anchors = self.rpn.anchor_generator(hf, wf)
        boxes = clip_boxes(decode_boxes(deltas, anchors[None], (1.0, 1.0, 1.0, 1.0)), batch.image_sizes)
        return AnchorOutputs(
            boxes=boxes_to_original(boxes, batch),
            objectness=torch.sigmoid(logits.float()),
            valid=self.rpn.locations_in_image(hf, wf, batch.image_sizes),
        )


def _nearest_proposals(proposals: Proposals, near: Tensor, batch: ImageBatch, count: int) -> Proposals:
    """Each image's ``count`` proposals of highest IoU with any of ``near`` (``[M, 4]`` original pixels)."""
    factor = box_scale(batch)  # [B, 1, 4]
    iou = batched_pairwise_iou(proposals.boxes, near[None].to(factor) * factor)  # [B, P, M]
    overlap = iou.amax(dim=2).masked_fill(~proposals.valid, -1.0)  # [B, P]
    best, index = overlap.topk(count, dim=1)  # [B, count]
    return Proposals(
        boxes=proposals.boxes.gather(1, index[..., None].expand(-1, -1, 4)),
        scores=proposals.scores.gather(1, index),
        valid=best > 0,
    )


def _check_targets(targets: Sequence[dict[str, Tensor]], num_images: int) -> None:
    """Shape checks on user targets: one clear message instead of an error deep in the pipeline."""
    if len(targets) != num_images:
        raise InputError(f"got {num_images} images but {len(targets)} targets")
    for i, target in enumerate(targets):
        boxes, labels = target.get("boxes"), target.get("labels")
        if boxes is None or labels is None:
            raise InputError(f"target {i} needs 'boxes' and 'labels'")
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise InputError(
                f"target {i}: boxes must be [G, 4] and labels [G], got {tuple(boxes.shape)} and {tuple(labels.shape)}"
            )


def _labels_out_of_range(targets: Sequence[dict[str, Tensor]], num_classes: int) -> Tensor | None:
    """A 0-dim bool on the labels' device: does any label fall outside ``1..K``? None without labels. No sync."""
    labeled = [target["labels"].reshape(-1) for target in targets if target["labels"].numel()]
    if not labeled:
        return None
    flat = torch.cat([lab.to(labeled[0].device) for lab in labeled])
    return ((flat < 1) | (flat > num_classes)).any()


def _label_error(targets: Sequence[dict[str, Tensor]], num_classes: int) -> InputError:
    """The error for the first target with a label outside ``1..K``, naming its index and ``image_id``."""
    for i, target in enumerate(targets):
        bad = target["labels"][(target["labels"] < 1) | (target["labels"] > num_classes)]
        if bad.numel():
            named = ""
            if target.get("image_id") is not None:
                ids = torch.as_tensor(target["image_id"]).reshape(-1).tolist()
                named = f" (image_id {ids[0] if len(ids) == 1 else ids})"
            return InputError(
                f"target {i}{named} has label {bad[0].item()}, outside 1..{num_classes}: labels are 1..K for the "
                f"model's K={num_classes} classes (0 is background); check the category mapping or data.num_classes"
            )
    raise AssertionError("called without a label out of range")
