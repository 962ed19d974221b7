"""Accuracy race: frcnn and torchvision's Faster R-CNN from scratch, same data, same loop, same wall-clock budget.

Both detectors come from one composed training config: frcnn is instantiated from it, and
torchvision's is :func:`frcnn.benchmarks.peers.torchvision_peer` of that model, so they share the trunk
and box head architecture, the initial weights, 9 anchors, the RPN and RoI sampling numbers, the
pooled size, the image size and normalization. They also share everything around the model: the same
training batches in the same order (same seed, same augmentation), the same optimizer and weight
decay, gradient clipping, and learning-rate schedule. The schedule is a function of time, not of
iterations: linear warm-up over ``schedule.warmup_iters`` steps, then cosine decay to zero at the end
of the budget, so each detector gets a complete schedule however many steps it manages. Training stops
at the first step boundary after the budget; evaluation (COCO AP on the validation split,
pycocotools) is not counted. Run it on an otherwise idle machine (``scripts/race.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from frcnn.benchmarks.peers import PeerAdapter, torchvision_peer
from frcnn.data.coco import CocoDetection
from frcnn.engine import builders
from frcnn.engine.distributed import DistInfo
from frcnn.engine.schedule import WarmupCosine
from frcnn.engine.trainer import TrainingError, seed_everything
from frcnn.evaluation.coco_eval import evaluate_results, predict

FRAMEWORKS = ("frcnn", "torchvision")


def race(cfg: DictConfig, *, order: Sequence[str] = FRAMEWORKS, budget: float) -> Iterator[dict[str, Any]]:
    """Train each detector of ``order`` for ``budget`` seconds on ``cfg``'s data, then score it.

    Generates the synthetic data set first if ``cfg`` asks for it. Yields each detector's row (see
    :func:`race_one`) as soon as it is scored: a race at the default budget takes minutes per detector.
    """
    seed_everything(int(cfg.seed))
    builders.ensure_synthetic(cfg, DistInfo())
    train_set = builders.build_dataset(cfg, "train", train=True)
    val_set = builders.build_dataset(cfg, "val", train=False, categories=train_set.categories)
    ours = builders.build_model(cfg, train_set.categories)  # checks data.num_classes, as training does
    peer = PeerAdapter(torchvision_peer(ours))  # a copy of the same initial weights
    if cfg.model.get("channels_last"):
        ours = ours.to(memory_format=torch.channels_last)
    models = {"frcnn": ours, "torchvision": peer}
    for name in order:
        yield race_one(name, models[name], cfg, train_set, val_set, budget)


def race_one(name: str, model: torch.nn.Module, cfg: DictConfig, train_set: CocoDetection, val_set: CocoDetection, budget: float) -> dict[str, Any]:
    """Train ``model`` for ``budget`` seconds with the config's optimizer and data, then evaluate it.

    Returns:
        ``{"framework", "steps", "train_s", "steps_per_s", "final_loss_avg50", "eval_s"}`` and the six
        AP stats (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``) on ``val_set``.

    Raises:
        TrainingError: the loss became non-finite.
    """
    torch.manual_seed(int(cfg.seed))
    single = DistInfo()
    loader = builders.train_loader(cfg, train_set, single, 0)
    optimizer = builders.build_optimizer(cfg, model)  # as the trainer builds it
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    clip = float(cfg.trainer.clip_grad_norm or 0)
    # Linear warm-up by step, then cosine to zero over the fraction of the time budget spent: the
    # trainer's schedule under trainer.max_time.
    schedule = WarmupCosine(max_iters=1, warmup_iters=int(cfg.schedule.warmup_iters),
                            warmup_factor=float(cfg.schedule.warmup_factor), final_factor=0.0)

    model.train()
    it, losses_log = 0, []
    data_iter = iter(loader)
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        factor = schedule.factor(it, min(elapsed / budget, 1.0))
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * factor
        images, targets = next(data_iter)
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        loss = sum(model(images, targets).losses.values())
        if not torch.isfinite(loss):
            raise TrainingError(f"{name}: non-finite loss at step {it}; lower optim.lr or set trainer.clip_grad_norm")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        it += 1
        losses_log.append(float(loss.detach()))
        if it % 50 == 0:
            print(f"  {name}: step {it}, {elapsed:.0f} s, loss {sum(losses_log[-50:]) / 50:.3f}", flush=True)
    train_s = time.perf_counter() - start

    t0 = time.perf_counter()
    results = predict(model, builders.eval_loader(cfg, val_set, single), train_set.categories, torch.device("cpu"))
    ev = evaluate_results(val_set.coco, results)
    return {
        "framework": name,
        "steps": it,
        "train_s": round(train_s, 1),
        "steps_per_s": round(it / train_s, 3),
        "final_loss_avg50": round(sum(losses_log[-50:]) / max(len(losses_log[-50:]), 1), 4),
        "eval_s": round(time.perf_counter() - t0, 1),
        **{k: round(v, 4) for k, v in ev["stats"].items() if k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
    }
