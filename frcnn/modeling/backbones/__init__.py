"""Backbones: a stride-16 trunk for the RPN and a box head for the RoI stage, owned together.

Every backbone exposes ``trunk`` (``[B, 3, H, W]`` → ``[B, out_channels, H/16, W/16]``) and
``box_head`` (pooled RoIs ``[M, out_channels, S, S]`` → ``[M, head_channels]``).
"""

from frcnn.modeling.backbones.resnet import ResNetC4
from frcnn.modeling.backbones.vgg import VGG16
from frcnn.modeling.backbones.weights import WeightsUnavailableError

__all__ = ["ResNetC4", "VGG16", "WeightsUnavailableError"]
