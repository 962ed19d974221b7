"""Box heads for a feature pyramid: pooled RoIs ``[M, C, S, S]`` → ``[M, D]`` features for the predictor.

C4 and VGG16 take their box head from the classification network (res5; fc6/fc7), see
:mod:`frcnn.modeling.backbones`. An FPN detector's pyramid has no such layers left, so the head is new:

* :class:`TwoMLPHead`: two fully connected 1024-d layers with ReLU on 7x7 RoIs (Lin et al. 2017, sec. 4.2:
  "a lightweight 2-fc head"; torchvision's and detectron2's default).
* :class:`ConvFCHead`: four 3x3 convolutions with normalization, then one fc (the "4conv1fc" head of
  detectron2's and torchvision's ``fasterrcnn_resnet50_fpn_v2``, Li et al. 2021).

ReLUs are modules (guided backpropagation rewrites ReLU modules' backward).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from frcnn.errors import ConfigError


class TwoMLPHead(nn.Module):
    """``[M, C, S, S]`` → flatten → fc6 (``D``) → ReLU → fc7 (``D``) → ReLU.

    Args:
        in_channels: ``C`` of the pooled features (the pyramid's width, 256).
        resolution: ``S`` (7).
        representation_size: ``D`` (1024, the FPN paper).
    """

    def __init__(self, *, in_channels: int, resolution: int = 7, representation_size: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.relu6 = nn.ReLU()
        self.relu7 = nn.ReLU()
        self.out_channels = representation_size

    def forward(self, x: Tensor) -> Tensor:
        return self.relu7(self.fc7(self.relu6(self.fc6(x.flatten(1)))))


class ConvFCHead(nn.Module):
    """``[M, C, S, S]`` → 4 x (3x3 conv, norm, ReLU) → flatten → fc (``D``) → ReLU.

    Args:
        in_channels: ``C``.
        resolution: ``S`` (7).
        conv_channels: the widths of the convolutions (4 x 256).
        representation_size: ``D`` (1024).
        norm: ``"bn"`` (BatchNorm, torchvision's v2), ``"gn"`` (GroupNorm, 32 groups; detectron2's
            ``4conv1fc`` with GN) or ``"none"`` (convolutions with bias).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        resolution: int = 7,
        conv_channels: Sequence[int] = (256, 256, 256, 256),
        representation_size: int = 1024,
        norm: Literal["bn", "gn", "none"] = "bn",
    ) -> None:
        super().__init__()
        if norm not in ("bn", "gn", "none"):
            raise ConfigError(f"model.roi_heads.box_head.norm must be bn, gn or none, got {norm!r}")
        layers: list[nn.Module] = []
        width = in_channels
        for channels in conv_channels:
            conv = nn.Conv2d(width, channels, kernel_size=3, padding=1, bias=norm == "none")
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            layers.append(conv)
            if norm == "bn":
                layers.append(nn.BatchNorm2d(channels))
            elif norm == "gn":
                layers.append(nn.GroupNorm(32, channels))
            layers.append(nn.ReLU())
            width = channels
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(width * resolution * resolution, representation_size)
        self.relu = nn.ReLU()
        self.out_channels = representation_size

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.fc(self.convs(x).flatten(1)))
