"""The training loop: a small :class:`Trainer` that runs what it is handed (model, batches, optimization,
hooks, a losses function) and the :class:`Hook` protocol around its steps.

Nothing here reads a config: :func:`frcnn.engine.launch.run_training` builds the parts with a task's
builders (the detector's in :mod:`frcnn.tasks.train`, the tracker's in :mod:`frcnn.tracking.training`)
and hands them in, as detectron2's ``SimpleTrainer`` is handed its model, loader and optimizer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from frcnn.engine.checkpoint import rng_state, set_rng_state
from frcnn.engine.distributed import DistInfo, agree_across_ranks, ddp_broadcasts_buffers, gather_objects
from frcnn.engine.schedule import Budget
from frcnn.errors import UserError

# Re-exported: scripts, notebooks and tests import these from here.
__all__ = [
    "Budget",
    "Hook",
    "InputBudget",
    "Optimization",
    "RunSettings",
    "StepOutput",
    "Trainer",
    "TrainingError",
    "ddp_broadcasts_buffers",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]

# (model, batch, device, skipped) -> losses; first adds to ``skipped`` the ids of the unreadable inputs the data set
# replaced in this batch (before the forward pass, so that a failing step still reports them)
LossesFn = Callable[[torch.nn.Module, Any, torch.device, set[int]], dict[str, torch.Tensor]]


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, repeated AMP overflow, too many unreadable images);
    ``last.pt`` holds the last completed step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    bad_images: int  # unreadable training inputs met so far, all ranks
    overflowed: bool | None  # fp16: the GradScaler skipped this update; None without a scaler


class Hook:
    """Called by :meth:`Trainer.loop` at four points, in the order of the trainer's list; each does nothing
    unless a subclass says otherwise (``frcnn/engine/hooks.py``)."""

    def before_train(self, trainer: Trainer) -> None:
        """Once, before the first batch is drawn."""

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        """After every completed step (``trainer.it`` already counts it)."""

    def on_failure(self, trainer: Trainer, error: BaseException) -> None:
        """When anything raises once training has started (the error then goes on)."""

    def after_train(self, trainer: Trainer) -> None:
        """Always, last (close files, restore signal handlers)."""


class Optimization(NamedTuple):
    """The optimizer, its lr schedule (a ``LambdaLR`` over the :class:`Budget`'s progress) and the AMP scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    budget: Budget


@dataclass(frozen=True)
class InputBudget:
    """How many unreadable training inputs a run tolerates: ``max_fraction`` of ``count`` (the ids the data
    set reports count images, or a tracker's frames and still images), and how the error names them."""

    count: int
    max_fraction: float = 0.01
    name: str = "image"
    hint: str = "data.preflight=true lists them all before training"

    @property
    def max_bad(self) -> float:
        return self.max_fraction * self.count


@dataclass(frozen=True)
class RunSettings:
    """The loop's settings (``trainer.*`` of a config) and what each checkpoint records beside the state."""

    run_dir: Path
    max_iters: int
    amp_dtype: torch.dtype | None = None
    clip_grad_norm: float | None = None
    max_time_label: str | None = None  # trainer.max_time as the user wrote it, for the message when it is reached
    checkpoint_extras: dict[str, Any] = field(default_factory=dict)  # kind, categories, config


class Trainer:
    """Runs :meth:`step` on ``batches`` until the budget is spent, with ``hooks`` around each step.

    Handed in: ``model`` (on ``device``; ``step_model`` is what the step calls, e.g. its DDP wrapper),
    ``batches`` (an endless iterable, already positioned at ``start_iter``), ``optimization``, ``hooks``,
    ``losses_fn`` (the task's forward), ``inputs`` (the unreadable-input budget) and ``settings``.
    The hooks read: ``it``, ``start_iter``, ``resumed``, ``max_iters``, ``last_step``, ``updating``, ``model``,
    ``optimization``, ``run_dir``, ``world``, ``is_main``, ``stop_signal``, ``best_ap``, ``val_metrics`` and
    :meth:`checkpoint_state`.
    """

    def __init__(
        self, model: torch.nn.Module, batches: Iterable[Any], optimization: Optimization, hooks: list[Hook], *,
        losses_fn: LossesFn, inputs: InputBudget, settings: RunSettings, device: torch.device, dist: DistInfo,
        step_model: torch.nn.Module | None = None, start_iter: int = 0, best_ap: float = -1.0, resumed: bool = False,
    ) -> None:
        self.model, self.step_model = model, step_model if step_model is not None else model
        self.batches, self.optimization, self.hooks = batches, optimization, hooks
        self.losses_fn, self.inputs, self.settings = losses_fn, inputs, settings
        self.device, self.dist = device, dist
        self.world, self.is_main = dist.world_size, dist.is_main
        self.run_dir, self.max_iters = settings.run_dir, settings.max_iters
        self.start_iter = self.it = start_iter  # completed steps, at the start and now
        self.resumed = resumed  # started from a checkpoint (train.resume)
        self.best_ap = best_ap
        self.last_step = False  # set by the step: the budget is spent
        self.updating = False  # True while the optimizer changes the weights (they are neither step's)
        self.stop_signal: int | None = None  # set by the Preemption hook
        self.val_metrics: dict[str, Any] = {}  # the last evaluation's (set by the Evaluator)
        self.skipped_inputs: set[int] = set()  # unreadable training inputs this rank met (each replaced)

    @property
    def budget(self) -> Budget:
        return self.optimization.budget

    def checkpoint_state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """What a checkpoint holds (``launch.restore`` reads it back); ``rngs``: each rank's :func:`rng_state`."""
        o = self.optimization
        return {
            "model": self.model.state_dict(),
            "optimizer": o.optimizer.state_dict(),
            "scheduler": o.scheduler.state_dict(),
            "scaler": o.scaler.state_dict(),
            "iteration": self.it,
            "best_ap": self.best_ap,
            "elapsed_s": o.budget.elapsed(),
            "rng": rngs,
            **self.settings.checkpoint_extras,
        }

    def step(self, batch: Any) -> StepOutput:
        """One optimizer step on a collated batch: forward, losses, the ranks' agreement, backward, update.
        Raises :class:`TrainingError` before the update when a rank's loss is not finite or too many
        training inputs were unreadable."""
        o, amp = self.optimization, self.settings.amp_dtype
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            losses = self.losses_fn(self.step_model, batch, self.device, self.skipped_inputs)
        loss = sum(losses.values())
        keep_going, time_left, bad_images = self._agree(loss, losses)
        o.optimizer.zero_grad(set_to_none=True)
        o.scaler.scale(loss).backward()
        if self.settings.clip_grad_norm:
            o.scaler.unscale_(o.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.settings.clip_grad_norm))
        scale_before = o.scaler.get_scale() if o.scaler.is_enabled() else None
        self.updating = True  # the weights change from here until the step is complete
        o.scaler.step(o.optimizer)
        o.scaler.update()
        self.it += 1
        o.scheduler.step()
        self.updating = False
        self.last_step = self.it >= self.max_iters or not time_left
        overflowed = None if scale_before is None else o.scaler.get_scale() < scale_before
        return StepOutput(losses, loss, keep_going, time_left, bad_images, overflowed)

    def _agree(self, loss: torch.Tensor, losses: dict[str, torch.Tensor]) -> tuple[bool, bool, int]:
        """``(keep_going, time_left, bad_images)`` agreed by all ranks, or a :class:`TrainingError`.

        The one host sync of a step: every rank must agree before anyone steps or saves."""
        budget, inputs = self.budget, self.inputs
        finite, keep_going, bad_images, elapsed = agree_across_ranks(
            [bool(torch.isfinite(loss)), self.stop_signal is None], [len(self.skipped_inputs), budget.elapsed()], self.device
        )
        budget.agreed = elapsed / self.world  # the ranks' mean: one clock for the schedule and the stop
        if bad_images > inputs.max_bad:
            # A bad input met by two ranks in different epochs (shards reshuffle) is one input.
            bad_images = len(set().union(*gather_objects(self.skipped_inputs)))
        if bad_images > inputs.max_bad:
            raise TrainingError(
                f"{bad_images} training {inputs.name}s are unreadable, more than data.max_bad_image_fraction="
                f"{inputs.max_fraction:g} of {inputs.count} (all ranks together; this rank skipped {inputs.name} ids "
                f"{sorted(self.skipped_inputs)[:10]}); fix or remove them ({inputs.hint})"
            )
        if not finite:
            raise TrainingError(
                f"non-finite loss at iteration {self.it} ({ {k: float(v.detach()) for k, v in losses.items()} }); "
                f"{self.run_dir / 'last.pt'} holds the last step with finite weights. Lower optim.lr, enable "
                "trainer.clip_grad_norm, or check the data"
            )
        return keep_going, budget.time_left(budget.agreed), bad_images

    def loop(self) -> dict[str, Any]:
        """Step until ``max_iters`` steps, the time budget or a signal, the hooks around each step; return
        ``iteration``, ``best_ap``, ``stopped_by_signal`` (the signal number, or None) and the last
        evaluation's ``val/*``."""
        self.model.train()
        self.last_step = self.it >= self.max_iters or not self.budget.time_left()
        try:
            for hook in self.hooks:
                hook.before_train(self)
            # After before_train: DataLoader workers start (fork) here and inherit the preemption handlers,
            # so a SIGTERM sent to the whole process group does not kill them before the step boundary.
            batches = iter(self.batches)
            pace = _Pace() if self.device.type == "cpu" and self.is_main else None
            while not self.last_step:
                out = self.step(next(batches))
                for hook in self.hooks:
                    hook.after_step(self, out)
                if pace is not None:
                    self._say(pace.message(self.it, self.max_iters, self.budget.max_time))
                if not out.keep_going:  # a rank got SIGTERM/SIGINT: all saved together at this step boundary
                    self._say(f"stopped by signal at iteration {self.it}; resume with train.resume={self.run_dir / 'last.pt'}")
                    break
                if self.last_step and not out.time_left and self.it < self.max_iters:
                    self._say(f"trainer.max_time={self.settings.max_time_label} reached at iteration {self.it}")
        except BaseException as error:
            for hook in self.hooks:
                hook.on_failure(self, error)
            raise
        finally:
            for hook in self.hooks:
                hook.after_train(self)
        return {"iteration": self.it, "best_ap": self.best_ap, "stopped_by_signal": self.stop_signal, **self.val_metrics}

    def _say(self, message: str | None) -> None:
        if self.is_main and message:
            print(message, flush=True)


class _Pace:
    """The CPU pace line: timed over the three steps after the first (which warms up), said at most once."""

    def __init__(self) -> None:
        self.start: tuple[int, float] | None = None

    def message(self, it: int, max_iters: int, max_time: float | None) -> str | None:
        if self.start is None:
            self.start = (it, time.perf_counter())
        elif it == self.start[0] + 3:
            return cpu_pace_message((time.perf_counter() - self.start[1]) / 3, max_iters - it, max_time)
        return None
