"""Benchmark the explanation methods on a trained detector: faithfulness, localization, sanity, speed.

For the first ``num_images`` validation images of a COCO-format split and each image's top detections,
every method's map is scored by

* deletion / insertion AUC on each substrate (black, grey, blur, noise; grey is ``mean``, the training
  data's mean colour), and how the substrate reorders the methods (ranks by ``insertion − deletion``);
* the pointing game against the detection's matched ground-truth box (same class, IoU ≥ 0.5): Zhang et
  al.'s, a hit within 15 px of the box (``pointing``), and the strict one, inside it (``pointing_0px``);
* the sanity check: Spearman ρ between the trained model's map and the fully randomized model's
  (cascade, every stage), for the first ``sanity_detections`` detections;
* seconds per detection (the method's own call, detections of an image explained together);
* with ``max_rois`` set, whether following a detection through only its nearest proposals changes the
  map: Spearman ρ between the map with ``max_rois`` and with every proposal, on the first image
  (``agreement`` methods, each at the options given there).

``scripts/explain_benchmark.py`` is the command; docs/explanations.md holds the recorded table.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from frcnn.data.images import read_rgb
from frcnn.explain.api import as_image_tensor, explain
from frcnn.explain.faithfulness import POINTING_TOLERANCE, deletion_insertion, pointing_game, randomized_cascade, spearman
from frcnn.explain.target import DetectionScore, find_detections

SUBSTRATES = ("black", "grey", "blur", "noise")


def _ground_truth(annotation_file: Path, images_dir: Path, num_images: int) -> list[tuple[Path, torch.Tensor, torch.Tensor, dict]]:
    data = json.loads(annotation_file.read_text())
    out = []
    for info in data["images"][:num_images]:
        anns = [a for a in data["annotations"] if a["image_id"] == info["id"] and not a.get("iscrowd", 0)]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32).reshape(-1, 4)
        cats = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
        out.append((images_dir / info["file_name"], boxes, cats, info))
    return out


def pointing_hits(saliency: torch.Tensor, box: torch.Tensor) -> dict[str, float]:
    """The pointing game both ways: ``pointing`` (Zhang et al.'s 15 px tolerance) and ``pointing_0px`` (strict)."""
    return {"pointing": float(pointing_game(saliency, box, tolerance=POINTING_TOLERANCE)),
            "pointing_0px": float(pointing_game(saliency, box, tolerance=0.0))}


def benchmark(
    model: torch.nn.Module,
    categories: Any,
    annotation_file: Path,
    images_dir: Path,
    *,
    methods: dict[str, dict[str, Any]],
    num_images: int = 4,
    top: int = 3,
    score_thresh: float = 0.5,
    steps: int = 16,
    sanity_detections: int = 2,
    sanity_options: dict[str, dict[str, Any]] | None = None,
    max_rois: int | None = None,
    agreement: dict[str, dict[str, Any]] | None = None,
    mean: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns per-method means and the per-substrate method ranks (JSON-ready).

    ``mean``: ``[3]`` the grey substrate's colour (:func:`frcnn.explain.substrates.training_mean`); None:
    ImageNet's mean.
    """
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    sanity_done = 0
    agreement_rows: dict[str, list[float]] = defaultdict(list)
    for path, gt_boxes, gt_cats, _ in _ground_truth(annotation_file, images_dir, num_images):
        image = as_image_tensor(read_rgb(path))
        detections = find_detections(model, image, top=top, score_thresh=score_thresh)
        if not detections:
            continue
        score = DetectionScore(model, detections, max_rois=max_rois)
        gt_labels = torch.tensor([categories.label(int(c)) for c in gt_cats], dtype=torch.long)
        for name, options in methods.items():
            start = time.perf_counter()
            explanations = explain(model, image, detections, method=name, max_rois=max_rois, **options)
            rows[name]["seconds"].append((time.perf_counter() - start) / len(detections))
            for m, (det, e) in enumerate(zip(detections, explanations)):
                _score_one(rows[name], lambda x, m=m: score(x)[:, m], image, det, e, gt_boxes, gt_labels, steps, mean)
        for det in detections[: max(0, sanity_detections - sanity_done)]:
            for name, options in methods.items():
                opts = (sanity_options or {}).get(name, options)
                reference = explain(model, image, det, method=name, max_rois=max_rois, **opts).saliency.abs()
                *_, (_, randomized) = list(randomized_cascade(model))
                current = explain(randomized, image, det, method=name, max_rois=max_rois, **opts).saliency.abs()
                rows[name]["sanity_spearman"].append(spearman(reference, current))
            sanity_done += 1
        if not agreement_rows and max_rois is not None:  # the first image with detections
            for name, options in (agreement or {}).items():
                near = explain(model, image, detections, method=name, max_rois=max_rois, **options)
                every = explain(model, image, detections, method=name, **options)
                agreement_rows[name] += [spearman(a.saliency, b.saliency) for a, b in zip(near, every)]
    return _summarize(rows, agreement_rows, max_rois)


def _score_one(row: dict[str, list[float]], score: Any, image: torch.Tensor, det: Any, e: Any, gt_boxes: torch.Tensor,
               gt_labels: torch.Tensor, steps: int, mean: torch.Tensor | None) -> None:
    """Append one explanation's deletion / insertion AUCs on every substrate, its pointing-game hits (when a
    same-class ground-truth box overlaps the detection at IoU ≥ 0.5) and IG's completeness to ``row``."""
    for substrate in SUBSTRATES:
        curves = deletion_insertion(score, image, e.saliency, substrate=substrate, steps=steps, mean=mean)
        row[f"deletion_{substrate}"].append(curves.deletion_auc)
        row[f"insertion_{substrate}"].append(curves.insertion_auc)
    same = gt_labels == det.label
    if same.any():
        iou = box_iou(det.box[None], gt_boxes[same])[0]
        if iou.max() >= 0.5:
            for key, value in pointing_hits(e.saliency, gt_boxes[same][iou.argmax()]).items():
                row[key].append(value)
    if "completeness_relative" in e.info:
        row["ig_completeness_relative"].append(e.info["completeness_relative"])


def _summarize(rows: dict[str, dict[str, list[float]]], agreement_rows: dict[str, list[float]],
               max_rois: int | None) -> dict[str, Any]:
    """Per-method means, the methods ranked by insertion − deletion on each substrate, and the max_rois agreement."""
    summary = {name: {key: float(np.nanmean(values)) for key, values in columns.items()} | {"n_detections": len(columns["deletion_black"])}
               for name, columns in rows.items()}
    ranks = {}
    for substrate in SUBSTRATES:
        gap = {name: s[f"insertion_{substrate}"] - s[f"deletion_{substrate}"] for name, s in summary.items()}
        ranks[substrate] = sorted(gap, key=gap.get, reverse=True)
    agreement_summary = {name: {"spearman_min": float(np.nanmin(v)), "spearman_mean": float(np.nanmean(v)), "n_detections": len(v)}
                         for name, v in agreement_rows.items()}
    return {"methods": summary, "rank_by_substrate": ranks, "max_rois": max_rois, "max_rois_agreement": agreement_summary}


def markdown_table(result: dict[str, Any]) -> str:
    """The docs table: one row per method."""
    header = ("| method | deletion AUC (blur) ↓ | insertion AUC (blur) ↑ | deletion black / grey / noise | "
              "insertion black / grey / noise | pointing game (15 px / 0 px) | sanity ρ (randomized) | s per detection |")
    lines = [header, "|" + "---|" * 8]
    for name, s in result["methods"].items():
        lines.append(
            f"| {name} | {s['deletion_blur']:.3f} | {s['insertion_blur']:.3f} | "
            f"{s['deletion_black']:.3f} / {s['deletion_grey']:.3f} / {s['deletion_noise']:.3f} | "
            f"{s['insertion_black']:.3f} / {s['insertion_grey']:.3f} / {s['insertion_noise']:.3f} | "
            f"{s.get('pointing', float('nan')):.2f} / {s.get('pointing_0px', float('nan')):.2f} | "
            f"{s.get('sanity_spearman', float('nan')):.2f} | {s['seconds']:.2f} |"
        )
    lines.append("")
    lines.append("Rank by insertion − deletion AUC, per substrate:")
    for substrate, order in result["rank_by_substrate"].items():
        lines.append(f"- {substrate}: {' > '.join(order)}")
    if result.get("max_rois_agreement"):
        lines.append("")
        lines.append(f"Maps with the {result['max_rois']} nearest proposals vs every proposal (Spearman ρ, first image):")
        for name, a in result["max_rois_agreement"].items():
            lines.append(f"- {name}: mean {a['spearman_mean']:.3f}, min {a['spearman_min']:.3f} over {a['n_detections']} detections")
    return "\n".join(lines)
