"""Assemble a training run from a task's builders and hand the parts to the :class:`~frcnn.engine.trainer.Trainer`.

A :class:`TrainingTask` says how one kind of model trains (its data, model, losses and evaluation);
:func:`run_training` does what every run does around it, in this order::

    resume checkpoint (checked)  →  run dir, seed  →  task.build_data  →  task.build_model (+ init_from)
      →  optimizer, schedule, AMP scaler  →  restore  →  DDP  →  loader at the resumed step  →  hooks  →  Trainer.loop

The detector's task is :data:`frcnn.tasks.train.DETECTOR`, the tracker's :data:`frcnn.tracking.training.TRACKER`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from frcnn.config import amp_dtype as amp_dtype_of
from frcnn.config import check_resume, parse_duration, resolve_device
from frcnn.data.coco import CategoryMap
from frcnn.engine import builders
from frcnn.engine.checkpoint import load_checkpoint, load_matching, set_rng_state
from frcnn.engine.distributed import DistInfo, cleanup, ddp_broadcasts_buffers, init_distributed
from frcnn.engine.hooks import Checkpointer, DataReport, EvaluateFn, Evaluator, MetricsLogger, OverflowMonitor, Preemption
from frcnn.engine.schedule import Budget
from frcnn.engine.trainer import Hook, InputBudget, LossesFn, Optimization, RunSettings, Trainer, seed_everything
from frcnn.errors import ConfigError


@dataclass(frozen=True)
class TrainingData:
    """What a task's data builder returns: the training set and how to batch it, the unreadable-input budget,
    and optionally a validation split and the class names (the detector's)."""

    train_set: Dataset
    collate: Callable[[list[Any]], Any]
    inputs: InputBudget
    summary: str  # a line per split for the log and data_report.txt
    val_set: Dataset | None = None
    categories: CategoryMap | None = None


@dataclass(frozen=True)
class TrainingTask:
    """How one kind of model trains. ``kind`` is written into its checkpoints (a resume or ``train.init_from``
    of another kind is refused); ``sync_batchnorm``: trainable BatchNorm becomes SyncBatchNorm on several GPUs;
    ``build_evaluate`` (optional): the periodic evaluation, given the config, data, device and process group."""

    kind: str
    build_data: Callable[[DictConfig, DistInfo], TrainingData]
    build_model: Callable[[DictConfig, TrainingData], torch.nn.Module]
    losses: LossesFn
    build_evaluate: Callable[[DictConfig, TrainingData, torch.device, DistInfo], EvaluateFn | None] | None = None
    sync_batchnorm: bool = True


def load_resume(cfg: DictConfig, kind: str) -> dict[str, Any] | None:
    """The checkpoint ``train.resume`` names, checked against ``kind`` (None without one)."""
    resume = (cfg.get("train") or {}).get("resume")
    if not resume:
        return None
    check_resume(resume)  # before reading it: a mistyped path names train.resume
    ckpt = load_checkpoint(resume, map_location="cpu")
    theirs = ckpt.get("kind", "faster_rcnn")  # checkpoints from before kinds were recorded are detectors'
    if theirs != kind:
        raise ConfigError(f"train.resume={resume} is a {theirs} checkpoint, but this run trains {kind}; resume from one of its own runs")
    if ckpt.get("upgraded_from_layout"):
        raise ConfigError(
            f"train.resume={resume} was written by an earlier frcnn (backbone-owned box head), whose optimizer state "
            "does not map onto this version's parameters; evaluate or infer with it, or start a new run"
        )
    return ckpt


def run_training(cfg: DictConfig, task: TrainingTask, resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set up the device and the process group (torchrun's environment, or a world of one), build the trainer
    from ``task`` and ``cfg`` (``resume``: the checkpoint of :func:`load_resume`) and run it; the process group is
    torn down whatever happens. Returns what :meth:`Trainer.loop` returns."""
    device = resolve_device(cfg.trainer.device, "trainer.device")
    dist = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    try:
        return build_trainer(cfg, task, device, dist, resume).loop()
    finally:
        cleanup()


def build_trainer(cfg: DictConfig, task: TrainingTask, device: torch.device, dist: DistInfo,
                  resume: dict[str, Any] | None = None) -> Trainer:
    """Every part of the run, built in the order of the module's diagram, handed to a :class:`Trainer`."""
    run_dir = start_run(cfg, dist)
    data = task.build_data(cfg, dist)
    if dist.is_main:
        print(data.summary, flush=True)
        (run_dir / "data_report.txt").write_text(data.summary + "\n")
    model = prepare_model(task.build_model(cfg, data), device, dist, channels_last=bool(cfg.model.get("channels_last")),
                          sync_batchnorm=task.sync_batchnorm)
    init_from = (cfg.get("train") or {}).get("init_from")
    if init_from and resume is None:  # a resume restores every weight itself
        init_weights(model, str(init_from), task.kind, dist)
    amp = amp_dtype_of(cfg.trainer.amp, "trainer.amp")
    optimization = build_optimization(cfg, model, dist.world_size, device, amp,
                                      spent=float(resume.get("elapsed_s", 0.0)) if resume else 0.0)
    start_iter, best_ap = restore(resume, model, optimization, dist) if resume else (0, -1.0)
    if resume is not None:
        resume.clear()  # restored: the caller's dict must not hold a second copy of the state for the whole run
        if dist.is_main:
            print(f"resumed from {cfg.train.resume} at iteration {start_iter} "
                  f"({optimization.budget.elapsed():.0f} s of training so far)", flush=True)
    step_model = model
    if dist.world_size > 1:
        step_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                             broadcast_buffers=ddp_broadcasts_buffers(model))
    loader = builders.train_loader(cfg, data.train_set, dist, start_iter, collate_fn=data.collate)
    evaluate = task.build_evaluate(cfg, data, device, dist) if task.build_evaluate else None
    extras = {"kind": task.kind, "categories": data.categories.to_dict() if data.categories is not None else None,
              "config": OmegaConf.to_container(cfg, resolve=True)}
    settings = RunSettings(run_dir, int(cfg.trainer.max_iters), amp, cfg.trainer.get("clip_grad_norm"),
                           cfg.trainer.get("max_time"), extras)
    return Trainer(model, loader, optimization, build_hooks(cfg.trainer, run_dir, evaluate), losses_fn=task.losses,
                   inputs=data.inputs, settings=settings, device=device, dist=dist, step_model=step_model,
                   start_iter=start_iter, best_ap=best_ap, resumed=resume is not None)


def start_run(cfg: DictConfig, dist: DistInfo) -> Path:
    """``cfg.run_dir`` with the run's ``config.yaml`` (rank 0), the seeds (``seed`` + rank) and thread count set."""
    run_dir = Path(cfg.run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(int(cfg.seed) + dist.rank)
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))
    return run_dir


def prepare_model(model: torch.nn.Module, device: torch.device, dist: DistInfo, *, channels_last: bool,
                  sync_batchnorm: bool) -> torch.nn.Module:
    """``model`` on ``device`` (channels-last if asked); on several GPUs trainable BatchNorm becomes SyncBatchNorm
    (2-8 images per GPU are too few for its statistics; SyncBatchNorm is CUDA-only: on CPU, DDP broadcasts
    rank 0's BN buffers at every forward instead)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    if sync_batchnorm and dist.world_size > 1 and device.type == "cuda" and has_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def init_weights(model: torch.nn.Module, path: str, kind: str, dist: DistInfo) -> None:
    """Start from the weights of checkpoint ``path`` that fit ``model`` (``train.init_from``), and say in one
    line which did not: e.g. the classifier and box deltas when ``data.num_classes`` differs."""
    ckpt = load_checkpoint(path, map_location="cpu")
    theirs = ckpt.get("kind", "faster_rcnn")
    if theirs != kind or not isinstance(ckpt.get("model"), dict):
        raise ConfigError(f"train.init_from={path} is a {theirs} checkpoint without detector weights; this run trains {kind}")
    loaded, skipped = load_matching(model, ckpt["model"])
    total = loaded + len(skipped)
    if loaded < total / 2:  # not a fine-tuning start: another architecture
        backbone = ckpt.get("config", {}).get("model", {}).get("backbone", {}).get("_target_", "another model")
        raise ConfigError(
            f"train.init_from={path} fits only {loaded} of this model's {total} tensors (first not: {skipped[0]}): it "
            f"holds a {backbone.rsplit('.', 1)[-1]} model; compose the same model (the experiment or model/backbone it "
            "was trained or imported with, e.g. experiment=torchvision/fasterrcnn_resnet50_fpn)"
        )
    if dist.is_main:
        print(f"initialized from {path}: {loaded} of {total} tensors loaded"
              + (f"; starting fresh: {', '.join(skipped)}" if skipped else ""), flush=True)


def build_optimization(cfg: DictConfig, model: torch.nn.Module, world_size: int, device: torch.device,
                       amp: torch.dtype | None, spent: float = 0.0) -> Optimization:
    """Optimizer, lr schedule and AMP scaler; ``spent``: seconds of training before a resume.

    The learning rate follows the fraction of the budget spent (iterations, or wall clock with
    ``trainer.max_time``; time spent before a resume counts); warm-up is counted in steps."""
    optimizer = builders.build_optimizer(cfg, model, world_size)  # lr scaled to the total batch
    schedule = instantiate(cfg.schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    budget = Budget(int(cfg.trainer.max_iters), parse_duration(cfg.trainer.get("max_time")), spent)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step, budget.progress(step)))
    return Optimization(optimizer, scheduler, scaler, budget)


def restore(ckpt: dict[str, Any], model: torch.nn.Module, optimization: Optimization, dist: DistInfo) -> tuple[int, float]:
    """Continue from ``ckpt``: after the scheduler is built, since building it rewrites the optimizer's lr.
    Returns ``(iteration, best_ap)``."""
    model.load_state_dict(ckpt["model"])
    optimization.optimizer.load_state_dict(ckpt["optimizer"])
    optimization.scheduler.load_state_dict(ckpt["scheduler"])
    optimization.scaler.load_state_dict(ckpt["scaler"])
    rngs = ckpt["rng"]
    set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    return int(ckpt["iteration"]), float(ckpt.get("best_ap", -1.0))


def build_hooks(settings: DictConfig, run_dir: Path, evaluate: EvaluateFn | None = None) -> list[Hook]:
    """The hooks of ``trainer.*`` settings, in the order they must run (``frcnn/engine/hooks.py``)."""
    overflows = OverflowMonitor(int(settings.max_overflow_streak))
    log = MetricsLogger(run_dir, period=int(settings.log_period), tensorboard=bool(settings.tensorboard),
                        progress=bool(settings.progress), overflows=overflows)
    checkpointer = Checkpointer(period=int(settings.checkpoint_period), log=log)
    hooks: list[Hook] = [Preemption(), overflows, checkpointer, log, DataReport()]
    if evaluate is not None and int(settings.eval_period) > 0:
        hooks.append(Evaluator(evaluate, period=int(settings.eval_period), checkpointer=checkpointer, log=log))
    return hooks
