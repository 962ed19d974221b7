"""Rebuild a trained detector from its checkpoint, run it on single images, and draw what it found.

The task behind ``scripts/infer.py`` (a config in, one annotated PNG and one JSON of detections per image
out) is :func:`frcnn.tasks.infer.infer`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import draw_bounding_boxes

from frcnn.data.coco import CategoryMap
from frcnn.data.images import read_rgb, to_chw
from frcnn.engine.checkpoint import CheckpointError
from frcnn.errors import ConfigError, MissingFileError
from frcnn.modeling.fold import fold_batchnorm

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def detector_from_checkpoint(
    ckpt: dict[str, Any], source: str | Path, device: torch.device, overrides: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, CategoryMap, DictConfig]:
    """The detector held by a loaded checkpoint dict (``kind`` faster_rcnn) in eval mode on ``device``, its category
    map and training config; ``source`` names the file in errors. Read checkpoints with
    :func:`frcnn.tasks.load.load` (every kind) or :func:`frcnn.tasks.load.load_model` (detectors).

    Args:
        overrides: dotted config keys to change at test time, e.g.
            ``{"model.roi_heads.score_thresh": 0.3}``.
    """
    for key in ("model", "config", "categories"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {source} has no '{key}' entry; it was not written by frcnn's trainer")
    cfg = OmegaConf.create(ckpt["config"])
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, force_add=False)
    OmegaConf.update(cfg, "model.backbone.weights", None)  # the checkpoint holds the trained weights
    model = instantiate(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), CategoryMap.from_dict(ckpt["categories"]), cfg


def proposal_overrides(proposals: int | None) -> dict[str, Any]:
    """The :func:`frcnn.tasks.load.load_model` override for a test-time proposal budget: ``proposals`` per image
    go through the box head (``model.rpn.post_nms_topk_test``); None: the model's own setting.

    The box head runs once per proposal, so on small-object-count data it dominates inference (ResNet-C4:
    res5 on every RoI). Fewer proposals is a speed/accuracy trade, not the same detections: measure
    it with ``scripts/evaluate.py proposals=N`` before using it (docs/benchmarks.md has the demo's sweep).
    """
    return {} if proposals is None else {"model.rpn.post_nms_topk_test": int(proposals)}


PRECISIONS = ("fp32", "bf16")


def prepare_for_inference(model: torch.nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                          precision: str = "fp32") -> torch.nn.Module:
    """The shipped inference path: an eval-mode copy of ``model`` that does less work for the same detections.

    ``fold_bn``: every BatchNorm folded into the convolution before it (:func:`frcnn.modeling.fold.fold_batchnorm`;
    outputs equal to float rounding). ``channels_last``: NHWC convolutions (on the 2-core CPU the demo
    model's latency fell from 0.99x to 0.70x torchvision's; docs/benchmarks.md). :func:`detect` adds
    ``torch.inference_mode``. The caller's model is left as it is.

    ``precision="bf16"``: convolution and fc weights stored in bfloat16 and the network run under bf16 autocast
    (box coordinates, RoI pooling, NMS and scores in fp32). Not the same detections: close ones (the FPN demo
    model: AP 0.7359 against 0.7364), and faster only where the CPU computes in bf16 (AVX512-BF16 or AMX; a GPU):
    1.6x at batch 8 on the 2-core AMD EPYC (docs/benchmarks.md). Elsewhere oneDNN emulates it, slower than fp32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: use one of {', '.join(PRECISIONS)}")
    prepared = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    if channels_last and hasattr(prepared, "channels_last"):
        prepared.channels_last = True
        prepared = prepared.to(memory_format=torch.channels_last)
    if precision == "bf16":
        if not hasattr(prepared, "compute_dtype"):
            raise ConfigError(f"precision=bf16 runs frcnn's FasterRCNN, not a {type(prepared).__name__}")
        for module in prepared.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):  # cast once, not by autocast on every call
                module.to(torch.bfloat16)
        prepared.compute_dtype = torch.bfloat16
    return prepared


