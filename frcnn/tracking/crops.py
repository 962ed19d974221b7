"""Template and search crops around a target, as SiamFC / SiamRPN cut them (Li et al., 2018, sec. 4.1).

A target of size ``(w, h)`` gets a context margin ``p = context * (w + h)`` (``context = 0.5``, so
``p = (w + h) / 2``) and the template crop is the square of side ``s_z = sqrt((w + p)(h + p))`` around
its centre, resized to ``127 x 127``: the target plus context always fills the same area. The search
crop is the square of side ``s_x = s_z * 255 / 127`` around the same (or the previous) centre, resized to
``255 x 255``, so both crops share one scale ``127 / s_z`` pixels per frame pixel. Where a crop leaves the
frame it is filled with the frame's mean colour.

Coordinates are continuous (a pixel ``i`` covers ``[i, i + 1)``), as everywhere in frcnn; boxes are
XYXY. Worked example: a ``20 x 10`` target centred at ``(50, 40)`` has ``p = 15``,
``s_z = sqrt(35 * 25) = 29.58`` and ``s_x = 59.40``; the search crop covers ``x`` in
``[20.30, 79.70]`` and the target appears there as an ``85.9 x 42.9`` box (scale ``127 / s_z = 4.29``) centred at ``(127.5, 127.5)``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

TEMPLATE_SIZE = 127  # exemplar crop side (SiamFC, SiamRPN)
SEARCH_SIZE = 255  # search crop side: twice the context-padded target plus a margin for motion


def context_side(width: float, height: float, context: float = 0.5) -> float:
    """Side ``s_z = sqrt((w + p)(h + p))``, ``p = context * (w + h)``, of the template crop in frame pixels."""
    pad = context * (width + height)
    return math.sqrt((width + pad) * (height + pad))


def crop(image: np.ndarray, centre: tuple[float, float], side: float, out_size: int, fill: np.ndarray | None = None) -> np.ndarray:
    """The square of ``side`` frame pixels centred at ``centre``, resized to ``out_size`` (bilinear).

    Args:
        image: ``[H, W, 3]`` uint8 frame.
        centre: ``(cx, cy)`` in continuous frame coordinates.
        side: crop side in frame pixels (> 0).
        out_size: output side in pixels.
        fill: ``[3]`` colour for the part of the crop outside the frame; the frame's mean by default.

    Returns:
        ``[out_size, out_size, 3]`` uint8.
    """
    scale = out_size / side
    # Continuous coordinates: u + 0.5 = scale * (x + 0.5 - cx) + out_size / 2 for pixel indices u, x.
    shift_x = scale * (0.5 - centre[0]) + out_size / 2 - 0.5
    shift_y = scale * (0.5 - centre[1]) + out_size / 2 - 0.5
    matrix = np.array([[scale, 0.0, shift_x], [0.0, scale, shift_y]], dtype=np.float64)
    if fill is None:
        fill = image.reshape(-1, image.shape[-1]).mean(axis=0)
    return cv2.warpAffine(
        image, matrix, (out_size, out_size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(v) for v in fill),
    )


def to_crop(boxes: np.ndarray, centre: tuple[float, float], side: float, out_size: int) -> np.ndarray:
    """Map ``[..., 4]`` XYXY frame boxes into the crop :func:`crop` cuts with the same arguments."""
    scale = out_size / side
    offset = np.array([centre[0], centre[1], centre[0], centre[1]])
    return (np.asarray(boxes, dtype=np.float64) - offset) * scale + out_size / 2


def from_crop(boxes: np.ndarray, centre: tuple[float, float], side: float, out_size: int) -> np.ndarray:
    """Inverse of :func:`to_crop`: crop boxes back into frame coordinates."""
    scale = out_size / side
    offset = np.array([centre[0], centre[1], centre[0], centre[1]])
    return (np.asarray(boxes, dtype=np.float64) - out_size / 2) / scale + offset


def xywh_to_xyxy(box) -> np.ndarray:
    """``[..., 4]`` ``(x, y, w, h)`` (top-left corner, the tracking-benchmark format) to XYXY."""
    box = np.asarray(box, dtype=np.float64)
    return np.concatenate([box[..., :2], box[..., :2] + box[..., 2:]], axis=-1)
