"""VGG16 (Simonyan & Zisserman, 2015), the paper's main network: conv5_3 trunk, fc6/fc7 box head."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import vgg16

from frcnn.modeling.backbones.weights import load_into, load_state_dict
from frcnn.errors import ConfigError
from frcnn.modeling.structures import FeatureMaps

# Index in torchvision's vgg16().features where each conv block starts (conv1_1, conv2_1, ... conv5_1).
_BLOCK_STARTS = (0, 5, 10, 17, 24)


class VGG16(nn.Module):
    """VGG16 up to conv5_3 + ReLU (stride 16, pool5 removed); fc6 and fc7 as the box head.

    The box head takes 7x7 pooled RoIs (``roi_heads.pooler_resolution=7``), exactly the input fc6
    was trained on.

    Args:
        weights: ``None``, a torchvision weights name (``"IMAGENET1K_V1"``) or a local path.
        freeze_at: number of conv blocks frozen (paper sec. 4: conv1 and conv2, i.e. 2); ``None`` picks
            2 with pretrained weights and 0 from scratch.
        dropout: dropout after fc6 and fc7 (0.5 as in VGG).
        out_channels / head_channels: must be 512 / 4096 (stated in the config for wiring).
    """

    def __init__(
        self,
        *,
        weights: str | None = None,
        freeze_at: int | None = None,
        dropout: float = 0.5,
        out_channels: int | None = None,
        head_channels: int | None = None,
    ) -> None:
        super().__init__()
        if out_channels not in (None, 512) or head_channels not in (None, 4096):
            raise ConfigError("VGG16 has out_channels=512 and head_channels=4096")
        net = vgg16(weights=None, dropout=dropout)
        if weights:
            load_into(net, load_state_dict(weights, "VGG16_Weights"), weights)
        self.out_channels = 512
        self.head_channels = 4096
        self.strides = (16,)
        self.trunk = net.features[:30]  # conv1_1 ... relu5_3; drops pool5
        fc6, relu6, drop6, fc7, relu7, drop7 = list(net.classifier)[:6]
        self.box_head = nn.Sequential(nn.Flatten(1), fc6, relu6, drop6, fc7, relu7, drop7)
        if freeze_at is None:
            freeze_at = 2 if weights else 0
        if freeze_at > 0:
            stop = _BLOCK_STARTS[freeze_at] if freeze_at < len(_BLOCK_STARTS) else 30
            for p in self.trunk[:stop].parameters():
                p.requires_grad_(False)

    def forward(self, images: Tensor) -> FeatureMaps:
        """``[B, 3, H, W]`` → one level, ``[B, 512, H/16, W/16]`` at stride 16."""
        return FeatureMaps([self.trunk(images)], self.strides)

    def cam_layer(self, level: int = 0) -> nn.Module:
        """The module whose output is feature level ``level`` (one level here: the trunk), for Grad-CAM."""
        return self.trunk
