"""Single-object tracking sequences: the usual folder layout, a loader for it, and a seeded synthetic generator.

Layout (GOT-10k's; OTB's ``img/`` sub-folder and ``groundtruth_rect.txt`` load the same way)::

    root/<sequence>/00000001.jpg ... 0000000T.jpg
    root/<sequence>/groundtruth.txt      one "x,y,w,h" line per frame (commas, tabs or spaces)
    root/<sequence>/attributes.json      optional: which challenges the sequence has (the generator writes it)
    root/<sequence>/distractors.json     optional: per frame, the look-alikes' [x, y, w, h] boxes (the generator
                                         writes it; training draws DaSiamRPN's hard negatives from it)

The training generator (:func:`generate_sequences`) is domain-randomized (:mod:`frcnn.tracking.randomization`):
targets of random texture, outline, aspect and contrast move over random backgrounds with clutter, look-alike
distractors, occluders, motion blur, light changes, scale and aspect change, rotation, camera panning and
fast motion. Its held-out test sequences come from another seed; the sequences a model counts by come from
an independent generator, :mod:`frcnn.tracking.other_family`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from frcnn.data.images import read_rgb
from frcnn.errors import InputError, MissingFileError
from frcnn.tracking.randomization import (
    CHALLENGES,
    Outline,
    Randomization,
    colour_pair,
    light_field,
    motion_blur,
    outline_mask,
    random_outline,
    texture,
)

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
GROUNDTRUTH_NAMES = ("groundtruth.txt", "groundtruth_rect.txt")
DISTRACTORS_NAME = "distractors.json"


@dataclass
class Sequence:
    """One annotated sequence: ``frames`` (image paths, in order), ``boxes`` ``[T, 4]`` ``(x, y, w, h)`` and, where
    known, ``distractors``: per frame a ``[D, 4]`` ``(x, y, w, h)`` array of look-alike objects."""

    name: str
    frames: list[Path]
    boxes: np.ndarray
    attributes: list[str] = field(default_factory=list)
    distractors: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.frames)


def read_groundtruth(path: str | Path) -> np.ndarray:
    """``[T, 4]`` float64 boxes ``(x, y, w, h)`` from a ground-truth file; a malformed line raises
    :class:`InputError` naming the file and the line."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise InputError(
                f"{path}, line {number}: expected 4 numbers 'x,y,w,h' (commas, tabs or spaces), got {line.strip()!r}; "
                "fix or remove the line"
            )
        rows.append(values)
    if not rows:
        raise InputError(f"{path} holds no boxes; write one 'x,y,w,h' line per frame")
    return np.asarray(rows, dtype=np.float64)


def list_frames(folder: str | Path) -> list[Path]:
    """The image files of a sequence folder (or its ``img/`` sub-folder), sorted by name."""
    folder = Path(folder)
    if (folder / "img").is_dir():
        folder = folder / "img"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def groundtruth_file(folder: str | Path) -> Path | None:
    """The ground-truth file of a sequence folder (:data:`GROUNDTRUTH_NAMES`), or None (also for a video file)."""
    folder = Path(folder)
    return next((folder / n for n in GROUNDTRUTH_NAMES if folder.is_dir() and (folder / n).is_file()), None)


def load_sequence(folder: str | Path) -> Sequence:
    """A sequence folder: its frames and its ground truth, checked against each other."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"sequence folder {folder} does not exist")
    gt = groundtruth_file(folder)
    if gt is None:
        raise MissingFileError(f"{folder} has no {' or '.join(GROUNDTRUTH_NAMES)}; write one 'x,y,w,h' line per frame")
    boxes = read_groundtruth(gt)
    frames = list_frames(folder)
    if len(frames) != len(boxes):
        raise InputError(f"{gt} has {len(boxes)} boxes but {folder} has {len(frames)} frames; give one box per frame")
    meta = folder / "attributes.json"
    attributes = json.loads(meta.read_text()) if meta.is_file() else []
    distractors = None
    if (folder / DISTRACTORS_NAME).is_file():
        per_frame = json.loads((folder / DISTRACTORS_NAME).read_text())
        if len(per_frame) != len(frames):
            raise InputError(f"{folder / DISTRACTORS_NAME} lists {len(per_frame)} frames but {folder} has {len(frames)}; "
                             "give one list of boxes per frame or delete the file")
        distractors = [np.asarray(d, dtype=np.float64).reshape(-1, 4) for d in per_frame]
    return Sequence(folder.name, frames, boxes, attributes, distractors)


def load_sequences(root: str | Path) -> list[Sequence]:
    """Every sequence folder directly under ``root`` (those with a ground-truth file), by name."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"sequence root {root} does not exist")
    folders = sorted(p for p in root.iterdir() if groundtruth_file(p) is not None)
    if not folders:
        raise InputError(f"{root} holds no sequence folders (a folder of frames with {GROUNDTRUTH_NAMES[0]})")
    return [load_sequence(f) for f in folders]


