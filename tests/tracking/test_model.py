"""SiamRPN (frcnn/tracking/model.py): the correlation, the response map, anchor targets, the losses, configs, BatchNorm per branch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from frcnn.errors import ConfigError
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.tracking.crops import (
    context_side,
    crop,
)
from frcnn.tracking.model import (
    AlexNet,
    DepthwiseHead,
    ResNet18Trunk,
    SiameseBatchNorm2d,
    SiamRPN,
    UpChannelHead,
    centre_crop,
    cross_correlate,
    depthwise_correlate,
)
from frcnn.tracking.tracker import SiamRPNTracker, TrackerSettings
from tests.tracking.helpers import PAPER_ANCHORS, siamrpn


def test_cross_correlation_matches_a_per_sample_conv2d():
    torch.manual_seed(0)
    search, kernels = torch.randn(3, 4, 9, 9), torch.randn(3, 6, 4, 3, 3)
    expected = torch.cat([F.conv2d(search[i : i + 1], kernels[i]) for i in range(3)])
    torch.testing.assert_close(cross_correlate(search, kernels), expected)
    dw_kernels = torch.randn(3, 4, 3, 3)
    expected = torch.cat([F.conv2d(search[i : i + 1], dw_kernels[i][:, None], groups=4) for i in range(3)])
    torch.testing.assert_close(depthwise_correlate(search, dw_kernels), expected)


@pytest.mark.parametrize("backbone", ["alexnet", "resnet18"])
@pytest.mark.parametrize("head", [UpChannelHead, DepthwiseHead])
def test_response_map_is_17x17_for_127_and_255_crops(backbone, head):
    trunk = AlexNet(channels=(8, 16, 16, 16), out_channels=16) if backbone == "alexnet" else ResNet18Trunk(out_channels=16)
    model = siamrpn(trunk, head).eval()
    with torch.no_grad():
        kernels = model.template(torch.zeros(2, 3, 127, 127, dtype=torch.uint8))
        cls, reg = model.head(kernels, model.backbone(model.normalize(torch.zeros(2, 3, 255, 255))))
    assert cls.shape == (2, 10, 17, 17) and reg.shape == (2, 20, 17, 17)
    if backbone == "alexnet":
        assert model.backbone(torch.zeros(1, 3, 127, 127)).shape[-1] == 6
        assert model.backbone(torch.zeros(1, 3, 255, 255)).shape[-1] == 22


def test_anchors_are_centred_on_the_search_crop():
    anchors = siamrpn().anchors.view(17, 17, 5, 4)
    centres = (anchors[..., :2] + anchors[..., 2:]) / 2
    torch.testing.assert_close(centres[8, 8], torch.full((5, 2), 127.5))
    torch.testing.assert_close(centres[0, 0, 0], torch.tensor([127.5 - 64, 127.5 - 64]))
    torch.testing.assert_close(anchors[8, 8, 2], torch.tensor([95.5, 95.5, 159.5, 159.5]))  # 64 x 64
    wh = anchors[8, 8, :, 2:] - anchors[8, 8, :, :2]
    torch.testing.assert_close(wh[:, 0] * wh[:, 1], torch.full((5,), 64.0**2))
    torch.testing.assert_close(wh[:, 1] / wh[:, 0], torch.tensor(PAPER_ANCHORS["aspect_ratios"]))


def test_anchor_labels_and_the_64_16_sample():
    model = siamrpn()
    boxes = torch.tensor([[95.5, 95.5, 159.5, 159.5], [60.0, 80.0, 200.0, 150.0], [0.0, 0.0, 0.0, 0.0]])  # last: negative pair
    pos, neg, deltas = model.assign_targets(boxes)
    iou = box_iou(model.anchors, boxes[:2]).T  # [2, N]
    assert pos[0, 8 * 17 * 5 + 8 * 5 + 2]  # the anchor equal to the box
    for b in range(2):
        assert (iou[b][pos[b]] >= 0.6).all() and (iou[b][neg[b]] < 0.3).all()
        n_pos = int((iou[b] >= 0.6).sum())
        assert int(pos[b].sum()) == min(16, n_pos) and int(pos[b].sum() + neg[b].sum()) == 64
    assert int(pos[0].sum()) == int((iou[0] >= 0.6).sum()) > 2
    small = SiamRPN(backbone=model.backbone, head=model.head, anchor_generator=AnchorGenerator(**PAPER_ANCHORS),
                    samples_per_pair=16, positive_fraction=0.125)
    capped, rest, _ = small.assign_targets(boxes[:1])
    assert int(capped.sum()) == 2 and int(rest.sum()) == 14  # at most 16 x 0.125 positive
    assert not pos[2].any() and int(neg[2].sum()) == 64
    # deltas at a sampled positive: dx = (gx - ax) / aw, dw = log(gw / aw) (paper, eq. 3); zero where unused
    assert model.anchors[8 * 17 * 5 + 8 * 5 + 2].tolist() == [95.5, 95.5, 159.5, 159.5]
    pos, _, deltas = model.assign_targets(torch.tensor([[100.0, 90.0, 170.0, 150.0]]))  # centre (135, 120), 70 x 60
    for i in torch.nonzero(pos[0])[:, 0].tolist():
        x1, y1, x2, y2 = model.anchors[i].tolist()
        aw, ah, ax, ay = x2 - x1, y2 - y1, (x1 + x2) / 2, (y1 + y2) / 2
        torch.testing.assert_close(deltas[0, i], torch.tensor([(135 - ax) / aw, (120 - ay) / ah, math.log(70 / aw), math.log(60 / ah)]))
    assert pos.any() and (deltas[~pos] == 0).all()


def test_losses_follow_the_formulas():
    torch.manual_seed(0)
    model = siamrpn()
    logits, deltas = torch.randn(2, 1445, 2), torch.randn(2, 1445, 4)
    boxes = torch.tensor([[85.0, 100.0, 170.0, 150.0], [0.0, 0.0, 0.0, 0.0]])  # ~ the 2:1 anchor's size
    torch.manual_seed(1)
    losses = model.losses(logits, deltas, boxes)
    torch.manual_seed(1)
    pos, neg, target = model.assign_targets(boxes)
    sampled = pos | neg
    ce = -torch.log_softmax(logits, -1)[..., 1][pos].sum() - torch.log_softmax(logits, -1)[..., 0][neg].sum()
    torch.testing.assert_close(losses["loss_cls"], ce / sampled.sum())
    assert pos.sum() > 0
    diff = (deltas - target).abs()[pos]
    smooth = torch.where(diff < 1 / 9, 0.5 * diff**2 * 9, diff - 0.5 / 9).sum()
    torch.testing.assert_close(losses["loss_reg"], smooth / pos.sum())
    # balance_cls: the positives' mean and the negatives' mean, weighted 1:1
    model.balance_cls = True
    torch.manual_seed(1)
    balanced = model.losses(logits, deltas, boxes)["loss_cls"]
    pos_ce = -torch.log_softmax(logits, -1)[..., 1][pos].mean()
    neg_ce = -torch.log_softmax(logits, -1)[..., 0][neg].mean()
    torch.testing.assert_close(balanced, 0.5 * (pos_ce + neg_ce))
    torch.manual_seed(1)  # a batch of negative pairs only: the negatives' mean alone
    only_neg = model.losses(logits, deltas, torch.zeros(2, 4))["loss_cls"]
    torch.manual_seed(1)
    _, neg0, _ = model.assign_targets(torch.zeros(2, 4))
    torch.testing.assert_close(only_neg, -torch.log_softmax(logits, -1)[..., 0][neg0].mean())


@pytest.mark.parametrize("backbone", ["alexnet", "resnet18"])
@pytest.mark.parametrize("head", ["upchannel", "depthwise"])
def test_siamrpn_configs_compose_and_build(backbone, head):
    from hydra.utils import instantiate

    from frcnn.cli import compose_config

    cfg = compose_config("siamrpn", [f"siamrpn/backbone={backbone}", f"siamrpn/head={head}", "run_dir=/tmp/x"])
    model = instantiate(cfg.model)
    assert isinstance(model.head, UpChannelHead if head == "upchannel" else DepthwiseHead)
    assert model.anchors.shape == (17 * 17 * 5, 4) and model.num_anchors == cfg.model.head.num_anchors
    demo = compose_config("siamrpn", ["experiment=siamrpn_demo", "run_dir=/tmp/x"])
    assert demo.model.head.in_channels == demo.model.backbone.out_channels == 64


@pytest.mark.parametrize("experiment", ["siamrpn_demo", "siamrpn_shipped", "siamrpn_r18", "siamrpn_r18_shipped"])
def test_every_tracking_experiment_builds(experiment):
    from hydra.utils import instantiate

    from frcnn.cli import compose_config

    cfg = compose_config("siamrpn", [f"experiment={experiment}", "run_dir=/tmp/x"])
    model = instantiate(cfg.model).eval()
    assert cfg.model.head.in_channels == cfg.model.backbone.out_channels == 64
    r = 25 if experiment == "siamrpn_r18_shipped" else 17
    assert model.anchors.shape == (r * r * 5, 4)
    with torch.no_grad():  # the configured response size is the one the network gives
        logits, _ = model.respond(model.template(torch.zeros(1, 3, 127, 127)), torch.zeros(1, 3, 255, 255))
    assert logits.shape == (1, r * r * 5, 2)


def test_template_crop_keeps_the_central_cells_and_grows_the_response():
    features = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(1, 2, 16, 16)
    torch.testing.assert_close(centre_crop(features, 8), features[..., 4:12, 4:12])
    torch.testing.assert_close(centre_crop(features, 16), features)
    for bad in (7, 17, 2):  # off-centre by half a cell, larger than the map, too small for the head's 3x3 convolutions
        with pytest.raises(ConfigError, match=f"template_crop={bad}"):
            centre_crop(features, bad)
    torch.manual_seed(0)
    trunk = ResNet18Trunk(out_channels=16)
    model = SiamRPN(backbone=trunk, head=DepthwiseHead(in_channels=16, channels=16), anchor_generator=AnchorGenerator(**PAPER_ANCHORS),
                    response_size=25, template_crop=8).eval()
    templates = torch.randint(0, 256, (2, 3, 127, 127), dtype=torch.uint8)
    with torch.no_grad():
        kernels = model.template(templates)
        expected = model.head.kernels(model.backbone(model.normalize(templates))[..., 4:12, 4:12])
        logits, deltas = model.respond(kernels, torch.zeros(2, 3, 255, 255))
    torch.testing.assert_close(kernels.cls, expected.cls)
    assert kernels.cls.shape[-2:] == (6, 6) and logits.shape == (2, 25 * 25 * 5, 2) and deltas.shape == (2, 25 * 25 * 5, 4)
    centres = (model.anchors[..., :2] + model.anchors[..., 2:]).view(25, 25, 5, 2) / 2
    torch.testing.assert_close(centres[12, 12], torch.full((5, 2), 127.5))  # the centre cell at the crop's centre
    with pytest.raises(ConfigError, match="template_crop=0"):
        SiamRPN(backbone=trunk, head=DepthwiseHead(in_channels=16, channels=16), anchor_generator=AnchorGenerator(**PAPER_ANCHORS), template_crop=0)


def test_a_response_size_that_the_network_does_not_give_is_named():
    model = SiamRPN(backbone=ResNet18Trunk(out_channels=16), head=DepthwiseHead(in_channels=16, channels=16),
                    anchor_generator=AnchorGenerator(**PAPER_ANCHORS), template_crop=8).eval()  # response_size left at 17
    with torch.no_grad(), pytest.raises(ConfigError, match=r"gives? 25x25 responses .*model.response_size=25"):
        model.respond(model.template(torch.zeros(1, 3, 127, 127)), torch.zeros(1, 3, 255, 255))


@pytest.mark.parametrize("head", [UpChannelHead, DepthwiseHead])
def test_folding_batchnorm_keeps_the_outputs(head):
    from frcnn.modeling.fold import fold_batchnorm

    torch.manual_seed(0)
    model = siamrpn(head=head)
    model.train()
    with torch.no_grad():  # non-trivial running statistics, different per branch (dark templates, bright searches)
        for _ in range(10):
            model(torch.randint(0, 60, (4, 3, 127, 127)), torch.randint(180, 255, (4, 3, 255, 255)))
    model.eval()
    # Each branch folds with its own statistics: the template branch's copy, then the search branch's.
    template, search = fold_batchnorm(model.for_branch("template")), fold_batchnorm(model.for_branch("search"))
    for folded in (template, search):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, SiameseBatchNorm2d) for m in model.modules())  # the original is untouched
    z, x = torch.randint(0, 255, (2, 3, 127, 127)), torch.randint(0, 255, (2, 3, 255, 255))
    with torch.no_grad():
        expected = model(z, x)
        logits, deltas = search.respond(template.template(z), x)
    torch.testing.assert_close(logits, expected.logits, rtol=1e-4, atol=1e-4 * float(expected.logits.abs().max()))
    torch.testing.assert_close(deltas, expected.deltas, rtol=1e-4, atol=1e-4 * float(expected.deltas.abs().max()))
    # The tracker does the same: its first update's best score is the model's own.
    tracker = SiamRPNTracker(model, TrackerSettings(window_influence=0.0, penalty_k=0.0))
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3)).astype(np.uint8)
    tracker.init(frame, [140, 100, 40, 40])
    _, score = tracker.update(frame)
    with torch.no_grad():
        zc = crop(frame, (160, 120), context_side(40, 40), 127, frame.reshape(-1, 3).mean(0))
        xc = crop(frame, (160, 120), context_side(40, 40) * 255 / 127, 255, frame.reshape(-1, 3).mean(0))
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # noqa: E731
        probs, _ = model.decode(*model.respond(model.template(as_tensor(zc)), as_tensor(xc)))
    assert score == pytest.approx(float(probs.max()), rel=1e-5)


def test_each_branch_keeps_its_own_batchnorm_statistics():
    torch.manual_seed(0)
    model = siamrpn(head=DepthwiseHead)
    norm = model.backbone.features[1]
    assert isinstance(norm, SiameseBatchNorm2d)
    model.train()
    with torch.no_grad():  # dark templates, bright search crops: the two branches' statistics differ
        for _ in range(20):
            model(torch.randint(0, 60, (4, 3, 127, 127)), torch.randint(180, 255, (4, 3, 255, 255)))
    assert (norm.template_mean - norm.running_mean).abs().max() > 0.1
    # In eval mode each branch uses its own: the template branch equals a plain BatchNorm with the template stats.
    model.eval()
    z = torch.randint(0, 60, (2, 3, 127, 127))
    with torch.no_grad():
        got = model.template(z).cls
        expected = model.for_branch("template").template(z).cls
        wrong = model.for_branch("search").template(z).cls
    torch.testing.assert_close(got, expected)
    assert (got - wrong).abs().max() > 1e-3
    assert norm.branch == "search"  # restored after the template pass
    # A checkpoint from before per-branch statistics loads, both branches starting from its one average.
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(("template_mean", "template_var"))}
    fresh = siamrpn(head=DepthwiseHead)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.backbone.features[1].template_mean, norm.running_mean)
    with pytest.raises(ValueError, match="branch must be"):
        model.for_branch("both")


def test_siamese_batchnorm_refuses_what_it_cannot_keep_per_branch():
    with pytest.raises(ValueError, match="momentum must be a number"):
        SiameseBatchNorm2d(4, momentum=None)
    with pytest.raises(ValueError, match="track_running_stats"):
        SiameseBatchNorm2d(4, track_running_stats=False)

