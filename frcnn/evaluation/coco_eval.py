"""Run a detector over a split, write COCO results, and score them with COCOeval.

Two scoring backends: pycocotools (the reference, always installed) and faster-coco-eval (the
``fast-eval`` extra: a C++ COCOeval with the same protocol, tested against pycocotools on every stat).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from frcnn.data.coco import CategoryMap
from frcnn.errors import ConfigError, InputError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster_coco_eval")


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader: Iterable,
    categories: CategoryMap,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    unreadable: list[int] | None = None,
) -> list[dict[str, Any]]:
    """COCO result dicts (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]``, ``score``).

    Args:
        unreadable: when given, ids of images the loader could not read (items whose image is
            ``None``, from a data set with ``on_unreadable="skip"``) are appended to it.
    """
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for images, targets in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
            read = [i for i, im in enumerate(images) if im is not None]
            if unreadable is not None:
                unreadable.extend(int(t["image_id"]) for im, t in zip(images, targets) if im is None)
            images, targets = [images[i].to(device, non_blocking=True) for i in read], [targets[i] for i in read]
            if not images:
                continue
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                dets = model(images).detections
            for det, tgt in zip(dets, targets):
                results.extend(coco_records(det, int(tgt["image_id"]), categories))
    finally:
        model.train(was_training)
    return results


def coco_records(det: dict[str, torch.Tensor], image_id: int, categories: CategoryMap) -> list[dict[str, Any]]:
    """One image's detections (``boxes`` ``[D, 4]`` XYXY, ``scores`` ``[D]``, ``labels`` ``[D]`` in 1..K) as COCO
    result dicts: ``bbox`` ``[x, y, w, h]`` rounded to 0.01 px, ``score`` to 1e-5, the data set's ``category_id``."""
    boxes = det["boxes"].float().cpu().numpy()
    scores = det["scores"].float().cpu().numpy()
    labels = det["labels"].cpu().numpy()
    return [
        {
            "image_id": image_id,
            "category_id": categories.category_id(int(lab)),
            "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
            "score": round(float(s), 5),
        }
        for (x1, y1, x2, y2), s, lab in zip(boxes, scores, labels)
    ]


def evaluate_results(
    coco_gt: COCO, results: list[dict[str, Any]], image_ids: list[int] | None = None, *, backend: str = "pycocotools"
) -> dict[str, Any]:
    """Score COCO-format ``results`` against ``coco_gt`` (bbox IoU type).

    Args:
        image_ids: score only these images (e.g. all but the unreadable ones); default: every image.
        backend: ``"pycocotools"`` (the reference) or ``"faster_coco_eval"`` (the ``fast-eval`` extra;
            the ground truth is rebuilt from ``coco_gt.dataset``).

    Returns:
        ``{"stats": {name: value for the 12 standard stats}, "per_class_ap": {name: AP},
        "precision": array [T, R, K, A, M] from COCOeval (for curves)}``. No detections → every stat 0.

    Raises:
        InputError: a result names a category or image that is not in the ground truth.
        ConfigError: an unknown backend, or faster_coco_eval without its extra installed.
    """
    cocoeval = _cocoeval_class(backend)
    known_cats = set(coco_gt.getCatIds())
    known_imgs = set(coco_gt.getImgIds())
    for r in results:
        if r["category_id"] not in known_cats:
            raise InputError(
                f"detection for image {r['image_id']} has category_id {r['category_id']}, which is not in the "
                f"ground truth's categories {sorted(known_cats)}; map labels back to the data set's category ids"
            )
        if r["image_id"] not in known_imgs:
            raise InputError(f"detection has image_id {r['image_id']}, which is not in the ground truth")
    names = {c["id"]: c["name"] for c in coco_gt.loadCats(sorted(known_cats))}
    if not results:
        return {
            "stats": {n: 0.0 for n in STAT_NAMES},
            "per_class_ap": {names[c]: 0.0 for c in sorted(known_cats)},
            "precision": None,
        }
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            gt, quiet = coco_gt, {}
        else:  # faster-coco-eval: its own ground-truth object, and its logging silenced like pycocotools' prints
            gt, quiet = _faster_coco(coco_gt), {"print_function": _quiet}
        ev = cocoeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="bbox", **quiet)
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {n: float(v) for n, v in zip(STAT_NAMES, ev.stats)}
    precision = ev.eval["precision"]  # [T IoUs, R recalls, K classes, A areas, M maxDets]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[names[cat_id]] = float(p.mean()) if p.size else float("nan")
    return {"stats": stats, "per_class_ap": per_class, "precision": precision}


def _quiet(*args: Any, **kwargs: Any) -> None:
    """faster-coco-eval reports through ``logging.info`` (pycocotools prints, and is redirected): silenced alike."""


def check_backend(backend: str) -> None:
    """Raise :class:`ConfigError` now, before any prediction, for an unknown or uninstalled backend."""
    _cocoeval_class(backend)


def _cocoeval_class(backend: str) -> type:
    if backend == "pycocotools":
        return COCOeval
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCOeval_faster
        except ImportError as err:
            raise ConfigError(
                "backend=faster_coco_eval needs the fast-eval extra: uv sync --extra fast-eval "
                "(make installs it), or backend=pycocotools"
            ) from err
        return COCOeval_faster
    raise ConfigError(f"backend={backend!r} is not valid; allowed: {' | '.join(BACKENDS)}")


def _faster_coco(coco_gt: COCO) -> Any:
    """faster-coco-eval's ground-truth object for the same data set dict."""
    from faster_coco_eval import COCO as FasterCOCO

    return FasterCOCO(copy.deepcopy(coco_gt.dataset), print_function=_quiet)


def per_class_table(per_class_ap: dict[str, float]) -> str:
    """A markdown table of AP@[.5:.95] per class."""
    rows = ["| class | AP |", "|---|---|"]
    rows += [f"| {name} | {ap:.4f} |" if np.isfinite(ap) else f"| {name} | n/a (no ground truth) |" for name, ap in per_class_ap.items()]
    return "\n".join(rows)