def read_frames(source: str | Path) -> Iterator[np.ndarray]:
    """``[H, W, 3]`` uint8 RGB frames of a folder of images or of a video file, in order."""
    source = Path(source)
    if source.is_dir():
        for path in list_frames(source):
            yield read_rgb(path, max_pixels=None)
        return
    if not source.is_file():
        raise MissingFileError(f"sequence {source} does not exist (a folder of frames or a video file)")
    import cv2

    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise InputError(f"{source}: OpenCV cannot open this video; convert it to MP4 (H.264) or extract its frames")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


# ---------------------------------------------------------------------------------------------- generator


class GeneratedSequence(NamedTuple):
    """One drawn sequence: ``frames`` ``[H, W, 3]`` uint8, ``boxes`` ``[T, 4]`` ``(x, y, w, h)`` of the target,
    ``attributes`` (the challenges drawn and ``texture:<kind>``, ``shape:<kind>``, ``background:<kind>``) and
    ``distractors``: per frame a ``[D, 4]`` ``(x, y, w, h)`` array of the same-look distractors' boxes."""

    frames: list[np.ndarray]
    boxes: np.ndarray
    attributes: list[str]
    distractors: list[np.ndarray]


@dataclass
class _Object:
    outline: Outline
    cx: float
    cy: float
    w: float
    h: float
    angle: float
    vx: float
    vy: float
    spin: float
    fill: np.ndarray  # [S, S, 3] float32 texture in object coordinates: the pattern moves with the object


def _paint(canvas: np.ndarray, mask: np.ndarray, obj: _Object) -> None:
    """Fill ``mask`` with the object's texture, anchored at its centre."""
    ys, xs = np.nonzero(mask)
    side = obj.fill.shape[0]
    ty = np.clip((ys - obj.cy + side / 2).astype(int), 0, side - 1)
    tx = np.clip((xs - obj.cx + side / 2).astype(int), 0, side - 1)
    canvas[ys, xs] = obj.fill[ty, tx]


def _xywh(mask: np.ndarray) -> list[float] | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def make_sequence(
    rng: np.random.Generator, *, length: int, height: int, width: int, randomization: Randomization | None = None
) -> GeneratedSequence:
    """One domain-randomized sequence (:mod:`frcnn.tracking.randomization`): each challenge of
    :data:`~frcnn.tracking.randomization.CHALLENGES` with its probability, and the target's look drawn from
    the configured textures, shapes and colours."""
    r = randomization or Randomization()
    drawn = [c for c in CHALLENGES if rng.random() < getattr(r, c)]
    scene = _Scene(rng, r, drawn, length, height, width)
    frames, boxes, distractor_boxes = [], [], []
    for t in range(length):
        frame, box, others = scene.frame(t)
        frames.append(frame)
        boxes.append(box)
        distractor_boxes.append(np.asarray(others, dtype=np.float64).reshape(-1, 4))
    attributes = [*drawn, f"texture:{scene.texture_kind}", f"shape:{scene.target.outline.kind}", f"background:{scene.background_kind}"]
    return GeneratedSequence(frames, np.asarray(boxes, dtype=np.float64), attributes, distractor_boxes)


