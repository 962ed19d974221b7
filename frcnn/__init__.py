"""frcnn: Faster R-CNN.

``frcnn.load("outputs/demo/best.pt")("photo.jpg")``: detections from a trained checkpoint
(:class:`frcnn.inference.Detector`). Everything else lives in the subpackages: ``modeling`` (the
detector's stages), ``engine`` (training), ``evaluation``, ``explain``, ``export``, ``tracking``, ``zoo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from frcnn.inference import Detector

__all__ = ["load"]


def load(checkpoint: Any, *, device: str = "auto", score_thresh: float = 0.5) -> Detector:
    """A trained checkpoint ready to detect (:class:`frcnn.inference.Detector`); torch is imported on the first call."""
    from frcnn.inference import load as _load

    return _load(checkpoint, device=device, score_thresh=score_thresh)
