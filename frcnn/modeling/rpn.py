"""Region Proposal Network (Ren et al., 2015, sec. 3.1): head, anchor targets, loss, proposals.

Shape shorthand: ``B`` images, ``C`` feature channels, ``L`` feature levels, ``Hf x Wf`` a level's
feature map, ``A`` anchors per cell (9), ``N_l = Hf * Wf * A`` anchors per image on level ``l`` and
``N = Σ_l N_l``, ``G`` padded ground truth, ``P`` proposals. One RPN head slides over every level
(Lin et al. 2017: the head's parameters are shared across the pyramid).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.errors import ConfigError
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.box_coder import encode_boxes
from frcnn.modeling.box_ops import batched_pairwise_iou
from frcnn.modeling.matching import BACKGROUND, FOREGROUND, match
from frcnn.modeling.proposals import generate_proposals
from frcnn.modeling.sampling import sample_mask
from frcnn.modeling.structures import FeatureMaps, ImageBatch, Proposals, Targets


class RPNHead(nn.Module):
    """A 3x3 conv (+ReLU) sliding over the feature map, then sibling 1x1 convs (paper, fig. 3).

    Args:
        in_channels: ``C`` of the backbone feature map.
        num_anchors: ``A`` anchors per location.
        conv_channels: width of the 3x3 conv (paper: 512 for VGG16, 256 for ZF; default = ``C``).
        num_convs: 3x3 convs (+ReLU) before the siblings: 1 (the paper), 2 (torchvision's
            ``fasterrcnn_resnet50_fpn_v2``). With more than one, ``conv`` is a ``Sequential``.
    """

    def __init__(
        self, *, in_channels: int, num_anchors: int = 9, conv_channels: int | None = None, num_convs: int = 1
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ConfigError(f"model.rpn.head.num_convs must be at least 1, got {num_convs}")
        width = conv_channels or in_channels
        convs = [nn.Conv2d(in_channels if i == 0 else width, width, kernel_size=3, padding=1) for i in range(num_convs)]
        # conv → ReLU → conv → ... ; forward applies the last ReLU
        self.conv = convs[0] if num_convs == 1 else nn.Sequential(*[m for c in convs for m in (c, nn.ReLU())][:-1])
        self.objectness = nn.Conv2d(width, num_anchors, kernel_size=1)
        self.deltas = nn.Conv2d(width, 4 * num_anchors, kernel_size=1)
        self.relu = nn.ReLU()  # a module, not F.relu: guided backpropagation rewrites ReLU modules' backward
        for layer in (*convs, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)  # paper sec. 3.1.3: zero-mean Gaussian, std 0.01
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Per-anchor logits and deltas of one feature map, flattened in anchor order ``(y, x, a)``.

        A pyramid runs this once per level with the same weights (:meth:`RPN.predict`).

        Args:
            features: ``[B, C, Hf, Wf]``.

        Returns:
            ``(objectness [B, N], deltas [B, N, 4])``.
        """
        x = self.relu(self.conv(features))
        logits = self.objectness(x)  # [B, A, Hf, Wf]
        deltas = self.deltas(x)  # [B, 4A, Hf, Wf]
        b, a, h, w = logits.shape
        logits = logits.permute(0, 2, 3, 1).reshape(b, h * w * a)  # [B, Hf*Wf*A]
        deltas = deltas.view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, 4)  # [B, N, 4]
        return logits, deltas


