"""A second, independent family of tracking sequences: what a tracker is judged on.

The training generator (:mod:`frcnn.tracking.sequences`, :mod:`frcnn.tracking.randomization`) can vary its
looks as widely as it likes; a model trained on it and tested on its own held-out seeds can still have
learned the generator rather than tracking. This family is written separately and shares no drawing code
with it (a test checks the imports): different textures, outlines, motions, occluders and light, so its
score says how a tracker does on video it was not made for. It writes the same folder layout.

Per sequence (seeded):

* **background**: one of ``plaid`` (two to three summed sinusoidal gratings), ``mosaic`` (Voronoi cells of
  random colours), ``foliage`` (hundreds of small overlapping ellipses), ``waves`` (a smooth sum of radial
  sinusoids);
* **target**: a superellipse, crescent, annulus or rounded rectangle, filled with ``rings`` (concentric),
  ``dots`` (polka), ``grain`` (wood-like warped sinusoid) or ``plaid``; in half the sequences its two colours
  are close to the background's (low contrast);
* **motion**: a Lissajous curve, an orbit, or stop-and-go straight segments; a slow zoom in or out;
* **challenges**: look-alike distractors (the target's outline and texture, colours shifted slightly),
  pillars the target passes behind, a light that flickers and a vignette that drifts, sensor noise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

BACKGROUNDS = ("plaid", "mosaic", "foliage", "waves")
OUTLINES = ("superellipse", "crescent", "annulus", "rounded_rect")
FILLS = ("rings", "dots", "grain", "plaid")
MOTIONS = ("lissajous", "orbit", "stop_and_go")


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def _blend(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[None, None, :] + (b - a)[None, None, :] * t[..., None]


def backdrop(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """``[h, w, 3]`` float32 background of ``kind`` (:data:`BACKGROUNDS`)."""
    xx, yy = _grid(h, w)
    if kind == "plaid":
        t = sum(np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / rng.uniform(12, 60) + rng.uniform(0, 6))
                for a in rng.uniform(0, math.pi, int(rng.integers(2, 4))))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        return _blend(t, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))
    if kind == "mosaic":
        seeds = rng.uniform(0, 1, (int(rng.integers(20, 60)), 2)) * [w, h]
        colours = rng.uniform(0, 255, (len(seeds), 3))
        d = (xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2
        return colours[d.argmin(axis=-1)].astype(np.float32)
    if kind == "foliage":
        image = np.full((h, w, 3), rng.uniform(0, 255, 3), np.float32)
        base = rng.uniform(0, 255, 3)
        for _ in range(int(rng.integers(150, 400))):
            colour = np.clip(base + rng.normal(0, 40, 3), 0, 255)
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(3, 14)), int(rng.integers(2, 8)))
            cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour.tolist(), -1)
        return image
    if kind == "waves":
        t = np.zeros((h, w), np.float32)
        for _ in range(3):
            cx, cy = rng.uniform(-w, 2 * w), rng.uniform(-h, 2 * h)
            t += np.sin(np.hypot(xx - cx, yy - cy) / rng.uniform(10, 40))
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        return _blend(t, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))
    raise ValueError(f"unknown background {kind!r}")


def fill_pattern(rng: np.random.Generator, kind: str, side: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[side, side, 3]`` float32 target texture of ``kind`` (:data:`FILLS`) in colours ``a`` and ``b``."""
    xx, yy = _grid(side, side)
    r = np.hypot(xx - side / 2, yy - side / 2)
    if kind == "rings":
        t = 0.5 + 0.5 * np.sin(r / rng.uniform(2, 6))
    elif kind == "dots":
        period = rng.uniform(6, 14)
        t = (np.hypot((xx % period) - period / 2, (yy % period) - period / 2) < period * rng.uniform(0.2, 0.4)).astype(np.float32)
    elif kind == "grain":
        t = 0.5 + 0.5 * np.sin((xx + 6 * np.sin(yy / rng.uniform(8, 20))) / rng.uniform(2, 5))
    elif kind == "plaid":
        t = 0.25 * (2 + np.sin(xx / rng.uniform(2, 5)) + np.sin(yy / rng.uniform(2, 5)))
    else:
        raise ValueError(f"unknown fill {kind!r}")
    return _blend(t.astype(np.float32), a, b)


