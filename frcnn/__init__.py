"""frcnn: Faster R-CNN.

``frcnn.load("outputs/demo/best.pt")("photo.jpg")``: detections from a trained checkpoint
(:class:`frcnn.inference.Detector`); ``frcnn.load("shipped")``: the tracker that comes with frcnn
(:class:`frcnn.tracking.tracker.SiamRPNTracker`). Everything else lives in the subpackages, floor by floor:
``modeling`` (the detector's stages), ``data``, ``engine`` (training), ``evaluation``, ``inference``,
``export``, ``explain``, ``tracking``, ``benchmarks``, and ``tasks`` (what each command runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from frcnn.inference import Detector
    from frcnn.tracking.tracker import SiamRPNTracker

__all__ = ["load"]


def load(checkpoint: Any, *, device: str = "auto", score_thresh: float = 0.5, precision: str = "fp32"
         ) -> Detector | SiamRPNTracker:
    """A checkpoint ready to use, as its kind says (:func:`frcnn.tasks.load.load`): a detector's as a
    :class:`~frcnn.inference.Detector` (``score_thresh``: detections under it are left out; ``precision``:
    ``"fp32"`` or ``"bf16"``, see :func:`frcnn.inference.prepare_for_inference`), a tracker's
    (``"shipped"``: the one that comes with frcnn) as a :class:`~frcnn.tracking.tracker.SiamRPNTracker`.
    torch is imported on the first call."""
    from frcnn.config import resolve_device
    from frcnn.inference import Detector
    from frcnn.tasks.load import load as load_checkpoint_model

    torch_device = resolve_device(device, "device")
    loaded = load_checkpoint_model(checkpoint, torch_device)
    if loaded.tracker is not None:
        return loaded.tracker
    return Detector(loaded.model, loaded.categories, loaded.config, torch_device, score_thresh=score_thresh,
                    precision=precision)
