"""Accuracy race: frcnn and torchvision's Faster R-CNN from scratch, same data, same loop, same wall-clock budget.

Both detectors come from one composed training config: frcnn is instantiated from it, and
torchvision's is :func:`frcnn.benchmarks.peers.torchvision_peer` of that model, so they share the trunk
and box head architecture, the initial weights, 9 anchors, the RPN and RoI sampling numbers, the
pooled size, the image size and normalization. They also share everything around the model: the same
training batches in the same order (same seed, same augmentation), the same random numbers for their
samplers (each detector draws from its own generators, started from ``cfg.seed``), the same optimizer and
weight decay, gradient clipping, and learning-rate schedule. The schedule is a function of time, not of
iterations: linear warm-up over ``schedule.warmup_iters`` steps, then cosine decay to zero at the end
of the budget, so each detector gets a complete schedule however many steps it manages. Training stops
at the first step boundary after the budget; evaluation (COCO AP on the validation split,
pycocotools) is not counted.

Two ways to share the machine's time:

- **in turns** (``interleave=s > 0``, the script's default: 10 s): the detectors take turns of ``s`` seconds of
  their own training time until each has spent the budget, the first mover swapping every round
  (A B, B A, A B, ...: after the first, each holds the machine for two turns, 2 x ``s``, at a time), so a
  steady rise or fall of the host's load is shared out evenly too. Load that changes over minutes slows
  both alike: the steps each gets, and the AP they buy, measure the detectors, not the hour they ran in.
  Each detector trains exactly as it would alone: its own time drives its schedule, its own generators its
  sampling.
- **one after the other** (``interleave=0``): each detector trains its whole budget alone, in ``order``;
  a quiet machine is needed, as load that moves between the two halves moves the result.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
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
clock = time.perf_counter  # the race's clock (a test steps it by hand)


def race(cfg: DictConfig, *, order: Sequence[str] = FRAMEWORKS, budget: float, interleave: float = 0.0) -> Iterator[dict[str, Any]]:
    """Train each detector of ``order`` for ``budget`` seconds on ``cfg``'s data, then score it.

    Args:
        interleave: seconds of training per turn when the detectors take turns; 0 trains each for the
            whole budget in turn (see the module's docstring).

    Generates the synthetic data set first if ``cfg`` asks for it. Yields each detector's row (see
    :meth:`RaceEntrant.score`) once both have trained, as it is scored.
    """
    if not interleave >= 0 or not 0 < budget < math.inf:  # also NaN; before the data and models are built
        raise ValueError(f"interleave must be >= 0 seconds and budget finite and > 0, got {interleave} and {budget}")
    seed_everything(int(cfg.seed))
    builders.ensure_synthetic(cfg, DistInfo())
    train_set = builders.build_dataset(cfg, "train", train=True)
    val_set = builders.build_dataset(cfg, "val", train=False, categories=train_set.categories)
    ours = builders.build_model(cfg, train_set.categories)  # checks data.num_classes, as training does
    peer = PeerAdapter(torchvision_peer(ours))  # a copy of the same initial weights
    if cfg.model.get("channels_last"):
        ours = ours.to(memory_format=torch.channels_last)
    models = {"frcnn": ours, "torchvision": peer}
    entrants = [RaceEntrant.from_config(name, models[name], cfg, train_set, budget) for name in order]
    take_turns(entrants, interleave or math.inf)
    for e in entrants:
        yield e.score(cfg, train_set, val_set)


def take_turns(entrants: Sequence[RaceEntrant], seconds: float) -> None:
    """Train ``entrants`` in turns of ``seconds`` of their own time until each has spent its budget; the first
    mover swaps every round (A B, B A, A B, ...), so a steady rise or fall of the host's load is shared out
    evenly. ``seconds=math.inf``: one after the other, each its whole budget."""
    if not seconds > 0:  # also NaN: no turn would ever end a budget
        raise ValueError(f"a turn must last > 0 seconds, got {seconds}")
    turn = 0
    while not all(e.done for e in entrants):
        for e in entrants if turn % 2 == 0 else entrants[::-1]:
            if not e.done:
                e.train_for(seconds)
        turn += 1


class RaceEntrant:
    """One detector's side of the race: its loader, optimizer, time-based schedule and the training time it
    has spent (``train_s``, its own steps only, whether it trains alone or in turns), and its own state of
    the global random generators (torch's, numpy's, Python's), started from ``seed``: the RPN's and the RoI
    head's samplers draw from them, and so does the augmentation of a loader without workers.

    Raises (from :meth:`train_for`):
        TrainingError: the loss became non-finite.
    """

    def __init__(self, name: str, model: torch.nn.Module, batches: Iterator, optimizer: torch.optim.Optimizer,
                 schedule: WarmupCosine, budget: float, clip: float = 0.0, seed: int = 0) -> None:
        self.name, self.model, self.data_iter, self.optimizer = name, model, batches, optimizer
        self.schedule, self.budget, self.clip = schedule, budget, clip
        self.rng_state = (torch.Generator().manual_seed(seed).get_state(), np.random.RandomState(seed).get_state(),
                          random.Random(seed).getstate())
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.steps, self.train_s, self.turns = 0, 0.0, 0
        self.losses: list[float] = []

    @classmethod
    def from_config(cls, name: str, model: torch.nn.Module, cfg: DictConfig, train_set: CocoDetection, budget: float) -> RaceEntrant:
        """The training config's loader (with a generator of its own from ``cfg.seed``: both detectors see the
        same batches), optimizer and seed, and the trainer's schedule under ``trainer.max_time``: linear warm-up
        by step, then cosine to zero over the fraction of the time budget spent."""
        schedule = WarmupCosine(max_iters=1, warmup_iters=int(cfg.schedule.warmup_iters),
                                warmup_factor=float(cfg.schedule.warmup_factor), final_factor=0.0)
        batches = iter(builders.train_loader(cfg, train_set, DistInfo(), 0))
        first = next(batches)  # the loader's workers start here, before either detector's clock does
        return cls(name, model, itertools.chain([first], batches),
                   builders.build_optimizer(cfg, model), schedule, budget, float(cfg.trainer.clip_grad_norm or 0), int(cfg.seed))

    @property
    def done(self) -> bool:
        return self.train_s >= self.budget

    def train_for(self, seconds: float) -> None:
        """Train until ``seconds`` more of this detector's time are spent or its budget is (the first step
        boundary after either)."""
        self.model.train()
        outside = _rng_state()
        _set_rng_state(self.rng_state)
        try:
            self._steps(seconds)
        finally:
            self.rng_state = _rng_state()
            _set_rng_state(outside)
        self.turns += 1

    def _steps(self, seconds: float) -> None:
        model, optimizer = self.model, self.optimizer
        start, spent = clock(), self.train_s
        while (elapsed := spent + clock() - start) < self.budget and elapsed - spent < seconds:
            factor = self.schedule.factor(self.steps, min(elapsed / self.budget, 1.0))
            for g, lr in zip(optimizer.param_groups, self.base_lrs):
                g["lr"] = lr * factor
            images, targets = next(self.data_iter)
            targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            loss = sum(model(images, targets).losses.values())
            if not torch.isfinite(loss):
                raise TrainingError(f"{self.name}: non-finite loss at step {self.steps}; lower optim.lr or set trainer.clip_grad_norm")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
            optimizer.step()
            self.steps += 1
            self.losses.append(float(loss.detach()))
            if self.steps % 50 == 0:
                print(f"  {self.name}: step {self.steps}, {elapsed:.0f} s, loss {sum(self.losses[-50:]) / 50:.3f}", flush=True)
        self.train_s = spent + clock() - start

    def score(self, cfg: DictConfig, train_set: CocoDetection, val_set: CocoDetection) -> dict[str, Any]:
        """COCO AP of the model as trained so far on ``val_set``.

        Returns:
            ``{"framework", "steps", "train_s", "steps_per_s", "turns", "final_loss_avg50", "eval_s"}`` and the
            six AP stats (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``).
        """
        t0 = time.perf_counter()
        results = predict(self.model, builders.eval_loader(cfg, val_set, DistInfo()), train_set.categories, torch.device("cpu"))
        ev = evaluate_results(val_set.coco, results)
        last = self.losses[-50:]
        return {
            "framework": self.name,
            "steps": self.steps,
            "train_s": round(self.train_s, 1),
            "steps_per_s": round(self.steps / max(self.train_s, 1e-9), 3),
            "turns": self.turns,
            "final_loss_avg50": round(sum(last) / max(len(last), 1), 4),
            "eval_s": round(time.perf_counter() - t0, 1),
            **{k: round(v, 4) for k, v in ev["stats"].items() if k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
        }


def _rng_state() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])
