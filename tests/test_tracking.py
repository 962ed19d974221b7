"""SiamRPN tracking (frcnn/tracking/): crop geometry, the correlation, anchor targets, the tracker, OPE, data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from frcnn.errors import InputError
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.tracking.crops import (
    SEARCH_SIZE,
    context_side,
    crop,
    from_crop,
    to_crop,
)
from frcnn.tracking.evaluate import iou_xywh, ope_scores
from frcnn.tracking.model import (
    AlexNet,
    DepthwiseHead,
    ResNet18Trunk,
    SiameseBatchNorm2d,
    SiamRPN,
    TemplateKernels,
    UpChannelHead,
    cross_correlate,
    depthwise_correlate,
)
from frcnn.tracking.pairs import TrackingPairs, collate_pairs
from frcnn.tracking.sequences import (
    Sequence,
    generate_sequences,
    load_sequence,
    read_groundtruth,
)
from frcnn.tracking.tracker import SiamRPNTracker, TrackerSettings

PAPER_ANCHORS = dict(sizes=(64,), aspect_ratios=(0.33, 0.5, 1.0, 2.0, 3.0), stride=8)


def siamrpn(backbone: nn.Module | None = None, head=UpChannelHead, channels: int = 16) -> SiamRPN:
    backbone = backbone or AlexNet(channels=(8, 16, 16, 16), out_channels=16)
    return SiamRPN(backbone=backbone, head=head(in_channels=backbone.out_channels, channels=channels), anchor_generator=AnchorGenerator(**PAPER_ANCHORS))


# -------------------------------------------------------------------------------------------------- crops


def test_context_side_and_the_docstring_example():
    assert context_side(20, 10) == pytest.approx(math.sqrt(35 * 25))  # p = 15
    side = context_side(20, 10) * 255 / 127
    box = to_crop(np.array([40.0, 35.0, 60.0, 45.0]), (50.0, 40.0), side, SEARCH_SIZE)
    assert (box[0] + box[2]) / 2 == pytest.approx(127.5) and (box[1] + box[3]) / 2 == pytest.approx(127.5)
    assert box[2] - box[0] == pytest.approx(20 * 127 / math.sqrt(35 * 25))  # 85.9
    np.testing.assert_allclose(from_crop(box, (50.0, 40.0), side, SEARCH_SIZE), [40, 35, 60, 45])


def test_crop_at_unit_scale_is_a_window_of_the_frame():
    yy, xx = np.mgrid[0:100, 0:120]
    frame = np.stack([xx, yy, (xx + yy) % 256], axis=-1).astype(np.uint8)
    out = crop(frame, (50.0, 40.0), 20, 20)  # pixels x in [40, 60), y in [30, 50)
    np.testing.assert_array_equal(out, frame[30:50, 40:60])
    half = crop(frame, (50.0, 40.0), 40, 20)  # 2x down: output pixel u covers x = 30 + 2u .. 32 + 2u, centre 31 + 2u
    assert half[0, 0, 0] == pytest.approx(30.5, abs=0.6) and half[0, 5, 0] == pytest.approx(40.5, abs=0.6)


def test_crop_leaving_the_frame_is_filled_with_the_mean_colour():
    frame = np.full((50, 60, 3), 200, np.uint8)
    frame[:25] = 0  # mean colour 100
    out = crop(frame, (5.0, 5.0), 20, 20)  # covers x, y in [-5, 15): its top-left 5x5 lies outside
    np.testing.assert_array_equal(out[:5, :5], 100)
    np.testing.assert_array_equal(out[5:, 5:], 0)
    np.testing.assert_array_equal(crop(frame, (5.0, 5.0), 20, 20, fill=np.array([1, 2, 3]))[0, 0], [1, 2, 3])


# ------------------------------------------------------------------------------------------ correlation


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


# -------------------------------------------------------------------------------------- anchors, targets


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


# ---------------------------------------------------------------------------------------------- tracker


class _PoolTrunk(nn.Module):
    """8x8 average pooling of the normalized grey image: 127 -> 15, 255 -> 31, aligned like the real trunks."""

    out_channels = 1

    def forward(self, images):
        return F.avg_pool2d(images.mean(1, keepdim=True), 8)


class _MatchingHead(nn.Module):
    """Template matching as an RPN head: the square anchor's foreground probability is the correlation of the
    zero-mean template with the search features, relative to its peak; the other anchors score ~0, deltas are 0."""

    def kernels(self, template):
        t = template[:, :, 1:-1, 1:-1]  # the 3x3 convolutions' border, as the real heads lose it
        return TemplateKernels(t - t.mean(dim=(2, 3), keepdim=True), t)

    def forward(self, kernels, search):
        s = search[:, :, 1:-1, 1:-1]
        response = cross_correlate(s - s.mean(dim=(2, 3), keepdim=True), kernels.cls[:, None])  # [B, 1, 17, 17]
        b, _, r, _ = response.shape
        score = (response[:, 0] / response.amax(dim=(1, 2, 3))[:, None, None]).clamp(1e-3, 1 - 1e-3)
        cls = torch.zeros(b, 5, 2, r, r)
        cls[:, :, 1] = -10.0
        cls[:, 2, 1] = torch.logit(score)  # foreground probability = the response relative to its peak
        return cls.reshape(b, 10, r, r), torch.zeros(b, 20, r, r)


def _square_sequence(motion: tuple[float, float], frames: int = 20) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(60, 80, 3)).astype(np.uint8)
    background = np.kron(base, np.ones((4, 4, 1), np.uint8))  # 240 x 320, blocky texture
    images, boxes = [], []
    for t in range(frames):
        x, y = 120 + motion[0] * t, 90 + motion[1] * t
        image = background.copy()
        xi, yi = int(round(x)), int(round(y))
        image[yi : yi + 40, xi : xi + 40] = 255
        image[yi + 10 : yi + 30, xi + 10 : xi + 30] = 0
        images.append(image)
        boxes.append([xi, yi, 40, 40])
    return images, np.asarray(boxes, dtype=np.float64)


@pytest.mark.parametrize("motion", [(0.0, 0.0), (2.0, 1.0)], ids=["static", "translating"])
def test_tracker_follows_a_static_and_a_translating_object(motion):
    model = SiamRPN(backbone=_PoolTrunk(), head=_MatchingHead(), anchor_generator=AnchorGenerator(**PAPER_ANCHORS))
    tracker = SiamRPNTracker(model, TrackerSettings())
    frames, gt = _square_sequence(motion)
    tracker.init(frames[0], gt[0])
    boxes = np.stack([tracker.update(frame)[0] for frame in frames[1:]])
    assert iou_xywh(boxes, gt[1:]).min() > 0.8


class _FixedProposals:
    """A stand-in for SiamRPN whose every frame offers the same two proposals at the crop's centre: anchor 0
    with the previous size (score 0.8), anchor 1 twice as large (score 0.9)."""

    response_size, num_anchors = 1, 2

    def eval(self):
        return self

    def template(self, templates):
        return "kernels"

    def respond(self, kernels, searches):
        return None, None

    def decode(self, logits, deltas):
        side = self.side  # the previous size in crop pixels, set by the test
        c = SEARCH_SIZE / 2
        boxes = torch.tensor([[[c - side / 2, c - side / 2, c + side / 2, c + side / 2], [c - side, c - side, c + side, c + side]]])
        return torch.tensor([[0.8, 0.9]]), boxes


def test_the_scale_penalty_prefers_the_unchanged_size_and_smoothing_moves_the_size_by_lr_times_score():
    stub = _FixedProposals()
    settings = TrackerSettings(penalty_k=0.055, window_influence=0.0, lr=0.295)
    tracker = SiamRPNTracker(stub, settings)
    frame = np.zeros((200, 200, 3), np.uint8)
    tracker.init(frame, [80, 80, 40, 40])
    stub.side = 40 * 127 / context_side(40, 40)  # the target's size at the crop's scale (63.5 px)
    box, score = tracker.update(frame)
    # penalty of the doubled box: s_c = 2 (sz scales with the box), r_c = 1 -> exp(-(2 - 1) * 0.055) = 0.946;
    # 0.9 * 0.946 = 0.851 > 0.8, so the larger box wins, and the size moves by lr * penalty * score of the way
    rate = 0.295 * math.exp(-0.055) * 0.9
    assert score == pytest.approx(0.9)
    assert box[2] == pytest.approx(40 * (1 - rate) + 80 * rate) and box[0] + box[2] / 2 == pytest.approx(100)
    strict = SiamRPNTracker(stub, TrackerSettings(penalty_k=0.2, window_influence=0.0))  # exp(-0.2) * 0.9 = 0.737 < 0.8
    strict.init(frame, [80, 80, 40, 40])
    box, score = strict.update(frame)
    assert score == pytest.approx(0.8) and box[2] == pytest.approx(40)


def test_checkpoints_of_one_kind_are_refused_by_the_other(tiny_sequences, tmp_path, tiny_checkpoint):
    from frcnn.engine.checkpoint import CheckpointError
    from frcnn.tasks.load import load_model, load_tracker

    with pytest.raises(CheckpointError, match="not a SiamRPN checkpoint"):
        load_tracker(tiny_checkpoint)
    with pytest.raises(CheckpointError, match="holds a siamrpn model, not a detector"):
        load_model(_tiny_tracker_checkpoint(tiny_sequences, tmp_path), torch.device("cpu"))


def _tiny_tracker_checkpoint(sequences, tmp_path):
    from frcnn.cli import compose_config
    from frcnn.tasks.train_tracker import train_tracker

    args = [a for a in tiny_tracker_args(sequences, tmp_path, 1) if not a.startswith("hydra.")] + [f"run_dir={tmp_path / 'run'}"]
    train_tracker(compose_config("siamrpn", args))
    return tmp_path / "run" / "last.pt"


def test_tracker_update_before_init_is_an_error():
    with pytest.raises(RuntimeError, match="before init"):
        SiamRPNTracker(siamrpn()).update(np.zeros((50, 50, 3), np.uint8))


class _SizeSeer:
    """A stand-in for SiamRPN that sees the target: it measures the bright rectangle in the search crop and proposes
    one box at the crop's centre whose size is ``share`` of the way (in log scale) from the tracker's believed
    size to the measured one. Nothing bright in the crop (cropped in the wrong place): a 1-pixel box."""

    response_size, num_anchors = 1, 1

    def __init__(self, share: float) -> None:
        self.share, self.tracker = share, None

    def eval(self):
        return self

    def template(self, templates):
        return "kernels"

    def respond(self, kernels, searches):
        return searches, None

    def decode(self, searches, deltas):
        bright = searches[0].float().mean(0) > 150  # [S, S]
        rows, cols = bright.any(1).nonzero(), bright.any(0).nonzero()
        c = SEARCH_SIZE / 2
        if len(rows) == 0:
            w = h = 1.0
        else:
            seen = np.array([cols.max() - cols.min() + 1, rows.max() - rows.min() + 1], dtype=float)
            believed = self.tracker.size * 127 / context_side(*self.tracker.size, self.tracker.settings.context)
            w, h = believed * (seen / believed) ** self.share
        return torch.tensor([[0.9]]), torch.tensor([[[c - w / 2, c - h / 2, c + w / 2, c + h / 2]]], dtype=torch.float64)


def _bright_box_sequence(tmp_path, boxes):
    """Frames of a dark 320x240 scene with a bright rectangle at each ``boxes[t]`` (xywh; zero size: absent)."""
    from PIL import Image

    (tmp_path / "seq").mkdir(parents=True)
    paths = []
    for t, (x, y, w, h) in enumerate(boxes):
        frame = np.full((240, 320, 3), 40, np.uint8)
        frame[int(y):int(y + h), int(x):int(x + w)] = 250
        paths.append(tmp_path / "seq" / f"{t + 1:08d}.png")
        Image.fromarray(frame).save(paths[-1])
    return Sequence("seq", paths, np.asarray(boxes, dtype=float))


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_size_response_is_the_share_of_a_wrong_size_the_proposals_correct(tmp_path, share):
    from frcnn.tracking.evaluate import size_response

    stub = _SizeSeer(share)
    tracker = SiamRPNTracker(stub, TrackerSettings())
    stub.tracker = tracker
    # The target moves and changes size every frame; frames 4 and 8 are probed (every=4), frame 12 has no target.
    boxes = [[40 + 9 * t, 30 + 5 * t, 50 + 3 * t, 40 + 2 * t] for t in range(12)] + [[0, 0, 0, 0]]
    seq = _bright_box_sequence(tmp_path, boxes)
    response = size_response(tracker, [seq], factors=(0.5, 2.0), every=4)
    assert list(response) == [0.5, 2.0]
    for value in response.values():  # the rectangle's edges blur by a pixel in the resampled crop
        assert value == pytest.approx(share, abs=1e-9 if share == 0 else 0.08)
    short = _bright_box_sequence(tmp_path / "short", boxes[:4])  # no 5th frame: nothing to probe
    with pytest.raises(ValueError, match="no frame with the target"):
        size_response(tracker, [short], every=4)
    with pytest.raises(ValueError, match="not 1"):
        size_response(tracker, [seq], factors=(0.5, 1.0))


def test_proposals_are_xywh_in_frame_pixels_and_keep_the_state():
    stub = _SizeSeer(0.0)  # the believed size, at the crop's centre
    tracker = SiamRPNTracker(stub, TrackerSettings())
    stub.tracker = tracker
    frame = np.full((120, 160, 3), 40, np.uint8)
    frame[50:70, 60:100] = 250
    tracker.init(frame, [60, 50, 40, 20])
    tracker.size = np.array([30.0, 24.0])  # a believed size other than the first frame's
    scores, boxes = tracker.proposals(frame)
    assert scores.tolist() == [pytest.approx(0.9)]
    np.testing.assert_allclose(boxes, [[80 - 15, 60 - 12, 30, 24]], atol=1e-9)
    np.testing.assert_allclose(tracker.centre, [80, 60])
    np.testing.assert_allclose(tracker.size, [30, 24])
    with pytest.raises(RuntimeError, match="before init"):
        SiamRPNTracker(_SizeSeer(0.0)).proposals(frame)


# ------------------------------------------------------------------------------------------- evaluation


def test_ope_scores_hand_computed():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=float)
    pred = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [30, 30, 10, 10]], dtype=float)  # IoU (first dropped) 1/3, 0
    np.testing.assert_allclose(iou_xywh(pred, gt), [1, 1 / 3, 0])
    s = ope_scores([(pred, gt)], seconds=1.0)
    # success at thresholds 0, 0.05, ..., 1: IoU 1/3 exceeds 0 .. 0.3 (7 thresholds), IoU 0 exceeds none
    assert s.success_auc == pytest.approx(7 * 0.5 / 21)
    assert s.precision == pytest.approx(0.5)  # centre errors 5 and 42.4 px
    assert s.fps == pytest.approx(3.0)
    perfect = ope_scores([(gt, gt)], seconds=1.0)
    assert perfect.success_auc == pytest.approx(20 / 21) and perfect.precision == 1.0 and perfect.norm_precision == 1.0


# ----------------------------------------------------------------------------------------- sequences, pairs


def test_groundtruth_with_a_malformed_line_names_the_file_and_line(tmp_path):
    (tmp_path / "seq").mkdir()
    gt = tmp_path / "seq" / "groundtruth.txt"
    gt.write_text("1,2,3,4\n5\t6\t7\t8\n9,10,eleven,12\n")
    with pytest.raises(InputError, match=r"groundtruth.txt, line 3: expected 4 numbers") as info:
        load_sequence(tmp_path / "seq")
    assert "\n" not in str(info.value) and str(gt) in str(info.value)
    gt.write_text("1,2,3,4\n5 6 7 8\n")
    np.testing.assert_array_equal(read_groundtruth(gt), [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_generated_sequences_load_and_boxes_cover_the_target(tmp_path):
    root = generate_sequences(tmp_path / "seqs", num_sequences=2, length=12, seed=3)
    seq = load_sequence(root / "seq_001")
    assert len(seq) == 12 and seq.boxes.shape == (12, 4) and (seq.boxes[:, 2:] > 4).all()
    assert json.loads((root / "seq_001" / "attributes.json").read_text()) == seq.attributes
    again = generate_sequences(tmp_path / "again", num_sequences=2, length=12, seed=3)
    assert (again / "seq_001" / "groundtruth.txt").read_text() == (root / "seq_001" / "groundtruth.txt").read_text()


def test_pairs_put_the_target_where_the_box_says(tmp_path):
    frame = np.full((120, 160, 3), 40, np.uint8)
    frame[50:70, 60:90] = 250  # a 30 x 20 target
    from PIL import Image

    (tmp_path / "s").mkdir()
    for i in range(3):
        Image.fromarray(frame).save(tmp_path / "s" / f"{i + 1:08d}.png")
    seq = Sequence("s", sorted((tmp_path / "s").glob("*.png")), np.array([[60, 50, 30, 20]] * 3, dtype=float))
    pairs = TrackingPairs([seq], None, shift=30, scale_jitter=0.1, negative_fraction=0.0)
    batch = collate_pairs([pairs[(i, 100 + i)] for i in range(3)])
    assert batch.templates.shape == (3, 3, 127, 127) and batch.searches.shape == (3, 3, 255, 255)
    for search, box in zip(batch.searches, batch.boxes):
        x1, y1, x2, y2 = box.round().int().tolist()
        assert search[0, y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].float().mean() > 245  # inside: the target
        assert search[0, y2 + 4 : y2 + 10, x1:x2].float().mean() < 60  # just below: background
    other_frame = np.full((120, 160, 3), 40, np.uint8)
    other_frame[30:60, 20:50] = 120  # another sequence's target, grey
    (tmp_path / "o").mkdir()
    for i in range(3):
        Image.fromarray(other_frame).save(tmp_path / "o" / f"{i + 1:08d}.png")
    other = Sequence("o", sorted((tmp_path / "o").glob("*.png")), np.array([[20, 30, 30, 30]] * 3, dtype=float))
    two = TrackingPairs([seq, other], None, negative_fraction=1.0)
    for key in [(0, 7), (1, 8), (2, 9)]:  # items of the first sequence: the negative comes from the other one
        template, search, box, _ = two[key]
        assert box.tolist() == [0, 0, 0, 0]
        assert template.max() == 250 and search.max() < 200  # the target (250) is nowhere in the search crop
    alone = TrackingPairs([seq], None, negative_fraction=1.0)[(0, 7)]  # no other object anywhere: stays positive
    assert alone[2].tolist() != [0, 0, 0, 0]


def test_an_unreadable_frame_is_replaced_and_reported_by_its_own_id(tmp_path):
    from PIL import Image

    (tmp_path / "s").mkdir()
    for i in range(4):
        Image.fromarray(np.full((60, 80, 3), 90 + i, np.uint8)).save(tmp_path / "s" / f"{i + 1:08d}.png")
    (tmp_path / "s" / "00000002.png").write_bytes(b"not a png")
    seq = Sequence("s", sorted((tmp_path / "s").glob("*.png")), np.array([[20, 20, 20, 20]] * 4, dtype=float))
    pairs = TrackingPairs([seq], None, max_gap=0)
    with pytest.warns(UserWarning, match="unreadable frame 1"):
        *_, skipped = pairs[(1, 0)]
    assert skipped.tolist() == [1]
    assert pairs[(2, 0)][3].tolist() == []


def test_too_many_unreadable_frames_fail_tracker_training_naming_frames(tiny_sequences, tiny_data, tmp_path):
    import shutil

    from frcnn.cli import compose_config
    from frcnn.engine.trainer import TrainingError
    from frcnn.tasks.train_tracker import train_tracker

    seqs = tmp_path / "seqs"
    shutil.copytree(tiny_sequences, seqs)
    for frame in sorted(p for p in seqs.rglob("*") if p.suffix in (".png", ".jpg"))[::2]:
        frame.write_bytes(b"corrupt")  # half of all frames
    args = [a for a in tiny_tracker_args(seqs, tmp_path, 4) if not a.startswith(("hydra.", "data.still"))]
    still = [f"data.still.root={tiny_data}", "data.still.generate=null"]  # 8 images, several objects each
    cfg = compose_config("siamrpn", args + still + [f"run_dir={tmp_path / 'run'}", "data.max_bad_image_fraction=0.01"])
    from frcnn.tracking.sequences import load_sequences

    # The ids count each frame with the target and each still image once (not each object): the fraction's base.
    frames = sum(int(((q.boxes[:, 2] > 1) & (q.boxes[:, 3] > 1)).sum()) for q in load_sequences(seqs))
    with pytest.warns(UserWarning, match="skipping unreadable frame"), pytest.raises(
        TrainingError, match=rf"training frames are unreadable.* of {frames + 8} .*frame ids \[.*named in a warning above"
    ):
        train_tracker(cfg)


# ------------------------------------------------------------------------------------ entry points (CLI)


@pytest.fixture(scope="module")
def tiny_sequences(tmp_path_factory):
    return generate_sequences(tmp_path_factory.mktemp("seqs"), num_sequences=2, length=10, seed=0)


def tiny_tracker_args(sequences, run_dir, steps: int) -> list[str]:
    return [
        "experiment=siamrpn_demo", f"data.sequences.root={sequences}", "data.sequences.generate=null", "data.still=null",
        "model.backbone.channels=[8,16,16,16]", "model.backbone.out_channels=16", "model.head.channels=16",
        "data.batch_size=2", "data.num_workers=0", "trainer.reference_batch_size=2", f"trainer.max_iters={steps}",
        "schedule.warmup_iters=1", "trainer.checkpoint_period=2", "trainer.progress=false", "trainer.tensorboard=false",
        "trainer.device=cpu", f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow
def test_train_resume_and_track_through_the_clis(run_script, tiny_sequences, tmp_path):
    run = tmp_path / "run"
    first = run_script("train_tracker.py", tiny_tracker_args(tiny_sequences, run, 2))
    assert first.returncode == 0, first.stderr
    assert "finished at iteration 2" in first.stdout
    resumed = run_script("train_tracker.py", tiny_tracker_args(tiny_sequences, tmp_path / "run2", 4) + [f"train.resume={run / 'last.pt'}"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "finished at iteration 4" in resumed.stdout
    out = tmp_path / "track"
    tracked = run_script("track.py", [f"checkpoint={tmp_path / 'run2' / 'last.pt'}", f"sequence={tiny_sequences / 'seq_000'}", f"hydra.run.dir={out}"])
    assert tracked.returncode == 0, tracked.stderr
    result = json.loads((out / "track.json").read_text())
    assert len(result["boxes_xywh"]) == 10 and result["boxes_xywh"][0] == pytest.approx(list(load_sequence(tiny_sequences / "seq_000").boxes[0]))
    assert (out / "track.gif").is_file() and len(list((out / "frames").glob("*.jpg"))) == 10
    # the sequence has a groundtruth.txt: the track is scored against it, in the file and in one printed line
    scored = result["groundtruth"]
    assert scored["frames_scored"] == 9 and 0.0 <= scored["success_auc"] <= 1.0 and 0.0 <= scored["mean_iou"] <= 1.0
    assert f"mean IoU {scored['mean_iou']:.3f}, success AUC {scored['success_auc']:.3f}" in tracked.stdout
    bench = run_script("track_benchmark.py", ["--checkpoint", f"tiny={tmp_path / 'run2' / 'last.pt'}", "--sequences", str(tiny_sequences),
                                              "--distractor-aware", "0.5", "--peers", "--out", str(tmp_path / "bench")])
    assert bench.returncode == 0, bench.stderr
    scores = json.loads((tmp_path / "bench" / "scores.json").read_text())
    assert list(scores["families"]["given"]["scores"]) == ["SiamRPN tiny", "SiamRPN tiny + DaSiamRPN selection"]
    assert "share of a wrong believed size corrected" in bench.stdout and (tmp_path / "bench" / "success_given.png").is_file()
    assert list(scores["siamrpn_size_response"]) == ["0.7", "0.85", "1.18", "1.4"]  # frame 5 of each 10-frame sequence probed


@pytest.mark.slow
def test_track_cli_errors_are_one_line(run_script, tiny_sequences, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for frame in sorted((tiny_sequences / "seq_000").glob("*.jpg"))[:3]:
        (bad / frame.name).write_bytes(frame.read_bytes())
    (bad / "groundtruth.txt").write_text("10,10,20,20\n11,11,20\n")
    result = run_script("track.py", [f"checkpoint={tmp_path / 'none.pt'}", f"sequence={bad}", f"hydra.run.dir={tmp_path / 'o'}"])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "groundtruth.txt, line 2" in result.stderr
    result = run_script("track.py", [f"checkpoint={tmp_path / 'none.pt'}", f"sequence={bad}", "init=[1,2,3]", f"hydra.run.dir={tmp_path / 'o'}"])
    assert result.returncode == 2 and "init=[1, 2, 3] must be [x, y, w, h]" in result.stderr


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


# ---------------------------------------------------------------------------------------------- tuning


class _SettingsDependentTracker:
    """Returns the ground-truth box shifted by an error that is smallest at window_influence 0.3, lr 0.45."""

    def __init__(self, settings, sequences):
        self.settings, self.sequences = settings, sequences

    def init(self, frame, box):
        pass

    def update(self, frame):
        s, t = int(frame[0, 0, 1]), int(frame[0, 0, 0])
        shift = 40 * abs(self.settings.window_influence - 0.3) + 40 * abs(self.settings.lr - 0.45)
        return self.sequences[s].boxes[t] + np.array([shift, 0, 0, 0]), 1.0


def test_a_tuned_checkpoint_carries_the_settings(tiny_sequences, tmp_path):
    from frcnn.tasks.load import load_tracker
    from frcnn.tracking.tune import Trial, tuned_checkpoint

    source = _tiny_tracker_checkpoint(tiny_sequences, tmp_path)
    chosen = TrackerSettings(penalty_k=0.3, window_influence=0.1, lr=0.1)
    target = tuned_checkpoint(source, tmp_path / "tuned.pt", chosen, [Trial({"lr": 0.1}, 0.5), Trial({"lr": 0.2}, 0.7)])
    settings = load_tracker(target).settings
    assert (settings.penalty_k, settings.window_influence, settings.lr) == (0.3, 0.1, 0.1)
    assert torch.load(target, weights_only=True)["tuning"]["best_success_auc"] == 0.7
    assert load_tracker(source).settings.lr == TrackerSettings().lr  # the source is untouched


def test_siamese_batchnorm_refuses_what_it_cannot_keep_per_branch():
    with pytest.raises(ValueError, match="momentum must be a number"):
        SiameseBatchNorm2d(4, momentum=None)
    with pytest.raises(ValueError, match="track_running_stats"):
        SiameseBatchNorm2d(4, track_running_stats=False)


def test_tuning_finds_the_best_grid_point_by_coordinate_ascent(tmp_path, monkeypatch):
    from frcnn.tracking import tune

    sequences, frames = [], {}
    for s in range(2):
        boxes = np.array([[20.0 + t, 30.0, 40.0, 30.0] for t in range(6)])
        paths = [tmp_path / f"{s}_{t}.png" for t in range(6)]
        for t, p in enumerate(paths):
            frame = np.zeros((8, 8, 3), np.uint8)
            frame[0, 0] = (t, s, 0)
            frames[p] = frame
        sequences.append(Sequence(f"s{s}", paths, boxes))
    monkeypatch.setattr(tune, "read_rgb", lambda p, max_pixels=None: frames[p])
    grid = {"window_influence": (0.2, 0.3, 0.42), "penalty_k": (0.0, 0.055), "lr": (0.295, 0.45)}
    best, trials = tune.tune_settings(lambda st: _SettingsDependentTracker(st, sequences), sequences, TrackerSettings(), grid)
    assert (best.window_influence, best.lr) == (0.3, 0.45) and best.penalty_k == 0.055  # ties keep the start
    assert trials[0].settings == {"window_influence": 0.42, "penalty_k": 0.055, "lr": 0.295}
    perfect = 20 / 21  # IoU 1 everywhere: success at every threshold but "IoU > 1"
    assert max(t.success_auc for t in trials) == pytest.approx(perfect) and trials[0].success_auc < perfect
    assert len({tuple(t.settings.values()) for t in trials}) == len(trials)  # no setting evaluated twice
    with pytest.raises(ValueError, match="unknown tracker settings"):
        tune.tune_settings(lambda st: None, sequences, TrackerSettings(), {"window": (0.1,)})


@pytest.mark.slow
def test_tune_cli_writes_a_checkpoint_the_tracker_reads(run_script, tiny_sequences, tmp_path):
    from frcnn.tasks.load import load_tracker

    checkpoint = _tiny_tracker_checkpoint(tiny_sequences, tmp_path)
    result = run_script("tune_tracker.py", ["--checkpoint", str(checkpoint), "--sequences", str(tiny_sequences), "--num-sequences", "1"])
    assert result.returncode == 0, result.stderr
    tuned = checkpoint.with_name("tuned.pt")
    state = torch.load(tuned, map_location="cpu", weights_only=True)
    best = state["tuning"]["best"]
    assert state["tuning"]["best_success_auc"] == max(t["success_auc"] for t in state["tuning"]["trials"])
    assert {k: state["config"]["tracker"][k] for k in best} == best
    settings = load_tracker(tuned).settings
    assert (settings.penalty_k, settings.window_influence, settings.lr) == (best["penalty_k"], best["window_influence"], best["lr"])
    assert f"-> {tuned}" in result.stdout
    missing = run_script("tune_tracker.py", ["--checkpoint", str(checkpoint), "--sequences", str(tmp_path / "nowhere")])
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "nowhere" in missing.stderr


def test_make_sequences_writes_what_track_reads(run_script, tmp_path):
    done = run_script("make_sequences.py", ["--out", str(tmp_path / "seqs"), "--num-sequences", "2", "--length", "6", "--seed", "4"])
    assert done.returncode == 0, done.stderr
    assert f"sequence={tmp_path / 'seqs' / 'seq_000'}" in done.stdout
    sequence = load_sequence(tmp_path / "seqs" / "seq_001")
    assert len(sequence.frames) == 6 and sequence.boxes.shape == (6, 4)
    bad = run_script("make_sequences.py", ["--out", str(tmp_path / "x"), "--length", "1"])
    assert bad.returncode == 2 and "--length=1 is too small" in bad.stderr
