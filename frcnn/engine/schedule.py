"""Learning-rate schedules (multipliers of the base learning rate) and the training :class:`Budget`.

Each schedule gives ``factor(it, progress)``: linear warm-up over the first ``warmup_iters`` steps,
times a decay defined over ``progress`` in [0, 1], the fraction of the training budget spent (steps
out of ``trainer.max_iters``, or wall clock out of ``trainer.max_time`` when that is set, whichever
is further). Called with the step alone (``schedule(it)``, e.g. as a ``LambdaLR`` lambda) the
progress is ``it / max_iters``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from frcnn.errors import ConfigError


class WarmupMultiStep:
    """Linear warm-up from ``warmup_factor`` over ``warmup_iters``, then ×``gamma`` at each milestone.

    The decay points are either ``milestones``, steps of a ``max_iters``-step run, or ``decay_at``,
    fractions of the budget (detectron2's 1x schedule: steps 60k and 80k of 90k, i.e. 2/3 and 8/9).
    Fractions follow any ``trainer.max_iters`` or ``trainer.max_time``; under a time budget a
    milestone falls at the same fraction (``milestone / max_iters``). Without ``max_iters``,
    milestones are steps only.
    """

    def __init__(
        self,
        *,
        milestones: Sequence[int] = (),
        decay_at: Sequence[float] = (),
        gamma: float = 0.1,
        warmup_iters: int = 500,
        warmup_factor: float = 0.001,
        max_iters: int | None = None,
    ) -> None:
        if decay_at and milestones:
            raise ConfigError("schedule: give milestones (steps) or decay_at (fractions of the budget), not both")
        if decay_at and max_iters is None:
            raise ConfigError("schedule.decay_at (fractions of the budget) needs schedule.max_iters")
        self.max_iters = max_iters
        self.milestones = sorted(int(m) for m in milestones) or sorted(round(f * max_iters) for f in decay_at)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor

    def factor(self, it: int, progress: float | None = None) -> float:
        if progress is None or self.max_iters is None:
            passed = sum(it >= m for m in self.milestones)
        else:  # the step a milestone stands for, at this fraction of the budget
            passed = sum(progress * self.max_iters >= m - 1e-6 for m in self.milestones)
        return linear_warmup(it, self.warmup_iters, self.warmup_factor) * self.gamma**passed

    def __call__(self, it: int) -> float:
        return self.factor(it)


class WarmupCosine:
    """Linear warm-up, then cosine decay from 1 to ``final_factor`` over the budget."""

    def __init__(self, *, max_iters: int, warmup_iters: int = 500, warmup_factor: float = 0.001, final_factor: float = 0.0) -> None:
        self.max_iters = max_iters
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.final_factor = final_factor

    def factor(self, it: int, progress: float | None = None) -> float:
        progress = max(it, 0) / max(self.max_iters, 1) if progress is None else progress
        t = min(max(progress, 0.0), 1.0)
        cos = self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * t))
        return linear_warmup(it, self.warmup_iters, self.warmup_factor) * cos

    def __call__(self, it: int) -> float:
        return self.factor(it)


def linear_warmup(it: int, iters: int, factor: float) -> float:
    """Multiplier rising linearly from ``factor`` at step 0 to 1 at step ``iters`` (1 afterwards)."""
    if it >= iters or iters <= 0:
        return 1.0
    alpha = it / iters
    return factor * (1 - alpha) + alpha


class Budget:
    """How far training is: ``max_iters`` steps, and optionally ``max_time`` seconds of wall clock.

    ``progress`` is the larger of the two fractions spent, so a schedule defined over it ends on time
    whichever limit comes first (a cluster time limit, or a slower machine than the one a recipe was
    tuned on). Time already spent by an interrupted run (``spent``) counts, so a resumed run keeps
    its budget.
    """

    def __init__(self, max_iters: int, max_time: float | None, spent: float = 0.0) -> None:
        self.max_iters = max_iters
        self.max_time = max_time
        self.started = time.perf_counter() - spent
        self.agreed: float | None = None  # elapsed time all ranks agreed on at this step (set by the trainer)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def progress(self, it: int) -> float:
        """Fraction spent. Under DDP the time is the one all ranks agreed on at this step (``agreed``),
        so every rank computes the same learning rate."""
        fraction = it / max(self.max_iters, 1)
        if self.max_time:
            elapsed = self.agreed if self.agreed is not None else self.elapsed()
            fraction = max(fraction, elapsed / self.max_time)
        return min(fraction, 1.0)

    def time_left(self, elapsed: float | None = None) -> bool:
        elapsed = self.elapsed() if elapsed is None else elapsed
        return self.max_time is None or elapsed < self.max_time
