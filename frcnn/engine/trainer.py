"""The training loop: a small :class:`Trainer` (the step and the loop) with the hooks of ``hooks.py`` around it.

Everything here is driven by a composed config (``conf/train.yaml``); ``train(cfg)`` is what
``scripts/train.py`` and the tests call.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from frcnn.config import amp_dtype as amp_dtype_of
from frcnn.config import parse_duration, resolve_device, validate_train_config
from frcnn.data.coco import collate
from frcnn.data.derive import resolve_auto
from frcnn.engine import builders
from frcnn.engine.builders import build_model
from frcnn.engine.checkpoint import load_checkpoint, load_matching, rng_state, set_rng_state
from frcnn.engine.distributed import (
    DistInfo, agree_across_ranks, cleanup, ddp_broadcasts_buffers, gather_objects, init_distributed,
)
from frcnn.engine.hooks import Checkpointer, Evaluator, Hook, MetricsLogger, OverflowMonitor, Preemption, TrainingError
from frcnn.engine.schedule import Budget
from frcnn.errors import ConfigError

# Re-exported: scripts, notebooks and tests import these from here.
__all__ = [
    "Budget",
    "StepOutput",
    "Trainer",
    "TrainingError",
    "OverflowMonitor",
    "build_model",
    "ddp_broadcasts_buffers",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "train",
]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a detector as ``cfg`` says, writing into ``cfg.run_dir``; return the final metrics: ``iteration``,
    ``best_ap``, ``stopped_by_signal`` (the signal number, or None) and the last evaluation's ``val/*``."""
    resolve_auto(cfg)  # data.<key>: auto (anchor sizes, schedule, ...) from the training annotations
    validate_train_config(cfg)
    return Trainer.run(cfg)


def cpu_pace_message(seconds_per_step: float, steps_left: int, max_time: float | None) -> str | None:
    """One line when a CPU run is sized for a GPU: the schedule left would take over an hour and no
    ``trainer.max_time`` bounds it; None otherwise. Example: 30 s per step, 89 990 steps left → "... about
    750 hours ...".
    """
    if max_time is not None or seconds_per_step * steps_left <= 3600:
        return None
    hours = seconds_per_step * steps_left / 3600
    return (
        f"on the CPU a step takes about {seconds_per_step:.1f} s: the {steps_left} steps left would take about "
        f"{hours:.0f} hours. This configuration is sized for a GPU; on a CPU start from experiment=demo_fpn "
        "(10 minutes, AP ~0.7 on the built-in data), or bound the run with trainer.max_time=HH:MM:SS"
    )


class StepOutput(NamedTuple):
    """What one step hands the hooks. The flags and the count are agreed across ranks (equal on every rank)."""

    losses: dict[str, torch.Tensor]  # this rank's losses, scalar tensors
    loss: torch.Tensor  # their sum
    keep_going: bool  # False: some rank got SIGTERM/SIGINT; save at this step boundary and stop
    time_left: bool  # trainer.max_time not reached
    bad_images: int  # unreadable training images met so far, all ranks
    overflowed: bool | None  # fp16: the GradScaler skipped this update; None without a scaler


