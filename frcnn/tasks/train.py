"""Train a detector: ``train(cfg)`` is what ``scripts/train.py``, the recipes and the tests call (``conf/train.yaml``).

The detector's :class:`~frcnn.engine.launch.TrainingTask` builds the COCO-format (or converted) training and
validation splits, the model ``cfg.model`` describes, its losses on an ``(images, targets)`` batch, and the
periodic COCO evaluation; :func:`frcnn.engine.launch.run_training` does the rest.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from frcnn.config import amp_dtype, validate_train_config
from frcnn.data.coco import CocoDetection, collate
from frcnn.data.derive import resolve_auto
from frcnn.engine import builders
from frcnn.engine.distributed import DistInfo, gather_objects
from frcnn.engine.hooks import EvaluateFn
from frcnn.engine.launch import TrainingData, TrainingTask, load_resume, run_training
from frcnn.engine.trainer import InputBudget
from frcnn.evaluation.coco_eval import evaluate_results, predict

KIND = "faster_rcnn"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a detector as ``cfg`` says, writing into ``cfg.run_dir``; return the final metrics: ``iteration``,
    ``best_ap``, ``stopped_by_signal`` (the signal number, or None) and the last evaluation's ``val/*``."""
    resume = load_resume(cfg, KIND)  # before the data are generated or read: a bad resume fails fast
    # data.<key>: auto (anchor sizes, schedule, ...) from the training annotations, or the resumed run's values
    resolve_auto(cfg, None if resume is None else resume.get("config", {}))
    validate_train_config(cfg)
    return run_training(cfg, DETECTOR, resume)


def detector_data(cfg: DictConfig, dist: DistInfo) -> TrainingData:
    """The training split (augmented; unreadable images replaced and counted) and the validation split, with
    every image header checked against its annotations before any step."""
    builders.ensure_synthetic(cfg, dist)
    train_set = builders.build_dataset(cfg, "train", train=True)
    val_set = None
    if cfg.data.get("val"):
        val_set = builders.build_dataset(cfg, "val", train=False, categories=train_set.categories)
    for split in (train_set, val_set):
        if split is not None:
            split.check_sizes()
    inputs = InputBudget(len(train_set), float(cfg.data.get("max_bad_image_fraction", 0.01)))
    summary = f"train: {train_set.load_summary()}" + (f"\nval: {val_set.load_summary()}" if val_set is not None else "")
    return TrainingData(train_set, collate, inputs, summary, val_set=val_set, categories=train_set.categories)


def detector_losses(model: torch.nn.Module, batch: tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]],
                    device: torch.device, skipped: set[int]) -> dict[str, torch.Tensor]:
    """The model's losses on a collated ``(images, targets)`` batch moved to ``device``; the ids of the unreadable
    images the data set replaced in it go into ``skipped`` first."""
    images, targets = batch
    for target in targets:
        skipped.update(target.pop("skipped").tolist())
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()} for target in targets]
    return model(images, targets).losses


def coco_evaluator(cfg: DictConfig, data: TrainingData, device: torch.device, dist: DistInfo) -> EvaluateFn | None:
    """COCO stats (``val/AP``, ``val/AP50``, ...) on the validation split, on every rank; each rank predicts its
    shard. Unreadable images are left out and counted (``val/unreadable_images``). None without a split."""
    val_set: CocoDetection | None = data.val_set
    if val_set is None:
        return None
    amp = amp_dtype(cfg.trainer.amp, "trainer.amp")

    def evaluate(model: torch.nn.Module, it: int) -> dict[str, Any]:
        loader = builders.eval_loader(cfg, val_set, dist)
        unreadable: list[int] = []
        results = predict(model, loader, data.categories, device, amp_dtype=amp, progress=dist.is_main, unreadable=unreadable)
        all_results = [r for part in gather_objects(results) for r in part]
        all_unreadable = sorted(i for part in gather_objects(unreadable) for i in part)
        out: dict[str, Any] = {}
        if dist.is_main:
            read_ids = sorted(set(val_set.coco.getImgIds()) - set(all_unreadable))
            stats = evaluate_results(val_set.coco, all_results, image_ids=read_ids if all_unreadable else None)["stats"]
            out = {"iteration": it, **{f"val/{k}": v for k, v in stats.items()}, "val/unreadable_images": len(all_unreadable)}
            note = f" ({len(all_unreadable)} unreadable images left out: {all_unreadable[:10]})" if all_unreadable else ""
            print(f"[iter {it}] val AP {stats['AP']:.4f}  AP50 {stats['AP50']:.4f}{note}", flush=True)
        return gather_objects(out)[0]

    return evaluate


DETECTOR = TrainingTask(
    kind=KIND,
    build_data=detector_data,
    build_model=lambda cfg, data: builders.build_model(cfg, data.categories),
    losses=detector_losses,
    build_evaluate=coco_evaluator,
)
