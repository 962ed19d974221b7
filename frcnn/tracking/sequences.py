"""Single-object tracking sequences: the usual folder layout, a loader for it, and a seeded synthetic generator.

Layout (GOT-10k's; OTB's ``img/`` sub-folder and ``groundtruth_rect.txt`` load the same way)::

    root/<sequence>/00000001.jpg ... 0000000T.jpg
    root/<sequence>/groundtruth.txt      one "x,y,w,h" line per frame (commas, tabs or spaces)
    root/<sequence>/attributes.json      optional: which challenges the sequence has (the generator writes it)

The generator draws the detector's synthetic shapes (:mod:`frcnn.data.synthetic`) moving over a textured
background, with per-sequence challenges: scale change, in-plane rotation, occlusion, illumination
change, fast motion and same-class distractors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from frcnn.data.images import read_rgb
from frcnn.data.synthetic import CLASSES, background, shape_polygon, texture
from frcnn.errors import InputError, MissingFileError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
GROUNDTRUTH_NAMES = ("groundtruth.txt", "groundtruth_rect.txt")
ATTRIBUTES = ("scale_change", "rotation", "occlusion", "illumination", "fast_motion", "distractors")


@dataclass
class Sequence:
    """One annotated sequence: ``frames`` (image paths, in order) and ``boxes`` ``[T, 4]`` ``(x, y, w, h)``."""

    name: str
    frames: list[Path]
    boxes: np.ndarray
    attributes: list[str] = field(default_factory=list)

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
    return Sequence(folder.name, frames, boxes, attributes)


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


@dataclass
class _Object:
    kind: str
    cx: float
    cy: float
    size: float
    angle: float
    vx: float
    vy: float
    spin: float
    fill: np.ndarray  # [T, T, 3] texture in object coordinates


def _mask(obj: _Object, size: float, height: int, width: int) -> np.ndarray:
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    if obj.kind == "circle":
        draw.ellipse([obj.cx - size / 2, obj.cy - size / 2, obj.cx + size / 2, obj.cy + size / 2], fill=255)
    else:
        draw.polygon(shape_polygon(obj.kind, obj.cx, obj.cy, size, obj.angle), fill=255)
    return np.asarray(image) > 127


def _paint(canvas: np.ndarray, mask: np.ndarray, obj: _Object) -> None:
    """Fill ``mask`` with the object's texture, anchored at its centre so the pattern moves with it."""
    ys, xs = np.nonzero(mask)
    side = obj.fill.shape[0]
    ty = np.clip((ys - obj.cy + side / 2).astype(int), 0, side - 1)
    tx = np.clip((xs - obj.cx + side / 2).astype(int), 0, side - 1)
    canvas[ys, xs] = obj.fill[ty, tx]


