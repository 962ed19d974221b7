"""A trained detector as one ONNX graph: uint8 images in, fixed-size detections out.

The graph is the whole inference pipeline — normalize, resize (shorter side to ``min_size_test``,
longer side at most ``max_size``), pad to a multiple of 32, trunk, RPN head, anchors, proposals
(decode, clip, small-box filter, top-k, NMS, top-k), RoIAlign, box head, per-class NMS, and the boxes
mapped back to the input image's pixels — so a runtime needs nothing from frcnn to use it.

Exporter: the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``). It records
``torchvision::nms`` and ``torchvision::roi_align`` through the ONNX symbolics torchvision registers
(``NonMaxSuppression``; ``RoiAlign`` with ``coordinate_transformation_mode="half_pixel"`` for
``aligned=True``, hence opset ≥ 16), and keeps image height, width and batch dynamic because shapes
read under tracing are graph values. The ``dynamo=True`` exporter has no ONNX function for
``torchvision::nms`` and would need translations written for both operators (docs/deploy.md).

Inputs and outputs (``B`` images, ``D`` = the model's ``detections_per_image``):

* ``images``: ``[B, 3, H, W]`` uint8 RGB, one size per call (batch images of one size; any size per call);
* ``boxes`` ``[B, D, 4]`` float32 XYXY in the input images' pixels, ``scores`` ``[B, D]`` float32,
  ``labels`` ``[B, D]`` int64 in ``1..K``, ``count`` ``[B]`` int64: the first ``count[b]`` rows of image
  ``b`` are its detections, sorted by score; the rest is zero padding.

The model's metadata carries the category mapping (``frcnn.categories``, JSON) and the settings the
graph was traced with.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from frcnn.data.coco import CategoryMap
from frcnn.data.images import to_chw
from frcnn.modeling.model import FasterRCNN

OUTPUT_NAMES = ("boxes", "scores", "labels", "count")
DEFAULT_OPSET = 17  # >= 16: RoiAlign's half_pixel mode (aligned=True)


class DeployableDetector(nn.Module):
    """:class:`FasterRCNN` inference with tensor-only control flow, for tracing and for batch inference.

    Equal to ``model(images).detections`` (test-time resize, proposals and postprocessing) for a batch
    of same-size images, through the model's own stages, with the preprocessing in tensor operations
    (:meth:`~frcnn.modeling.preprocess.Preprocessor.batch_tensor`: image sizes stay graph values under
    tracing) and the detections returned as padded tensors.

    Args:
        model: a trained :class:`FasterRCNN` (its eval-mode settings are used).
    """

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__()
        self.model = model
        self.eval()  # the wrapper's mode is the model's: a caller's .train() would switch the model too

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[B, 3, H, W]`` → ``(boxes [B, D, 4], scores [B, D], labels [B, D], count [B])``, see the module docstring."""
        model = self.model
        batch = model.preprocessor.batch_tensor(images)
        features = model.features(batch)
        proposals, _ = model.propose(batch, features)
        detections, _ = model.roi_heads(batch, features, proposals, detect=True)
        detections = model.postprocess(detections, batch)
        valid = detections.valid
        boxes = detections.boxes * valid[..., None]
        return boxes, detections.scores * valid, detections.labels * valid, valid.sum(dim=1)


