"""Faster R-CNN: preprocess → backbone trunk → RPN → RoI heads (→ postprocess).

Shape shorthand: ``B`` images, ``K`` object classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from frcnn.preprocess import Preprocessor, to_original_pixels
from frcnn.roi_heads import RoIHeads
from frcnn.rpn import RPN
from frcnn.structures import pad_targets


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
        backbone: a module with ``trunk``, ``box_head``, ``out_channels`` (see :mod:`frcnn.backbones`).
        rpn: :class:`frcnn.rpn.RPN`.
        roi_heads: :class:`frcnn.roi_heads.RoIHeads`.
        preprocessor: :class:`frcnn.preprocess.Preprocessor`.
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
        """
        if detect is None:
            detect = targets is None
        if targets is not None:
            _check_targets(targets, len(images), self.num_classes)
        batch, scaled_targets = self.preprocessor(images, targets)
        x = batch.tensor
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        padded = pad_targets(scaled_targets, x.device) if scaled_targets is not None else None
        proposals, rpn_losses = self.rpn(batch, features, padded)
        detections, roi_losses = self.roi_heads(
            batch, features, proposals, self.backbone.box_head, padded, detect=detect
        )
        per_image = to_original_pixels(detections, batch).per_image() if detections is not None else None
        return ModelOutput(losses={**rpn_losses, **roi_losses}, detections=per_image)


def _check_targets(targets: Sequence[dict[str, Tensor]], num_images: int, num_classes: int) -> None:
    """Shape checks on user targets: one clear message instead of an error deep in the pipeline."""
    if len(targets) != num_images:
        raise ValueError(f"got {num_images} images but {len(targets)} targets")
    for i, t in enumerate(targets):
        boxes, labels = t.get("boxes"), t.get("labels")
        if boxes is None or labels is None:
            raise ValueError(f"target {i} needs 'boxes' and 'labels'")
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"target {i}: boxes must be [G, 4] and labels [G], got {tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
