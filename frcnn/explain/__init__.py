"""Explaining detections: why did the detector find this object here?

Read in order:

* :mod:`~frcnn.explain.target` — what is explained: a detection (or proposal) and its score on any
  perturbed input (D-RISE's similarity over all RoIs before NMS, or the fixed RoI's class score).
* :mod:`~frcnn.explain.methods` — the attribution methods (captum where it has them; Grad-CAM put back
  through the preprocessing, Grad-CAM on the RoI head and D-RISE written here).
* :mod:`~frcnn.explain.api` — ``explain(model, image, detections, method=...)``.
* :mod:`~frcnn.explain.substrates` — what removed pixels become (black, the training data's grey, blur, noise).
* :mod:`~frcnn.explain.faithfulness` — deletion / insertion, pointing game, sanity check.
* :mod:`~frcnn.explain.roar` — RemOve And Retrain on the synthetic data.

The task behind ``scripts/explain.py`` (panels, maps and scores) is :mod:`frcnn.tasks.explain`.
"""

from frcnn.explain.api import Explanation, explain
from frcnn.explain.methods import METHODS
from frcnn.explain.target import Detection, DetectionScore, find_detections

__all__ = ["METHODS", "Detection", "DetectionScore", "Explanation", "explain", "find_detections"]