def export_onnx(
    model: FasterRCNN,
    path: str | Path,
    categories: CategoryMap,
    *,
    opset: int = DEFAULT_OPSET,
    sample_hw: tuple[int, int] = (192, 256),
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (eval mode, on the CPU) as an ONNX graph to ``path``; see the module docstring.

    Args:
        model: the trained detector.
        path: the ``.onnx`` file to write (its folder is created).
        categories: the label ↔ category mapping, stored in the metadata.
        opset: ONNX opset (≥ 16).
        sample_hw: the size of the example image traced through the model; any other size runs too.
        metadata: extra ``key: value`` pairs for the model's metadata (values JSON-encoded).

    Returns:
        ``path``.
    """
    import onnx  # optional dependency (pip install frcnn[export])

    if opset < 16:
        raise ValueError(f"opset {opset} < 16: RoiAlign's half_pixel mode (aligned=True) needs opset 16")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = DeployableDetector(copy.deepcopy(model).cpu())  # the caller's model keeps its device and mode
    example = torch.randint(0, 256, (1, 3, *sample_hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with warnings.catch_warnings():
            # The tracer warns where Python reads a value it cannot record (constants such as the number of
            # classes); the shapes that must stay dynamic are graph values (the parity tests vary them).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            torch.onnx.export(
                wrapper, (example,), str(tmp), dynamo=False, opset_version=opset,
                input_names=["images"], output_names=list(OUTPUT_NAMES),
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch"},
                              "scores": {0: "batch"}, "labels": {0: "batch"}, "count": {0: "batch"}},
            )
        graph = onnx.load(str(tmp))
        info = {
            "frcnn.categories": json.dumps(categories.to_dict()),
            "frcnn.detections_per_image": json.dumps(model.roi_heads.detections_per_image),
            "frcnn.score_thresh": json.dumps(model.roi_heads.score_thresh),
            "frcnn.proposals": json.dumps(model.rpn.post_nms_topk_test),  # per image through the box head
            "frcnn.exporter": json.dumps(f"torch {torch.__version__} torch.onnx.export(dynamo=False), opset {opset}"),
            **{k: json.dumps(v) for k, v in (metadata or {}).items()},
        }
        onnx.helper.set_model_props(graph, info)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
        tmp.replace(path)  # atomic: a half-written file never has the final name
    finally:
        tmp.unlink(missing_ok=True)
    return path


def match_detections(reference: dict[str, Tensor], other: dict[str, Tensor], *, min_score: float = 0.1) -> dict[str, float]:
    """How closely ``other`` reproduces ``reference`` (one image's ``boxes``/``scores``/``labels`` each).

    For every reference detection scoring above ``min_score``: the other detection of the same label
    with the highest IoU. Returns the number checked, the worst (lowest) such IoU, the largest score
    difference between the pairs, and how many reference detections had no same-label partner at all.
    """
    from torchvision.ops import box_iou

    keep = reference["scores"] > min_score
    ref_boxes, ref_scores, ref_labels = reference["boxes"][keep], reference["scores"][keep], reference["labels"][keep]
    if not len(ref_boxes):
        return {"checked": 0, "min_iou": 1.0, "max_score_diff": 0.0, "unmatched": 0}
    iou = box_iou(ref_boxes.float(), other["boxes"].float()) if len(other["boxes"]) else ref_boxes.new_zeros(len(ref_boxes), 0)
    same = ref_labels[:, None] == other["labels"][None, :].to(ref_labels)
    iou = torch.where(same, iou, torch.full_like(iou, -1.0))
    if iou.shape[1] == 0:
        return {"checked": len(ref_boxes), "min_iou": 0.0, "max_score_diff": 1.0, "unmatched": len(ref_boxes)}
    best, index = iou.max(dim=1)
    diff = (ref_scores - other["scores"][index].to(ref_scores)).abs()
    return {"checked": len(ref_boxes), "min_iou": float(best.clamp(min=0).min()), "max_score_diff": float(diff.max()),
            "unmatched": int((best < 0).sum())}


def sample_image(height: int, width: int, seed: int = 0) -> Tensor:
    """A synthetic scene (the built-in data's generator) as ``[3, H, W]`` uint8, for checks after export."""
    import numpy as np

    from frcnn.data.synthetic import make_image

    size = min(height, width)
    image, _ = make_image(np.random.default_rng(seed), height, width, 8, max(8, size // 10), max(16, size // 2), 0.35)
    return to_chw(np.asarray(image)).contiguous()
