"""COCO mAP of a checkpoint on a COCO-format split, or of a results JSON: ``python scripts/evaluate.py ...``.

Writes into the output folder: ``detections.json`` (COCO results, checkpoint mode), ``metrics.json``
(the 12 stats and per-class AP), ``per_class_ap.md`` and ``pr_curves.png``.
"""

import json
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig

from frcnn.cli import hydra_app
from frcnn.config import amp_dtype, resolve_device, validate_evaluate_config
from frcnn.data.coco import CocoDetection, collate, load_coco
from frcnn.data.images import DEFAULT_MAX_PIXELS
from frcnn.errors import InputError, MissingFileError
from frcnn.evaluation.coco_eval import STAT_NAMES, evaluate_results, per_class_table, predict
from frcnn.evaluation.plots import plot_pr_curves
from frcnn.inference import load_model


def run(cfg: DictConfig) -> dict:
    validate_evaluate_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.predictions:
        if not Path(cfg.predictions).is_file():
            raise MissingFileError(f"predictions file {cfg.predictions} not found; pass predictions=/path/to/results.json")
        try:
            results = json.loads(Path(cfg.predictions).read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"predictions file {cfg.predictions} is not valid JSON ({err}); pass a COCO results list") from err
        gt = load_coco(cfg.annotations)  # ground truth only: no images are read
    else:
        device = resolve_device(cfg.device, "device")
        model, categories, train_cfg = load_model(cfg.checkpoint, device)
        images = cfg.images or train_cfg.data.val.images
        annotations = cfg.annotations or train_cfg.data.val.annotations
        dataset = CocoDetection(images, annotations, category_map=categories, max_pixels=cfg.get("max_pixels", DEFAULT_MAX_PIXELS))
        loader = torch.utils.data.DataLoader(dataset, batch_size=int(cfg.batch_size), num_workers=int(cfg.num_workers), collate_fn=collate)
        results = predict(model, loader, categories, device, amp_dtype=amp_dtype(cfg.amp, "amp"), progress=sys.stderr.isatty())
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


@hydra_app("evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
