"""The second stage: RoI sampling, RoIAlign / RoI pooling, the box head and predictor, the loss.

Shape shorthand: ``B`` images, ``C`` feature channels, ``P`` proposals and ``G`` padded ground
truth per image, ``R`` sampled RoIs per image (128), ``S`` pooled size, ``D`` box-head features,
``K`` object classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.modeling.box_coder import encode_boxes
from frcnn.errors import ConfigError
from frcnn.modeling.matching import BACKGROUND, FOREGROUND, IGNORE, match
from frcnn.modeling.poolers import pool_rois
from frcnn.modeling.postprocess import postprocess_detections
from frcnn.modeling.sampling import sample_fixed
from frcnn.modeling.box_ops import batched_pairwise_iou
from frcnn.modeling.structures import Detections, FeatureMaps, ImageBatch, Proposals, SampledRois, Targets


class BoxPredictor(nn.Module):
    """Sibling linear layers: ``K + 1`` class logits and ``4 (K + 1)`` class-specific deltas.

    Args:
        in_channels: ``D``, the box head's feature width.
        num_classes: ``K`` object classes (background is added here).
    """

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 * (num_classes + 1))
        # py-faster-rcnn: Gaussian std 0.01 for the classifier, 0.001 for the regressor.
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[M, D]`` → ``(class_logits [M, K+1], box_deltas [M, K+1, 4])``."""
        return self.cls_score(x), self.bbox_pred(x).view(x.shape[0], -1, 4)


