"""Backbones: the shared feature maps for the RPN and RoI pooling, and (C4, VGG16) the box head.

Every backbone's ``forward`` maps ``[B, 3, H, W]`` to :class:`frcnn.modeling.structures.FeatureMaps`
and exposes ``strides``, ``out_channels`` and ``cam_layer(level)`` (the module whose output is a level's
map). The single-map backbones of the paper (``ResNetC4``, ``VGG16``: one level at stride 16) also
carry ``box_head`` (pooled RoIs ``[M, out_channels, S, S]`` → ``[M, head_channels]``), which
:class:`frcnn.modeling.model.FasterRCNN` hands to the RoI stage; the pyramids (``ResNetFPN``,
``MobileNetV3FPN``) have none: their box head is configured with the RoI stage.
"""

from frcnn.modeling.backbones.fpn import MobileNetV3FPN, ResNetFPN
from frcnn.modeling.backbones.resnet import ResNetC4
from frcnn.modeling.backbones.vgg import VGG16
from frcnn.modeling.backbones.weights import WeightsUnavailableError

__all__ = ["MobileNetV3FPN", "ResNetC4", "ResNetFPN", "VGG16", "WeightsUnavailableError"]
