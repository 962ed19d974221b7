"""The tracker (frcnn/tracking/tracker.py): following an object, the scale penalty and smoothing, its state; DaSiamRPN's
distractor-aware parts (tracker.py, pairs.py): the selection on hand-built response maps, the distractor memory, and the
hard-negative pairs centred on look-alikes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.tracking.crops import (
    SEARCH_SIZE,
    context_side,
)
from frcnn.tracking.evaluate import iou_xywh
from frcnn.tracking.model import (
    SiamRPN,
    TemplateKernels,
)
from frcnn.tracking.pairs import TrackingPairs
from frcnn.tracking.sequences import load_sequence, write_sequence
from frcnn.tracking.tracker import SiamRPNTracker, TrackerSettings, distractor_aware
from tests.tracking.helpers import (
    PAPER_ANCHORS,
    FixedProposals,
    MatchingHead,
    PoolTrunk,
    SizeSeer,
    siamrpn,
    square_sequence,
)


@pytest.mark.parametrize("motion", [(0.0, 0.0), (2.0, 1.0)], ids=["static", "translating"])
def test_tracker_follows_a_static_and_a_translating_object(motion):
    model = SiamRPN(backbone=PoolTrunk(), head=MatchingHead(), anchor_generator=AnchorGenerator(**PAPER_ANCHORS))
    tracker = SiamRPNTracker(model, TrackerSettings())
    frames, gt = square_sequence(motion)
    tracker.init(frames[0], gt[0])
    boxes = np.stack([tracker.update(frame)[0] for frame in frames[1:]])
    assert iou_xywh(boxes, gt[1:]).min() > 0.8


@pytest.mark.parametrize("motion", [(0.0, 0.0), (2.0, 1.0)], ids=["static", "translating"])
def test_a_cropped_template_stays_aligned_with_the_search_crop(motion):
    """The template's central 7 of 15 cells (SiamRPN++'s crop): 5x5 kernels, a 29 - 5 + 1 = 25-cell response. An
    off-centre crop or response grid would move the box by a cell (8 px) per frame."""
    model = SiamRPN(backbone=PoolTrunk(), head=MatchingHead(), anchor_generator=AnchorGenerator(**PAPER_ANCHORS),
                    response_size=25, template_crop=7)
    tracker = SiamRPNTracker(model, TrackerSettings())
    frames, gt = square_sequence(motion)
    tracker.init(frames[0], gt[0])
    assert tracker.kernels.cls.shape[-2:] == (5, 5) and tracker.window.shape == (25 * 25 * 5,)
    boxes = np.stack([tracker.update(frame)[0] for frame in frames[1:]])
    errors = np.linalg.norm(boxes[:, :2] + boxes[:, 2:] / 2 - gt[1:, :2] - gt[1:, 2:] / 2, axis=1)
    assert errors.max() < 6 and iou_xywh(boxes, gt[1:]).min() > 0.7  # within a cell (the head's deltas are 0): no drift


def test_the_scale_penalty_prefers_the_unchanged_size_and_smoothing_moves_the_size_by_lr_times_score():
    stub = FixedProposals()
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


def test_tracker_update_before_init_is_an_error():
    with pytest.raises(RuntimeError, match="before init"):
        SiamRPNTracker(siamrpn()).update(np.zeros((50, 50, 3), np.uint8))


def test_proposals_are_xywh_in_frame_pixels_and_keep_the_state():
    stub = SizeSeer(0.0)  # the believed size, at the crop's centre
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
        SiamRPNTracker(SizeSeer(0.0)).proposals(frame)


def test_distractor_aware_score_is_eq_5_by_hand():
    scores = np.array([0.7, 0.9, 0.1])
    seen = np.array([[0.2, 1.0, 0.0], [0.0, 0.6, 0.2]])  # two distractors' responses at the three anchors
    weights = np.array([1.0, 0.5])
    # anchor 1: 0.9 - 0.5 * (1.0 * 1.0 + 0.5 * 0.6) / 1.5 = 0.9 - 0.4333
    np.testing.assert_allclose(distractor_aware(scores, seen, weights, 0.5),
                               [0.7 - 0.5 * 0.2 / 1.5, 0.9 - 0.5 * 1.3 / 1.5, 0.1 - 0.5 * 0.1 / 1.5])
    np.testing.assert_array_equal(distractor_aware(scores, np.zeros((0, 3)), np.zeros(0), 0.5), scores)


class _TwoPeaks:
    """A stand-in SiamRPN with two proposals of the target's size: anchor 0 at the crop's centre (the target,
    score 0.7) and anchor 1 shifted right by 70 crop pixels (a look-alike, score 0.9). A kernel's first value
    says whose it is: 0 the target's, 1 a distractor's, whose response peaks at the look-alike (1.0) and is low
    at the target (0.2)."""

    response_size, num_anchors = 1, 2
    side = 60.0

    def eval(self):
        return self

    def template(self, templates):
        tag = float(templates.float().mean() > 127)  # the tracker crops the target (dark) or the look-alike (bright)
        return TemplateKernels(torch.tensor([[tag]]), torch.tensor([[tag]]))

    def respond(self, kernels, searches):
        return kernels.cls[:, 0], None

    def decode(self, tags, deltas):
        rows = [torch.tensor([0.2, 1.0]) if tag == 1 else torch.tensor([0.7, 0.9]) for tag in tags.tolist()]
        c, h = SEARCH_SIZE / 2, self.side / 2
        box = [[c - h, c - h, c + h, c + h], [c + 70 - h, c - h, c + 70 + h, c + h]]
        return torch.stack(rows), torch.tensor([box] * len(rows))


def _tracker(weight: float) -> SiamRPNTracker:
    settings = TrackerSettings(window_influence=0.0, penalty_k=0.0, lr=0.0, distractor_weight=weight, distractor_thresh=0.5)
    return SiamRPNTracker(_TwoPeaks(), settings)


def _frame() -> np.ndarray:
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[:, 150:] = 255  # the look-alike's side is bright: its template is tagged as a distractor
    return frame


def test_the_look_alike_wins_without_memory_and_loses_once_it_was_seen():
    plain = _tracker(0.0)
    plain.init(_frame(), [100, 80, 20, 20])
    assert plain.update(_frame())[1] == pytest.approx(0.9)  # the stronger look-alike takes the track
    assert plain.distractors == []  # the plain selection keeps no memory

    aware = _tracker(0.5)
    aware.init(_frame(), [100, 80, 20, 20])
    _, score = aware.update(_frame())  # frame 1: nothing seen yet, the look-alike wins, and is remembered ...
    # ... as the proposal away from the chosen one: here the target's (0.7 > thresh), which it now avoids
    assert score == pytest.approx(0.9) and len(aware.distractors) == 1


def test_a_distractor_seen_before_loses_to_the_target():
    aware = _tracker(0.5)
    aware.init(_frame(), [100, 80, 20, 20])
    start = aware.centre.copy()
    look_alike = _TwoPeaks().template(torch.full((1, 3, 127, 127), 255))
    aware.distractors = [(look_alike, 1.0)]  # the look-alike was seen in an earlier frame
    _, score = aware.update(_frame())
    # target 0.7 - 0.5 * 0.2 = 0.6 beats the look-alike's 0.9 - 0.5 * 1.0 = 0.4: the centre stays put
    assert score == pytest.approx(0.7)
    np.testing.assert_allclose(aware.centre, start)
    assert aware.distractors[0][1] == pytest.approx(1.0 - 0.2)  # aged by distractor_decay


def test_the_memory_remembers_a_look_alike_once_ages_it_and_keeps_the_newest():
    aware = _tracker(0.5)
    aware.init(_frame(), [100, 80, 20, 20])
    for _ in range(4):
        aware.update(_frame())
    # frame 1 remembers the proposal it did not choose; in later frames that proposal already scores high under
    # the kept kernel, so it is not cropped again: one entry, aged by distractor_decay in each later frame
    assert [a for _, a in aware.distractors] == pytest.approx([0.8**3])
    look_alike = _TwoPeaks().template(torch.full((1, 3, 127, 127), 255))
    aware.distractors = [(look_alike, 0.06), (look_alike, 1.0), (look_alike, 0.9), (look_alike, 0.7)]
    aware.settings.max_distractors = 2
    aware.update(_frame())
    assert [a for _, a in aware.distractors] == pytest.approx([0.72, 0.56])  # 0.06 faded out; the newest two kept
    aware.init(_frame(), [100, 80, 20, 20])
    assert aware.distractors == []  # a new target starts with no memory


class _Brightness:
    """A stand-in SiamRPN whose kernel is its template's mean brightness and whose one proposal, at the crop's
    centre, scores ``score``; counts template-branch passes."""

    response_size, num_anchors = 1, 1

    def __init__(self, score: float) -> None:
        self.score, self.templates = score, 0

    def eval(self):
        return self

    def template(self, templates):
        self.templates += 1
        mean = templates.float().mean().reshape(1, 1)
        return TemplateKernels(mean, 2 * mean)

    def respond(self, kernels, searches):
        return kernels.cls[:, 0], None

    def decode(self, values, deltas):
        c = SEARCH_SIZE / 2
        return torch.full((len(values), 1), self.score), torch.tensor([[[c - 20, c - 20, c + 20, c + 20]]] * len(values))


@pytest.mark.parametrize(("score", "rate", "updated"), [(0.97, 0.25, True), (0.9, 0.25, False), (0.97, 0.0, False)],
                         ids=["sure-frame", "unsure-frame", "off"])
def test_the_template_moves_by_its_rate_after_a_sure_frame_only(score, rate, updated):
    stub = _Brightness(score)
    tracker = SiamRPNTracker(stub, TrackerSettings(template_rate=rate, template_thresh=0.95, window_influence=0.0))
    frame = np.full((200, 200, 3), 100, np.uint8)
    tracker.init(frame, [90, 90, 20, 20])
    assert tracker.kernels.cls.item() == pytest.approx(100) and stub.templates == 1
    tracker.update(np.full((200, 200, 3), 200, np.uint8))  # the target (and all around it) brightens
    # the crop lies inside the frame, so its mean is the frame's: 0.75 * 100 + 0.25 * 200 when it updates
    expected = (1 - rate) * 100 + rate * 200 if updated else 100
    assert tracker.kernels.cls.item() == pytest.approx(expected) and tracker.kernels.reg.item() == pytest.approx(2 * expected)
    assert stub.templates == 1 + updated  # no template pass unless it updates


def test_hard_negative_pairs_centre_on_the_look_alike(tmp_path):
    frames, boxes, lookalikes = [], [], []
    for t in range(4):
        frame = np.full((200, 300, 3), 40, np.uint8)
        frame[80:110, 40:70] = 250  # the target, left
        frame[80:110, 230:260] = 250  # its look-alike, 190 px to the right: outside a crop centred on it
        frames.append(frame)
        boxes.append([40, 80, 30, 30])
        lookalikes.append(np.array([[230.0, 80, 30, 30]]))
    write_sequence(tmp_path / "s", frames, np.asarray(boxes, float), [], lookalikes)
    seq = load_sequence(tmp_path / "s")
    hard = TrackingPairs([seq], distractor_fraction=1.0, shift=0.0, scale_jitter=0.0)
    plain = TrackingPairs([seq], distractor_fraction=0.0, shift=0.0, scale_jitter=0.0)
    _, search, box, _ = hard[(0, 1)]
    assert (box == 0).all()  # only the look-alike in view: a negative pair
    centre = search[:, SEARCH_SIZE // 2 - 3 : SEARCH_SIZE // 2 + 4, SEARCH_SIZE // 2 - 3 : SEARCH_SIZE // 2 + 4]
    assert (centre > 200).all()  # centred on the bright look-alike
    _, _, box, _ = plain[(0, 1)]
    assert (box[2:] > box[:2]).all()  # the ordinary pair: the target's box


def test_the_resnet18_trunk_starts_from_imagenet_weights_or_a_detectors_trunk(tmp_path, tiny_checkpoint):
    from torchvision.models import resnet18

    from frcnn.engine.checkpoint import load_checkpoint
    from frcnn.errors import ConfigError
    from frcnn.modeling.backbones.weights import WeightsUnavailableError
    from frcnn.tracking.model import ResNet18Trunk, detector_trunk_state

    imagenet = resnet18(weights=None).state_dict()  # stands in for torchvision's file: same names and shapes
    imagenet["conv1.weight"].normal_()
    torch.save(imagenet, tmp_path / "resnet18.pth")
    trunk = ResNet18Trunk(out_channels=32, weights=str(tmp_path / "resnet18.pth"))
    torch.testing.assert_close(trunk.body[0].weight, imagenet["conv1.weight"])
    torch.testing.assert_close(trunk.body[5][0].conv1.weight, imagenet["layer2.0.conv1.weight"])
    torch.testing.assert_close(trunk.body[1].template_mean, imagenet["bn1.running_mean"])  # both branches' statistics

    detector = load_checkpoint(tiny_checkpoint)["model"]
    state = detector_trunk_state(str(tiny_checkpoint))
    conv1 = next(v for k, v in detector.items() if k.startswith("backbone.") and k.endswith(("trunk.0.0.weight", "body.conv1.weight")))
    torch.testing.assert_close(state["conv1.weight"], conv1)
    trunk = ResNet18Trunk(out_channels=32, init_from=str(tiny_checkpoint))  # the shared run is ResNet-18-C4
    torch.testing.assert_close(trunk.body[0].weight, conv1)
    torch.testing.assert_close(trunk.body[5][1].conv2.weight, detector["backbone.trunk.2.1.conv2.weight"])
    fpn = {"kind": "faster_rcnn", "model": {f"backbone.body.{k}": v for k, v in imagenet.items() if not k.startswith("fc.")}}
    torch.save(fpn, tmp_path / "fpn.pt")  # an FPN detector's layout (IntermediateLayerGetter names)
    trunk = ResNet18Trunk(out_channels=32, init_from=str(tmp_path / "fpn.pt"))
    torch.testing.assert_close(trunk.body[4][0].conv1.weight, imagenet["layer1.0.conv1.weight"])
    with pytest.raises(ConfigError, match="both set"):
        ResNet18Trunk(weights="x.pth", init_from="y.pt")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(WeightsUnavailableError, match="lacks"):
        ResNet18Trunk(weights=str(tmp_path / "partial.pth"))


def test_the_shipped_tracker_loads_and_tracks_a_generated_sequence(tmp_path, monkeypatch):
    from frcnn.errors import ConfigError
    from frcnn.tasks.load import load_tracker
    from frcnn.tracking.evaluate import iou_xywh, run_tracker
    from frcnn.tracking.randomization import CHALLENGES
    from frcnn.tracking.sequences import generate_sequences, load_sequences
    from frcnn.tracking.training import SHIPPED_TRACKER

    assert SHIPPED_TRACKER.stat().st_size < 5_000_000
    state = torch.load(SHIPPED_TRACKER, weights_only=True)
    assert state["kind"] == "siamrpn" and "optimizer" not in state and state["recipe"]
    # its backbone was initialized from a detector checkpoint (a relative path) that is not here: not looked for
    assert state["config"]["model"]["backbone"]["init_from"]
    monkeypatch.chdir(tmp_path)
    tracker = load_tracker("shipped")
    # a generated sequence of the training generator's looks, its challenges off: a target moving over a background
    root = generate_sequences(tmp_path, num_sequences=2, length=30, seed=11, randomization=dict.fromkeys(CHALLENGES, 0.0))
    for sequence in load_sequences(root):
        boxes, _ = run_tracker(tracker, sequence)
        assert (iou_xywh(boxes[1:], sequence.boxes[1:]) > 0.5).mean() > 0.5
    # the selection's settings by name: a misspelt one or a rate outside [0, 1] is the user's, said in one line
    assert load_tracker("shipped", settings={"template_rate": 0.1}).settings.template_rate == 0.1
    with pytest.raises(ConfigError, match=r"\['template_update'\] are not known; .*template_rate"):
        load_tracker("shipped", settings={"template_update": 0.1})
    with pytest.raises(ConfigError, match=r"tracker.template_rate=1.5 must be within \[0, 1\]"):
        load_tracker("shipped", settings={"template_rate": 1.5})
