"""COCO mAP of a checkpoint on a COCO-format split, or of a results JSON: ``python scripts/evaluate.py ...``.

Writes into the output folder: ``detections.json`` (COCO results, checkpoint mode), ``metrics.json``
(the 12 stats and per-class AP), ``per_class_ap.md`` and ``pr_curves.png``.
"""

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from frcnn.cli import friendly_errors
from frcnn.data.coco import CocoDetection, collate, load_coco
from frcnn.engine.trainer import _AMP, resolve_device
from frcnn.evaluation.coco_eval import STAT_NAMES, evaluate_results, per_class_table, predict
from frcnn.evaluation.plots import plot_pr_curves
from frcnn.inference import load_model


def run(cfg: DictConfig) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.predictions:
        if not cfg.annotations:
            raise ValueError("predictions=... needs annotations=/path/to/ground_truth.json")
        with open(cfg.predictions) as f:
            results = json.load(f)
        gt = load_coco(cfg.annotations)  # ground truth only: no images are read
    else:
        if not cfg.checkpoint:
            raise ValueError("give checkpoint=/path/to/best.pt, or predictions=results.json annotations=gt.json")
        device = resolve_device(cfg.device)
        model, categories, train_cfg = load_model(cfg.checkpoint, device)
        images = cfg.images or train_cfg.data.val.images
        annotations = cfg.annotations or train_cfg.data.val.annotations
        dataset = CocoDetection(images, annotations, category_map=categories)
        loader = torch.utils.data.DataLoader(dataset, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), collate_fn=collate)
        results = predict(model, loader, categories, device, amp_dtype=_AMP[str(cfg.amp)], progress=True)
        (out / "detections.json").write_text(json.dumps(results))
        gt = dataset.coco
    ev = evaluate_results(gt, results)
    metrics = {"stats": ev["stats"], "per_class_ap": ev["per_class_ap"], "num_detections": len(results)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    table = per_class_table(ev["per_class_ap"])
    (out / "per_class_ap.md").write_text(table + "\n")
    if ev["precision"] is not None:
        plot_pr_curves(ev["precision"], list(ev["per_class_ap"]), out / "pr_curves.png")
    print(" ".join(f"{n}={ev['stats'][n]:.4f}" for n in STAT_NAMES))
    print(table)
    print(f"COCO AP@[.5:.95] = {ev['stats']['AP']:.4f}; results in {out}")
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
