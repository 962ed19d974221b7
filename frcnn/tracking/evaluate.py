"""One-pass evaluation (OPE) of single-object trackers, and OpenCV's trackers as peers.

Each tracker starts from the first frame's ground-truth box and runs to the end without re-initialization
(Wu et al., OTB, 2013). Per sequence, frame by frame (the first frame excluded, as it is given):

* **success**: the fraction of frames whose IoU with the ground truth exceeds each threshold in
  ``0, 0.05, ..., 1``; its mean over the thresholds is the success plot's area under the curve (AUC);
* **precision**: the fraction of frames whose centre error is within 20 pixels;
* **normalized precision** (TrackingNet, Müller et al., 2018): the centre error divided by the ground
  truth's size, ``|(c - c_gt) / (w_gt, h_gt)|``, its success curve over ``0, 0.01, ..., 0.5``, area under
  it (so that large and small targets count alike);
* **fps**: frames per second of the tracker's own calls (init and updates; reading frames excluded).

Frames whose ground truth is empty (the target absent, ``w`` or ``h`` 0) are not scored, as in the
GOT-10k toolkit.

Scores over a set are means over its sequences (each sequence counts once, as in the OTB and GOT-10k toolkits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from frcnn.data.images import read_rgb
from frcnn.modeling.box_ops import elementwise_iou
from frcnn.tracking.sequences import Sequence

IOU_THRESHOLDS = np.linspace(0, 1, 21)
NORM_THRESHOLDS = np.linspace(0, 0.5, 51)
PRECISION_PIXELS = 20.0


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of matching rows of two ``[T, 4]`` ``(x, y, w, h)`` arrays -> ``[T]`` (:func:`~frcnn.modeling.box_ops.elementwise_iou`)."""

    def xyxy(r: np.ndarray) -> torch.Tensor:
        r = np.asarray(r, dtype=np.float64)
        return torch.from_numpy(np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], axis=1))

    return elementwise_iou(xyxy(a), xyxy(b)).numpy()