@dataclass
class AnchorPredictions:
    """The RPN head's output for every anchor of every level, with the anchors (per-level lists).

    Attributes:
        anchors: ``L`` tensors ``[N_l, 4]`` XYXY in network-input pixels, shared by the batch.
        logits: ``L`` tensors ``[B, N_l]`` objectness logits (fp32).
        deltas: ``L`` tensors ``[B, N_l, 4]`` box deltas (fp32).
        in_image: ``L`` tensors ``[B, N_l]`` bool: the anchor sits on its image's own cells, not padding.
    """

    anchors: list[Tensor]
    logits: list[Tensor]
    deltas: list[Tensor]
    in_image: list[Tensor]

    def concatenated(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All levels in one: ``(anchors [N, 4], logits [B, N], deltas [B, N, 4], in_image [B, N])``."""
        return (torch.cat(self.anchors), torch.cat(self.logits, dim=1), torch.cat(self.deltas, dim=1),
                torch.cat(self.in_image, dim=1))


@dataclass
class RPNTargets:
    """Anchor targets for one batch (all ``[B, N, ...]``, computed without gradient).

    Attributes:
        sampled_pos / sampled_neg: ``[B, N]`` bool, the 256-anchor minibatch per image.
        deltas: ``[B, N, 4]`` regression targets to each anchor's matched ground truth.
    """

    sampled_pos: Tensor
    sampled_neg: Tensor
    deltas: Tensor


@torch.no_grad()
def anchor_targets(
    anchors: Tensor,
    gt_boxes: Tensor,
    *,
    anchor_valid: Tensor,
    gt_valid: Tensor,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    allow_low_quality_matches: bool,
    num_samples: int,
    positive_fraction: float,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
) -> RPNTargets:
    """Match anchors to ground truth, sample the minibatch, encode the positives' regression targets: the
    RPN's (and SiamRPN's) match -> sample -> encode, for the whole batch.

    Args:
        anchors: ``[B, N, 4]`` XYXY.
        gt_boxes: ``[B, G, 4]`` XYXY (padding where ``gt_valid`` is False).
        anchor_valid: ``[B, N]`` bool: anchors that may be labelled (others are ignored).
        gt_valid: ``[B, G]`` bool.
        fg_iou_thresh / bg_iou_thresh: IoU >= fg is positive, < bg negative, between ignored.
        allow_low_quality_matches: each ground truth's best anchors are positive too (Faster R-CNN).
        num_samples / positive_fraction: the minibatch per image and its positive share at most.
        weights: the box coder's ``(wx, wy, ww, wh)``.

    Returns:
        :class:`RPNTargets`; ``deltas`` is zero off the sampled positives.
    """
    iou = batched_pairwise_iou(anchors, gt_boxes)  # [B, N, G]
    matches = match(
        iou, box_valid=anchor_valid, gt_valid=gt_valid, fg_iou_thresh=fg_iou_thresh, bg_iou_thresh_hi=bg_iou_thresh,
        bg_iou_thresh_lo=0.0, allow_low_quality_matches=allow_low_quality_matches,
    )
    sampled_pos, sampled_neg = sample_mask(
        matches.labels == FOREGROUND, matches.labels == BACKGROUND, num_samples=num_samples, positive_fraction=positive_fraction,
    )
    matched = gt_boxes.gather(1, matches.gt_index[..., None].expand(-1, -1, 4))  # [B, N, 4]
    deltas = encode_boxes(anchors, matched, weights)
    # Only positives are regressed; elsewhere the matched box may be padding (log 0 = -inf).
    deltas = torch.where(sampled_pos[..., None], deltas, torch.zeros_like(deltas))
    return RPNTargets(sampled_pos=sampled_pos, sampled_neg=sampled_neg, deltas=deltas)


def feature_cells(image_sizes: Tensor, stride: int) -> Tensor:
    """``[B, 2]`` feature cells ``(ceil(h/s), ceil(w/s))`` covering each image's own ``[B, 2]`` extent."""
    return torch.div(image_sizes + (stride - 1), stride, rounding_mode="floor")


def within_image(anchors: Tensor, image_sizes: Tensor, margin: float) -> Tensor:
    """``[B, N]`` bool: the ``[B, N, 4]`` anchor crosses its image's border (``[B, 2]`` (h, w)) by at most ``margin``
    pixels (the paper ignores cross-boundary anchors in training: ``margin=0``); a negative margin: all True."""
    if margin < 0:
        return torch.ones(anchors.shape[:2], dtype=torch.bool, device=anchors.device)
    height = image_sizes[:, 0, None].to(anchors.dtype)
    width = image_sizes[:, 1, None].to(anchors.dtype)
    return ((anchors[..., 0] >= -margin) & (anchors[..., 1] >= -margin)
            & (anchors[..., 2] <= width + margin) & (anchors[..., 3] <= height + margin))


