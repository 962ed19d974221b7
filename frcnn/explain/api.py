"""One call to explain detections: ``explain(model, image, detections, method=...)``.

Shape shorthand: ``H x W`` the image, ``M`` detections.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from frcnn.data.images import to_chw
from frcnn.explain.methods import ALIASES, METHODS
from frcnn.explain.target import Detection, DetectionScore, TargetKind, find_detections
from frcnn.modeling.model import FasterRCNN


@dataclass
class Explanation:
    """One method's explanation of one detection.

    Attributes:
        method: the method's name (a key of :data:`frcnn.explain.methods.METHODS`).
        detection: what was explained.
        saliency: ``[H, W]`` float map in the original image's pixels (higher = more important).
        attribution: ``[3, H, W]`` per-channel attribution, or None for Grad-CAM and D-RISE.
        score: the target score of the detection on the unperturbed image (for the similarity target on
            the image it came from, ``p[c] / ||p||`` of its own RoI: near 1 for a confident detection).
        seconds: wall time of the call divided by the detections explained together.
        info: method-specific facts (IG's completeness error, D-RISE's mask count, ...).
    """

    method: str
    detection: Detection
    saliency: Tensor
    attribution: Tensor | None
    score: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def as_image_tensor(image: Tensor | np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """``[3, H, W]`` float in ``[0, 1]`` from a ``[3, H, W]`` tensor (uint8 or float) or an ``[H, W, 3]`` uint8 array."""
    if isinstance(image, np.ndarray):
        image = to_chw(image)
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image [3, H, W] (or an [H, W, 3] array), got shape {tuple(image.shape)}")
    image = image.to(device)
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


def method_name(method: str) -> str:
    """The canonical name of ``method`` (accepts the aliases ``ig``, ``shap``, ``saliency``)."""
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose from {', '.join(sorted(METHODS))}")
    return name


def explain(
    model: FasterRCNN,
    image: Tensor | np.ndarray,
    detections: Detection | Sequence[Detection] | None = None,
    *,
    method: str = "gradcam",
    target: TargetKind = "similarity",
    objectness: bool = False,
    max_rois: int | None = None,
    **options: Any,
) -> Explanation | list[Explanation]:
    """Explain detections of ``image`` with one method, all detections in one call.

    Args:
        model: a :class:`FasterRCNN`; put in eval mode here.
        image: ``[3, H, W]`` tensor (uint8 or float in ``[0, 1]``) or ``[H, W, 3]`` uint8 array.
        detections: one :class:`Detection` (→ one :class:`Explanation`), a list (→ a list), or None for
            the top three detections scoring ≥ 0.5 (see :func:`frcnn.explain.target.find_detections`).
        method: ``gradient``, ``guided_backprop``, ``gradcam``, ``gradcam_head``, ``odam``, ``guided_gradcam``,
            ``integrated_gradients`` (``ig``), ``smoothgrad``, ``vargrad``, ``drise``, ``kernel_shap``.
        target: ``"similarity"`` (D-RISE's, robust to NMS picking another RoI) or ``"roi_score"``.
        objectness: multiply the similarity by the RoI's objectness.
        max_rois: follow each detection through only the ``max_rois`` proposals per image that overlap
            it most (None: all; see :class:`DetectionScore`).
        **options: passed to the method (e.g. ``steps=32, baseline="blur"`` for IG, ``masks=1000`` for D-RISE;
            ``mean=`` the grey baseline's / fill's colour, :func:`frcnn.explain.substrates.training_mean`).
    """
    model.eval()
    device = next(model.parameters()).device
    image = as_image_tensor(image, device)
    single = isinstance(detections, Detection)
    if detections is None:
        detections = find_detections(model, image)
    chosen = [detections] if single else list(detections)
    if not chosen:
        return []
    name = method_name(method)
    score = DetectionScore(model, chosen, target=target, objectness=objectness, max_rois=max_rois).to(device)
    start = time.perf_counter()
    result = METHODS[name](score, image, **options)
    seconds = (time.perf_counter() - start) / len(chosen)
    with torch.no_grad():
        own = score(image[None])[0].tolist()
    explanations = [
        Explanation(
            method=name,
            detection=det,
            saliency=result.maps[m].detach().cpu(),
            attribution=None if result.attributions is None else result.attributions[m].detach().cpu(),
            score=own[m],
            seconds=seconds,
            info=result.info[m] if result.info else {},
        )
        for m, det in enumerate(chosen)
    ]
    return explanations[0] if single else explanations