class _Scene:
    """The state of one generated sequence: background (wider than the frame when the camera pans), static
    clutter, the target, its look-alikes, the occluder's schedule and the light; :meth:`frame` draws frame ``t``."""

    def __init__(self, rng: np.random.Generator, r: Randomization, drawn: list[str], length: int, height: int, width: int) -> None:
        self.rng, self.drawn, self.height, self.width = rng, set(drawn), height, width
        pan = "camera_pan" in self.drawn
        self.margin = int(0.3 * max(height, width)) if pan else 0
        world_h, world_w = height + 2 * self.margin, width + 2 * self.margin
        self.background_kind = str(rng.choice(r.backgrounds))
        self.world = texture(rng, self.background_kind, world_h, world_w, *colour_pair(rng))
        mean = self.world.reshape(-1, 3).mean(axis=0)
        if "clutter" in self.drawn:  # static shapes of other looks, drawn into the background
            for _ in range(int(rng.integers(1, r.max_clutter + 1))):
                self._clutter(r, world_h, world_w, mean)
        speed = rng.uniform(0.5, 2.5) if pan else 0.0
        heading = rng.uniform(0, 2 * math.pi)
        self.pan_velocity = (speed * math.cos(heading), speed * math.sin(heading))
        self.camera = np.array([self.margin, self.margin], dtype=np.float64)  # the frame's top-left in the world
        # The target's look: texture and outline; a low-contrast target takes colours near the background's mean.
        self.texture_kind = str(rng.choice(r.textures))
        colours = colour_pair(rng, mean, r.contrast) if "low_contrast" in self.drawn else colour_pair(rng)
        size = math.exp(rng.uniform(math.log(r.size[0]), math.log(r.size[1])))
        aspect = math.exp(rng.uniform(math.log(r.aspect[0]), math.log(r.aspect[1])))
        w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
        side = int(2.6 * max(w, h)) + 4
        fill = texture(rng, self.texture_kind, side, side, *colours)
        outline = random_outline(rng, str(rng.choice(r.shapes)))
        self.target = self._moving(outline, w, h, fill)
        self.distractors = []
        if "distractors" in self.drawn:  # same outline and texture, another size and path
            for _ in range(int(rng.integers(1, r.max_distractors + 1))):
                k = rng.uniform(0.8, 1.2)
                self.distractors.append(self._moving(outline, w * k, h * k, fill))
        self.scale = (rng.uniform(40, 90), rng.uniform(0.25, 0.45) if "scale_change" in self.drawn else 0.0)
        self.stretch = (rng.uniform(30, 80), rng.uniform(0.2, 0.4) if "aspect_change" in self.drawn else 0.0)
        self.light = ((1.0, rng.uniform(0.25, 0.45), rng.uniform(30, 70)), (rng.uniform(0.3, 0.8), rng.uniform(-0.03, 0.03),
                      rng.uniform(0, 2 * math.pi))) if "illumination" in self.drawn else None
        self.jumps = (set(rng.choice(np.arange(1, length), size=min(length - 1, max(1, length // 25)), replace=False).tolist())
                      if "fast_motion" in self.drawn and length > 1 else set())
        self.occlusions = []  # (start frame, duration, texture): a textured bar sweeps across the target
        if "occlusion" in self.drawn:
            for _ in range(int(rng.integers(1, r.max_occluders + 1))):
                start = int(rng.integers(length // 6, max(length // 6 + 1, length - 12)))
                bar = texture(rng, str(rng.choice(r.backgrounds)), height, width, *colour_pair(rng))
                self.occlusions.append((start, int(rng.integers(8, 15)), bar))
        self.blur = rng.uniform(2.0, 5.0) if "motion_blur" in self.drawn else 0.0

    def _clutter(self, r: Randomization, world_h: int, world_w: int, mean: np.ndarray) -> None:
        rng = self.rng
        size = rng.uniform(0.6 * r.size[0], r.size[1])
        w, h = size * rng.uniform(0.6, 1.4), size * rng.uniform(0.6, 1.4)
        outline = random_outline(rng, str(rng.choice(r.shapes)))
        cx, cy = rng.uniform(0, world_w), rng.uniform(0, world_h)
        mask = outline_mask(outline, cx, cy, w, h, rng.uniform(0, 2 * math.pi), world_h, world_w)
        colours = colour_pair(rng, mean, 2 * r.contrast) if rng.random() < 0.5 else colour_pair(rng)
        self.world[mask] = texture(rng, str(rng.choice(r.textures)), world_h, world_w, *colours)[mask]

    def _moving(self, outline: Outline, w: float, h: float, fill: np.ndarray) -> _Object:
        rng = self.rng
        speed, heading = rng.uniform(0.5, 3.0), rng.uniform(0, 2 * math.pi)
        return _Object(
            outline, rng.uniform(*_inside(w, self.width)), rng.uniform(*_inside(h, self.height)), w, h, rng.uniform(-0.3, 0.3),
            speed * math.cos(heading), speed * math.sin(heading),
            rng.uniform(-0.06, 0.06) if "rotation" in self.drawn else 0.0, fill,
        )

    def _mask(self, obj: _Object, t: int) -> np.ndarray:
        (scale_period, scale_amp), (stretch_period, stretch_amp) = self.scale, self.stretch
        k = math.exp(scale_amp * math.sin(2 * math.pi * t / scale_period))
        a = math.exp(stretch_amp * math.sin(2 * math.pi * t / stretch_period))
        return outline_mask(obj.outline, obj.cx, obj.cy, obj.w * k * a, obj.h * k / a, obj.angle, self.height, self.width)

    def frame(self, t: int) -> tuple[np.ndarray, list[float], list[list[float]]]:
        """Frame ``t`` ``[H, W, 3]`` uint8, the target's box and the distractors' boxes ``(x, y, w, h)``."""
        self._pan()
        x0, y0 = (int(round(v)) for v in self.camera)
        canvas = self.world[y0:y0 + self.height, x0:x0 + self.width].copy()
        others = []
        for obj in self.distractors:
            _step(obj, self.rng, self.height, self.width, jump=False)
            mask = self._mask(obj, t)
            _paint(canvas, mask, obj)
            if (box := _xywh(mask)) is not None:
                others.append(box)
        _step(self.target, self.rng, self.height, self.width, jump=t in self.jumps)
        mask = self._mask(self.target, t)
        _paint(canvas, mask, self.target)
        box = _xywh(mask) or [self.target.cx - 1, self.target.cy - 1, 2.0, 2.0]
        for start, duration, bar in self.occlusions:
            if start <= t < start + duration:
                progress = (t - start + 0.5) / duration
                bar_w = int(max(box[2], box[3]) * 0.9)
                bx = int(box[0] + box[2] * (2 * progress - 0.5) - bar_w / 2)
                by0, by1 = max(0, int(box[1] - box[3] / 2)), min(self.height, int(box[1] + 1.5 * box[3]))
                bx0, bx1 = max(0, bx), min(self.width, bx + bar_w)
                canvas[by0:by1, bx0:bx1] = bar[by0:by1, bx0:bx1]
        if self.light is not None:
            canvas = canvas * light_field(t, self.height, self.width, *self.light)
        frame = np.clip(canvas, 0, 255).astype(np.uint8)
        if self.blur:
            frame = motion_blur(frame, self.target.vx * self.blur, self.target.vy * self.blur)
        return frame, box, others

    def _pan(self) -> None:
        if not self.margin:
            return
        for axis, limit in ((0, 2 * self.margin), (1, 2 * self.margin)):
            self.camera[axis] += self.pan_velocity[axis]
            if not 0 <= self.camera[axis] <= limit:  # the camera turns back at the world's edge
                self.pan_velocity = tuple(-v if i == axis else v for i, v in enumerate(self.pan_velocity))
                self.camera[axis] = float(np.clip(self.camera[axis], 0, limit))


def _inside(extent: float, side: int) -> tuple[float, float]:
    """The centre's range that keeps most of an object of ``extent`` pixels in a frame ``side`` pixels wide."""
    margin = min(0.6 * extent, side / 2 - 1)
    return margin, side - margin


def _step(obj: _Object, rng: np.random.Generator, height: int, width: int, *, jump: bool) -> None:
    """Move ``obj`` one frame: a slowly turning velocity, bouncing off the borders; ``jump``: fast motion."""
    obj.vx = float(np.clip(obj.vx + rng.normal(0, 0.3), -4, 4))
    obj.vy = float(np.clip(obj.vy + rng.normal(0, 0.3), -4, 4))
    step = 6.0 if jump else 1.0
    obj.cx += obj.vx * step + (rng.uniform(-25, 25) if jump else 0.0)
    obj.cy += obj.vy * step + (rng.uniform(-18, 18) if jump else 0.0)
    (mx, _), (my, _) = _inside(obj.w, width), _inside(obj.h, height)
    if not mx <= obj.cx <= width - mx:
        obj.vx = -obj.vx
        obj.cx = float(np.clip(obj.cx, mx, width - mx))
    if not my <= obj.cy <= height - my:
        obj.vy = -obj.vy
        obj.cy = float(np.clip(obj.cy, my, height - my))
    obj.angle += obj.spin


def write_sequence(folder: Path, frames: list[np.ndarray], boxes: np.ndarray, attributes: list[str],
                   distractors: list[np.ndarray] | None = None) -> None:
    """``folder`` in the layout above: JPEG frames, ``groundtruth.txt``, ``attributes.json`` and, when any frame has
    one, ``distractors.json`` (per frame a list of look-alikes' ``[x, y, w, h]``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t + 1:08d}.jpg", quality=92)
    (folder / "groundtruth.txt").write_text("".join(f"{x:.2f},{y:.2f},{w:.2f},{h:.2f}\n" for x, y, w, h in boxes))
    (folder / "attributes.json").write_text(json.dumps(attributes))
    if distractors is not None and any(len(d) for d in distractors):
        (folder / DISTRACTORS_NAME).write_text(json.dumps([np.round(d, 2).tolist() for d in distractors]))


def generate_sequences(
    root: str | Path, *, num_sequences: int = 20, length: int = 80, height: int = 240, width: int = 320, seed: int = 0,
    randomization: Randomization | dict | None = None,
) -> Path:
    """Write ``num_sequences`` domain-randomized sequences under ``root`` in the layout above (seeded,
    reproducible); ``randomization``: a :class:`~frcnn.tracking.randomization.Randomization` or its fields."""
    r = randomization if isinstance(randomization, Randomization) else Randomization.from_settings(randomization)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for index in range(num_sequences):
        seq = make_sequence(np.random.default_rng([seed, index]), length=length, height=height, width=width, randomization=r)
        write_sequence(root / f"seq_{index:03d}", seq.frames, seq.boxes, seq.attributes, seq.distractors)
    settings = {"seed": seed, "num_sequences": num_sequences, "length": length, "randomization": asdict(r)}
    (root / "READY").write_text(json.dumps(settings))
    return root
