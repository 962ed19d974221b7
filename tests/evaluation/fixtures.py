"""Ground truth and detections for the error-analysis tests: random ones (crowd regions, category ids with
gaps, two supercategories, images without objects or without detections, tied scores); tidecv's answer
on them is :func:`frcnn.benchmarks.analysis.tidecv_dap`."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
from pycocotools.coco import COCO


def coco_from(dataset: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
    return coco


def random_case(seed: int, num_images: int = 30, category_ids: tuple[int, ...] = (1, 4, 7, 10), decimals: int = 3) -> tuple[dict, list[dict[str, Any]]]:
    """A random COCO data set and results: objects of 4 categories (ids with gaps, supercategories a / b),
    1 in 10 a crowd region, 1 in 10 images empty, 1 in 5 without detections; detections jittered from the
    objects (some of another class), plus background ones; scores rounded to ``decimals`` (3: some tie)."""
    rng = np.random.default_rng(seed)
    images = [{"id": 100 + 3 * i, "file_name": f"{i}.png", "width": 200, "height": 150} for i in range(num_images)]
    categories = [{"id": c, "name": f"c{c}", "supercategory": "ab"[j % 2]} for j, c in enumerate(category_ids)]
    anns, dets = [], []
    for im in images:
        with_detections = rng.random() < 0.8
        for _ in range(0 if rng.random() < 0.1 else int(rng.integers(1, 7))):
            x, y, w, h = rng.uniform(0, 150), rng.uniform(0, 100), rng.uniform(5, 60), rng.uniform(5, 60)
            c = int(rng.choice(category_ids))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(rng.random() < 0.1)})
            for _ in range(int(rng.integers(0, 4)) if with_detections else 0):
                jx, jy, jw, jh = rng.normal(0, rng.choice([2, 8, 20]), 4)
                cc = c if rng.random() < 0.7 else int(rng.choice(category_ids))
                dets.append({"image_id": im["id"], "category_id": cc, "bbox": [x + jx, y + jy, max(1.0, w + jw), max(1.0, h + jh)],
                             "score": round(float(rng.random()), decimals)})
        for _ in range(int(rng.integers(0, 5)) if with_detections else 0):
            dets.append({"image_id": im["id"], "category_id": int(rng.choice(category_ids)),
                         "bbox": [rng.uniform(0, 150), rng.uniform(0, 100), rng.uniform(5, 50), rng.uniform(5, 50)],
                         "score": round(float(rng.random()), decimals - 1)})
    return {"images": images, "categories": categories, "annotations": anns}, dets