@torch.inference_mode()
def detect(model: torch.nn.Module, image: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Detections for one ``[H, W, 3]`` uint8 RGB image, boxes in its pixels (on the CPU)."""
    tensor = to_chw(image).to(device)
    det = model([tensor]).detections[0]
    return {k: v.cpu() for k, v in det.items()}


def image_paths(path: Path) -> list[Path]:
    """``path`` itself, or the images in the folder ``path`` (by suffix, sorted by name).

    Raises:
        MissingFileError: ``path`` does not exist, or is a folder without images.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MissingFileError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return files
    if not path.exists():
        raise MissingFileError(f"image {path} not found")
    return [path]


def detection_records(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, categories: CategoryMap) -> list[dict[str, Any]]:
    """One JSON-ready dict per detection: ``box_xyxy`` (pixels), ``score``, ``label`` (1..K), and the
    data set's ``category_id`` and ``category`` name for it.

    Args:
        boxes: ``[N, 4]`` XYXY; scores: ``[N]``; labels: ``[N]`` int64 in ``1..K``.
    """
    return [
        {
            "box_xyxy": [round(float(v), 2) for v in b],
            "score": round(float(s), 4),
            "label": int(lab),
            "category_id": categories.category_id(int(lab)),
            "category": categories.name(int(lab)),
        }
        for b, s, lab in zip(boxes, scores, labels)
    ]


def draw(image: np.ndarray, boxes: torch.Tensor, names: list[str]) -> torch.Tensor:
    """``image`` (``[H, W, 3]`` uint8) with ``boxes`` (``[N, 4]`` XYXY pixels) drawn in red and labelled
    ``names``, as a ``[3, H, W]`` uint8 tensor; the line width grows with the image (1 px per 300)."""
    h, w = image.shape[:2]
    canvas = to_chw(image).contiguous()
    if len(boxes) == 0:  # nothing to draw (torchvision would warn that there is no box)
        return canvas
    return draw_bounding_boxes(canvas, boxes, labels=names, colors="red", width=max(1, round(max(h, w) / 300)))


class Detector:
    """A trained detector, ready to detect: ``frcnn.load("outputs/demo/best.pt")("photo.jpg")``.

    Runs the model of any frcnn detector checkpoint (a training run's, or one imported by
    ``scripts/import_weights.py``) as ``scripts/infer.py`` does: the shipped path (BatchNorm folded,
    channels-last, ``inference_mode``), the same detections as the model as trained.

    Args:
        model: the ``FasterRCNN`` (eval mode) on ``device``; categories: its :class:`~frcnn.data.coco.CategoryMap`;
            config: its training config (:func:`frcnn.tasks.load.load` gives all three).
        score_thresh: detections under this score are left out (0 keeps all the model's).
        optimize: run the shipped path (False: the model unchanged).
        precision: ``"fp32"`` or ``"bf16"`` (close detections, not the same: :func:`prepare_for_inference`).
    """

    def __init__(self, model: torch.nn.Module, categories: CategoryMap, config: DictConfig, device: torch.device, *,
                 score_thresh: float = 0.5, optimize: bool = True, precision: str = "fp32") -> None:
        self.device, self.categories, self.config = device, categories, config
        self.model = prepare_for_inference(model, fold_bn=optimize, channels_last=optimize, precision=precision)
        self.score_thresh = float(score_thresh)

    def __call__(self, image: str | Path | np.ndarray) -> list[dict[str, Any]]:
        """Detections in one image (a path, or an ``[H, W, 3]`` uint8 RGB array), best first: one dict each with
        ``box_xyxy`` (the image's pixels), ``score``, ``label`` (1..K), ``category_id`` and ``category``."""
        if not isinstance(image, np.ndarray):
            image = read_rgb(Path(image))
        det = detect(self.model, image, self.device)
        keep = det["scores"] >= self.score_thresh
        return detection_records(det["boxes"][keep], det["scores"][keep], det["labels"][keep], self.categories)
