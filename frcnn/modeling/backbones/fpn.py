"""Feature pyramids (Lin et al., CVPR 2017) on torchvision's ResNet and MobileNetV3 backbones.

The bottom-up network's stage outputs ``C2..C5`` go through torchvision's
:class:`~torchvision.ops.FeaturePyramidNetwork` (a 1x1 lateral conv per stage, top-down nearest
upsampling and addition, a 3x3 output conv per level) into ``P2..P5``, all 256 channels; ``P6`` is
``P5`` max-pooled with stride 2 (:class:`~torchvision.ops.feature_pyramid_network.LastLevelMaxPool`),
as in the paper, where P6 serves the RPN's largest anchors only. The modules are torchvision's
``BackboneWithFPN`` parts under the same names (``body``, ``fpn``), so a torchvision detector's
backbone weights have the same keys here.

Unlike C4 (whose res5 is the box head), an FPN backbone has no box head: the RoI stage builds its own
(:mod:`frcnn.modeling.box_heads`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from frcnn.errors import ConfigError
from frcnn.modeling.backbones.resnet import (
    _ARCH,
    _freeze_batchnorm,
    _frozen_copy,
    _norm_layer,
)
from frcnn.modeling.backbones.weights import load_into, load_state_dict
from frcnn.modeling.structures import FeatureMaps

Norm = Literal["auto", "frozen_bn", "bn", "gn"]
# The pyramid's own convs: with bias and no norm (the paper, torchvision's v1 detectors), or conv-norm
# without bias (torchvision's fasterrcnn_resnet50_fpn_v2: BatchNorm).
_FPN_NORMS = {"none": None, "bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}


class _Pyramid(nn.Module):
    """``body`` (torchvision's ``IntermediateLayerGetter``) → ``fpn`` → :class:`FeatureMaps`."""

    body: nn.Module
    fpn: nn.Module
    strides: tuple[int, ...]
    out_channels: int

    def _build(
        self, network: nn.Module, return_layers: dict[str, str], in_channels: list[int], out_channels: int, fpn_norm: str
    ) -> None:
        if fpn_norm not in _FPN_NORMS:
            raise ConfigError(f"model.backbone.fpn_norm must be one of {sorted(_FPN_NORMS)}, got {fpn_norm!r}")
        pyramid = BackboneWithFPN(
            network, return_layers, in_channels, out_channels, extra_blocks=LastLevelMaxPool(), norm_layer=_FPN_NORMS[fpn_norm]
        )
        self.body, self.fpn = pyramid.body, pyramid.fpn
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> FeatureMaps:
        """``[B, 3, H, W]`` → one ``[B, out_channels, H/s, W/s]`` map per stride ``s`` in ``strides``."""
        return FeatureMaps(list(self.fpn(self.body(images)).values()), self.strides)

    def cam_layer(self, level: int) -> nn.Module:
        """The module whose output is pyramid level ``level`` (its 3x3 output conv), for Grad-CAM.

        The max-pooled extra level (P6) has no module of its own: its map is P5's, so P5's conv is returned.
        """
        blocks = self.fpn.layer_blocks
        return blocks[min(level, len(blocks) - 1)]


class ResNetFPN(_Pyramid):
    """ResNet-{18,34,50,101}-FPN: ``C2..C5`` (res2-res5) → ``P2..P6`` at strides 4, 8, 16, 32, 64.

    Args:
        depth: 18, 34, 50 or 101.
        weights: ``None`` (from scratch), a torchvision weights name (``"IMAGENET1K_V1"``) or a local path
            to an ImageNet state dict of the ResNet.
        norm: the ResNet's normalization, as for :class:`~frcnn.modeling.backbones.ResNetC4`: ``"auto"``
            picks ``frozen_bn`` with pretrained weights (torchvision's and detectron2's choice) and
            ``bn`` from scratch.
        freeze_at: freeze the stem (1), plus res2 (2), res3 (3), res4 (4), res5 (5); 0 trains everything.
            ``None``: 2 with weights (torchvision's ``trainable_backbone_layers=3``), 0 from scratch.
            The FPN's own layers always train.
        out_channels: the pyramid's width (256).
        fpn_norm: the pyramid's lateral and output convs: ``"none"`` (with bias; the paper) or ``"bn"`` /
            ``"frozen_bn"`` (conv-BatchNorm, torchvision's ``fasterrcnn_resnet50_fpn_v2``).
        returned_layers: which of res2-res5 (1-4) feed the pyramid, as torchvision's ``returned_layers``:
            ``[1, 2, 3, 4]`` gives P2-P6 (the paper); ``[2, 3, 4]`` gives P3-P6 at strides 8-64, for data
            without objects small enough to need the stride-4 level (P2's convs are most of the pyramid's
            cost: it has as many cells as all other levels together, three times over).
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        weights: str | None = None,
        norm: Norm = "auto",
        freeze_at: int | None = None,
        out_channels: int = 256,
        returned_layers: Sequence[int] = (1, 2, 3, 4),
        fpn_norm: str = "none",
    ) -> None:
        super().__init__()
        if depth not in _ARCH:
            raise ConfigError(f"model.backbone.depth must be one of {sorted(_ARCH)}, got {depth}")
        build, _, c5_channels = _ARCH[depth]
        returned = [int(k) for k in returned_layers]
        if not returned or returned != sorted(set(returned)) or not set(returned) <= {1, 2, 3, 4}:
            raise ConfigError(f"model.backbone.returned_layers must be increasing values of 1-4, got {returned}")
        if norm == "auto":
            norm = "frozen_bn" if weights else "bn"
        if freeze_at is None:
            freeze_at = 2 if weights else 0
        if not 0 <= freeze_at <= 5:
            raise ConfigError(f"model.backbone.freeze_at must be 0-5 for a ResNet-FPN, got {freeze_at}")
        if freeze_at > returned[-1] + 1:
            raise ConfigError(
                f"model.backbone.freeze_at={freeze_at} freezes res{freeze_at} but the pyramid ends at res{returned[-1] + 1} "
                f"(returned_layers={returned}): use freeze_at <= {returned[-1] + 1}"
            )
        net = build(weights=None, norm_layer=_norm_layer(norm))
        if weights:
            load_into(net, load_state_dict(weights, f"ResNet{depth}_Weights"), weights)
        del net.fc, net.avgpool
        self.depth = depth
        self.norm = norm
        channels = {k: c5_channels // 2 ** (4 - k) for k in (1, 2, 3, 4)}  # C2..C5
        self._build(net, {f"layer{k}": str(i) for i, k in enumerate(returned)}, [channels[k] for k in returned], out_channels, fpn_norm)
        # res{k+1} has stride 2^(k+1); the max-pooled extra level halves the last
        self.strides = tuple(2 ** (k + 1) for k in returned) + (2 ** (returned[-1] + 2),)
        stages = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]
        for names in stages[:freeze_at]:
            for name in names:
                module = getattr(self.body, name)
                for p in module.parameters():
                    p.requires_grad_(False)
                if isinstance(module, nn.BatchNorm2d):  # the stem's norm sits directly in the body
                    setattr(self.body, name, _frozen_copy(module))
                else:
                    _freeze_batchnorm(module)


class MobileNetV3FPN(_Pyramid):
    """MobileNetV3-Large-FPN, torchvision's CPU detector backbone (``fasterrcnn_mobilenet_v3_large_fpn``).

    As torchvision builds it: the pyramid reads the last two stage outputs (the last strided block, 160
    channels, and the final 960-channel block; both at stride 32), and adds the max-pooled level at
    stride 64 — three 256-channel maps at strides 32, 32, 64. torchvision's detector puts 15 anchors
    (5 sizes x 3 ratios) on each and pools RoIs from the first.

    Args:
        weights: ``None``, a torchvision weights name (``"IMAGENET1K_V1"``) or a local path to an ImageNet
            state dict of ``mobilenet_v3_large``.
        norm: ``"auto"`` (``frozen_bn`` with weights, ``bn`` from scratch), ``"frozen_bn"`` or ``"bn"``.
        trainable_layers: torchvision's ``trainable_backbone_layers``: how many of the 6 stages, counted
            from the top, train (``None``: 3 with weights, 6 from scratch).
        out_channels: the pyramid's width (256).
        fpn_norm: the pyramid's convs' norm, as for :class:`ResNetFPN` (torchvision's: ``"none"``).
    """

    def __init__(
        self,
        *,
        weights: str | None = None,
        norm: Literal["auto", "frozen_bn", "bn"] = "auto",
        trainable_layers: int | None = None,
        out_channels: int = 256,
        fpn_norm: str = "none",
    ) -> None:
        super().__init__()
        if norm not in ("auto", "frozen_bn", "bn"):
            raise ConfigError(f"model.backbone.norm must be auto, frozen_bn or bn for MobileNetV3, got {norm!r}")
        if norm == "auto":
            norm = "frozen_bn" if weights else "bn"
        net = mobilenet_v3_large(weights=None, norm_layer=FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d)
        if weights:
            load_into(net, load_state_dict(weights, "MobileNet_V3_Large_Weights"), weights)
        features = net.features
        # The strided blocks start stages C1..C4; the first and last blocks close the list (torchvision's rule).
        stages = [0] + [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)] + [len(features) - 1]
        if trainable_layers is None:
            trainable_layers = 3 if weights else len(stages)
        if not 0 <= trainable_layers <= len(stages):
            raise ConfigError(f"model.backbone.trainable_layers must be 0-{len(stages)}, got {trainable_layers}")
        freeze_before = len(features) if trainable_layers == 0 else stages[len(stages) - trainable_layers]
        for block in features[:freeze_before]:
            for p in block.parameters():
                p.requires_grad_(False)
            _freeze_batchnorm(block)
        returned = [stages[-2], stages[-1]]
        in_channels = [features[i].out_channels for i in returned]
        self.norm = norm
        self._build(features, {str(i): str(k) for k, i in enumerate(returned)}, in_channels, out_channels, fpn_norm)
        self.strides = (32, 32, 64)

