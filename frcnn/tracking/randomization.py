"""Domain randomization for the training sequences: what :func:`~frcnn.tracking.sequences.make_sequence` draws.

A Siamese tracker is meant to follow objects it has never seen: the paper's SiamRPN learned that from
ImageNet VID and YouTube-BB. Here the training sequences are generated, so they must vary every cue a
tracker could learn instead of *tracking*: the target's texture, colour, contrast with the background,
outline and aspect, the clutter around it, look-alike objects next to it, occluders, blur, light and the
camera. Every choice is a field of :class:`Randomization` (``data.sequences.generate.randomization`` in
``conf/siamrpn.yaml``); a probability is drawn once per sequence.

Textures (``[H, W, 3]`` float32 in 0..255, built from two colours ``a`` and ``b``):

* ``solid`` ``a``; ``stripes`` and ``checkers`` with a random period and angle; ``noise`` white noise around
  ``a``; ``pink`` 1/f ("natural image") noise, amplitude spectrum ``1 / f^beta`` with ``beta`` in 0.8..1.6,
  mapped between ``a`` and ``b``; ``blotches`` a few soft discs of ``b`` on ``a``.

Shapes (a closed outline, scaled to width ``w`` and height ``h``): ``classes`` the detector's five synthetic
shapes (:func:`frcnn.data.synthetic.shape_polygon`), ``polygon`` a random star-shaped polygon of 3-9
vertices, ``blob`` a smooth closed curve ``r(theta) = 1 + sum_k a_k cos(k theta + phi_k)``, ``k = 2..4``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np
from PIL import Image, ImageDraw

from frcnn.data.synthetic import CLASSES, shape_polygon

TEXTURES = ("solid", "stripes", "checkers", "noise", "pink", "blotches")
BACKGROUNDS = ("gradient", *TEXTURES[1:])
SHAPES = ("classes", "polygon", "blob")
# Per-sequence challenges, in the order attributes.json lists them.
CHALLENGES = (
    "low_contrast", "distractors", "clutter", "occlusion", "motion_blur", "illumination",
    "scale_change", "aspect_change", "rotation", "camera_pan", "fast_motion",
)


@dataclass(frozen=True)
class Randomization:
    """What the training generator varies. Probabilities are per sequence; ranges are ``(low, high)``.

    Attributes:
        textures / backgrounds / shapes: the kinds drawn from (uniformly); see the module docstring.
        size: the target's nominal side in frame pixels (``sqrt(w * h)``).
        aspect: the target's ``w / h``, drawn log-uniformly.
        contrast: colour distance (0..255 per channel, L-inf) of a low-contrast target's colours from the
            background's mean colour.
        max_distractors / max_clutter / max_occluders: counts, at least one when the challenge is drawn.
        The challenge probabilities: see :data:`CHALLENGES`.
    """

    textures: tuple[str, ...] = TEXTURES
    backgrounds: tuple[str, ...] = BACKGROUNDS
    shapes: tuple[str, ...] = SHAPES
    size: tuple[float, float] = (22.0, 64.0)
    aspect: tuple[float, float] = (0.5, 2.0)
    contrast: float = 36.0
    max_distractors: int = 3
    max_clutter: int = 10
    max_occluders: int = 2
    low_contrast: float = 0.3
    distractors: float = 0.5
    clutter: float = 0.6
    occlusion: float = 0.3
    motion_blur: float = 0.25
    illumination: float = 0.4
    scale_change: float = 0.5
    aspect_change: float = 0.3
    rotation: float = 0.3
    camera_pan: float = 0.3
    fast_motion: float = 0.2

    def __post_init__(self) -> None:
        for name, allowed in (("textures", TEXTURES), ("backgrounds", BACKGROUNDS), ("shapes", SHAPES)):
            kinds = tuple(getattr(self, name))
            unknown = [k for k in kinds if k not in allowed]
            if not kinds or unknown:
                raise ValueError(f"randomization.{name}={list(kinds)}: choose one or more of {', '.join(allowed)}")
            object.__setattr__(self, name, kinds)
        for name in CHALLENGES:
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"randomization.{name}={getattr(self, name)} is a probability: give a value in [0, 1]")
        for name in ("size", "aspect"):
            low, high = (float(v) for v in getattr(self, name))
            if not 0 < low <= high:
                raise ValueError(f"randomization.{name}={[low, high]} must be [low, high] with 0 < low <= high")
            object.__setattr__(self, name, (low, high))

    @classmethod
    def from_settings(cls, settings: dict | None) -> Randomization:
        """From a config mapping (lists for tuples); unknown keys raise naming the allowed ones."""
        settings = dict(settings or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown randomization keys {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**{k: tuple(v) if isinstance(v, list | tuple) else v for k, v in settings.items()})


# ------------------------------------------------------------------------------------------------ textures


def colour_pair(rng: np.random.Generator, near: np.ndarray | None = None, contrast: float = 36.0) -> tuple[np.ndarray, np.ndarray]:
    """Two ``[3]`` float colours: uniform in 0..255, or (``near`` given) each ``0.4-1 x contrast`` from ``near``
    per channel (with random signs): low contrast, never none."""
    if near is None:
        return rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)

    def one() -> np.ndarray:
        return np.clip(near + rng.choice([-1.0, 1.0], 3) * rng.uniform(0.4, 1.0, 3) * contrast, 0, 255)

    return one(), one()


def pink_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``[h, w]`` float32 in 0..1 with a ``1 / f^beta`` amplitude spectrum (natural images: beta about 1)."""
    beta = rng.uniform(0.8, 1.6)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f**beta
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(h, w))
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-9)
    return field.astype(np.float32)


