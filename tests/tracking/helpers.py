"""What the tracking tests share: small SiamRPN models, stand-in trunks and heads, generated scenes, tiny runs."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.tracking.crops import (
    SEARCH_SIZE,
    context_side,
)
from frcnn.tracking.model import (
    AlexNet,
    SiamRPN,
    TemplateKernels,
    UpChannelHead,
    cross_correlate,
)
from frcnn.tracking.sequences import (
    Sequence,
)

PAPER_ANCHORS = dict(sizes=(64,), aspect_ratios=(0.33, 0.5, 1.0, 2.0, 3.0), stride=8)


def siamrpn(backbone: nn.Module | None = None, head=UpChannelHead, channels: int = 16) -> SiamRPN:
    backbone = backbone or AlexNet(channels=(8, 16, 16, 16), out_channels=16)
    return SiamRPN(backbone=backbone, head=head(in_channels=backbone.out_channels, channels=channels), anchor_generator=AnchorGenerator(**PAPER_ANCHORS))


class PoolTrunk(nn.Module):
    """8x8 average pooling of the normalized grey image: 127 -> 15, 255 -> 31, aligned like the real trunks."""

    out_channels = 1

    def forward(self, images):
        return F.avg_pool2d(images.mean(1, keepdim=True), 8)


class MatchingHead(nn.Module):
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


def square_sequence(motion: tuple[float, float], frames: int = 20) -> tuple[list[np.ndarray], np.ndarray]:
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


class FixedProposals:
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


def tiny_tracker_checkpoint(sequences, tmp_path):
    from frcnn.cli import compose_config
    from frcnn.tasks.train_tracker import train_tracker

    args = [a for a in tiny_tracker_args(sequences, tmp_path, 1) if not a.startswith("hydra.")] + [f"run_dir={tmp_path / 'run'}"]
    train_tracker(compose_config("siamrpn", args))
    return tmp_path / "run" / "last.pt"


class SizeSeer:
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


def bright_box_sequence(tmp_path, boxes):
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


def tiny_tracker_args(sequences, run_dir, steps: int) -> list[str]:
    return [
        "experiment=siamrpn_demo", f"data.sequences.root={sequences}", "data.sequences.generate=null", "data.still=null",
        "model.backbone.channels=[8,16,16,16]", "model.backbone.out_channels=16", "model.head.channels=16",
        "data.batch_size=2", "data.num_workers=0", "trainer.reference_batch_size=2", f"trainer.max_iters={steps}",
        "schedule.warmup_iters=1", "trainer.checkpoint_period=2", "trainer.progress=false", "trainer.tensorboard=false",
        "trainer.device=cpu", f"hydra.run.dir={run_dir}",
    ]


class SettingsDependentTracker:
    """Returns the ground-truth box shifted by an error that is smallest at window_influence 0.3, lr 0.45."""

    def __init__(self, settings, sequences):
        self.settings, self.sequences = settings, sequences

    def init(self, frame, box):
        pass

    def update(self, frame):
        s, t = int(frame[0, 0, 1]), int(frame[0, 0, 0])
        shift = 40 * abs(self.settings.window_influence - 0.3) + 40 * abs(self.settings.lr - 0.45)
        return self.sequences[s].boxes[t] + np.array([shift, 0, 0, 0]), 1.0

