"""Learning-rate schedules as picklable multipliers for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

import math
from collections.abc import Sequence


class WarmupMultiStep:
    """Linear warm-up from ``warmup_factor`` over ``warmup_iters``, then ×``gamma`` at each milestone."""

    def __init__(self, *, milestones: Sequence[int], gamma: float = 0.1, warmup_iters: int = 500, warmup_factor: float = 0.001) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor

    def __call__(self, it: int) -> float:
        return linear_warmup(it, self.warmup_iters, self.warmup_factor) * self.gamma ** sum(it >= m for m in self.milestones)


class WarmupCosine:
    """Linear warm-up, then cosine decay to ``final_factor`` at ``max_iters``."""

    def __init__(self, *, max_iters: int, warmup_iters: int = 500, warmup_factor: float = 0.001, final_factor: float = 0.0) -> None:
        self.max_iters = max_iters
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.final_factor = final_factor

    def __call__(self, it: int) -> float:
        t = min(max(it, 0) / max(self.max_iters, 1), 1.0)
        cos = self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * t))
        return linear_warmup(it, self.warmup_iters, self.warmup_factor) * cos


def linear_warmup(it: int, iters: int, factor: float) -> float:
    """Multiplier rising linearly from ``factor`` at step 0 to 1 at step ``iters`` (1 afterwards)."""
    if it >= iters or iters <= 0:
        return 1.0
    alpha = it / iters
    return factor * (1 - alpha) + alpha
