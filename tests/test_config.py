"""conf/ composes, every backbone variant instantiates, and the paper's defaults are readable."""

import pytest
import torch
from hydra.utils import instantiate
from torchvision.ops import FrozenBatchNorm2d

from frcnn.config import ConfigError, resolve_device, validate_train_config
from frcnn.modeling.backbones import (
    VGG16,
    MobileNetV3FPN,
    ResNetC4,
    ResNetFPN,
    WeightsUnavailableError,
)
from tests.conftest import compose_train


def test_defaults_are_the_papers():
    cfg = compose_train(["data=coco", "data.root=/datasets/coco"])  # the paper's data: the paper's numbers
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
    "backbone,cls,channels,strides,head,pool",
    [
        ("r18_c4", ResNetC4, 256, (16,), 512, 14),
        ("r50_c4", ResNetC4, 1024, (16,), 2048, 14),
        ("vgg16", VGG16, 512, (16,), 4096, 7),
        ("r18_fpn", ResNetFPN, 256, (4, 8, 16, 32, 64), 1024, 7),
        ("r50_fpn", ResNetFPN, 256, (4, 8, 16, 32, 64), 1024, 7),
        ("mobilenet_v3_fpn", MobileNetV3FPN, 256, (32, 32, 64), 1024, 7),
    ],
)
def test_each_backbone_instantiates_and_runs(backbone, cls, channels, strides, head, pool):
    cfg = compose_train([f"model/backbone={backbone}", "data.min_size_test=64", "data.max_size=128"])
    assert cfg.model.roi_heads.pooler_resolution == pool
    model = instantiate(cfg.model).eval()
    assert isinstance(model.backbone, cls)
    feats = model.backbone(torch.zeros(1, 3, 64, 128))
    assert feats.strides == strides == model.rpn.anchor_generator.strides
    assert [tuple(f.shape) for f in feats.maps] == [(1, channels, -(-64 // s), -(-128 // s)) for s in strides]
    pooled = torch.zeros(2, channels, pool, pool)
    assert model.roi_heads.box_head(pooled).shape == (2, head)
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


@pytest.mark.parametrize(
    "overrides",
    [[], ["experiment=demo"], ["model/backbone=vgg16"], ["model/backbone=r50_c4"], ["optim=adamw", "schedule=cosine"],
     ["data=coco", "data.root=/datasets/coco"], ["trainer.device=cpu", "trainer.amp=bf16", "trainer.clip_grad_norm=10"]],
)
def test_every_shipped_config_validates(overrides):
    validate_train_config(compose_train(overrides + ["run_dir=x"]))


@pytest.mark.parametrize(
    "override,expected",
    [
        ("trainer.amp=fp32", "trainer.amp='fp32' is not valid; allowed: none | bf16 | fp16"),
        ("trainer.device=gpu", "trainer.device='gpu' is not valid; allowed: auto | cpu | cuda | cuda:N"),
        ("trainer.max_iters=0", "trainer.max_iters=0 is not valid; allowed: an integer >= 1"),
        ("model.roi_heads.pooler=bilinear", "model.roi_heads.pooler='bilinear' is not valid; allowed: align | pool"),
        ("model.rpn.loss_normalization=mean", "model.rpn.loss_normalization='mean' is not valid; allowed: paper | sampled"),
        ("model.backbone.norm=batch", "model.backbone.norm='batch' is not valid; allowed: auto | frozen_bn | bn | gn"),
        ("model.rpn.positive_fraction=0", "model.rpn.positive_fraction=0 is not valid; allowed: a number > 0 and <= 1"),
        ("model.rpn.bg_iou_thresh=0.8", "model.rpn.bg_iou_thresh=0.8 is above model.rpn.fg_iou_thresh=0.7"),
        ("optim.lr=fast", "optim.lr='fast' is not valid; allowed: a number > 0"),
        ("data.num_classes=0", "data.num_classes=0 is not valid; allowed: an integer >= 1"),
        ("data.min_size_train=[600,0]", "data.min_size_train=[600, 0] is not valid"),
        ("data.pin_memory=yes", "data.pin_memory='yes' is not valid; allowed: auto | true | false"),
        ("train.resume=/no/such/last.pt", "train.resume=/no/such/last.pt is not a file"),
        ("+model.rpn.bogus=1", "model.rpn.bogus is not a parameter of frcnn.modeling.rpn.RPN; its parameters are: head,"),
        ("~model.rpn.head", "model.rpn lacks model.rpn.head, a required parameter of frcnn.modeling.rpn.RPN"),
        ("model.rpn._target_=frcnn.modeling.rpn.RPNN", "model.rpn._target_=frcnn.modeling.rpn.RPNN cannot be imported"),
        ("data=coco", "data.root has no value (??? in the config)"),
    ],
)
def test_config_mistakes_name_the_key_and_the_allowed_values(override, expected):
    cfg = compose_train([override, "run_dir=x"])
    with pytest.raises(ConfigError) as exc:
        validate_train_config(cfg)
    assert str(exc.value).startswith(expected), str(exc.value)
    assert "\n" not in str(exc.value)


def test_device_names_are_checked_against_the_machine(monkeypatch):
    assert resolve_device("cpu", "trainer.device") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "trainer.device") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"trainer.device='cuda:1' but this machine has no CUDA device; use trainer.device=cpu"):
        resolve_device("cuda:1", "trainer.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:1", "trainer.device")
    assert resolve_device("cuda:0", "trainer.device") == torch.device("cuda", 0)


def _bn(module):
    return next(m for m in module.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)))


