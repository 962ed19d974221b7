"""COCOeval backends side by side: pycocotools (the reference) and faster-coco-eval, same results, same process.

``scripts/eval_backends.py`` is the command; docs/benchmarks.md holds the recorded numbers. The
detections are synthetic: each ground-truth box jittered (shifted, rescaled, relabelled now and then)
0-2 times plus a few false positives per image, so every branch of the matching runs.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from frcnn.evaluation.coco_eval import STAT_NAMES, evaluate_results


def jittered_detections(dataset: dict[str, Any], seed: int, *, max_per_box: int = 2, max_false: int = 3) -> list[dict[str, Any]]:
    """COCO results near the non-crowd boxes of ``dataset`` (a COCO annotation dict), plus false positives."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in dataset["categories"]]
    out = []
    for a in dataset["annotations"]:
        x, y, w, h = a["bbox"]
        for _ in range(int(rng.integers(0, max_per_box + 1))):
            sw, sh = rng.uniform(0.7, 1.3, 2)
            label = int(rng.choice(cats)) if rng.random() < 0.2 else a["category_id"]
            box = [float(x + rng.normal(0, w / 8)), float(y + rng.normal(0, h / 8)), float(w * sw), float(h * sh)]
            out.append({"image_id": a["image_id"], "category_id": label, "bbox": box, "score": float(rng.random())})
    for im in dataset["images"]:
        for _ in range(int(rng.integers(0, max_false + 1))):
            w, h = rng.uniform(5, im["width"] / 2), rng.uniform(5, im["height"] / 2)
            box = [float(rng.uniform(0, im["width"] - w)), float(rng.uniform(0, im["height"] - h)), float(w), float(h)]
            out.append({"image_id": im["id"], "category_id": int(rng.choice(cats)), "bbox": box, "score": float(rng.random())})
    return out


def compare(coco: COCO, results: list[dict[str, Any]], *, reps: int = 3) -> dict[str, Any]:
    """Median seconds of :func:`evaluate_results` per backend (interleaved), and the largest stat difference."""
    seconds: dict[str, list[float]] = {"pycocotools": [], "faster_coco_eval": []}
    stats = {}
    for _ in range(reps):
        for backend in seconds:
            start = time.perf_counter()
            stats[backend] = evaluate_results(coco, results, backend=backend)["stats"]
            seconds[backend].append(time.perf_counter() - start)
    median = {b: float(np.median(s)) for b, s in seconds.items()}
    return {
        "seconds": median,
        "ratio": median["faster_coco_eval"] / median["pycocotools"],
        "max_abs_stat_difference": max(abs(stats["faster_coco_eval"][n] - stats["pycocotools"][n]) for n in STAT_NAMES),
        "detections": len(results),
    }
