"""Hooks around the training step: preemption signals, fp16 overflows, checkpoints, logging, evaluation.

:meth:`Trainer.loop <frcnn.engine.trainer.Trainer.loop>` calls each :class:`~frcnn.engine.trainer.Hook`, in the
order of its list:

* ``before_train(trainer)`` once, before the first batch is drawn;
* ``after_step(trainer, out)`` after every completed step (``trainer.it`` already counts it);
* ``on_failure(trainer, error)`` when anything raises once training has started (the error then goes on);
* ``after_train(trainer)`` always, last (close files, restore signal handlers).

The list :func:`frcnn.engine.launch.build_hooks` hands the trainer is :class:`Preemption`,
:class:`OverflowMonitor`, :class:`Checkpointer`, :class:`MetricsLogger`, :class:`DataReport`, :class:`Evaluator`.
At a step the order matters: the checkpoint comes before logging and evaluation, so nothing later at the step can lose it; evaluation comes last, since a new
best AP writes ``best.pt`` and then rewrites that step's ``last.pt`` so that a resumed run knows it.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from frcnn.engine.checkpoint import rng_state, save_checkpoint
from frcnn.engine.distributed import gather_objects
from frcnn.engine.trainer import Hook, StepOutput, Trainer, TrainingError

__all__ = ["Checkpointer", "DataReport", "Evaluator", "Hook", "MetricsLogger", "OverflowMonitor", "Preemption", "TrainingError"]


class Preemption(Hook):
    """SIGTERM/SIGINT (a cluster preempting the job, Ctrl-C) only note the signal in ``trainer.stop_signal``:
    the step's agreement across ranks tells every rank, all save at that step boundary and the loop ends."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def before_train(self, trainer: Trainer) -> None:
        def note(signum: int, frame: Any) -> None:
            trainer.stop_signal = signum

        self._previous = {s: signal.signal(s, note) for s in (signal.SIGTERM, signal.SIGINT)}

    def after_train(self, trainer: Trainer) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class OverflowMonitor(Hook):
    """Counts fp16 steps the GradScaler skipped (its scale dropped); fails after ``max_streak`` in a row."""

    def __init__(self, max_streak: int) -> None:
        self.max_streak = max_streak
        self.streak = 0
        self.total = 0

    def update(self, overflowed: bool, iteration: int) -> None:
        if not overflowed:
            self.streak = 0
            return
        self.streak += 1
        self.total += 1
        if self.streak >= self.max_streak:
            raise TrainingError(
                f"{self.streak} fp16 overflows in a row at iteration {iteration} ({self.total} skipped steps in all); "
                "use trainer.amp=bf16, lower optim.lr or set trainer.clip_grad_norm"
            )

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if out.overflowed is not None:  # None: no GradScaler (fp32, bf16)
            self.update(out.overflowed, trainer.it)