def make_sequence(rng: np.random.Generator, *, length: int, height: int, width: int, attributes: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames ``[H, W, 3]`` uint8 and boxes ``[T, 4]`` ``(x, y, w, h)`` of one synthetic sequence."""
    scene = background(rng, height, width).astype(np.float32)
    base = float(rng.uniform(26, 60))
    kind = CLASSES[int(rng.integers(len(CLASSES)))]
    tex_side = int(base * 2.2) + 4

    def new_object(obj_kind: str, size: float) -> _Object:
        speed = rng.uniform(0.5, 3.0)
        heading = rng.uniform(0, 2 * math.pi)
        return _Object(
            obj_kind, rng.uniform(size, width - size), rng.uniform(size, height - size), size, rng.uniform(-0.3, 0.3),
            speed * math.cos(heading), speed * math.sin(heading),
            rng.uniform(-0.06, 0.06) if "rotation" in attributes else 0.0, texture(rng, tex_side, tex_side),
        )

    target = new_object(kind, base)
    distractors = [new_object(kind, base * rng.uniform(0.8, 1.2)) for _ in range(int(rng.integers(1, 3)))] if "distractors" in attributes else []
    scale_period, scale_amp = rng.uniform(40, 90), (rng.uniform(0.25, 0.45) if "scale_change" in attributes else 0.0)
    light_period, light_amp = rng.uniform(30, 70), (rng.uniform(0.3, 0.5) if "illumination" in attributes else 0.0)
    jumps = set(rng.choice(np.arange(1, length), size=min(length - 1, max(1, length // 25)), replace=False).tolist()) if "fast_motion" in attributes and length > 1 else set()
    occl_start = int(rng.integers(length // 4, max(length // 4 + 1, length - 15))) if "occlusion" in attributes else -1
    occl_len = int(rng.integers(8, 15))
    occluder = texture(rng, height, width)
    frames, boxes = [], []
    for t in range(length):
        canvas = scene.copy()
        for obj in distractors:
            _step(obj, rng, height, width, jump=False)
            _paint(canvas, _mask(obj, obj.size, height, width), obj)
        _step(target, rng, height, width, jump=t in jumps)
        size = target.size * math.exp(scale_amp * math.sin(2 * math.pi * t / scale_period))
        mask = _mask(target, size, height, width)
        _paint(canvas, mask, target)
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()])
        if "occlusion" in attributes and occl_start <= t < occl_start + occl_len:  # a textured bar sweeps across
            progress = (t - occl_start + 0.5) / occl_len
            bar_w = int(size * 0.9)
            x0 = int(boxes[-1][0] + boxes[-1][2] * (2 * progress - 0.5) - bar_w / 2)
            y0, y1 = max(0, int(target.cy - size)), min(height, int(target.cy + size))
            x0, x1 = max(0, x0), min(width, x0 + bar_w)
            canvas[y0:y1, x0:x1] = occluder[y0:y1, x0:x1]
        gain = 1.0 + light_amp * math.sin(2 * math.pi * t / light_period)
        frames.append(np.clip(canvas * gain, 0, 255).astype(np.uint8))
    return frames, np.asarray(boxes, dtype=np.float64)


def _step(obj: _Object, rng: np.random.Generator, height: int, width: int, *, jump: bool) -> None:
    """Move ``obj`` one frame: a slowly turning velocity, bouncing off the borders; ``jump``: fast motion."""
    obj.vx = float(np.clip(obj.vx + rng.normal(0, 0.3), -4, 4))
    obj.vy = float(np.clip(obj.vy + rng.normal(0, 0.3), -4, 4))
    step = 6.0 if jump else 1.0
    obj.cx += obj.vx * step + (rng.uniform(-25, 25) if jump else 0.0)
    obj.cy += obj.vy * step + (rng.uniform(-18, 18) if jump else 0.0)
    margin = obj.size * 0.75
    if not margin <= obj.cx <= width - margin:
        obj.vx = -obj.vx
        obj.cx = float(np.clip(obj.cx, margin, width - margin))
    if not margin <= obj.cy <= height - margin:
        obj.vy = -obj.vy
        obj.cy = float(np.clip(obj.cy, margin, height - margin))
    obj.angle += obj.spin


def generate_sequences(
    root: str | Path, *, num_sequences: int = 20, length: int = 80, height: int = 240, width: int = 320, seed: int = 0
) -> Path:
    """Write ``num_sequences`` synthetic sequences under ``root`` in the layout above (seeded, reproducible).

    Each sequence gets each challenge of :data:`ATTRIBUTES` with probability 1/2 (at least one).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for index in range(num_sequences):
        rng = np.random.default_rng([seed, index])
        attributes = [a for a in ATTRIBUTES if rng.random() < 0.5] or [ATTRIBUTES[int(rng.integers(len(ATTRIBUTES)))]]
        frames, boxes = make_sequence(rng, length=length, height=height, width=width, attributes=attributes)
        folder = root / f"seq_{index:03d}"
        folder.mkdir(exist_ok=True)
        for t, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{t + 1:08d}.jpg", quality=92)
        (folder / "groundtruth.txt").write_text("".join(f"{x:.2f},{y:.2f},{w:.2f},{h:.2f}\n" for x, y, w, h in boxes))
        (folder / "attributes.json").write_text(json.dumps(attributes))
    (root / "READY").write_text(json.dumps({"seed": seed, "num_sequences": num_sequences, "length": length}))
    return root
