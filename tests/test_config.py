"""conf/ composes, every backbone variant instantiates, and the paper's defaults are readable."""

import pytest
import torch
from hydra.utils import instantiate

from frcnn.backbones import ResNetC4, VGG16, WeightsUnavailableError
from tests.conftest import compose_train


def test_defaults_are_the_papers():
    cfg = compose_train()
    rpn, roi = cfg.model.rpn, cfg.model.roi_heads
    assert rpn.head.num_anchors == 9
    assert list(rpn.anchor_generator.sizes) == [128, 256, 512]
    assert list(rpn.anchor_generator.aspect_ratios) == [0.5, 1.0, 2.0]
    assert (rpn.fg_iou_thresh, rpn.bg_iou_thresh, rpn.straddle_thresh) == (0.7, 0.3, 0.0)
    assert (rpn.batch_size_per_image, rpn.positive_fraction) == (256, 0.5)
    assert (rpn.pre_nms_topk_train, rpn.nms_thresh, rpn.post_nms_topk_train) == (6000, 0.7, 2000)
    assert (rpn.pre_nms_topk_test, rpn.post_nms_topk_test, rpn.min_size) == (6000, 300, 16)
    assert rpn.loss_normalization == "paper"
    assert (roi.batch_size_per_image, roi.positive_fraction) == (128, 0.25)  # 32 fg / 96 bg
    assert (roi.fg_iou_thresh, roi.bg_iou_thresh_hi, roi.bg_iou_thresh_lo) == (0.5, 0.5, 0.1)
    assert list(roi.bbox_reg_weights) == [10.0, 10.0, 5.0, 5.0]
    assert (roi.score_thresh, roi.nms_thresh, roi.detections_per_image) == (0.05, 0.5, 100)
    assert roi.pooler == "align"


@pytest.mark.parametrize(
    "backbone,cls,trunk,head,pool",
    [("r18_c4", ResNetC4, 256, 512, 14), ("r50_c4", ResNetC4, 1024, 2048, 14), ("vgg16", VGG16, 512, 4096, 7)],
)
def test_each_backbone_instantiates_and_runs(backbone, cls, trunk, head, pool):
    cfg = compose_train([f"model/backbone={backbone}", "data.min_size_test=64", "data.max_size=96"])
    assert cfg.model.roi_heads.pooler_resolution == pool
    model = instantiate(cfg.model).eval()
    assert isinstance(model.backbone, cls)
    feats = model.backbone(torch.zeros(1, 3, 64, 96))
    assert feats.shape == (1, trunk, 4, 6)
    pooled = torch.zeros(2, trunk, pool, pool)
    assert model.backbone.box_head(pooled).shape == (2, head)
    with torch.no_grad():
        assert len(model([torch.rand(3, 64, 96)]).detections) == 1


def test_experiment_demo_composes():
    cfg = compose_train(["experiment=demo"])
    assert list(cfg.model.rpn.anchor_generator.sizes) == [32, 64, 128]
    assert cfg.schedule._target_.endswith("WarmupCosine")


def test_freezing_and_norm_choices():
    frozen = ResNetC4(depth=18, norm="frozen_bn", freeze_at=2)
    assert not any(p.requires_grad for p in frozen.trunk[0].parameters())
    assert not any(p.requires_grad for p in frozen.trunk[1].parameters())
    assert all(p.requires_grad for p in frozen.trunk[2].parameters())
    gn = ResNetC4(depth=18, norm="gn")
    assert any(isinstance(m, torch.nn.GroupNorm) for m in gn.modules())
    assert ResNetC4(depth=18).norm == "bn"  # from scratch: trainable BN


def test_weights_from_local_file(tmp_path):
    from torchvision.models import resnet18

    ref = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = ResNetC4(depth=18, weights=str(path))
    torch.testing.assert_close(bb.trunk[0][0].weight, ref.conv1.weight)
    assert bb.norm == "frozen_bn"
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        ResNetC4(depth=18, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsUnavailableError, match="do not belong"):
        ResNetC4(depth=50, weights=str(path))


def test_weights_download_failure_says_how_to_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision.models._api as api

    def offline(self, *a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailableError, match="model.backbone.weights=/path/to/file.pth"):
        ResNetC4(depth=18, weights="IMAGENET1K_V1")
