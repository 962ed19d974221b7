"""ResNet-C4: the stride-16 trunk (stem, res2-res4) feeds the RPN, res5 is the RoI box head.

He et al. (2016) and Ren et al. (2015) sec. 4: RoI pooling is placed before conv5 and the conv5
block plays the role of VGG's fc layers. The same layout as detectron2's R50-C4.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.ops import FrozenBatchNorm2d

from frcnn.modeling.backbones.weights import load_into, load_state_dict
from frcnn.errors import ConfigError
from frcnn.modeling.structures import FeatureMaps

_ARCH = {18: (resnet18, 256, 512), 34: (resnet34, 256, 512), 50: (resnet50, 1024, 2048), 101: (resnet101, 1024, 2048)}

Norm = Literal["auto", "frozen_bn", "bn", "gn"]


def _norm_layer(norm: str):
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda channels: nn.GroupNorm(32, channels)
    raise ConfigError(f"model.backbone.norm must be auto, frozen_bn, bn or gn, got {norm!r}")


class ResNetC4(nn.Module):
    """ResNet-{18,34,50,101} split at res4 / res5.

    Normalization: ``"frozen_bn"`` (fixed ImageNet statistics, the standard for fine-tuning with small
    per-GPU batches), ``"bn"`` (trainable BatchNorm, synchronized across GPUs under DDP when the trainer
    converts it), or ``"gn"`` (GroupNorm, 32 groups; batch-independent). ``"auto"`` picks
    ``frozen_bn`` with pretrained weights and ``bn`` from scratch: frozen statistics of a random network
    are an identity, which leaves a deep network from scratch unnormalized.

    Args:
        depth: 18, 34, 50 or 101.
        weights: ``None`` (from scratch), a torchvision weights name (``"IMAGENET1K_V1"``) or a local path.
        norm: see above.
        freeze_at: freeze the stem (1), plus res2 (2), res3 (3), res4 (4); 0 trains everything.
            ``None`` picks 2 with pretrained weights (detectron2's default) and 0 from scratch. A frozen
            stage's BatchNorm becomes ``FrozenBatchNorm2d`` whatever ``norm`` says: its statistics stay fixed too.
        out_channels: must equal the trunk's width (256 for 18/34, 1024 for 50/101); stated in the
            config so the RPN and box head can be wired to it.
        head_channels: must equal res5's width (512 / 2048).
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        weights: str | None = None,
        norm: Norm = "auto",
        freeze_at: int | None = None,
        out_channels: int | None = None,
        head_channels: int | None = None,
    ) -> None:
        super().__init__()
        if depth not in _ARCH:
            raise ConfigError(f"model.backbone.depth must be one of {sorted(_ARCH)}, got {depth}")
        build, trunk_ch, head_ch = _ARCH[depth]
        for name, given, actual in (("out_channels", out_channels, trunk_ch), ("head_channels", head_channels, head_ch)):
            if given is not None and given != actual:
                raise ConfigError(f"model.backbone.{name}={given} but ResNet-{depth}-C4 has {actual}")
        if norm == "auto":
            norm = "frozen_bn" if weights else "bn"
        if freeze_at is None:
            freeze_at = 2 if weights else 0
        net = build(weights=None, norm_layer=_norm_layer(norm))
        if weights:
            load_into(net, load_state_dict(weights, f"ResNet{depth}_Weights"), weights)
        self.out_channels = trunk_ch
        self.head_channels = head_ch
        self.strides = (16,)
        self.depth = depth
        self.norm = norm
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.trunk = nn.Sequential(stem, net.layer1, net.layer2, net.layer3)
        self.box_head = nn.Sequential(net.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        for stage in list(self.trunk)[: max(0, min(freeze_at, 4))]:
            for p in stage.parameters():
                p.requires_grad_(False)
            _freeze_batchnorm(stage)

    def forward(self, images: Tensor) -> FeatureMaps:
        """``[B, 3, H, W]`` → one level, ``[B, out_channels, H/16, W/16]`` at stride 16."""
        return FeatureMaps([self.trunk(images)], self.strides)

    def cam_layer(self, level: int = 0) -> nn.Module:
        """The module whose output is feature level ``level`` (one level here: the trunk), for Grad-CAM."""
        return self.trunk


@torch.no_grad()
def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every ``BatchNorm2d`` under ``module`` by a ``FrozenBatchNorm2d`` holding its statistics and affine.

    Turning off the gradients of a frozen stage is not enough with ``norm="bn"``: a ``BatchNorm2d`` in
    train mode still updates its running statistics at every forward, so the stage would drift away from
    the weights it was frozen at, and ``model.train()`` would undo any ``eval()`` set on it. Frozen BN
    has no train mode (detectron2 freezes stages the same way).
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, _frozen_copy(child))
        else:
            _freeze_batchnorm(child)


@torch.no_grad()
def _frozen_copy(norm: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    """A ``FrozenBatchNorm2d`` holding ``norm``'s statistics and affine parameters."""
    frozen = FrozenBatchNorm2d(norm.num_features, eps=norm.eps)
    if norm.affine:
        frozen.weight.copy_(norm.weight)
        frozen.bias.copy_(norm.bias)
    if norm.track_running_stats:
        frozen.running_mean.copy_(norm.running_mean)
        frozen.running_var.copy_(norm.running_var)
    return frozen
