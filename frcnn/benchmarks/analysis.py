"""The error analysis's cost on a COCO-sized results file, beside the original tidecv on the same input.

``scripts/analysis_benchmark.py`` is the command; docs/benchmarks.md holds the recorded numbers. The data
is generated, COCO val2017's size: 5000 images of 640x480, 80 categories with COCO's ids (gaps included)
in 10 supercategories, a Poisson(7.3) number of objects per image (36k in all, 1% crowd), and 100
detections per image (500k): half jittered from an object (1 in 5 relabelled), half anywhere, with
scores drawn so that the ones near objects tend to be higher.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

# COCO's 80 category ids (1-90 with 10 unused).
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def coco_sized(seed: int = 0, *, images: int = 5000, categories: int = 80, per_image: int = 100) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A COCO annotation dict and a results list of the sizes in the module docstring."""
    rng = np.random.default_rng(seed)
    ids = COCO_IDS[:categories]
    data: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": c, "name": f"class{c}", "supercategory": f"group{k // 8}"} for k, c in enumerate(ids)]}
    results = []
    W, H = 640, 480
    for i in range(1, images + 1):
        data["images"].append({"id": i, "file_name": f"{i:012d}.jpg", "width": W, "height": H})
        n = int(rng.poisson(7.3))
        w, h = np.minimum(rng.lognormal(3.5, 0.9, (2, n)), [[W - 1], [H - 1]])
        x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
        label = rng.choice(ids, n)
        for j in range(n):
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": i, "category_id": int(label[j]),
                                        "bbox": [float(x[j]), float(y[j]), float(w[j]), float(h[j])], "area": float(w[j] * h[j]),
                                        "iscrowd": int(rng.random() < 0.01)})
        near = (rng.random(per_image) < 0.5) & (n > 0)
        src = rng.integers(0, max(n, 1), per_image)
        jitter = rng.normal(0, 0.15, (per_image, 4))
        for k in range(per_image):
            if near[k]:
                j = src[k]
                box = [x[j] + jitter[k, 0] * w[j], y[j] + jitter[k, 1] * h[j], w[j] * np.exp(jitter[k, 2]), h[j] * np.exp(jitter[k, 3])]
                cat, score = (int(label[j]) if rng.random() < 0.8 else int(rng.choice(ids))), rng.beta(4, 2)
            else:
                box = [rng.uniform(0, W - 20), rng.uniform(0, H - 20), rng.lognormal(3.5, 0.9), rng.lognormal(3.5, 0.9)]
                cat, score = int(rng.choice(ids)), rng.beta(1, 5)
            results.append({"image_id": i, "category_id": cat, "bbox": [round(float(v), 2) for v in box], "score": round(float(score), 5)})
    return data, results


def time_analysis(data: dict[str, Any], results: list[dict[str, Any]], *, with_tidecv: bool = True) -> dict[str, Any]:
    """Seconds of each stage of :func:`frcnn.evaluation.analysis.analyze`, of tidecv on the same input, and
    the largest dAP difference between them."""
    from frcnn.data.coco import CocoData, load_coco
    from frcnn.evaluation import analysis, matching, tide

    seconds = {}

    def timed(name: str, fn: Any) -> Any:
        start = time.perf_counter()
        out = fn()
        seconds[name] = time.perf_counter() - start
        return out

    coco = timed("index ground truth", lambda: load_coco(CocoData(data, "generated")))
    d = timed("flatten", lambda: matching.eval_data(coco, results))
    ious = timed("IoU per image", lambda: matching.per_image_iou(d))
    m = timed("match at 0.75, 0.5, 0.1", lambda: matching.match(d, (0.75, 0.5, 0.1), ious))
    t = timed("TIDE", lambda: tide.tide(d, m, ious))
    timed("analyze curves", lambda: analysis.analyze_curves(d, m, ious))
    timed("confusion matrix", lambda: analysis.confusion_matrix(d, m, ious, 0.5))
    start = time.perf_counter()
    analysis.analyze(coco, results)
    row: dict[str, Any] = {"stages": seconds, "analyze": time.perf_counter() - start, "detections": len(results),
                           "objects": len(data["annotations"]), "images": len(data["images"])}
    if with_tidecv:
        start = time.perf_counter()
        ap, dap, _ = tidecv_dap(data, results)
        row["tidecv"] = time.perf_counter() - start
        row["max_abs_dap_difference"] = max(abs(t.dap[n] - dap[n]) for n in dap)
        row["ap50_difference"] = abs(t.ap - ap)
    return row


def tidecv_dap(data: dict[str, Any], results: list[dict[str, Any]]) -> tuple[float, dict[str, float], dict[str, int]]:
    """The original tidecv's AP50, dAP and error counts of a COCO annotation dict and results list, keyed as frcnn
    names them (its main types, then ``FP`` / ``FN``). tidecv (a dev dependency) reads boxes; crowd boxes are its
    ignore regions."""
    from tidecv import TIDE, Data

    truth, found = Data("gt"), Data("dt")
    for im in data["images"]:
        truth.add_image(im["id"], im["file_name"])
    for c in data["categories"]:
        truth.add_class(c["id"], c["name"])
    for a in data["annotations"]:
        add = truth.add_ignore_region if a.get("iscrowd", 0) else truth.add_ground_truth
        add(a["image_id"], a["category_id"], a["bbox"], None)
    for r in results:
        found.add_detection(r["image_id"], r["category_id"], r["score"], r["bbox"], None)
    tide = TIDE()
    run = tide.evaluate(truth, found, mode=TIDE.BOX)
    errors = tide.get_all_errors()
    dap = dict(errors["main"]["dt"])
    dap["FP"], dap["FN"] = errors["special"]["dt"]["FalsePos"], errors["special"]["dt"]["FalseNeg"]
    return run.ap, dap, {kind.short_name: len(found) for kind, found in run.error_dict.items()}