def texture(rng: np.random.Generator, kind: str, h: int, w: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """An ``[h, w, 3]`` float32 texture of ``kind`` (:data:`TEXTURES` or ``gradient``) from colours ``a``, ``b``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    if kind == "solid":
        t = np.zeros((h, w), np.float32)
    elif kind == "gradient":
        t = xx * math.cos(theta) + yy * math.sin(theta)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    elif kind == "stripes":
        period = rng.uniform(4, 16)
        t = (((xx * math.cos(theta) + yy * math.sin(theta)) // period) % 2).astype(np.float32)
    elif kind == "checkers":
        period = rng.uniform(4, 16)
        c, s = math.cos(theta), math.sin(theta)
        t = (((xx * c + yy * s) // period + (-xx * s + yy * c) // period) % 2).astype(np.float32)
    elif kind == "noise":
        return np.clip(a + rng.normal(0, rng.uniform(8, 30), (h, w, 3)), 0, 255).astype(np.float32)
    elif kind == "pink":
        t = pink_noise(rng, h, w)
    elif kind == "blotches":
        t = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(3, 9))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.08, 0.3) * max(h, w)
            t = np.maximum(t, np.clip(1.5 - np.hypot(xx - cx, yy - cy) / r, 0, 1))
    else:
        raise ValueError(f"unknown texture kind {kind!r}")
    return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)


# -------------------------------------------------------------------------------------------------- shapes


@dataclass
class Outline:
    """A closed outline in unit coordinates (extent about ``[-0.5, 0.5]``), or one of the detector's classes."""

    kind: str  # "classes" | "polygon" | "blob"
    points: np.ndarray | None  # [P, 2] unit outline; None for "classes" (drawn by name)
    name: str = ""  # the class name for "classes"


def random_outline(rng: np.random.Generator, kind: str) -> Outline:
    """A random outline of ``kind`` (:data:`SHAPES`)."""
    if kind == "classes":
        return Outline(kind, None, CLASSES[int(rng.integers(len(CLASSES)))])
    if kind == "polygon":
        n = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.45, 1.0, n)
    elif kind == "blob":
        angles = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        radii = np.ones_like(angles)
        for k in range(2, 5):
            radii += rng.uniform(0, 0.25) * np.cos(k * angles + rng.uniform(0, 2 * math.pi))
        radii = np.clip(radii, 0.3, None)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    points /= 2 * np.abs(points).max(axis=0)  # extent [-0.5, 0.5] in both axes
    return Outline(kind, points)


def outline_mask(outline: Outline, cx: float, cy: float, w: float, h: float, angle: float, height: int, width: int) -> np.ndarray:
    """``[height, width]`` bool: the outline scaled to ``w x h``, rotated by ``angle`` and centred at ``(cx, cy)``."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    if outline.kind == "classes":
        if outline.name == "circle":
            points = [(cx + 0.5 * w * math.cos(t) * math.cos(angle) - 0.5 * h * math.sin(t) * math.sin(angle),
                       cy + 0.5 * w * math.cos(t) * math.sin(angle) + 0.5 * h * math.sin(t) * math.cos(angle))
                      for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
        else:  # the class polygon at unit size, stretched to w x h, then rotated
            unit = np.asarray(shape_polygon(outline.name, 0.0, 0.0, 1.0, 0.0))
            points = _place(unit, cx, cy, w, h, angle)
    else:
        points = _place(outline.points, cx, cy, w, h, angle)
    draw.polygon(points, fill=255)
    return np.asarray(image) > 127


def _place(unit: np.ndarray, cx: float, cy: float, w: float, h: float, angle: float) -> list[tuple[float, float]]:
    x, y = unit[:, 0] * w, unit[:, 1] * h
    c, s = math.cos(angle), math.sin(angle)
    return list(zip((cx + x * c - y * s).tolist(), (cy + x * s + y * c).tolist()))


# ------------------------------------------------------------------------------------------------- effects


def motion_blur(frame: np.ndarray, vx: float, vy: float) -> np.ndarray:
    """``frame`` blurred along the motion ``(vx, vy)`` (pixels per frame): a line kernel of that length."""
    length = int(round(math.hypot(vx, vy)))
    if length < 2:
        return frame
    kernel = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    angle = math.atan2(vy, vx)
    cv2.line(kernel, (round(c - c * math.cos(angle)), round(c - c * math.sin(angle))),
             (round(c + c * math.cos(angle)), round(c + c * math.sin(angle))), 1.0, 1)
    return cv2.filter2D(frame, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def light_field(t: int, height: int, width: int, gain: tuple[float, float, float], ramp: tuple[float, float, float]) -> np.ndarray:
    """``[height, width, 1]`` multiplicative light at frame ``t``: a global gain ``g0 + g1 sin(2 pi t / g2)`` times
    a spatial ramp of strength ``r0`` whose direction turns at ``r1`` radians per frame from ``r2``."""
    g0, g1, g2 = gain
    r0, r1, r2 = ramp
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    direction = r2 + r1 * t
    along = ((xx - width / 2) * math.cos(direction) + (yy - height / 2) * math.sin(direction)) / max(height, width)
    return ((g0 + g1 * math.sin(2 * math.pi * t / g2)) * (1 + r0 * along))[..., None]
