"""Train SiamRPN with the detector's trainer: the same loop, hooks (checkpoints, resume, preemption, AMP
overflow, logging), DDP and bad-input handling; only the task's builders differ (:data:`TRACKER`: the data,
the model and the losses on a batch of pairs).

The task, ``train_tracker(cfg)``, is :func:`frcnn.tasks.train_tracker.train_tracker` (``conf/siamrpn.yaml``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from frcnn.data.coco import CocoDetection
from frcnn.engine.builders import ensure_generated, ensure_synthetic_at
from frcnn.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from frcnn.engine.distributed import DistInfo
from frcnn.engine.launch import TrainingData, TrainingTask
from frcnn.engine.trainer import InputBudget
from frcnn.errors import ConfigError
from frcnn.tracking.model import SiamRPN
from frcnn.tracking.pairs import PairBatch, TrackingPairs, collate_pairs
from frcnn.tracking.sequences import generate_sequences, load_sequences
from frcnn.tracking.tracker import SiamRPNTracker, TrackerSettings

CHECKPOINT_KIND = "siamrpn"
# The tracker that comes with frcnn (docs/tracking.md, "The shipped tracker"): ``checkpoint=shipped``.
SHIPPED_TRACKER = Path(__file__).parent / "weights" / "siamrpn_shipped.pt"


def tracker_data(cfg: DictConfig, dist: DistInfo) -> TrainingData:
    """(template, search, box) pairs from the annotated sequences (generated if missing) and the still images of a
    COCO-format set. The unreadable-input ids count the sequences' frames, then one per still image."""
    d = cfg.data
    if d.get("sequences") is not None:
        ensure_generated(d.sequences.root, d.sequences.get("generate"), dist, generate_sequences,
                         "synthetic tracking sequences", key="data.sequences")
    still = None
    if d.get("still") is not None:
        ensure_synthetic_at(d.still.root, d.still.get("generate"), dist, key="data.still")
        still = CocoDetection(d.still.images, d.still.annotations, on_unreadable="replace")
    sequences = load_sequences(d.sequences.root) if d.get("sequences") is not None else []
    pairs = TrackingPairs(
        sequences, still, max_gap=int(d.max_gap), shift=float(d.shift), scale_jitter=float(d.scale_jitter),
        negative_fraction=float(d.negative_fraction), distractor_fraction=float(d.get("distractor_fraction", 0.0)),
        context=float(d.context), color_jitter=float(d.get("color_jitter", 0.0)),
        gray_fraction=float(d.get("gray_fraction", 0.0)), blur_fraction=float(d.get("blur_fraction", 0.0)),
    )
    inputs = InputBudget(len(pairs.frames) + (len(still.records) if still is not None else 0),
                         float(d.get("max_bad_image_fraction", 0.01)), name="frame",
                         hint="each skipped frame's file is named in a warning above")
    summary = (f"train: {len(pairs)} pair keys ({len(pairs.frames)} frames of {len(sequences)} sequences, "
               f"{len(pairs.objects)} objects of still images)")
    return TrainingData(pairs, collate_pairs, inputs, summary)


def tracker_losses(model: torch.nn.Module, batch: PairBatch, device: torch.device, skipped: set[int]) -> dict[str, torch.Tensor]:
    """SiamRPN's losses on a batch of pairs moved to ``device``; the ids of the unreadable frames replaced in it go
    into ``skipped`` first."""
    skipped.update(batch.skipped.tolist())
    templates, searches, boxes = (t.to(device, non_blocking=True) for t in batch[:3])
    return model(templates, searches, boxes).losses


# SyncBatchNorm would replace the backbone's SiameseBatchNorm2d and with it the template branch's own statistics;
# a GPU's batch of 16-32 pairs gives BatchNorm enough samples by itself.
TRACKER = TrainingTask(
    kind=CHECKPOINT_KIND,
    build_data=tracker_data,
    build_model=lambda cfg, data: instantiate(cfg.model),
    losses=tracker_losses,
    sync_batchnorm=False,
)


def tracker_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu",
                            settings: dict[str, float] | None = None) -> SiamRPNTracker:
    """A :class:`SiamRPNTracker` around the model of a loaded SiamRPN checkpoint dict (``kind`` siamrpn). Read
    checkpoints with :func:`frcnn.tasks.load.load` (every kind) or :func:`frcnn.tasks.load.load_tracker`.

    ``settings``: proposal-selection values overriding the run's ``tracker`` config.
    """
    cfg = OmegaConf.create(ckpt["config"])
    for key in ("weights", "init_from"):  # the run's initialization (a file that need not be here): the trained weights follow
        if cfg.model.get("backbone") is not None and cfg.model.backbone.get(key) is not None:
            cfg.model.backbone[key] = None
    model: SiamRPN = instantiate(cfg.model)
    model.load_state_dict(ckpt["model"])
    # The crops' context is the one the model was trained with.
    values = {"context": float(cfg.data.context)} | dict(OmegaConf.to_container(cfg.get("tracker", {}))) | dict(settings or {})
    known = [f.name for f in dataclasses.fields(TrackerSettings)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"tracker settings {unknown} are not known; the proposal selection's are {', '.join(known)}")
    for key in ("template_rate", "template_thresh", "distractor_thresh", "distractor_decay"):
        if not 0 <= float(values.get(key, 0)) <= 1:
            raise ConfigError(f"tracker.{key}={values[key]} must be within [0, 1]")
    return SiamRPNTracker(model.to(device), TrackerSettings(**values), device)


def slim_checkpoint(checkpoint: str | Path, out: str | Path, recipe: str = "") -> Path:
    """Write the model, config and selection settings of a SiamRPN training checkpoint to ``out`` (atomically),
    without the optimizer, scheduler and RNG states: what shipping a tracker needs; ``recipe``: how it was trained."""
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"checkpoint {checkpoint} is not a SiamRPN checkpoint (train one with scripts/train_tracker.py)")
    model = {k: v.clone() for k, v in ckpt["model"].items()}  # fresh storage: only these tensors are written
    slim = {"kind": CHECKPOINT_KIND, "model": model, "config": ckpt["config"], "iteration": ckpt.get("iteration"), "recipe": recipe}
    return save_checkpoint(slim, out)