def centre_errors(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels, normalized)`` centre errors ``[T]`` of ``(x, y, w, h)`` rows."""
    delta = (pred[:, :2] + pred[:, 2:] / 2) - (gt[:, :2] + gt[:, 2:] / 2)
    return np.linalg.norm(delta, axis=1), np.linalg.norm(delta / np.maximum(gt[:, 2:], 1e-12), axis=1)


@dataclass
class Scores:
    """One tracker's OPE scores; ``curve``: the success plot's values at :data:`IOU_THRESHOLDS`."""

    success_auc: float
    precision: float
    norm_precision: float
    fps: float
    frames: int
    curve: np.ndarray = field(repr=False)


def ope_scores(results: list[tuple[np.ndarray, np.ndarray]], seconds: float) -> Scores:
    """Scores of ``(predicted, ground_truth)`` ``[T, 4]`` pairs, one per sequence (first frames dropped)."""
    curves, precisions, norm_curves = [], [], []
    for pred, gt in results:
        valid = (gt[1:, 2] > 0) & (gt[1:, 3] > 0)  # frames where the target is absent are not scored
        pred, gt = pred[1:][valid], gt[1:][valid]
        iou = iou_xywh(pred, gt)
        pixels, normalized = centre_errors(pred, gt)
        curves.append([(iou > t).mean() for t in IOU_THRESHOLDS])
        precisions.append((pixels <= PRECISION_PIXELS).mean())
        norm_curves.append([(normalized <= t).mean() for t in NORM_THRESHOLDS])
    curve = np.mean(curves, axis=0)
    frames = sum(len(gt) for _, gt in results)
    return Scores(float(curve.mean()), float(np.mean(precisions)), float(np.mean(norm_curves)),
                  frames / max(seconds, 1e-9), frames, curve)


# ------------------------------------------------------------------------------------------------- peers

OPENCV_TRACKERS = {
    "MIL": ("TrackerMIL_create", "opencv-python-headless"),
    "KCF": ("TrackerKCF_create", "opencv-contrib-python-headless"),
    "CSRT": ("TrackerCSRT_create", "opencv-contrib-python-headless"),
}


def opencv_tracker_factory(name: str) -> Callable[[], object] | None:
    """A constructor of OpenCV's ``name`` tracker, or None when this OpenCV build lacks it (KCF and CSRT
    come with the contrib build)."""
    import cv2

    create_name = OPENCV_TRACKERS[name][0]
    for namespace in (cv2, getattr(cv2, "legacy", None)):
        create = getattr(namespace, create_name, None) if namespace is not None else None
        if create is not None:
            return create
    return None


class OpenCVTracker:
    """An OpenCV tracker with :class:`~frcnn.tracking.tracker.SiamRPNTracker`'s ``init`` / ``update`` interface.

    OpenCV works on BGR frames and integer boxes; a frame where it reports failure keeps the last box
    (as the OTB toolkit's wrappers do).
    """

    def __init__(self, name: str) -> None:
        factory = opencv_tracker_factory(name)
        if factory is None:
            raise RuntimeError(f"OpenCV tracker {name} needs {OPENCV_TRACKERS[name][1]}")
        self.factory, self.name = factory, name

    def init(self, frame: np.ndarray, box_xywh) -> None:
        import cv2

        self.tracker = self.factory()
        self.box = np.asarray(box_xywh, dtype=np.float64)
        self.tracker.init(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), tuple(int(round(v)) for v in self.box))

    def update(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        import cv2

        ok, box = self.tracker.update(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if ok:
            self.box = np.asarray(box, dtype=np.float64)
        return self.box.copy(), 1.0 if ok else 0.0


def run_tracker(tracker, sequence: Sequence, frames: list[np.ndarray] | None = None) -> tuple[np.ndarray, float]:
    """``(boxes [T, 4] xywh, seconds in the tracker's calls)`` of one-pass tracking over ``sequence``
    (``frames``: its frames already decoded, else read from its files one by one)."""
    boxes, seconds = [], 0.0
    for index, path in enumerate(sequence.frames):
        frame = frames[index] if frames is not None else read_rgb(path, max_pixels=None)
        start = time.perf_counter()
        if index == 0:
            tracker.init(frame, sequence.boxes[0])
            box = sequence.boxes[0].copy()
        else:
            box, _ = tracker.update(frame)
        seconds += time.perf_counter() - start
        boxes.append(box)
    return np.stack(boxes), seconds


def evaluate_trackers(trackers: dict[str, object], sequences: list[Sequence]) -> tuple[dict[str, Scores], dict[str, list[np.ndarray]]]:
    """OPE of every tracker on every sequence (trackers interleaved per sequence, so that machine noise
    hits all alike); returns the scores and each tracker's boxes per sequence."""
    boxes: dict[str, list[np.ndarray]] = {name: [] for name in trackers}
    seconds = dict.fromkeys(trackers, 0.0)
    for sequence in sequences:
        for name, tracker in trackers.items():
            pred, spent = run_tracker(tracker, sequence)
            boxes[name].append(pred)
            seconds[name] += spent
    scores = {name: ope_scores([(b, s.boxes) for b, s in zip(boxes[name], sequences)], seconds[name]) for name in trackers}
    return scores, boxes


def size_response(
    tracker, sequences: list[Sequence], factors: tuple[float, ...] = (0.7, 0.85, 1.18, 1.4), every: int = 5
) -> dict[float, float]:
    """How much of a wrong size a :class:`~frcnn.tracking.tracker.SiamRPNTracker` corrects in one frame.

    After :meth:`init` on each sequence's first frame, every ``every``-th frame is cropped around the target's
    true centre but at the scale of a believed size ``factor`` times the true one, as if the tracker had
    drifted in size; the top-scoring proposal's size is compared with the truth. Per factor the result is
    ``1 - mean(log(size_proposed / size_true)) / log(factor)``, ``size = sqrt(w * h)``: 1 when the proposals
    recover the true size, 0 when they just return the believed one (a model that does not see the
    target's size), negative when they move away from the truth. It is a mean of signed errors: it measures
    how far the proposals follow a size change, not how much they scatter. The top proposal is the one with
    the highest raw score (no penalty, no window: the tracker's selection is not part of the model).

    Frames without the target are skipped, and so are frames where some factor would probe a size below the
    tracker's ``min_size`` (a size the tracker never holds). The tracker is left in the last probe's state:
    :meth:`init` it before tracking with it again.
    """
    if not factors or any(f <= 0 or f == 1 for f in factors):
        raise ValueError(f"size_response: factors must be positive and not 1 (no size error to correct), not {factors}")
    min_size = tracker.settings.min_size
    errors: dict[float, list[float]] = {f: [] for f in factors}
    for sequence in sequences:
        tracker.init(read_rgb(sequence.frames[0], max_pixels=None), sequence.boxes[0])
        for t in range(every, len(sequence), every):
            x, y, w, h = sequence.boxes[t]
            if w <= 1 or h <= 1 or min(w, h) * min(factors) < min_size:
                continue
            frame = read_rgb(sequence.frames[t], max_pixels=None)
            for factor in factors:
                tracker.centre, tracker.size = np.array([x + w / 2, y + h / 2]), np.array([w, h]) * factor
                scores, boxes = tracker.proposals(frame)
                best = boxes[int(np.argmax(scores))]
                errors[factor].append(0.5 * np.log(best[2] * best[3] / (w * h)))
    if not any(errors.values()):
        raise ValueError("size_response: no frame with the target at the probed positions")
    return {f: float(1 - np.mean(e) / np.log(f)) for f, e in errors.items()}


def plot_success(scores: dict[str, Scores], path: str | Path, title: str = "Success plot (OPE)") -> Path:
    """The success plots of several trackers in one PNG, each labelled with its AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in sorted(scores.items(), key=lambda kv: -kv[1].success_auc):
        ax.plot(IOU_THRESHOLDS, s.curve, label=f"{name} [{s.success_auc:.3f}]")
    ax.set(xlabel="overlap threshold", ylabel="success rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    # Beside the axes, best first: inside, it covers some curve whatever the corner.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="tracker [AUC]", title_fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