class Trainer:
    """One training run as ``cfg`` says, in ``cfg.run_dir``: built by the constructor (data, model,
    optimizer, schedule, AMP scaler, the resumed state), then :meth:`loop` runs :meth:`step` until the
    budget is spent, with :attr:`hooks` around each step."""

    collate_fn = staticmethod(collate)  # how the data loader batches items (a subclass's data set may need another)
    checkpoint_kind = "faster_rcnn"  # written into checkpoints; a resume from another kind of model is refused
    sync_batchnorm = True  # multi-GPU: trainable BatchNorm becomes SyncBatchNorm (see _build_model)
    bad_input_name = "image"  # what data.max_bad_image_fraction counts, in the too-many-unreadable error
    bad_input_hint = "data.preflight=true lists them all before training"

    def __init__(self, cfg: DictConfig, device: torch.device, dist_info: DistInfo) -> None:
        self.cfg, self.device, self.dist = cfg, device, dist_info
        self.world, self.is_main = dist_info.world_size, dist_info.is_main
        self.run_dir = Path(cfg.run_dir)
        self.max_iters = int(cfg.trainer.max_iters)
        self.amp_dtype = amp_dtype_of(cfg.trainer.amp, "trainer.amp")
        self.start_iter = self.it = 0  # completed steps, at the start and now
        self.best_ap = -1.0
        self.last_step = False  # set by the step: the budget is spent
        self.updating = False  # True while the optimizer changes the weights (they are neither step's)
        self.stop_signal: int | None = None  # set by the Preemption hook
        self.val_metrics: dict[str, Any] = {}  # the last evaluation's (set by the Evaluator)
        self.skipped_images: set[int] = set()  # unreadable training images this rank met (each replaced, never grey-filled)

        self._start_run()
        ckpt = self._load_resume()  # before the data are generated or read: a bad resume fails fast
        self.resumed = ckpt is not None
        self._build_data()
        self._build_model()
        self._build_optimization(float(ckpt.get("elapsed_s", 0.0)) if ckpt else 0.0)
        if ckpt is not None:
            self._restore(ckpt)
        self.step_model: torch.nn.Module = self.model
        if self.world > 1:
            self.step_model = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=ddp_broadcasts_buffers(self.model),
            )
        self.loader = builders.train_loader(cfg, self.train_set, dist_info, self.start_iter, collate_fn=self.collate_fn)
        self.hooks = self._build_hooks()

    @classmethod
    def run(cls, cfg: DictConfig) -> dict[str, Any]:
        """Set up the device and the process group (torchrun's environment, or a world of one), build this
        trainer and :meth:`loop`; the process group is torn down whatever happens."""
        device = resolve_device(cfg.trainer.device, "trainer.device")
        dist_info = init_distributed(device.type)
        if device.type == "cuda":
            device = torch.device("cuda", dist_info.local_rank)
        try:
            return cls(cfg, device, dist_info).loop()
        finally:
            cleanup()

    def _start_run(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        seed_everything(int(self.cfg.seed) + self.dist.rank)
        if self.cfg.trainer.get("num_threads"):
            torch.set_num_threads(int(self.cfg.trainer.num_threads))

    def _load_resume(self) -> dict[str, Any] | None:
        """The checkpoint ``train.resume`` names, checked (None without one)."""
        resume = self.cfg.train.get("resume")
        if not resume:
            return None
        ckpt = load_checkpoint(resume, map_location="cpu")
        kind = ckpt.get("kind", "faster_rcnn")  # checkpoints from before kinds were recorded are detectors'
        if kind != self.checkpoint_kind:
            raise ConfigError(f"train.resume={resume} is a {kind} checkpoint, but this run trains {self.checkpoint_kind}; resume from one of its own runs")
        if ckpt.get("upgraded_from_layout"):
            raise ConfigError(
                f"train.resume={resume} was written by an earlier frcnn (backbone-owned box head), whose optimizer state "
                "does not map onto this version's parameters; evaluate or infer with it, or start a new run"
            )
        return ckpt

    def _build_data(self) -> None:
        cfg = self.cfg
        builders.ensure_synthetic(cfg, self.dist)
        self.train_set = builders.build_dataset(cfg, "train", train=True)
        self.categories = self.train_set.categories
        self.val_set = None
        if cfg.data.get("val"):
            self.val_set = builders.build_dataset(cfg, "val", train=False, categories=self.categories)
        for split in (self.train_set, self.val_set):  # image headers against the annotations, before any step
            if split is not None:
                split.check_sizes()
        self.num_inputs = len(self.train_set)  # what the skipped ids count: one per image
        self.max_bad_images = float(cfg.data.get("max_bad_image_fraction", 0.01)) * self.num_inputs
        if self.is_main:
            summary = f"train: {len(self.train_set)} images; {self.train_set.report.summary()}"
            print(summary, flush=True)
            (self.run_dir / "data_report.txt").write_text(summary + "\n")

    def new_model(self) -> torch.nn.Module:
        """The untrained model ``cfg.model`` describes (a trainer for another model overrides this)."""
        return build_model(self.cfg, self.categories)

    def _build_model(self) -> None:
        model = self.new_model().to(self.device)
        if self.cfg.model.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
        # Trainable BN sees 2-8 images per GPU: synchronize its statistics across GPUs. (SyncBatchNorm is
        # CUDA-only; on CPU, DDP broadcasts rank 0's BN buffers at every forward instead.)
        has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        if self.sync_batchnorm and self.world > 1 and self.device.type == "cuda" and has_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        if (self.cfg.get("train") or {}).get("init_from") and not self.resumed:  # a resume restores every weight itself
            self._init_from(str(self.cfg.train.init_from))

    def _init_from(self, path: str) -> None:
        """Start from the weights of checkpoint ``path`` that fit this model (``train.init_from``), and say
        in one line which did not: e.g. the classifier and box deltas when ``data.num_classes`` differs."""
        ckpt = load_checkpoint(path, map_location="cpu")
        kind = ckpt.get("kind", "faster_rcnn")
        if kind != self.checkpoint_kind or not isinstance(ckpt.get("model"), dict):
            raise ConfigError(f"train.init_from={path} is a {kind} checkpoint without detector weights; this run trains {self.checkpoint_kind}")
        loaded, skipped = load_matching(self.model, ckpt["model"])
        total = loaded + len(skipped)
        if loaded < total / 2:  # not a fine-tuning start: another architecture
            theirs = ckpt.get("config", {}).get("model", {}).get("backbone", {}).get("_target_", "another model")
            raise ConfigError(
                f"train.init_from={path} fits only {loaded} of this model's {total} tensors (first not: {skipped[0]}): it "
                f"holds a {theirs.rsplit('.', 1)[-1]} model; compose the same model (the experiment or model/backbone it "
                "was trained or imported with, e.g. experiment=torchvision/fasterrcnn_resnet50_fpn)"
            )
        self._say(f"initialized from {path}: {loaded} of {total} tensors loaded"
                  + (f"; starting fresh: {', '.join(skipped)}" if skipped else ""))

    def _build_optimization(self, spent: float) -> None:
        """Optimizer, lr schedule and AMP scaler; ``spent``: seconds of training before a resume."""
        self.optimizer = builders.build_optimizer(self.cfg, self.model, self.world)  # lr scaled to the total batch
        schedule = instantiate(self.cfg.schedule)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        # The learning rate follows the fraction of the budget spent (iterations, or wall clock with
        # trainer.max_time; time spent before a resume counts); warm-up is counted in steps.
        self.budget = Budget(self.max_iters, parse_duration(self.cfg.trainer.get("max_time")), spent)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: schedule.factor(step, self.budget.progress(step))
        )

    def _restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from ``ckpt``; after the scheduler is built, since building it rewrites the optimizer's lr."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_iter = self.it = int(ckpt["iteration"])
        self.best_ap = float(ckpt.get("best_ap", -1.0))
        rank = self.dist.rank
        set_rng_state(ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0])
        self._say(f"resumed from {self.cfg.train.resume} at iteration {self.it} "
                  f"({self.budget.elapsed():.0f} s of training so far)")

    def _build_hooks(self) -> list[Hook]:
        settings = self.cfg.trainer
        overflows = OverflowMonitor(int(settings.max_overflow_streak))
        log = MetricsLogger(self.run_dir, period=int(settings.log_period), tensorboard=bool(settings.tensorboard),
                            progress=bool(settings.progress), overflows=overflows)
        checkpointer = Checkpointer(period=int(settings.checkpoint_period), log=log)
        hooks = [Preemption(), overflows, checkpointer, log]
        if self.val_set is not None and int(settings.eval_period) > 0:
            hooks.append(Evaluator(self.val_set, period=int(settings.eval_period), checkpointer=checkpointer, log=log))
        return hooks

    def checkpoint_state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """What a checkpoint holds (:meth:`_restore` reads it back); ``rngs``: each rank's :func:`rng_state`."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.it,
            "best_ap": self.best_ap,
            "elapsed_s": self.budget.elapsed(),
            "rng": rngs,
            "kind": self.checkpoint_kind,
            "categories": self.categories.to_dict() if self.categories is not None else None,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def step(self, batch: tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]) -> StepOutput:
        """One optimizer step on a collated ``(images, targets)`` batch: forward, losses, the ranks'
        agreement, backward, update. Raises :class:`TrainingError` before the update when a rank's loss is
        not finite or too many training images were unreadable."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            losses = self.forward_losses(batch)
        loss = sum(losses.values())
        keep_going, time_left, bad_images = self._agree(loss, losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.trainer.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.cfg.trainer.clip_grad_norm))
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.updating = True  # the weights change from here until the step is complete
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.it += 1
        self.scheduler.step()
        self.updating = False
        self.last_step = self.it >= self.max_iters or not time_left
        overflowed = None if scale_before is None else self.scaler.get_scale() < scale_before
        return StepOutput(losses, loss, keep_going, time_left, bad_images, overflowed)

    def forward_losses(self, batch: tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        """The model's losses on one batch, moved to the device; notes the unreadable images the data set replaced.
        (A trainer for another model, e.g. the SiamRPN tracker's, overrides this with its own batch.)"""
        images, targets = batch
        for target in targets:
            self.skipped_images.update(target.pop("skipped").tolist())
        images = [image.to(self.device, non_blocking=True) for image in images]
        targets = [{key: value.to(self.device, non_blocking=True) for key, value in target.items()} for target in targets]
        return self.step_model(images, targets).losses

    def _agree(self, loss: torch.Tensor, losses: dict[str, torch.Tensor]) -> tuple[bool, bool, int]:
        """``(keep_going, time_left, bad_images)`` agreed by all ranks, or a :class:`TrainingError`.

        The one host sync of a step: every rank must agree before anyone steps or saves."""
        finite, keep_going, bad_images, elapsed = agree_across_ranks(
            [bool(torch.isfinite(loss)), self.stop_signal is None], [len(self.skipped_images), self.budget.elapsed()], self.device
        )
        self.budget.agreed = elapsed / self.world  # the ranks' mean: one clock for the schedule and the stop
        if bad_images > self.max_bad_images:
            # A bad image met by two ranks in different epochs (shards reshuffle) is one image.
            bad_images = len(set().union(*gather_objects(self.skipped_images)))
        if bad_images > self.max_bad_images:
            raise TrainingError(
                f"{bad_images} training {self.bad_input_name}s are unreadable, more than data.max_bad_image_fraction="
                f"{self.cfg.data.max_bad_image_fraction} of {self.num_inputs} (all ranks together; this rank skipped "
                f"{self.bad_input_name} ids {sorted(self.skipped_images)[:10]}); fix or remove them ({self.bad_input_hint})"
            )
        if not finite:
            raise TrainingError(
                f"non-finite loss at iteration {self.it} ({ {k: float(v.detach()) for k, v in losses.items()} }); "
                f"{self.run_dir / 'last.pt'} holds the last step with finite weights. Lower optim.lr, enable "
                "trainer.clip_grad_norm, or check the data"
            )
        return keep_going, self.budget.time_left(self.budget.agreed), bad_images

    def loop(self) -> dict[str, Any]:
        """Step until ``trainer.max_iters`` steps, ``trainer.max_time`` or a signal, the hooks around each
        step; return what :func:`train` returns."""
        self.model.train()
        self.last_step = self.it >= self.max_iters or not self.budget.time_left()
        try:
            for hook in self.hooks:
                hook.before_train(self)
            # After before_train: DataLoader workers start (fork) here and inherit the preemption handlers,
            # so a SIGTERM sent to the whole process group does not kill them before the step boundary.
            batches = iter(self.loader)
            paced_from: tuple[int, float] | None = None  # (iteration, time) after the first step, for the CPU pace line
            while not self.last_step:
                out = self.step(next(batches))
                for hook in self.hooks:
                    hook.after_step(self, out)
                if self.device.type == "cpu" and self.is_main:
                    if paced_from is None:
                        paced_from = (self.it, time.perf_counter())  # the first step warms up: not counted
                    elif self.it == paced_from[0] + 3:
                        pace = (time.perf_counter() - paced_from[1]) / 3
                        message = cpu_pace_message(pace, self.max_iters - self.it, self.budget.max_time)
                        if message:
                            self._say(message)
                if not out.keep_going:  # a rank got SIGTERM/SIGINT: all saved together at this step boundary
                    self._say(f"stopped by signal at iteration {self.it}; resume with train.resume={self.run_dir / 'last.pt'}")
                    break
                if self.last_step and not out.time_left and self.it < self.max_iters:
                    self._say(f"trainer.max_time={self.cfg.trainer.max_time} reached at iteration {self.it}")
        except BaseException as error:
            for hook in self.hooks:
                hook.on_failure(self, error)
            raise
        finally:
            for hook in self.hooks:
                hook.after_train(self)
            if self.is_main and self.skipped_images:
                with open(self.run_dir / "data_report.txt", "a") as f:
                    f.write(f"unreadable training images skipped at load time on rank 0: {sorted(self.skipped_images)}\n")
        return {"iteration": self.it, "best_ap": self.best_ap, "stopped_by_signal": self.stop_signal, **self.val_metrics}

    def _say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)