def test_frozen_stages_keep_their_batchnorm_statistics_in_train_mode():
    """norm=bn with freeze_at=2: the stem and res2 get no gradient, and their BN statistics must not move
    either when the model is in train mode (they would drift from the weights they were frozen at)."""
    torch.manual_seed(0)
    backbone = ResNetC4(depth=18, norm="bn", freeze_at=2).train()
    stem, res2, res3 = _bn(backbone.trunk[0]), _bn(backbone.trunk[1]), _bn(backbone.trunk[2])
    for bn in (stem, res2, res3):  # statistics as pretrained weights would have them, not the init's 0 / 1
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    before = [bn.running_mean.clone() for bn in (stem, res2, res3)]
    backbone(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert torch.equal(stem.running_mean, before[0])
    assert torch.equal(res2.running_mean, before[1])
    assert not torch.equal(res3.running_mean, before[2])  # trainable stages still learn their statistics
    assert all(not m.training for m in backbone.trunk[:2].modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_frozen_batchnorm_loads_a_state_dict_saved_with_trainable_bn():
    """Checkpoints written before frozen stages switched to FrozenBatchNorm2d (with num_batches_tracked) still load."""
    torch.manual_seed(0)
    old = ResNetC4(depth=18, norm="bn", freeze_at=0)
    for m in old.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    frozen = ResNetC4(depth=18, norm="bn", freeze_at=2)
    frozen.load_state_dict(old.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(frozen.eval()(x), old.eval()(x))


def test_data_root_is_not_needed_when_both_splits_have_their_paths(tmp_path):
    from frcnn.cli import compose_train
    from frcnn.config import validate_train_config
    from frcnn.errors import ConfigError

    splits = [f"data.{s}.{k}={tmp_path / s / k}" for s in ("train", "val") for k in ("images", "annotations")]
    validate_train_config(compose_train(["data=coco", "data.num_classes=3", f"run_dir={tmp_path}", *splits]))
    with pytest.raises(ConfigError, match=r"data.root has no value \(\?\?\? in the config\); set it on the command line"):
        validate_train_config(compose_train(["data=coco", f"run_dir={tmp_path}", *splits[:2]]))  # val still uses it