class RPN(nn.Module):
    """The RPN stage: head → (targets, loss) → proposals.

    Args:
        head: :class:`RPNHead`.
        anchor_generator: :class:`AnchorGenerator` (its ``num_anchors`` must match the head).
        fg_iou_thresh: anchors at IoU ≥ this are positive (paper: 0.7).
        bg_iou_thresh: anchors at IoU < this are negative (paper: 0.3).
        allow_low_quality_matches: each ground truth's best anchor(s) are positive (paper: yes).
        straddle_thresh: anchors crossing the image border by more than this many pixels are ignored
            in training (paper sec. 3.3: 0, i.e. every cross-boundary anchor); ``-1`` keeps them all.
        batch_size_per_image: anchors sampled per image (paper: 256).
        positive_fraction: at most this share of them positive (paper: 0.5, i.e. ≤ 128).
        loss_normalization: ``"paper"``: ``1/N_cls Σ L_cls + λ/N_reg Σ p* L_reg`` per image, with
            ``N_cls`` the image's sampled anchors and ``N_reg`` the image's own anchor locations
            (``ceil(h/16) * ceil(w/16)`` of its unpadded size: 2394 for a 600x1000 image, the paper's
            "about 2400"), λ = ``reg_loss_weight`` = 10; ``"sampled"``: both terms divided by the
            image's sampled count, the common alternative (detectron2, torchvision), with λ = 1. Either
            way the batch loss is the mean of the per-image losses, so an image's loss does not depend
            on the padding or on the other images of its batch.
        reg_loss_weight: λ; ``None`` picks 10 for ``"paper"`` and 1 for ``"sampled"``.
        smooth_l1_beta: smooth-L1 transition point; py-faster-rcnn's RPN uses sigma = 3, beta = 1/9.
        pre_nms_topk_train / pre_nms_topk_test: proposals kept before NMS (6000 / 6000), per feature level.
        post_nms_topk_train / post_nms_topk_test: proposals kept after NMS (2000 / 300).
        nms_thresh: NMS IoU threshold for proposals (0.7).
        nms_per_level: with a feature pyramid, NMS within each level (True: torchvision, detectron2) or
            across all levels at once (False); see :func:`frcnn.modeling.proposals.generate_proposals`.
            One level: no difference.
        min_size: proposals with a side under this many pixels *of the original image* are dropped (16).
        score_thresh: proposals with an objectness probability under this are dropped (0: none).
        filter_after_topk: apply ``min_size`` and ``score_thresh`` after each level's top-k (torchvision,
            detectron2) rather than before it (py-faster-rcnn); see :func:`generate_proposals`.
        propose_on_padding: let anchors on the padding a batch adds below and right of a smaller image
            make proposals for it, clipped to the image (torchvision does; an image's proposals then
            depend on the batch it is in). False (default): only its own cells do.
    """

    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        allow_low_quality_matches: bool = True,
        straddle_thresh: float = 0.0,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        loss_normalization: Literal["paper", "sampled"] = "paper",
        reg_loss_weight: float | None = None,
        smooth_l1_beta: float = 1.0 / 9.0,
        pre_nms_topk_train: int = 6000,
        post_nms_topk_train: int = 2000,
        pre_nms_topk_test: int = 6000,
        post_nms_topk_test: int = 300,
        nms_thresh: float = 0.7,
        min_size: float = 16.0,
        nms_per_level: bool = True,
        score_thresh: float = 0.0,
        filter_after_topk: bool = False,
        propose_on_padding: bool = False,
    ) -> None:
        super().__init__()
        if loss_normalization not in ("paper", "sampled"):
            raise ConfigError(f"model.rpn.loss_normalization={loss_normalization!r} is not valid; allowed: paper | sampled")
        if head.objectness.out_channels != anchor_generator.num_anchors:
            raise ConfigError(
                f"RPN head predicts {head.objectness.out_channels} anchors per location but the anchor "
                f"generator makes {anchor_generator.num_anchors}: set model.rpn.head.num_anchors to "
                "len(sizes) * len(aspect_ratios)"
            )
        self.head = head
        self.anchor_generator = anchor_generator
        self.fg_iou_thresh = fg_iou_thresh
        self.bg_iou_thresh = bg_iou_thresh
        self.allow_low_quality_matches = allow_low_quality_matches
        self.straddle_thresh = straddle_thresh
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.loss_normalization = loss_normalization
        self.reg_loss_weight = reg_loss_weight if reg_loss_weight is not None else (
            10.0 if loss_normalization == "paper" else 1.0
        )
        self.smooth_l1_beta = smooth_l1_beta
        self.pre_nms_topk_train = pre_nms_topk_train
        self.post_nms_topk_train = post_nms_topk_train
        self.pre_nms_topk_test = pre_nms_topk_test
        self.post_nms_topk_test = post_nms_topk_test
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.nms_per_level = nms_per_level
        self.score_thresh = score_thresh
        self.filter_after_topk = filter_after_topk
        self.propose_on_padding = propose_on_padding

    def forward(
        self, images: ImageBatch, features: FeatureMaps | Tensor, targets: Targets | None = None
    ) -> tuple[Proposals, dict[str, Tensor]]:
        """Proposals for every image, and the two RPN losses when ``targets`` are given.

        Args:
            images: the preprocessed batch (sizes and scales are used).
            features: :class:`FeatureMaps` (a bare ``[B, C, Hf, Wf]`` tensor is one level at the anchor
                generator's stride).
            targets: ground truth in network-input pixels, or None.

        Returns:
            ``(proposals, losses)`` with losses ``{"loss_rpn_cls", "loss_rpn_reg"}`` (empty without targets).
        """
        pred = self.predict(images, features)
        proposals = self.propose(images, pred)
        losses: dict[str, Tensor] = {}
        if targets is not None:
            anchors, logits, deltas, in_image = pred.concatenated()
            rpn_targets = self.assign_targets(anchors, images.image_sizes, targets, anchor_valid=in_image)
            losses = self.losses(logits, deltas, rpn_targets, num_locations=self.num_locations(images.image_sizes))
        return proposals, losses

    def predict(self, images: ImageBatch, features: FeatureMaps | Tensor) -> AnchorPredictions:
        """The shared head on every level, and each level's anchors (differentiable logits and deltas)."""
        if isinstance(features, Tensor):
            if self.anchor_generator.num_levels != 1:
                raise ConfigError(
                    f"the anchors are tiled on {self.anchor_generator.num_levels} levels but one feature map was given: "
                    "pass the backbone's FeatureMaps"
                )
            features = FeatureMaps([features], self.anchor_generator.strides)
        self.check_strides(features.strides)
        anchors, logits, deltas, in_image = [], [], [], []
        for level, fmap in enumerate(features.maps):
            level_logits, level_deltas = self.head(fmap)
            hf, wf = fmap.shape[-2:]
            anchors.append(self.anchor_generator.grid(level, hf, wf, image_size=images.tensor.shape[-2:]))
            logits.append(level_logits.float())  # box math and losses in fp32 under autocast
            deltas.append(level_deltas.float())
            in_image.append(self.locations_in_image(hf, wf, images.image_sizes, level=level))
        return AnchorPredictions(anchors=anchors, logits=logits, deltas=deltas, in_image=in_image)

    def check_strides(self, strides: Sequence[int]) -> None:
        """Raise :class:`ConfigError` unless the anchors are tiled at the backbone's feature ``strides``."""
        if tuple(strides) != self.anchor_generator.strides:
            raise ConfigError(
                f"the backbone's feature strides {list(strides)} differ from the anchors' "
                f"{list(self.anchor_generator.strides)}: set model.rpn.anchor_generator.stride (and one list of "
                "sizes per level) to match the backbone"
            )

    def propose(self, images: ImageBatch, pred: AnchorPredictions) -> Proposals:
        """Proposals from the head's output (:func:`frcnn.modeling.proposals.generate_proposals`)."""
        # 16 px of the original image, in network-input pixels (the paper's rule is stated in original pixels).
        min_box_size = self.min_size * images.scales.min(dim=1).values
        training = self.training
        return generate_proposals(
            pred.anchors,
            [x.detach() for x in pred.logits],
            [x.detach() for x in pred.deltas],
            images.image_sizes,
            min_box_size,
            anchor_valid=None if self.propose_on_padding else pred.in_image,
            pre_nms_topk=self.pre_nms_topk_train if training else self.pre_nms_topk_test,
            nms_thresh=self.nms_thresh,
            post_nms_topk=self.post_nms_topk_train if training else self.post_nms_topk_test,
            nms_per_level=self.nms_per_level,
            score_thresh=self.score_thresh,
            filter_after_topk=self.filter_after_topk,
        )

    def locations_in_image(self, hf: int, wf: int, image_sizes: Tensor, *, level: int = 0) -> Tensor:
        """``[B, Hf*Wf*A]`` bool: the anchor sits on one of its image's own cells of ``level``, not on padding.

        A batch is padded to its largest image; anchors on the padded cells of a smaller image belong to
        no image. They make no proposals and take no part in training, so an image gets the same
        anchors whether it is batched alone or beside a larger one.
        """
        cells = feature_cells(image_sizes, self.anchor_generator.strides[level])  # [B, 2] (rows, cols)
        ys = torch.arange(hf, device=image_sizes.device)
        xs = torch.arange(wf, device=image_sizes.device)
        inside = (ys[None, :, None] < cells[:, 0, None, None]) & (xs[None, None, :] < cells[:, 1, None, None])  # [B, Hf, Wf]
        num_anchors = self.anchor_generator.num_anchors
        return inside[..., None].expand(-1, -1, -1, num_anchors).reshape(image_sizes.shape[0], hf * wf * num_anchors)

    @torch.no_grad()
    def assign_targets(
        self, anchors: Tensor, image_sizes: Tensor, targets: Targets, anchor_valid: Tensor | None = None
    ) -> RPNTargets:
        """Label anchors (IoU ≥ 0.7 / best anchor → positive, < 0.3 → negative), sample 256 per image.

        Args:
            anchors: ``[N, 4]``.
            image_sizes: ``[B, 2]``.
            targets: padded ground truth ``[B, G, ...]``.
            anchor_valid: ``[B, N]`` bool, anchors of each image's own cells (:meth:`predict`);
                the others are never labelled.
        """
        batch = targets.boxes.shape[0]
        anchors_b = anchors[None].expand(batch, -1, -1)  # [B, N, 4]
        inside = within_image(anchors_b, image_sizes, self.straddle_thresh)  # [B, N]
        if anchor_valid is not None:
            inside = inside & anchor_valid
        return anchor_targets(
            anchors_b, targets.boxes, anchor_valid=inside, gt_valid=targets.valid,
            fg_iou_thresh=self.fg_iou_thresh, bg_iou_thresh=self.bg_iou_thresh,
            allow_low_quality_matches=self.allow_low_quality_matches,
            num_samples=self.batch_size_per_image, positive_fraction=self.positive_fraction,
        )

    def num_locations(self, image_sizes: Tensor) -> Tensor:
        """``[B]`` anchor locations covering each image's own (unpadded) extent: ``Σ_l ceil(h/s_l) * ceil(w/s_l)``.

        This is ``N_reg`` of the paper's loss (eq. 1), counted per image: padding added to batch the
        image beside a larger one adds locations but no anchors that can be sampled.
        """
        total = 0
        for stride in self.anchor_generator.strides:
            cells = feature_cells(image_sizes, stride)
            total = total + cells[:, 0] * cells[:, 1]
        return total

    def losses(self, logits: Tensor, deltas: Tensor, t: RPNTargets, *, num_locations: Tensor) -> dict[str, Tensor]:
        """Binary cross-entropy on sampled anchors and smooth L1 on sampled positives, per image, averaged.

        Args:
            logits: ``[B, N]``.
            deltas: ``[B, N, 4]``.
            t: targets from :meth:`assign_targets`.
            num_locations: ``[B]`` each image's anchor locations (``N_reg`` under ``"paper"``
                normalization), from :meth:`num_locations`.
        """
        sampled = t.sampled_pos | t.sampled_neg
        num_sampled = sampled.sum(dim=1).clamp(min=1)  # [B] N_cls per image
        cls = F.binary_cross_entropy_with_logits(logits, t.sampled_pos.float(), reduction="none")
        loss_cls = (cls * sampled).sum(dim=1) / num_sampled  # [B]
        reg = F.smooth_l1_loss(deltas, t.deltas, beta=self.smooth_l1_beta, reduction="none").sum(-1)  # [B, N]
        reg = (reg * t.sampled_pos).sum(dim=1)  # [B]
        n_reg = num_locations.to(reg.dtype) if self.loss_normalization == "paper" else num_sampled.to(reg.dtype)
        return {"loss_rpn_cls": loss_cls.mean(), "loss_rpn_reg": self.reg_loss_weight * (reg / n_reg).mean()}