class MetricsLogger(Hook):
    """Rank 0 appends one JSON record a line to ``metrics.jsonl`` (and, with ``tensorboard``, its numbers to
    TensorBoard): the step's losses, lr and speed every ``period`` steps and at the last step, and what other
    hooks hand to :meth:`write`. Also drives the progress bar."""

    def __init__(self, run_dir: Path, *, period: int, tensorboard: bool, progress: bool, overflows: OverflowMonitor) -> None:
        self.run_dir = run_dir
        self.period = period
        self.tensorboard = tensorboard
        self.progress = progress
        self.overflows = overflows
        self.file = None
        self.writer = None
        self.bar: tqdm | None = None
        self.t_last = 0.0

    def before_train(self, trainer: Trainer) -> None:
        if trainer.is_main:
            self.file = open(self.run_dir / "metrics.jsonl", "a")
            if self.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self.bar = tqdm(total=trainer.max_iters, initial=trainer.it, disable=not trainer.is_main or not self.progress,
                        dynamic_ncols=True)
        self.t_last = time.perf_counter()

    def write(self, record: dict[str, Any], it: int, *, tensorboard: bool = True) -> None:
        """Append ``record`` to ``metrics.jsonl`` (rank 0; a no-op elsewhere); its finite numbers go to
        TensorBoard at step ``it`` too unless ``tensorboard=False``."""
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None and tensorboard:
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(k, v, it)

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        self.bar.update(1)
        if trainer.it % self.period and not trainer.last_step:
            return
        now = time.perf_counter()
        rate = self.period / max(now - self.t_last, 1e-9)
        self.t_last = now
        if not trainer.is_main:
            return
        losses = {k: float(v.detach()) for k, v in out.losses.items()}
        record = {"iteration": trainer.it, "loss": float(out.loss.detach()), "lr": trainer.optimization.scheduler.get_last_lr()[0],
                  "it_per_s": rate, "elapsed_s": round(trainer.budget.elapsed(), 1), "amp_skipped_steps": self.overflows.total,
                  "unreadable_train_images": out.bad_images, **losses}
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", it_s=f"{rate:.2f}")
        self.write(record, trainer.it)

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Checkpointer(Hook):
    """``last.pt`` every ``period`` steps, at the last step and when a signal stops the run (every rank takes
    part, rank 0 writes); ``best.pt`` when :class:`Evaluator` asks; and, when training fails, the failing
    rank's last completed step (:meth:`on_failure`)."""

    def __init__(self, *, period: int, log: MetricsLogger) -> None:
        self.period = period
        self.log = log
        self.saved_at = -1  # the step last.pt holds (-1: none of this run's)

    def before_train(self, trainer: Trainer) -> None:
        self.saved_at = trainer.start_iter if trainer.resumed else -1

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if trainer.it % self.period == 0 or trainer.last_step or not out.keep_going:
            self.save(trainer, "last.pt")

    def save(self, trainer: Trainer, name: str, *, collective: bool = True) -> None:
        """Save the state after ``trainer.it`` completed steps as ``name``. ``collective=False`` (failure path):
        this rank alone, with its own RNG state, since other ranks may not reach a collective call."""
        rngs = gather_objects(rng_state()) if collective else [rng_state()]
        if trainer.world > 1 and collective:
            # Replicas must hold identical weights; log each rank's checksum so a drift is visible.
            sums = gather_objects(float(sum(p.detach().double().sum() for p in trainer.model.parameters())))
            self.log.write({"iteration": trainer.it, "replica_checksums": sums}, trainer.it, tensorboard=False)
        if trainer.is_main or not collective:  # on the failure path the failing rank writes (replicas are equal)
            save_checkpoint(trainer.checkpoint_state(rngs), trainer.run_dir / name)
        if name == "last.pt":
            self.saved_at = trainer.it

    def on_failure(self, trainer: Trainer, error: BaseException) -> None:
        # Whatever failed after training started, keep the last completed step, unless the failure came in
        # the middle of an optimizer update (the weights are neither step's) or the weights are no longer
        # finite (a diverged step must not replace the last good checkpoint). The error itself goes on.
        it, last = trainer.it, trainer.run_dir / "last.pt"
        if it == trainer.start_iter or self.saved_at == it or trainer.updating:
            return
        if not all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters()):
            print(f"not saving iteration {it}: the weights are not finite; {last} is the last good "
                  f"checkpoint (iteration {self.saved_at})", flush=True)
            return
        try:
            self.save(trainer, "last.pt", collective=False)
            print(f"saved {last} at iteration {it} (the last completed step) before stopping", flush=True)
        except Exception as save_error:  # e.g. a full disk, or a CUDA error that cannot be recovered
            print(f"could not save iteration {it} before stopping ({save_error})", flush=True)


class DataReport(Hook):
    """Rank 0 appends the unreadable training inputs it skipped at load time to ``data_report.txt``."""

    def after_train(self, trainer: Trainer) -> None:
        if trainer.is_main and trainer.skipped_inputs:
            with open(trainer.run_dir / "data_report.txt", "a") as f:
                f.write(f"unreadable training {trainer.inputs.name}s skipped at load time on rank 0: "
                        f"{sorted(trainer.skipped_inputs)}\n")


# (model, iteration) -> the evaluation's record ({"val/AP": ..., ...}), the same dict on every rank
EvaluateFn = Callable[[torch.nn.Module, int], dict[str, Any]]


class Evaluator(Hook):
    """``evaluate(model, it)`` every ``period`` steps and at the last step, but not when a signal stops the run
    (a preempted job has no time for it); its record is logged. A new best ``val/AP`` saves ``best.pt``
    (every rank takes part). The task provides ``evaluate`` (the detector's: COCO AP on the validation
    split, :func:`frcnn.tasks.train.coco_evaluator`)."""

    def __init__(self, evaluate: EvaluateFn, *, period: int, checkpointer: Checkpointer, log: MetricsLogger) -> None:
        self.evaluate = evaluate
        self.period = period
        self.checkpointer = checkpointer
        self.log = log

    def after_step(self, trainer: Trainer, out: StepOutput) -> None:
        if not out.keep_going or (trainer.it % self.period and not trainer.last_step):
            return
        trainer.val_metrics = metrics = self.evaluate(trainer.model, trainer.it)
        self.log.write(metrics, trainer.it)
        if metrics["val/AP"] > trainer.best_ap:
            trainer.best_ap = metrics["val/AP"]
            self.checkpointer.save(trainer, "best.pt")
            if self.checkpointer.saved_at == trainer.it:
                self.checkpointer.save(trainer, "last.pt")  # so that a resumed run knows this best AP