def outline_points(rng: np.random.Generator, kind: str) -> list[np.ndarray]:
    """The outline of ``kind`` (:data:`OUTLINES`) as closed unit polygons (extent ``[-1, 1]``); an annulus or a
    crescent is drawn as its outer polygon with the inner ones cut out."""
    theta = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    circle = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    if kind == "superellipse":
        n = rng.uniform(0.7, 4.0)
        c, s = np.cos(theta), np.sin(theta)
        return [np.stack([np.sign(c) * np.abs(c) ** (2 / n), np.sign(s) * np.abs(s) ** (2 / n)], axis=1)]
    if kind == "crescent":
        return [circle, circle * rng.uniform(0.6, 0.85) + [rng.uniform(0.3, 0.5), 0.0]]
    if kind == "annulus":
        return [circle, circle * rng.uniform(0.35, 0.6)]
    if kind == "rounded_rect":
        k = rng.uniform(0.2, 0.6)  # corner radius, as a share of the half side
        corners = [(1 - k, 1 - k), (-(1 - k), 1 - k), (-(1 - k), -(1 - k)), (1 - k, -(1 - k))]
        arcs = [np.stack([cx + k * np.cos(theta[i * 16:(i + 1) * 16 + 1]), cy + k * np.sin(theta[i * 16:(i + 1) * 16 + 1])], axis=1)
                for i, (cx, cy) in enumerate(corners)]
        return [np.concatenate(arcs)]
    raise ValueError(f"unknown outline {kind!r}")


def draw_mask(polygons: list[np.ndarray], cx: float, cy: float, rx: float, ry: float, angle: float, h: int, w: int) -> np.ndarray:
    """``[h, w]`` bool: the first polygon minus the others, scaled by ``(rx, ry)``, rotated, centred at ``(cx, cy)``."""
    mask = np.zeros((h, w), np.uint8)
    c, s = math.cos(angle), math.sin(angle)
    for i, poly in enumerate(polygons):
        x, y = poly[:, 0] * rx, poly[:, 1] * ry
        pts = np.stack([cx + x * c - y * s, cy + x * s + y * c], axis=1)
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1 if i == 0 else 0, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def trajectory(rng: np.random.Generator, kind: str, length: int, h: int, w: int, margin: float) -> np.ndarray:
    """``[length, 2]`` centres ``(x, y)`` of a path of ``kind`` (:data:`MOTIONS`) inside the frame's margin."""
    t = np.arange(length, dtype=np.float64)
    half = np.array([w / 2 - margin, h / 2 - margin])
    if kind == "lissajous":
        fx, fy = rng.uniform(0.5, 1.5, 2) * 2 * math.pi / length
        path = np.stack([np.sin(fx * t + rng.uniform(0, 6)), np.sin(fy * t + rng.uniform(0, 6))], axis=1) * half * rng.uniform(0.5, 1.0)
    elif kind == "orbit":
        turns = rng.uniform(0.4, 1.2) * rng.choice([-1, 1])
        phase = rng.uniform(0, 2 * math.pi) + 2 * math.pi * turns * t / length
        path = np.stack([np.cos(phase), np.sin(phase)], axis=1) * half * rng.uniform(0.4, 0.9)
    elif kind == "stop_and_go":
        count = int(rng.integers(3, 6)) if length >= 8 else 2  # knots: the ends and the stops between them
        knots = rng.uniform(-1, 1, (count, 2)) * half
        stops = np.sort(rng.choice(np.arange(1, length - 1), size=count - 2, replace=False))
        times = np.concatenate([[0], stops, [max(length - 1, 1)]]).astype(float)
        # each segment eases in and out (smoothstep): the target stops at every knot
        seg = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(knots) - 2)
        u = (t - times[seg]) / np.maximum(times[seg + 1] - times[seg], 1)
        u = u * u * (3 - 2 * u)
        path = knots[seg] + (knots[seg + 1] - knots[seg]) * u[:, None]
    else:
        raise ValueError(f"unknown motion {kind!r}")
    return path + [w / 2, h / 2]