class RoIHeads(nn.Module):
    """Samples RoIs, pools their features, runs the box head and predictor, scores or decodes.

    With a feature pyramid the box head is new (:mod:`frcnn.modeling.box_heads`, configured under
    ``roi_heads.box_head``) and each RoI is pooled from its level (:mod:`frcnn.modeling.poolers`). With
    C4 and VGG16 the box head is the per-RoI part of the classification network. In the C4 design (He et
    al. 2016, sec. "Object detection") the ResNet is cut between res4 and res5: conv1-res4 run once per image as
    the shared trunk (stride 16), and res5 runs once per RoI on the pooled 14x14 features (its stride 2
    gives 7x7, then global average pooling), so the whole pretrained network is used and nothing new is
    added between the pooling and the predictor. VGG16's box head is fc6/fc7 on 7x7 RoIs, as in the
    paper. The backbone builds trunk and head from one pretrained network; :class:`FasterRCNN` hands the
    head to this stage, which owns it from then on.

    Args:
        box_head: maps pooled ``[M, C, S, S]`` to ``[M, D]``; None until :class:`FasterRCNN` wires in the
            backbone's.
        predictor: :class:`BoxPredictor`.
        pooler: ``"align"`` (``torchvision.ops.roi_align``, default) or ``"pool"`` (``roi_pool``,
            the paper's RoI max pooling).
        pooler_resolution: ``S``: 14 for the C4 res5 head (res5 halves it to 7), 7 for VGG16's fc6.
        spatial_scale: the scale ``1 / stride`` of a feature map given as a bare tensor (1/16); the
            backbone's :class:`FeatureMaps` carry their own strides.
        pooled_levels: the feature levels RoIs are pooled from, by index (FPN: ``[0, 1, 2, 3]``, P2-P5
            of P2-P6); None: every level. More than one: each RoI from its level by the FPN paper's
            assignment (:mod:`frcnn.modeling.poolers`).
        canonical_size / canonical_level: that assignment's 224 px and ``k0 = 4``.
        sampling_ratio: RoIAlign bilinear samples per bin (0: adaptive, as detectron2).
        aligned: RoIAlign half-pixel correction (True: pixel centres at ``+0.5``, matching the
            continuous box convention).
        fg_iou_thresh: RoIs at IoU ≥ this are foreground (0.5).
        bg_iou_thresh_hi / bg_iou_thresh_lo: RoIs with IoU in ``[lo, hi)`` are background ([0.1, 0.5)).
        batch_size_per_image: ``R`` RoIs per image (128).
        positive_fraction: at most this share foreground (0.25, i.e. ≤ 32).
        append_gt_boxes: add the ground-truth boxes to the proposals before sampling (py-faster-rcnn).
        bbox_reg_weights: ``(10, 10, 5, 5)``, i.e. targets normalized by std ``(0.1, 0.1, 0.2, 0.2)``.
        smooth_l1_beta: 1.0 (py-faster-rcnn's sigma = 1 for the box head).
        score_thresh / nms_thresh / detections_per_image: test-time postprocessing (0.05 / 0.5 / 100).
        min_box_size: detections with a side under this many network-input pixels are dropped (0: only
            empty boxes; torchvision: 0.01).
    """

    def __init__(
        self,
        *,
        box_head: nn.Module | None = None,
        predictor: BoxPredictor,
        pooler: Literal["align", "pool"] = "align",
        pooler_resolution: int = 14,
        spatial_scale: float = 1.0 / 16,
        pooled_levels: Sequence[int] | None = None,
        canonical_size: float = 224.0,
        canonical_level: int = 4,
        sampling_ratio: int = 0,
        aligned: bool = True,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh_hi: float = 0.5,
        bg_iou_thresh_lo: float = 0.1,
        batch_size_per_image: int = 128,
        positive_fraction: float = 0.25,
        append_gt_boxes: bool = True,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        smooth_l1_beta: float = 1.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        min_box_size: float = 0.0,
    ) -> None:
        super().__init__()
        if pooler not in ("align", "pool"):
            raise ConfigError(f"roi_heads.pooler must be 'align' or 'pool', got {pooler!r}")
        self.register_module("box_head", box_head)  # registered even while None: parameters keep pipeline order
        self.predictor = predictor
        self.pooler = pooler
        self.pooler_resolution = pooler_resolution
        self.spatial_scale = spatial_scale
        self.pooled_levels = None if pooled_levels is None else tuple(int(level) for level in pooled_levels)
        self.canonical_size = float(canonical_size)
        self.canonical_level = int(canonical_level)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh_hi = bg_iou_thresh_hi
        self.bg_iou_thresh_lo = bg_iou_thresh_lo
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.append_gt_boxes = append_gt_boxes
        self.bbox_reg_weights = tuple(float(w) for w in bbox_reg_weights)
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.min_box_size = min_box_size

    def forward(
        self,
        images: ImageBatch,
        features: FeatureMaps | Tensor,
        proposals: Proposals,
        targets: Targets | None = None,
        *,
        detect: bool = False,
    ) -> tuple[Detections | None, dict[str, Tensor]]:
        """Losses on a sample of RoIs when ``targets`` are given; detections when ``detect``.

        Args:
            images: preprocessed batch.
            features: the backbone's :class:`FeatureMaps`.
            proposals: ``[B, P, ...]`` from the RPN.
            targets: ground truth in network-input pixels, or None.
            detect: also return detections (network-input pixels) for every proposal.

        Returns:
            ``(detections or None, {"loss_cls", "loss_box_reg"} or {})``.
        """
        losses: dict[str, Tensor] = {}
        if targets is not None:
            sample = self.sample_rois(proposals, targets)
            logits, deltas = self.predict(features, sample.boxes)
            losses = self.losses(logits, deltas, sample)
        detections = None
        if detect:
            logits, deltas = self.predict(features, proposals.boxes)
            detections = postprocess_detections(
                logits,
                deltas,
                proposals.boxes,
                proposals.valid,
                images.image_sizes,
                bbox_reg_weights=self.bbox_reg_weights,
                score_thresh=self.score_thresh,
                nms_thresh=self.nms_thresh,
                detections_per_image=self.detections_per_image,
                min_box_size=self.min_box_size,
            )
        return detections, losses

    def predict(self, features: FeatureMaps | Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Pool ``[B, R, 4]`` boxes, run head and predictor → ``([B, R, K+1], [B, R, K+1, 4])``.

        ``features`` is the backbone's :class:`FeatureMaps` (a bare ``[B, C, Hf, Wf]`` tensor is one
        level at stride ``1 / spatial_scale``).
        """
        if isinstance(features, Tensor):
            if self.pooled_levels is not None and len(self.pooled_levels) > 1:
                raise ConfigError(f"RoIs are pooled from levels {list(self.pooled_levels)} but one feature map was given: "
                                  "pass the backbone's FeatureMaps")
            features = FeatureMaps([features], (round(1.0 / self.spatial_scale),))
        b, r = boxes.shape[:2]
        image_index = torch.arange(b, device=boxes.device, dtype=boxes.dtype)[:, None, None].expand(-1, r, 1)
        rois = torch.cat([image_index, boxes], dim=2).reshape(-1, 5)  # [B*R, 5]: (image, x1, y1, x2, y2)
        # Pool in fp32 even under bf16/fp16 autocast: box coordinates in half precision are off by
        # pixels at detection image sizes (bf16 keeps 8 mantissa bits: ±4 px at x = 1000).
        features = FeatureMaps([fmap.float() for fmap in features.maps], features.strides)
        pooled = pool_rois(
            features,
            rois.float(),
            output_size=self.pooler_resolution,
            levels=self.pooled_levels,
            mode=self.pooler,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
            canonical_size=self.canonical_size,
            canonical_level=self.canonical_level,
        )  # [B*R, C, S, S]
        if self.box_head is None:
            raise RuntimeError("RoIHeads has no box head: build it with box_head=... or inside FasterRCNN")
        x = self.box_head(pooled)  # [B*R, D]
        logits, deltas = self.predictor(x)
        return logits.float().view(b, r, -1), deltas.float().view(b, r, -1, 4)

    @torch.no_grad()
    def sample_rois(self, proposals: Proposals, targets: Targets) -> SampledRois:
        """Match proposals (plus ground truth) to ground truth and sample ``R`` per image.

        Foreground: IoU ≥ 0.5, labelled with the matched class. Background: IoU in [0.1, 0.5),
        label 0. Proposals under 0.1 are not sampled, except as a fallback background pool for an image
        with no background in range (e.g. an image without ground truth): see
        :func:`frcnn.modeling.sampling.sample_fixed` for the fill rules.
        """
        boxes, valid = proposals.boxes, proposals.valid
        if self.append_gt_boxes:
            boxes = torch.cat([boxes, targets.boxes], dim=1)  # [B, P+G, 4]
            valid = torch.cat([valid, targets.valid], dim=1)
        iou = batched_pairwise_iou(boxes, targets.boxes)  # [B, P+G, G]
        matches = match(
            iou,
            box_valid=valid,
            gt_valid=targets.valid,
            fg_iou_thresh=self.fg_iou_thresh,
            bg_iou_thresh_hi=self.bg_iou_thresh_hi,
            bg_iou_thresh_lo=self.bg_iou_thresh_lo,
            allow_low_quality_matches=False,
        )
        fallback = valid & (matches.labels == IGNORE) & (matches.max_iou < self.bg_iou_thresh_lo)
        index, slot_valid = sample_fixed(
            matches.labels == FOREGROUND,
            matches.labels == BACKGROUND,
            fallback,
            num_samples=self.batch_size_per_image,
            positive_fraction=self.positive_fraction,
        )
        rois = boxes.gather(1, index[..., None].expand(-1, -1, 4))  # [B, R, 4]
        is_fg = (matches.labels == FOREGROUND).gather(1, index) & slot_valid  # invalid slots: background, no loss
        gt_index = matches.gt_index.gather(1, index)
        labels = torch.where(is_fg, targets.labels.gather(1, gt_index), 0)
        matched = targets.boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
        deltas = encode_boxes(rois, matched, self.bbox_reg_weights)
        deltas = torch.where(is_fg[..., None], deltas, torch.zeros_like(deltas))  # background: no target
        return SampledRois(boxes=rois, labels=labels, regression_targets=deltas, valid=slot_valid)

    def losses(self, logits: Tensor, deltas: Tensor, sample: SampledRois) -> dict[str, Tensor]:
        """Cross-entropy over sampled RoIs; smooth L1 on foreground only; both ÷ the image's valid RoIs.

        Each image's losses are normalized by its own number of valid slots and the batch loss is the
        mean over images, so an image's loss does not depend on the rest of its batch.

        Args:
            logits: ``[B, R, K+1]``.
            deltas: ``[B, R, K+1, 4]``.
            sample: from :meth:`sample_rois`.
        """
        valid = sample.valid.to(logits.dtype)  # [B, R]
        num = valid.sum(dim=1).clamp(min=1)  # [B]
        ce = F.cross_entropy(logits.flatten(0, 1), sample.labels.flatten(), reduction="none").view_as(valid)
        loss_cls = (ce * valid).sum(dim=1) / num
        # Regress with the deltas of the ground-truth class only (class-specific regression).
        index = sample.labels[..., None, None].expand(-1, -1, 1, 4)
        pred = deltas.gather(2, index).squeeze(2)  # [B, R, 4]
        reg = F.smooth_l1_loss(pred, sample.regression_targets, beta=self.smooth_l1_beta, reduction="none").sum(-1)
        fg = (sample.labels > 0) & sample.valid
        return {"loss_cls": loss_cls.mean(), "loss_box_reg": ((reg * fg).sum(dim=1) / num).mean()}
