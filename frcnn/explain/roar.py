"""RemOve And Retrain (Hooker et al. 2019) for a detector, on the built-in synthetic data.

A saliency method is faithful if the pixels it ranks highest carry the information a detector needs:
remove the top ``k`` % of every training and validation image (replaced by the per-channel mean of
the training set, so no new edges or colours appear), retrain the same model from scratch, and compare
the AP with the model trained on the unmodified images: ``ΔAP = AP_orig − AP_ROAR``. Retraining is
what separates "the map found the evidence" from "removing pixels moved the images off the training
distribution" (which deletion curves cannot tell apart). Two references bracket the methods: random
removal (a method no better than chance) and an oracle that removes the ground-truth boxes' pixels first.

Each image's map explains the model's evidence for *all* of its ground-truth objects at once: every
object becomes a :class:`~frcnn.explain.target.Detection` (its box, its class as a one-hot class
vector), and the summed similarity target is explained in one call, so a method costs one backward
pass (Grad-CAM, gradient) per image.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from frcnn.data.images import read_rgb, to_chw
from frcnn.explain.methods import METHODS
from frcnn.explain.target import Detection, DetectionScore

REFERENCES = ("random", "oracle")


class _Summed(nn.Module):
    """All objects' target scores summed into one: ``[N, 3, H, W] → [N, 1]``."""

    num_targets = 1

    def __init__(self, score: DetectionScore) -> None:
        super().__init__()
        self.score = score
        self.model = score.model

    def forward(self, images: Tensor) -> Tensor:
        return self.score(images).sum(dim=1, keepdim=True)


def ground_truth_detections(boxes: Tensor, labels: Tensor, num_classes: int) -> list[Detection]:
    """One :class:`Detection` per ground-truth object: its box, and its class as a one-hot class vector."""
    probs = torch.nn.functional.one_hot(labels, num_classes + 1).float()
    return [Detection(box=b.float(), label=int(c), score=1.0, probs=p, roi=b.float(), index=i)
            for i, (b, c, p) in enumerate(zip(boxes, labels, probs))]


def image_saliency(
    method: str, model: nn.Module | None, image: Tensor, boxes: Tensor, labels: Tensor, *, seed: int = 0
) -> Tensor:
    """``[H, W]`` map of ``image`` (``[3, H, W]`` float in [0, 1]) for ROAR's ranking.

    ``method``: a key of :data:`METHODS` (explaining all ground-truth objects together), ``"random"``
    (uniform noise, seeded) or ``"oracle"`` (ground-truth box pixels first, in random order within).
    """
    height, width = image.shape[-2:]
    noise = torch.rand(height, width, generator=torch.Generator().manual_seed(seed))
    if method == "random":
        return noise
    if method == "oracle":
        inside = torch.zeros(height, width)
        for x1, y1, x2, y2 in boxes.round().long().tolist():
            inside[max(0, y1) : y2, max(0, x1) : x2] = 1.0
        return inside + 0.5 * noise  # every box pixel (1 .. 1.5) before every other (0 .. 0.5)
    if not len(boxes):
        return noise
    score = _Summed(DetectionScore(model, ground_truth_detections(boxes, labels, model.num_classes)))
    return METHODS[method](score, image).maps[0].detach().cpu()


def remove_top(image: np.ndarray, saliency: Tensor, fraction: float, fill: Sequence[float]) -> np.ndarray:
    """``image`` (``[H, W, 3]`` uint8) with its ``fraction`` most salient pixels set to ``fill`` (RGB, 0-255).

    Ties break by raster order (stable), so equal maps remove equal pixels.
    """
    flat = saliency.flatten()
    count = round(fraction * flat.numel())
    order = flat.argsort(descending=True, stable=True)[:count]
    out = image.copy().reshape(-1, 3)
    out[order.numpy()] = np.asarray(fill, dtype=np.float64).round().astype(np.uint8)
    return out.reshape(image.shape)


def _split(annotations: Path) -> tuple[dict[str, Any], dict[int, tuple[Tensor, Tensor]]]:
    data = json.loads(annotations.read_text())
    label_of = {c["id"]: i + 1 for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    objects: dict[int, tuple[list, list]] = {im["id"]: ([], []) for im in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        objects[a["image_id"]][0].append([x, y, x + w, y + h])
        objects[a["image_id"]][1].append(label_of[a["category_id"]])
    tensors = {k: (torch.tensor(b, dtype=torch.float32).reshape(-1, 4), torch.tensor(c, dtype=torch.long)) for k, (b, c) in objects.items()}
    return data, tensors


def saliency_maps(method: str, model: nn.Module | None, root: Path, split: str, *, seed: int = 0) -> dict[int, Tensor]:
    """Every image's map for ``method``, by image id (computed once, reused for each fraction)."""
    data, objects = _split(root / "annotations" / f"{split}.json")
    maps = {}
    for info in data["images"]:
        image = to_chw(read_rgb(root / split / info["file_name"])).float() / 255
        boxes, labels = objects[info["id"]]
        maps[info["id"]] = image_saliency(method, model, image, boxes, labels, seed=seed + info["id"])
    return maps


def write_removed(root: Path, out: Path, maps: dict[str, dict[int, Tensor]], fraction: float, fill: Sequence[float]) -> Path:
    """A copy of the data set at ``root`` with each image's top ``fraction`` pixels (by ``maps[split][id]``) filled."""
    for split in ("train", "val"):
        data = json.loads((root / "annotations" / f"{split}.json").read_text())
        (out / split).mkdir(parents=True, exist_ok=True)
        for info in data["images"]:
            image = read_rgb(root / split / info["file_name"])
            Image.fromarray(remove_top(image, maps[split][info["id"]], fraction, fill)).save(out / split / info["file_name"])
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "annotations" / f"{split}.json", out / "annotations" / f"{split}.json")
    return out