def make_other_sequence(rng: np.random.Generator, *, length: int, height: int, width: int) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Frames ``[H, W, 3]`` uint8, boxes ``[T, 4]`` ``(x, y, w, h)`` and attributes of one sequence of this family."""
    bg_kind, outline_kind, fill_kind, motion = (str(rng.choice(k)) for k in (BACKGROUNDS, OUTLINES, FILLS, MOTIONS))
    scene = backdrop(rng, bg_kind, height, width)
    mean = scene.reshape(-1, 3).mean(axis=0)
    low_contrast = rng.random() < 0.5
    if low_contrast:
        a, b = (np.clip(mean + rng.normal(0, 22, 3), 0, 255) for _ in range(2))
    else:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    radius = rng.uniform(12, 30)
    stretch = math.exp(rng.uniform(-0.4, 0.4))
    rx, ry = radius * stretch, radius / stretch
    side = int(2 * max(rx, ry) * 1.6) + 4
    pattern = fill_pattern(rng, fill_kind, side, a, b)
    polygons = outline_points(rng, outline_kind)
    zoom = math.exp(rng.uniform(-0.5, 0.5))  # size at the last frame relative to the first
    path = trajectory(rng, motion, length, height, width, 1.6 * max(rx, ry) * max(1.0, zoom))
    spin = rng.uniform(-0.03, 0.03)
    # Look-alikes: the same outline and pattern with the colours shifted a little, each on its own path.
    lookalikes = []
    for _ in range(int(rng.integers(0, 4))):
        shift = rng.normal(0, 12, 3)
        lookalikes.append((fill_pattern(rng, fill_kind, side, np.clip(a + shift, 0, 255), np.clip(b + shift, 0, 255)),
                           trajectory(rng, str(rng.choice(MOTIONS)), length, height, width, 1.6 * max(rx, ry)), rng.uniform(0.85, 1.15)))
    pillars = [(int(rng.uniform(0.15, 0.85) * width), int(rng.uniform(8, 22)), rng.uniform(0, 255, 3)) for _ in range(int(rng.integers(0, 3)))]
    flicker = rng.uniform(0, 0.35)
    vignette = rng.uniform(0, 0.6)
    attributes = [f"background:{bg_kind}", f"outline:{outline_kind}", f"fill:{fill_kind}", f"motion:{motion}"]
    attributes += [name for name, on in (("low_contrast", low_contrast), ("lookalikes", bool(lookalikes)), ("pillars", bool(pillars)),
                                         ("flicker", flicker > 0.15), ("vignette", vignette > 0.3)) if on]
    xx, yy = _grid(height, width)
    frames, boxes = [], []
    for t in range(length):
        canvas = scene.copy()
        for pat, other_path, k in lookalikes:
            _stamp(canvas, pat, polygons, other_path[t], rx * k, ry * k, spin * t + 1.0, height, width)
        k = zoom ** (t / max(length - 1, 1))
        mask = _stamp(canvas, pattern, polygons, path[t], rx * k, ry * k, spin * t, height, width)
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] if len(xs) else
                     [path[t][0] - 1, path[t][1] - 1, 2, 2])
        for x, half_width, colour in pillars:
            canvas[:, max(0, x - half_width):x + half_width] = colour
        centre = (width * (0.5 + 0.4 * math.sin(t / 17)), height * (0.5 + 0.4 * math.cos(t / 23)))
        light = (1 + flicker * math.sin(t * 1.3)) * (1 - vignette * np.hypot(xx - centre[0], yy - centre[1]) / max(height, width))
        canvas = canvas * light[..., None] + rng.normal(0, 4, canvas.shape)
        frames.append(np.clip(canvas, 0, 255).astype(np.uint8))
    return frames, np.asarray(boxes, dtype=np.float64), attributes


def _stamp(canvas: np.ndarray, pattern: np.ndarray, polygons: list[np.ndarray], centre: np.ndarray, rx: float, ry: float,
           angle: float, h: int, w: int) -> np.ndarray:
    mask = draw_mask(polygons, float(centre[0]), float(centre[1]), rx, ry, angle, h, w)
    ys, xs = np.nonzero(mask)
    side = pattern.shape[0]
    canvas[ys, xs] = pattern[np.clip((ys - centre[1] + side / 2).astype(int), 0, side - 1),
                             np.clip((xs - centre[0] + side / 2).astype(int), 0, side - 1)]
    return mask


def generate_other_family(
    root: str | Path, *, num_sequences: int = 12, length: int = 80, height: int = 240, width: int = 320, seed: int = 0
) -> Path:
    """Write ``num_sequences`` sequences of this family under ``root`` (``seq_000/`` ...), seeded and reproducible,
    in the layout :func:`frcnn.tracking.sequences.load_sequences` reads."""
    root = Path(root)
    for index in range(num_sequences):
        frames, boxes, attributes = make_other_sequence(np.random.default_rng([seed, index, 7]), length=length, height=height, width=width)
        folder = root / f"seq_{index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            cv2.imwrite(str(folder / f"{t + 1:08d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        (folder / "groundtruth.txt").write_text("".join(f"{x:.2f},{y:.2f},{w:.2f},{h:.2f}\n" for x, y, w, h in boxes))
        (folder / "attributes.json").write_text(json.dumps(attributes))
    (root / "READY").write_text(json.dumps({"family": "other", "seed": seed, "num_sequences": num_sequences, "length": length}))
    return root
