"""End-to-end properties of the assembled detector (built from conf/ through Hydra)."""

import pytest
import torch

from tests.conftest import small_model


def batch(device, with_empty=True):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 120, 160, generator=g).to(device), torch.rand(3, 128, 128, generator=g).to(device)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0], [80.0, 30.0, 150.0, 110.0]], device=device),
         "labels": torch.tensor([1, 3], device=device)},
        {"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.long, device=device)}
        if with_empty
        else {"boxes": torch.tensor([[5.0, 5.0, 60.0, 60.0]], device=device), "labels": torch.tensor([2], device=device)},
    ]
    return images, targets


def test_pyramid_losses_and_gradients_reach_every_level(device):
    torch.manual_seed(0)
    model = small_model(overrides=["model/backbone=r18_fpn"]).to(device).train()
    images, targets = batch(device, with_empty=False)
    out = model(images, targets)
    sum(out.losses.values()).backward()
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    for block in (*model.backbone.fpn.inner_blocks, *model.backbone.fpn.layer_blocks):  # P2-P5 laterals, outputs
        assert block[0].weight.grad.abs().sum() > 0
    assert model.roi_heads.box_head.fc6.weight.grad.abs().sum() > 0


def test_losses_and_gradients_reach_backbone(device):
    torch.manual_seed(0)
    model = small_model().to(device).train()
    images, targets = batch(device, with_empty=False)
    out = model(images, targets)
    assert set(out.losses) == {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg"}
    assert out.detections is None
    sum(out.losses.values()).backward()
    first_conv = model.backbone.trunk[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert model.roi_heads.box_head[0][0].conv1.weight.grad.abs().sum() > 0  # res5
    assert model.rpn.head.conv.weight.grad.abs().sum() > 0


def test_empty_ground_truth_image_gives_zero_box_losses(device):
    torch.manual_seed(0)
    model = small_model().to(device).train()
    images, _ = batch(device)
    empty = [{"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.long, device=device)}] * 2
    losses = model(images, empty).losses
    assert losses["loss_rpn_reg"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    assert torch.isfinite(losses["loss_rpn_cls"]) and torch.isfinite(losses["loss_cls"])
    assert losses["loss_rpn_cls"] > 0 and losses["loss_cls"] > 0
    sum(losses.values()).backward()


# Parameters that reach the loss only through box regression: with no ground truth there is no
# foreground anchor or RoI, so their gradient is exactly zero (but present: the loss still uses them).
BOX_REGRESSION_ONLY = {"rpn.head.deltas.weight", "rpn.head.deltas.bias", "roi_heads.predictor.bbox_pred.weight", "roi_heads.predictor.bbox_pred.bias"}


@pytest.mark.parametrize("backbone", ["r18_c4", "r18_fpn", "mobilenet_v3_fpn"])
def test_every_parameter_gets_a_gradient_on_an_empty_ground_truth_image(device, backbone):
    """A negative image must still put every trainable parameter in the graph: under DDP a parameter
    without a gradient on one rank leaves the all-reduce waiting forever (or errors out). On a pyramid,
    every level's lateral and output convs too (through the shared RPN head and the pooled levels)."""
    torch.manual_seed(0)
    overrides = ["model.roi_heads.batch_size_per_image=16", f"model/backbone={backbone}"]  # 16 RoIs: cheap res5
    model = small_model(overrides=overrides).to(device).train()
    image = torch.rand(3, 120, 160, generator=torch.Generator().manual_seed(0)).to(device)
    empty = {"boxes": torch.zeros(0, 4, device=device), "labels": torch.zeros(0, dtype=torch.long, device=device)}
    losses = model([image], [empty]).losses
    assert losses["loss_rpn_reg"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    sum(losses.values()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert BOX_REGRESSION_ONLY <= set(trainable)
    assert [n for n, p in trainable.items() if p.grad is None] == []
    for name in BOX_REGRESSION_ONLY:
        assert (trainable[name].grad == 0).all(), name
    # everything else learns from the two classification losses (objectness, background class)
    assert [n for n, p in trainable.items() if n not in BOX_REGRESSION_ONLY and not p.grad.any()] == []


def test_losses_and_detections_in_one_call(device):
    model = small_model().to(device).eval()
    images, targets = batch(device)
    with torch.no_grad():
        out = model(images, targets, detect=True)
    assert len(out.losses) == 4 and len(out.detections) == 2
    for det, img in zip(out.detections, images):
        h, w = img.shape[-2:]
        b = det["boxes"]
        assert ((b[:, 0] >= 0) & (b[:, 2] <= w) & (b[:, 1] >= 0) & (b[:, 3] <= h)).all()
        assert ((det["labels"] >= 1) & (det["labels"] <= 3)).all()
        assert (det["scores"] > 0.05).all()


def test_inference_without_targets_returns_detections_only(device):
    model = small_model().to(device).eval()
    images, _ = batch(device)
    with torch.no_grad():
        out = model(images)
    assert out.losses == {} and len(out.detections) == 2


# Seeded golden losses. Regenerate (after an intended change) by running this test with -s and
# GOLDEN_PRINT=1, and pasting the printed values; they were produced on CPU, torch 2.15 (per-image RPN N_reg,
# 2026-11-23; the FPN model's 2026-12-02).
GOLDEN = {
    "r18_c4": {"loss_rpn_cls": 0.698633, "loss_rpn_reg": 0.0540512, "loss_cls": 1.3499, "loss_box_reg": 0.30584},
    "r18_fpn": {"loss_rpn_cls": 0.765968, "loss_rpn_reg": 0.00341688, "loss_cls": 1.51538, "loss_box_reg": 0.0707427},
}
# The FPN model's loss_cls is 1.51538 with one thread (make test's) and 1.51571 with two: 2e-4 apart, so it is
# held to 1e-3 (a change of the method, e.g. the level assignment's k0 or a level's stride, moves it by more).
TOLERANCE = {"r18_c4": 1e-4, "r18_fpn": 1e-3}


@pytest.mark.parametrize("backbone", sorted(GOLDEN))
def test_seeded_golden_losses(backbone):
    import os

    torch.manual_seed(1234)
    model = small_model(overrides=[f"model/backbone={backbone}"]).train()
    images, targets = batch(torch.device("cpu"), with_empty=False)
    torch.manual_seed(99)
    losses = {k: float(v.detach()) for k, v in model(images, targets).losses.items()}
    if os.environ.get("GOLDEN_PRINT"):
        print({k: float(f"{v:.6g}") for k, v in losses.items()})
    # 1e-4 relative: far below any change of the method (a wrong N_reg moves loss_rpn_reg by x2-x13),
    # above float32 summation-order differences between CPU builds.
    assert losses == pytest.approx(GOLDEN[backbone], rel=TOLERANCE[backbone])


@pytest.mark.parametrize("backbone", ["r18_c4", "r18_fpn"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_channels_last(device, dtype, backbone):
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("fp16 autocast is a GPU feature")
    # Fewer RoIs than the paper's 128 / 2000: bf16 convolutions on a CPU without bf16 units are slow, and
    # what is checked here (dtypes, finiteness, backward) does not depend on the count.
    small_heads = ["model.channels_last=true", "model.roi_heads.batch_size_per_image=8", "model.rpn.post_nms_topk_train=10",
                   f"model/backbone={backbone}"]
    model = small_model(overrides=small_heads).to(device).to(memory_format=torch.channels_last).train()
    images, targets = batch(device)
    with torch.autocast(device.type, dtype=dtype):
        out = model(images, targets, detect=True)
    losses = out.losses
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    sum(losses.values()).backward()
    assert len(out.detections) == 2


def test_bad_targets_are_clear_errors():
    model = small_model().train()
    images, _ = batch(torch.device("cpu"))
    with pytest.raises(ValueError, match="target 0"):
        model(images, [{"boxes": torch.zeros(3), "labels": torch.zeros(3)}, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        model(images, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])


def test_labels_outside_1_to_k_name_the_image_and_the_range(device):
    """A label past K would reach cross_entropy (a device-side assert on CUDA, an IndexError on CPU) and
    label 0 would silently train a ground-truth box as background: both are refused up front."""
    from frcnn.errors import InputError

    model = small_model(num_classes=3).to(device).train()
    images, targets = batch(device, with_empty=False)
    for bad in (4, 0, -1):
        labels = torch.tensor([bad], device=device)
        with pytest.raises(InputError, match=rf"target 1 \(image_id 17\) has label {bad}, outside 1\.\.3"):
            model(images, [targets[0], {**targets[1], "labels": labels, "image_id": torch.tensor(17)}])
    with pytest.raises(InputError, match=r"^target 0 has label 7, outside 1\.\.3"):
        model(images, [{**targets[0], "labels": torch.tensor([1, 7], device=device)}, targets[1]])
    assert set(model(images, targets).losses) == {"loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg"}
