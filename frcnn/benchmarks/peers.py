"""torchvision's Faster R-CNN configured like a built frcnn model: the peer for benchmarks and races.

:func:`torchvision_peer` reads every setting it can from an :class:`frcnn.modeling.model.FasterRCNN` and
builds ``torchvision.models.detection.FasterRCNN`` with the same trunk (or feature pyramid), box head,
anchors per level, RPN and RoI sampling numbers, pooled levels, pooled size, image size and normalization, starting from the same weights (a
copy). Where torchvision has no such setting it keeps its own behaviour, and nothing of
torchvision's is changed to favour frcnn:

==================================  ==========================  ==========================
behaviour                           frcnn                       torchvision (kept)
==================================  ==========================  ==========================
anchor centres                      ``offset`` (0.5: mid-cell)  cell corner (offset 0)
anchors crossing the image border   ignored (``straddle``)      used
RPN loss normalization              the paper's (N_reg, λ=10)   sampled anchors, λ=1
proposals' minimum size             ``rpn.min_size`` px         1e-3 px
RoI background IoU range            [0.1, 0.5)                  [0, 0.5)
RoIs when background runs short     filled by repetition        fewer RoIs
RoIAlign half-pixel correction      ``aligned`` (True)          False
box-head smooth L1 beta             1.0                         1/9
==================================  ==========================  ==========================

:class:`PeerAdapter` gives the peer frcnn's calling convention (``model(images, targets)`` returning
:class:`frcnn.modeling.model.ModelOutput`), so one training loop and :func:`frcnn.evaluation.coco_eval.predict` serve both.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from frcnn.errors import ConfigError, InputError
from frcnn.modeling.model import FasterRCNN, ModelOutput


class _Pyramid(nn.Module):
    """Wraps frcnn's FPN backbone (torchvision's own ``body`` and ``fpn`` modules) as torchvision's ``BackboneWithFPN``."""

    def __init__(self, body: nn.Module, fpn: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body, self.fpn = body, fpn
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.fpn(self.body(x))


class _Trunk(nn.Module):
    """Wraps a stride-16 trunk as a torchvision backbone: ``{"0": [B, C, H/16, W/16]}``."""

    def __init__(self, trunk: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = trunk
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return OrderedDict([("0", self.body(x))])


def torchvision_peer(model: FasterRCNN) -> nn.Module:
    """torchvision's ``FasterRCNN`` with ``model``'s settings and a copy of its current weights. Raises ConfigError
    when ``model`` uses RoI max pooling (torchvision's detector has none) or tests at a size it does not train at."""
    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    rpn, heads, prep = model.rpn, model.roi_heads, model.preprocessor
    if heads.pooler != "align":
        raise ConfigError(f"torchvision's FasterRCNN has no RoI max pooling; build the frcnn model with roi_heads.pooler=align, not {heads.pooler!r}")
    backbone = copy.deepcopy(model.backbone)
    gen = rpn.anchor_generator
    pyramid = hasattr(backbone, "fpn")
    rpn_head, predictor = _copied_heads(model)

    if pyramid:  # torchvision names the levels '0', '1', ... and the max-pooled one 'pool'
        names = [str(i) for i in range(len(gen.strides) - 1)] + ["pool"]
        pooled = heads.pooled_levels if heads.pooled_levels is not None else range(len(gen.strides))
        trunk, pooled_names = _Pyramid(backbone.body, backbone.fpn, backbone.out_channels), [names[i] for i in pooled]
    else:
        trunk, pooled_names = _Trunk(backbone.trunk, backbone.out_channels), ["0"]
    peer = TorchvisionFasterRCNN(
        trunk,
        min_size=prep.min_sizes,
        max_size=prep.max_size,
        image_mean=prep.mean.flatten().tolist(),
        image_std=prep.std.flatten().tolist(),
        rpn_anchor_generator=AnchorGenerator(sizes=gen.level_sizes, aspect_ratios=(gen.aspect_ratios,) * gen.num_levels),
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=rpn.pre_nms_topk_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_topk_test,
        rpn_post_nms_top_n_train=rpn.post_nms_topk_train,
        rpn_post_nms_top_n_test=rpn.post_nms_topk_test,
        rpn_nms_thresh=rpn.nms_thresh,
        rpn_fg_iou_thresh=rpn.fg_iou_thresh,
        rpn_bg_iou_thresh=rpn.bg_iou_thresh,
        rpn_batch_size_per_image=rpn.batch_size_per_image,
        rpn_positive_fraction=rpn.positive_fraction,
        box_roi_pool=MultiScaleRoIAlign(pooled_names, output_size=heads.pooler_resolution, sampling_ratio=heads.sampling_ratio),
        box_head=copy.deepcopy(heads.box_head),
        box_predictor=predictor,
        box_score_thresh=heads.score_thresh,
        box_nms_thresh=heads.nms_thresh,
        box_detections_per_img=heads.detections_per_image,
        box_fg_iou_thresh=heads.fg_iou_thresh,
        box_bg_iou_thresh=heads.bg_iou_thresh_hi,
        box_batch_size_per_image=heads.batch_size_per_image,
        box_positive_fraction=heads.positive_fraction,
        bbox_reg_weights=heads.bbox_reg_weights,
    )
    # torchvision trains at a random choice of min_size and tests at min_size[-1]: put frcnn's test size last.
    if prep.min_size_test not in prep.min_sizes:
        raise ConfigError(
            f"torchvision tests at one of its training sizes; frcnn's test size {prep.min_size_test} is not among "
            f"{prep.min_sizes}: add it to the preprocessor's min_size to build the peer"
        )
    peer.transform.min_size = tuple(s for s in prep.min_sizes if s != prep.min_size_test) + (prep.min_size_test,)
    return peer


class PeerAdapter(nn.Module):
    """torchvision's detector behind frcnn's interface: ``forward(images, targets=None) -> ModelOutput``.

    In training mode with targets it returns the losses (torchvision's names); in eval mode, the
    detections (original pixels, labels ``1..K``). torchvision cannot give both from one call.
    """

    def __init__(self, peer: nn.Module) -> None:
        super().__init__()
        self.peer = peer

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None) -> ModelOutput:
        # torchvision takes float images in [0, 1]; frcnn also takes uint8 (what the data loader gives).
        images = [im.float().div_(255) if im.dtype == torch.uint8 else im for im in images]
        if self.training:
            if targets is None:
                raise InputError("torchvision's FasterRCNN needs targets in training mode; call .eval() to detect")
            return ModelOutput(losses=self.peer(images, [dict(t) for t in targets]), detections=None)
        return ModelOutput(losses={}, detections=self.peer(images))


def _copied_heads(model: FasterRCNN) -> tuple[nn.Module, nn.Module]:
    """torchvision's ``RPNHead`` and ``FastRCNNPredictor`` holding copies of ``model``'s RPN head and predictor weights."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead

    rpn, heads = model.rpn, model.roi_heads
    rpn_head = RPNHead(model.backbone.out_channels, rpn.anchor_generator.num_anchors)
    rpn_convs = [m for m in rpn_head.conv.modules() if isinstance(m, nn.Conv2d)]
    if len(rpn_convs) != 1:
        raise RuntimeError(f"unexpected torchvision RPNHead layout: {len(rpn_convs)} 3x3 convs")
    for theirs, ours in ((rpn_convs[0], rpn.head.conv), (rpn_head.cls_logits, rpn.head.objectness), (rpn_head.bbox_pred, rpn.head.deltas)):
        theirs.load_state_dict(ours.state_dict())
    predictor = FastRCNNPredictor(heads.predictor.cls_score.in_features, model.num_classes + 1)
    predictor.cls_score.load_state_dict(heads.predictor.cls_score.state_dict())
    predictor.bbox_pred.load_state_dict(heads.predictor.bbox_pred.state_dict())
    return rpn_head, predictor
