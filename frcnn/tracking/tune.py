"""Tune the proposal selection of a trained SiamRPN (``penalty_k``, ``window_influence``, ``lr``) on its
*training* sequences, as the SiamRPN / DaSiamRPN releases fix these three per model.

The three values trade the network's scores against motion and shape priors (:mod:`frcnn.tracking.tracker`):
how much a jump in size or aspect ratio is penalized, how strongly the cosine window favours small
displacements, and how fast the box size follows the regression. The best values depend on how
confident and how well calibrated the scores are, which changes with the training budget, so a fixed
published triple (DaSiamRPN's VOT values are the defaults) need not suit a model trained briefly from scratch.

Search: coordinate ascent over a grid — each value in turn, the others held at the best so far — scored
by the mean success AUC of one-pass tracking (:mod:`frcnn.tracking.evaluate`). Tune on training sequences
and report on held-out ones (``scripts/track_benchmark.py``), never on the sequences you report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence as Seq
from pathlib import Path

from frcnn.data.images import read_rgb
from frcnn.tracking.evaluate import ope_scores, run_tracker
from frcnn.tracking.sequences import Sequence
from frcnn.tracking.tracker import TrackerSettings

# The coordinate-ascent grid: DaSiamRPN's values (0.055, 0.42, 0.295) and steps either side.
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "window_influence": (0.1, 0.2, 0.3, 0.42, 0.55),
    "penalty_k": (0.0, 0.055, 0.15, 0.3, 0.5),
    "lr": (0.1, 0.2, 0.295, 0.45, 0.7),
}


@dataclasses.dataclass
class Trial:
    """One evaluated setting: the three values and the mean success AUC over the tuning sequences."""

    settings: dict[str, float]
    success_auc: float


def tune_settings(
    make_tracker: Callable[[TrackerSettings], object],
    sequences: list[Sequence],
    start: TrackerSettings,
    grid: Mapping[str, Seq[float]] = DEFAULT_GRID,
    rounds: int = 1,
) -> tuple[TrackerSettings, list[Trial]]:
    """Coordinate ascent on mean success AUC; returns the best settings and every trial, in order.

    Args:
        make_tracker: a fresh tracker for given settings (e.g. ``lambda s: SiamRPNTracker(model, s)``).
        sequences: the tuning sequences (training ones); their frames are decoded once, up front.
        start: the first point (its other fields, such as ``context``, are kept).
        grid: values to try per setting name (fields of :class:`TrackerSettings`).
        rounds: passes over the names; a pass that changes nothing ends the search early.
    """
    unknown = set(grid) - {f.name for f in dataclasses.fields(TrackerSettings)}
    if unknown:
        raise ValueError(f"unknown tracker settings in the grid: {sorted(unknown)}")
    frames = [[read_rgb(p, max_pixels=None) for p in s.frames] for s in sequences]
    cache: dict[tuple, float] = {}
    trials: list[Trial] = []

    def score(settings: TrackerSettings) -> float:
        key = tuple(getattr(settings, name) for name in grid)
        if key not in cache:
            results = [(run_tracker(make_tracker(settings), s, f)[0], s.boxes) for s, f in zip(sequences, frames)]
            cache[key] = ope_scores(results, seconds=1.0).success_auc  # fps is not scored here: any time will do
            trials.append(Trial({name: getattr(settings, name) for name in grid}, cache[key]))
        return cache[key]

    best = start
    best_score = score(best)
    for _ in range(rounds):
        changed = False
        for name, values in grid.items():
            for value in values:
                candidate = dataclasses.replace(best, **{name: float(value)})
                if (s := score(candidate)) > best_score + 1e-9:
                    best, best_score, changed = candidate, s, True
        if not changed:
            break
    return best, trials


def tuned_checkpoint(source: str | Path, target: str | Path, settings: TrackerSettings, trials: list[Trial]) -> Path:
    """Write a copy of the SiamRPN checkpoint ``source`` whose config's ``tracker`` holds ``settings``
    (what :func:`~frcnn.tasks.load.load_tracker` reads) and the trials under ``tuning``; atomic."""
    from omegaconf import OmegaConf

    from frcnn.engine.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(source, map_location="cpu")
    cfg = OmegaConf.create(ckpt["config"])
    values = {name: getattr(settings, name) for name in ("penalty_k", "window_influence", "lr")}
    OmegaConf.update(cfg, "tracker", values, merge=True, force_add=True)
    ckpt["config"] = OmegaConf.to_container(cfg)
    ckpt["tuning"] = {"trials": [{**t.settings, "success_auc": t.success_auc} for t in trials],
                      "best": values, "best_success_auc": max((t.success_auc for t in trials), default=float("nan"))}
    return save_checkpoint(ckpt, target)

