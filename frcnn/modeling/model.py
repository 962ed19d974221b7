"""Faster R-CNN: preprocess → features → proposals → RoI predictions → postprocess.

One stage-by-stage path (:meth:`FasterRCNN.preprocess`, :meth:`~FasterRCNN.features`,
:meth:`~FasterRCNN.propose`, :meth:`~FasterRCNN.predict_rois`, :meth:`~FasterRCNN.postprocess`) that
training, inference, the ONNX wrapper (:mod:`frcnn.export.onnx`) and the explanation outputs
(:mod:`frcnn.explain.outputs`) all walk; the features may be one map (C4, VGG16) or a pyramid (FPN).

Shape shorthand: ``B`` images, ``K`` object classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from frcnn.errors import ConfigError, InputError
from frcnn.modeling.preprocess import Preprocessor, to_original_pixels
from frcnn.modeling.roi_heads import RoIHeads
from frcnn.modeling.rpn import RPN
from frcnn.modeling.structures import Detections, FeatureMaps, ImageBatch, Proposals, Targets, pad_targets


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
        backbone: a module mapping images to :class:`FeatureMaps`, with ``strides`` and ``out_channels``
            (see :mod:`frcnn.modeling.backbones`). A C4 / VGG16 backbone's box head moves to ``roi_heads``
            here (unless ``roi_heads`` was built with its own): from then on ``model.backbone`` is the
            shared trunk and ``model.roi_heads.box_head`` the per-RoI head.
        rpn: :class:`frcnn.modeling.rpn.RPN`.
        roi_heads: :class:`frcnn.modeling.roi_heads.RoIHeads`.
        preprocessor: :class:`frcnn.modeling.preprocess.Preprocessor`.
        channels_last: run the convolutions in ``torch.channels_last`` memory format (faster on
            tensor-core GPUs); call ``model.to(memory_format=torch.channels_last)`` as well.
        compute_dtype: None (the parameters' dtype) or ``torch.bfloat16``: ``forward`` runs under autocast to that
            dtype (the shipped path's ``precision=bf16``: :func:`frcnn.inference.prepare_for_inference`). Box
            coordinates, RoI pooling, NMS and the scores stay in fp32, as under ``trainer.amp``.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RPN,
        roi_heads: RoIHeads,
        preprocessor: Preprocessor,
        channels_last: bool = False,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        # One owner per module: the backbone built the head from the same pretrained network as the
        # trunk (res5 in C4, fc6/fc7 in VGG16), and the RoI stage runs it. A pyramid has none: the RoI
        # stage was built with its own (frcnn.modeling.box_heads).
        box_head = getattr(backbone, "box_head", None)
        if box_head is not None:
            del backbone.box_head
        if roi_heads.box_head is None:
            roi_heads.box_head = box_head
        if roi_heads.box_head is None:
            raise ConfigError(
                f"{type(backbone).__name__} has no box head of its own: configure model.roi_heads.box_head "
                "(e.g. frcnn.modeling.box_heads.TwoMLPHead, as conf/model/backbone/r50_fpn.yaml does)"
            )
        rpn.check_strides(getattr(backbone, "strides", rpn.anchor_generator.strides))  # at build, not first step
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.preprocessor = preprocessor
        self.channels_last = channels_last
        self.compute_dtype = compute_dtype

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
        if self.compute_dtype is not None:
            device_type = self.preprocessor.mean.device.type  # the model's (the preprocessor moves images there)
            if not torch.is_autocast_enabled(device_type):
                with torch.autocast(device_type, dtype=self.compute_dtype):
                    return self.forward(images, targets, detect=detect)
        bad_labels = None
        if targets is not None:
            _check_targets(targets, len(images))
            bad_labels = _labels_out_of_range(targets, self.num_classes)
        batch, scaled_targets = self.preprocess(images, targets)
        features = self.features(batch)
        padded = pad_targets(scaled_targets, batch.tensor.device) if scaled_targets is not None else None
        proposals, rpn_losses = self.propose(batch, features, padded)
        # Host sync, placed after the RPN's own (its NMS output has a data-dependent size) so the GPU has
        # little left to drain, and before the RoI head's cross_entropy, where a label past K is a
        # device-side assert that names no image. (On an H100 a sync at the top of forward cost 2-5% of
        # a training step; here it is within noise.)
        if bad_labels is not None and bool(bad_labels):
            raise _label_error(targets, self.num_classes)
        detections, roi_losses = self.roi_heads(batch, features, proposals, padded, detect=detect)
        per_image = self.postprocess(detections, batch).per_image() if detections is not None else None
        return ModelOutput(losses={**rpn_losses, **roi_losses}, detections=per_image)

    # The stages, in pipeline order. forward, the ONNX wrapper (frcnn.export) and the explanation outputs
    # (frcnn.explain.outputs) all walk the pipeline through these.

    def preprocess(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> tuple[ImageBatch, list[dict[str, Tensor]] | None]:
        """Normalize, resize, pad and batch ``B`` images ``[3, H_i, W_i]``; targets' boxes rescaled to match."""
        return self.preprocessor(images, targets)

    def features(self, batch: ImageBatch) -> FeatureMaps:
        """The backbone's feature maps of a preprocessed batch (one level for C4 / VGG16, P2-P6 for FPN)."""
        x = batch.tensor
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def propose(
        self, batch: ImageBatch, features: FeatureMaps, targets: Targets | None = None
    ) -> tuple[Proposals, dict[str, Tensor]]:
        """The RPN: proposals ``[B, P, ...]`` in network-input pixels, and its losses when targets are given."""
        return self.rpn(batch, features, targets)

    def predict_rois(self, features: FeatureMaps, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Box head and predictor on ``[B, R, 4]`` boxes → logits ``[B, R, K+1]``, deltas ``[B, R, K+1, 4]``."""
        return self.roi_heads.predict(features, boxes)

    def postprocess(self, detections: Detections, batch: ImageBatch) -> Detections:
        """Detections from network-input pixels back to each original image's pixels."""
        return to_original_pixels(detections, batch)


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
