"""SiamRPN (Li et al., CVPR 2018): a Siamese backbone and an RPN head whose kernels come from the template.

Shape shorthand: ``B`` template/search pairs, ``C`` backbone channels, ``k`` anchors per position
(5: aspect ratios 0.33, 0.5, 1, 2, 3 at one scale), ``R`` the response map's side (17), ``N = R * R * k``.

The data flow, for a ``127 x 127`` template ``z`` and a ``255 x 255`` search crop ``x``::

    z -> backbone -> [B, C, 6, 6]   -> template convs -> kernels [B, 2k*C', 4, 4] and [B, 4k*C', 4, 4]
    x -> backbone -> [B, C, 22, 22] -> search convs   -> [B, C', 20, 20]
    cross-correlation (each pair with its own kernels) -> cls [B, 2k, 17, 17], reg [B, 4k, 17, 17]

The anchors, the IoU matcher, the balanced sampler and the box coder are the detector's own
(:mod:`frcnn.modeling`): the tracker is the RPN doing a second job, with the template's features as
the weights of its head.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18

from frcnn.engine.checkpoint import CheckpointError, load_checkpoint
from frcnn.errors import ConfigError
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.backbones.weights import WeightsUnavailableError, load_state_dict
from frcnn.modeling.box_coder import decode_boxes
from frcnn.modeling.preprocess import IMAGENET_MEAN, IMAGENET_STD
from frcnn.modeling.rpn import anchor_targets

# SiamRPN regresses plain normalized deltas: dx = (gx - ax) / aw, dw = log(gw / aw) (paper, eq. 3).
DELTA_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def cross_correlate(search: Tensor, kernels: Tensor) -> Tensor:
    """Correlate each pair's search features with that pair's own kernels (one grouped convolution).

    Args:
        search: ``[B, C, H, W]``.
        kernels: ``[B, O, C, h, w]``: ``O`` output maps per pair.

    Returns:
        ``[B, O, H - h + 1, W - w + 1]``.
    """
    batch, out_maps, channels, kh, kw = kernels.shape
    response = F.conv2d(search.reshape(1, batch * channels, *search.shape[2:]), kernels.reshape(batch * out_maps, channels, kh, kw), groups=batch)
    return response.reshape(batch, out_maps, *response.shape[2:])


def depthwise_correlate(search: Tensor, kernels: Tensor) -> Tensor:
    """Channel-by-channel correlation (SiamRPN++'s depth-wise variant).

    Args:
        search: ``[B, C, H, W]``.
        kernels: ``[B, C, h, w]``.

    Returns:
        ``[B, C, H - h + 1, W - w + 1]``.
    """
    batch, channels = kernels.shape[:2]
    response = F.conv2d(
        search.reshape(1, batch * channels, *search.shape[2:]), kernels.reshape(batch * channels, 1, *kernels.shape[2:]), groups=batch * channels
    )
    return response.reshape(batch, channels, *response.shape[2:])


class SiameseBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm of the shared backbone, with one set of running statistics per branch.

    In training the template batch ``[B, C, 6, 6]`` and the search batch ``[B, C, 22, 22]`` pass the backbone
    in separate calls, so each branch is normalized with its *own* batch statistics, which differ (a
    127-pixel crop around the target against a 255-pixel crop with more background). One running average
    of both would give the tracker statistics that neither branch was trained with: on a model trained
    80 steps from scratch the top box had IoU > 0.5 with the target in 56 % of 64 training pairs with
    one shared average, 67 % with per-branch statistics. ``running_mean`` / ``running_var`` serve the search
    branch, ``template_mean`` / ``template_var`` the template branch; :attr:`branch` (set by
    :class:`SiamRPN`) says which. :meth:`SiamRPN.for_branch` turns them into plain BatchNorms that
    :func:`~frcnn.modeling.fold.fold_batchnorm` folds.
    """

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if self.momentum is None or not self.track_running_stats:
            raise ValueError("SiameseBatchNorm2d keeps exponential running statistics per branch: momentum must be a number "
                             "and track_running_stats True")
        self.register_buffer("template_mean", torch.zeros(num_features))
        self.register_buffer("template_var", torch.ones(num_features))
        self.branch = "search"

    def forward(self, x: Tensor) -> Tensor:
        if self.branch == "search":
            return super().forward(x)
        return F.batch_norm(x, self.template_mean, self.template_var, self.weight, self.bias, self.training, self.momentum, self.eps)

    def plain(self, branch: str) -> nn.BatchNorm2d:
        """A plain :class:`nn.BatchNorm2d` holding ``branch``'s running statistics (same parameters, copied)."""
        norm = nn.BatchNorm2d(self.num_features, eps=self.eps, momentum=self.momentum, affine=self.affine)
        norm = norm.to(device=self.running_mean.device, dtype=self.running_mean.dtype)
        state = {k: v for k, v in self.state_dict().items() if k not in ("template_mean", "template_var")}
        if branch == "template":
            state |= {"running_mean": self.template_mean, "running_var": self.template_var}
        norm.load_state_dict(state)
        return norm.train(self.training)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
        # A checkpoint from before per-branch statistics: both branches start from its one running average.
        for name, shared in (("template_mean", "running_mean"), ("template_var", "running_var")):
            if prefix + name not in state_dict and prefix + shared in state_dict:
                state_dict[prefix + name] = state_dict[prefix + shared].clone()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


class AlexNet(nn.Module):
    """The paper's modified AlexNet: no padding, stride 8, BatchNorm; 127 -> 6x6 and 255 -> 22x22 features.

    Args:
        channels: widths of conv1-conv4 (paper: 96, 256, 384, 384; the CPU demo uses narrower ones).
        out_channels: width of conv5, the feature both branches share (paper: 256).
    """

    def __init__(self, *, channels: Sequence[int] = (96, 256, 384, 384), out_channels: int = 256) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        c5 = out_channels
        norm = SiameseBatchNorm2d
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, stride=2), norm(c1), nn.MaxPool2d(3, 2), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 5), norm(c2), nn.MaxPool2d(3, 2), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 3), norm(c3), nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3), norm(c4), nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3), norm(c5),
        )
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` normalized -> ``[B, C, (S - 79) / 8 + 1, ...]`` (127 -> 6, 255 -> 22)."""
        return self.features(images)


class ResNet18Trunk(nn.Module):
    """ResNet-18's stem, res2 and res3 (stride 8, padded) and a 1x1 projection: 127 -> 16x16, 255 -> 32x32.

    With padding the feature cell ``i`` sits at input pixel ``8 i`` in both crops, so template and search
    stay aligned and the up-channel head's 3x3 convolutions still give a 17x17 response (30 - 14 + 1).

    Args:
        out_channels: the projection's width (the head's ``in_channels``).
        weights: ImageNet weights for stem, res2 and res3: a torchvision name (``IMAGENET1K_V1``, downloaded
            once) or a local ``resnet18.pth`` state dict, as the detector's backbones take them.
        init_from: a trained frcnn detector checkpoint with a ResNet-18 backbone (C4 or FPN): its stem, res2
            and res3, which have learned to see objects, start the tracker where nothing can be downloaded.
    """

    def __init__(self, *, out_channels: int = 256, weights: str | None = None, init_from: str | None = None) -> None:
        super().__init__()
        if weights and init_from:
            raise ConfigError("model.backbone.weights and model.backbone.init_from both set: start from one of them")
        net = resnet18(weights=None, norm_layer=SiameseBatchNorm2d)
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)
        self.project = nn.Sequential(nn.Conv2d(128, out_channels, 1, bias=False), SiameseBatchNorm2d(out_channels))
        self.out_channels = out_channels
        if weights:
            self._load(load_state_dict(weights, "ResNet18_Weights"), weights)
        elif init_from:
            self._load(detector_trunk_state(init_from), init_from)

    def _load(self, resnet_state: dict[str, Tensor], source: str) -> None:
        """Stem, res2 and res3 from a state dict in torchvision's ResNet names (``conv1.*``, ``layer1.*`` ...)."""
        index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5"}
        state = {f"{index[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}": v for k, v in resnet_state.items() if k.split(".", 1)[0] in index}
        own = self.body.state_dict()
        missing = [k for k in own if k not in state and not k.endswith(("num_batches_tracked", "template_mean", "template_var"))]
        bad = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or bad:
            raise WeightsUnavailableError(f"{source} does not hold a ResNet-18 stem, res2 and res3 "
                                          f"({'lacks ' + missing[0] if missing else 'wrong shape of ' + bad[0]})")
        self.body.load_state_dict(state, strict=False)  # each SiameseBatchNorm2d copies the running statistics per branch

    def forward(self, images: Tensor) -> Tensor:
        return self.project(self.body(images))


def detector_trunk_state(checkpoint: str) -> dict[str, Tensor]:
    """The ResNet backbone of an frcnn detector checkpoint in torchvision's names: C4 models keep it as
    ``backbone.trunk.{0: stem, 1: layer1, 2: layer2, 3: layer3}``, FPN models as ``backbone.body.<name>``."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("kind", "faster_rcnn") != "faster_rcnn":
        raise CheckpointError(f"model.backbone.init_from={checkpoint} is a {ckpt.get('kind')} checkpoint: give a detector's")
    stages = {"0.0": "conv1", "0.1": "bn1", "1": "layer1", "2": "layer2", "3": "layer3"}
    out = {}
    for key, value in ckpt["model"].items():
        if key.startswith("backbone.body."):
            out[key[len("backbone.body."):]] = value
        elif key.startswith("backbone.trunk."):
            rest = key[len("backbone.trunk."):]
            for prefix, name in stages.items():
                if rest.startswith(prefix + "."):
                    out[name + rest[len(prefix):]] = value
                    break
    if "conv1.weight" not in out:
        raise CheckpointError(f"model.backbone.init_from={checkpoint}: its backbone is not a ResNet (C4 or FPN)")
    return out


def centre_crop(features: Tensor, size: int) -> Tensor:
    """The central ``size x size`` cells of ``[B, C, H, W]`` features (``H - size`` and ``W - size`` even, so
    that the crop keeps the centre where it was)."""
    h, w = features.shape[-2:]
    if size < 3 or size > min(h, w) or (h - size) % 2 or (w - size) % 2:
        raise ConfigError(f"model.template_crop={size} does not fit the template's {h}x{w} feature cells symmetrically: "
                          f"give a size from 3 (the head's 3x3 convolutions) to {min(h, w)} that differs from it by an even number")
    top, left = (h - size) // 2, (w - size) // 2
    return features[..., top : top + size, left : left + size]


class TemplateKernels(NamedTuple):
    """What the template branch computes once per target: the head's correlation kernels.

    ``cls``: ``[B, 2k, C', h, w]`` (up-channel) or ``[B, C', h, w]`` (depth-wise); ``reg`` likewise with ``4k``.
    """

    cls: Tensor
    reg: Tensor


class UpChannelHead(nn.Module):
    """The paper's head: template features -> ``2k * C'`` and ``4k * C'`` channels, reshaped into kernels.

    Args:
        in_channels: backbone channels ``C``.
        channels: ``C'`` of the correlated features (256 in the paper).
        num_anchors: ``k``.
    """

    def __init__(self, *, in_channels: int, channels: int = 256, num_anchors: int = 5) -> None:
        super().__init__()
        self.k, self.channels = num_anchors, channels
        self.template_cls = nn.Conv2d(in_channels, channels * 2 * num_anchors, 3)
        self.template_reg = nn.Conv2d(in_channels, channels * 4 * num_anchors, 3)
        self.search_cls = nn.Conv2d(in_channels, channels, 3)
        self.search_reg = nn.Conv2d(in_channels, channels, 3)
        self.reg_adjust = nn.Conv2d(4 * num_anchors, 4 * num_anchors, 1)  # rescales the correlation's raw deltas

    def kernels(self, template: Tensor) -> TemplateKernels:
        cls = self.template_cls(template)  # [B, 2k*C', h, w]
        reg = self.template_reg(template)  # [B, 4k*C', h, w]
        b, _, h, w = cls.shape
        return TemplateKernels(cls.reshape(b, 2 * self.k, self.channels, h, w), reg.reshape(b, 4 * self.k, self.channels, h, w))

    def forward(self, kernels: TemplateKernels, search: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, C, H, W]`` search features -> ``([B, 2k, R, R], [B, 4k, R, R])``.

        Each response value sums ``C' * h * w`` products of two features (1024 for the paper's 256 x 4 x 4):
        dividing by its square root starts the head at unit scale instead of ~30 (a constant factor the
        learned convolutions absorb; from scratch the unscaled head's first losses are in the tens).
        """
        fan_in = kernels.cls.shape[2] * kernels.cls.shape[3] * kernels.cls.shape[4]
        cls = cross_correlate(self.search_cls(search), kernels.cls) / fan_in**0.5
        reg = self.reg_adjust(cross_correlate(self.search_reg(search), kernels.reg) / fan_in**0.5)
        return cls, reg


def _conv_bn_relu(cin: int, cout: int, size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, size, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DepthwiseHead(nn.Module):
    """The depth-wise variant (Li et al., SiamRPN++, 2019): per-channel correlation, then 1x1 convolutions.

    Far fewer parameters than the up-channel head (no ``2k * C'``-channel template convolution).
    """

    def __init__(self, *, in_channels: int, channels: int = 256, num_anchors: int = 5) -> None:
        super().__init__()
        self.template_cls, self.search_cls = _conv_bn_relu(in_channels, channels, 3), _conv_bn_relu(in_channels, channels, 3)
        self.template_reg, self.search_reg = _conv_bn_relu(in_channels, channels, 3), _conv_bn_relu(in_channels, channels, 3)
        self.out_cls = nn.Sequential(_conv_bn_relu(channels, channels, 1), nn.Conv2d(channels, 2 * num_anchors, 1))
        self.out_reg = nn.Sequential(_conv_bn_relu(channels, channels, 1), nn.Conv2d(channels, 4 * num_anchors, 1))

    def kernels(self, template: Tensor) -> TemplateKernels:
        return TemplateKernels(self.template_cls(template), self.template_reg(template))

    def forward(self, kernels: TemplateKernels, search: Tensor) -> tuple[Tensor, Tensor]:
        cls = self.out_cls(depthwise_correlate(self.search_cls(search), kernels.cls))
        reg = self.out_reg(depthwise_correlate(self.search_reg(search), kernels.reg))
        return cls, reg


class TrackerOutput(NamedTuple):
    """``logits``: ``[B, N, 2]`` (background, foreground) per anchor; ``deltas``: ``[B, N, 4]``;
    ``losses``: ``{"loss_cls", "loss_reg"}`` when boxes were given, else empty."""

    logits: Tensor
    deltas: Tensor
    losses: dict[str, Tensor]


class SiamRPN(nn.Module):
    """Siamese backbone + RPN head, trained on (template, search, box) triples.

    Args:
        backbone: shared by both branches; has ``out_channels``.
        head: :class:`UpChannelHead` or :class:`DepthwiseHead`.
        anchor_generator: the detector's :class:`AnchorGenerator` (paper: size 64, ratios 0.33-3, stride 8);
            its grid is shifted so that the response map's centre cell sits at the search crop's centre.
        response_size: ``R`` (17 for 255-pixel search crops).
        search_size: side of the search crop (255).
        fg_iou_thresh / bg_iou_thresh: anchors with IoU > 0.6 are positive, < 0.3 negative (paper, sec. 4.1).
        samples_per_pair / positive_fraction: 64 anchors per pair, at most 16 positive (paper).
        reg_weight: ``λ`` in ``L = L_cls + λ L_reg``.
        smooth_l1_beta: smooth-L1 transition point of ``L_reg`` (the RPN's 1/9).
        balance_cls: ``L_cls`` as the mean of the positives' and the negatives' mean cross-entropy (DaSiamRPN
            and pysot) instead of the mean over all sampled anchors (paper): with at most 16 of 64 positive,
            and none in a negative pair, the plain mean weights background 3:1 or more. Both means are
            over the whole batch's sampled anchors.
        template_crop: keep only the central ``template_crop x template_crop`` cells of the template's
            features before the head (SiamRPN++, sec. 3.4: 7 of 15): the kernels then see the target and
            little of the background around it, which otherwise matches the place the target has left.
            The kernels shrink, so the response grows: ResNet-18's 16 cells cropped to 8 give
            ``R = 30 - 6 + 1 = 25``. ``None``: the whole template (the paper).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        head: nn.Module,
        anchor_generator: AnchorGenerator,
        response_size: int = 17,
        search_size: int = 255,
        fg_iou_thresh: float = 0.6,
        bg_iou_thresh: float = 0.3,
        samples_per_pair: int = 64,
        positive_fraction: float = 0.25,
        reg_weight: float = 1.0,
        smooth_l1_beta: float = 1.0 / 9.0,
        balance_cls: bool = False,
        template_crop: int | None = None,
    ) -> None:
        super().__init__()
        if template_crop is not None and template_crop < 3:  # the fit to the feature map: centre_crop, on the first template
            raise ConfigError(f"model.template_crop={template_crop}: give at least 3 feature cells (the head's 3x3 convolutions), or null")
        self.template_crop = template_crop
        self.backbone, self.head = backbone, head
        self.num_anchors = anchor_generator.num_anchors
        self.response_size, self.search_size = response_size, search_size
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, bg_iou_thresh
        self.samples_per_pair, self.positive_fraction = samples_per_pair, positive_fraction
        self.reg_weight, self.smooth_l1_beta, self.balance_cls = reg_weight, smooth_l1_beta, balance_cls
        anchors = anchor_generator(response_size, response_size)  # [N, 4], ordered (y, x, a)
        # Cell (i, j) looks at the search crop's centre shifted by ((j - R // 2) * stride, (i - R // 2) * stride).
        shift = search_size / 2 - (response_size // 2 + anchor_generator.offset) * anchor_generator.stride
        self.register_buffer("anchors", anchors + shift, persistent=False)
        # ImageNet statistics: the inputs are uint8 RGB crops, normalized inside the model (as the detector does).
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` uint8 (or float in 0..255) RGB -> normalized float."""
        return (images.float() - self.pixel_mean) / self.pixel_std

    def template(self, templates: Tensor) -> TemplateKernels:
        """The template branch, run once per target: ``[B, 3, 127, 127]`` -> the head's kernels."""
        norms = [m for m in self.backbone.modules() if isinstance(m, SiameseBatchNorm2d)]
        for m in norms:
            m.branch = "template"
        try:
            features = self.backbone(self.normalize(templates))
        finally:
            for m in norms:
                m.branch = "search"
        if self.template_crop is not None:
            features = centre_crop(features, self.template_crop)
        return self.head.kernels(features)

    def for_branch(self, branch: str) -> SiamRPN:
        """A copy whose backbone BatchNorms are plain ones with ``branch``'s statistics ("template" or "search"):
        right for that branch only, and foldable (:func:`~frcnn.modeling.fold.fold_batchnorm`)."""
        if branch not in ("template", "search"):
            raise ValueError(f"branch must be 'template' or 'search', not {branch!r}")
        copy_ = copy.deepcopy(self)
        for parent in list(copy_.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, SiameseBatchNorm2d):
                    setattr(parent, name, child.plain(branch))
        return copy_

    def respond(self, kernels: TemplateKernels, searches: Tensor) -> tuple[Tensor, Tensor]:
        """The search branch: ``[B, 3, 255, 255]`` -> ``(logits [B, N, 2], deltas [B, N, 4])`` in anchor order.

        One search crop (``B = 1``) against ``K > 1`` kernels (a target and its distractors, DaSiamRPN) runs the
        backbone once and returns ``K`` responses."""
        features = self.backbone(self.normalize(searches))
        if features.shape[0] == 1 and kernels.cls.shape[0] > 1:
            features = features.expand(kernels.cls.shape[0], -1, -1, -1)
        cls, reg = self.head(kernels, features)
        b, _, r, _ = cls.shape
        if r != self.response_size:
            raise ConfigError(f"model.response_size={self.response_size}, but this backbone and head give {r}x{r} responses "
                              f"for {searches.shape[-1]}-pixel search crops: set model.response_size={r}")
        # [B, k*2, R, R] -> [B, R, R, k, 2] -> [B, N, 2]: the anchors' (y, x, a) order
        logits = cls.reshape(b, self.num_anchors, 2, r, r).permute(0, 3, 4, 1, 2).reshape(b, -1, 2)
        deltas = reg.reshape(b, self.num_anchors, 4, r, r).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
        return logits, deltas

    def forward(self, templates: Tensor, searches: Tensor, boxes: Tensor | None = None) -> TrackerOutput:
        """Both branches on ``B`` pairs; with ``boxes`` (``[B, 4]`` XYXY in search-crop pixels, a box of zero
        width marking a negative pair: the target is not in the search crop) also the losses."""
        logits, deltas = self.respond(self.template(templates), searches)
        if boxes is None:
            return TrackerOutput(logits, deltas, {})
        return TrackerOutput(logits, deltas, self.losses(logits, deltas, boxes))

    def decode(self, logits: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
        """``(foreground probability [B, N], boxes [B, N, 4] XYXY in search-crop pixels)``."""
        return logits.float().softmax(-1)[..., 1], decode_boxes(deltas, self.anchors, DELTA_WEIGHTS)

    @torch.no_grad()
    def assign_targets(self, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Label and sample the anchors of each pair with the RPN's :func:`~frcnn.modeling.rpn.anchor_targets`:
        ``(sampled_pos, sampled_neg, target_deltas)``, ``[B, N]``, ``[B, N]`` bool and ``[B, N, 4]``. One ground
        truth per pair, absent (every anchor background) in a negative pair; no low-quality matches (paper)."""
        present = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # [B]
        anchors = self.anchors[None].expand(boxes.shape[0], -1, -1)  # [B, N, 4]
        # The paper's "> 0.6" is strict; the matcher's foreground rule is ">=" (an exact 0.6 is vanishingly rare).
        t = anchor_targets(
            anchors, boxes[:, None], anchor_valid=torch.ones(anchors.shape[:2], dtype=torch.bool, device=boxes.device),
            gt_valid=present[:, None], fg_iou_thresh=self.fg_iou_thresh, bg_iou_thresh=self.bg_iou_thresh,
            allow_low_quality_matches=False, num_samples=self.samples_per_pair, positive_fraction=self.positive_fraction,
            weights=DELTA_WEIGHTS,
        )
        return t.sampled_pos, t.sampled_neg, t.deltas

    def losses(self, logits: Tensor, deltas: Tensor, boxes: Tensor) -> dict[str, Tensor]:
        """``L_cls``: cross-entropy over the sampled anchors (mean; ``balance_cls``: positives and negatives
        weighted alike); ``L_reg``: smooth L1 over the sampled
        positives' normalized deltas (summed over the 4 coordinates, mean over positives), times ``λ``."""
        sampled_pos, sampled_neg, target_deltas = self.assign_targets(boxes)
        sampled = sampled_pos | sampled_neg
        ce = F.cross_entropy(logits.float().reshape(-1, 2), sampled_pos.reshape(-1).long(), reduction="none").reshape(sampled.shape)
        if self.balance_cls:
            pos_ce = (ce * sampled_pos).sum() / sampled_pos.sum().clamp(min=1)
            neg_ce = (ce * sampled_neg).sum() / sampled_neg.sum().clamp(min=1)
            loss_cls = torch.where(sampled_pos.any(), 0.5 * (pos_ce + neg_ce), neg_ce)  # no host sync
        else:
            loss_cls = (ce * sampled).sum() / sampled.sum().clamp(min=1)
        reg = F.smooth_l1_loss(deltas.float(), target_deltas, beta=self.smooth_l1_beta, reduction="none").sum(-1)  # [B, N]
        loss_reg = (reg * sampled_pos).sum() / sampled_pos.sum().clamp(min=1)
        return {"loss_cls": loss_cls, "loss_reg": self.reg_weight * loss_reg}
