"""The pyramid's box heads: shapes, what each layer is, and either one in an FPN model built from conf/."""

import pytest
import torch

from frcnn.errors import ConfigError
from frcnn.modeling.box_heads import ConvFCHead, TwoMLPHead
from tests.conftest import small_model


def test_two_mlp_head_is_two_fc_layers_with_relu():
    head = TwoMLPHead(in_channels=8, resolution=7, representation_size=32)
    x = torch.randn(5, 8, 7, 7)
    out = head(x)
    assert out.shape == (5, 32) and (out >= 0).all()
    expected = torch.relu(head.fc7(torch.relu(head.fc6(x.flatten(1)))))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("norm,layer", [("bn", torch.nn.BatchNorm2d), ("gn", torch.nn.GroupNorm), ("none", None)])
def test_conv_fc_head_has_four_convs_with_its_norm_and_one_fc(norm, layer):
    head = ConvFCHead(in_channels=32, resolution=7, conv_channels=(32, 32, 32, 32), representation_size=64, norm=norm)
    convs = [m for m in head.convs if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all((c.bias is None) == (norm != "none") for c in convs)
    norms = [m for m in head.convs if layer is not None and isinstance(m, layer)]
    assert len(norms) == (4 if layer else 0)
    assert head(torch.randn(3, 32, 7, 7)).shape == (3, 64)
    with pytest.raises(ConfigError, match="bn, gn or none"):
        ConvFCHead(in_channels=32, norm="ln")


def test_either_head_serves_an_fpn_model():
    v2 = ["model/backbone=r18_fpn", "model.roi_heads.box_head._target_=frcnn.modeling.box_heads.ConvFCHead",
          "model.roi_heads.box_head.representation_size=128"]
    for overrides in (["model/backbone=r18_fpn"], v2):
        model = small_model(overrides=overrides).eval()
        with torch.no_grad():
            assert len(model([torch.rand(3, 96, 128)]).detections) == 1
    assert isinstance(model.roi_heads.box_head, ConvFCHead) and model.roi_heads.predictor.cls_score.in_features == 128
