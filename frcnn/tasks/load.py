"""One loader for every checkpoint frcnn writes or imports, keyed by the checkpoint's ``kind``:

* ``faster_rcnn`` — a detector: a training run's ``last.pt`` / ``best.pt``, or torchvision's COCO weights
  imported by ``scripts/import_weights.py`` (checkpoints from before kinds were recorded are detectors);
* ``siamrpn`` — a tracker: a ``scripts/train_tracker.py`` run's checkpoint, or ``"shipped"``, the tracker that
  comes with frcnn (:data:`frcnn.tracking.training.SHIPPED_TRACKER`).

:func:`load` reads the file once (``weights_only=True``) and hands the dict to the kind's builder
(:func:`frcnn.inference.detector_from_checkpoint`, :func:`frcnn.tracking.training.tracker_from_checkpoint`).
:func:`load_model` and :func:`load_tracker` are the same path with the kind fixed, for the tasks that need one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from frcnn.data.coco import CategoryMap
from frcnn.engine.checkpoint import CheckpointError, load_checkpoint
from frcnn.inference import detector_from_checkpoint, proposal_overrides
from frcnn.tracking.tracker import SiamRPNTracker
from frcnn.tracking.training import CHECKPOINT_KIND as TRACKER_KIND
from frcnn.tracking.training import SHIPPED_TRACKER, tracker_from_checkpoint

__all__ = ["DETECTOR_KIND", "KINDS", "TRACKER_KIND", "Loaded", "load", "load_model", "load_tracker", "proposal_overrides"]

DETECTOR_KIND = "faster_rcnn"
KINDS = (DETECTOR_KIND, TRACKER_KIND)
_NOT_THE_KIND = {  # what to do when a task gets a checkpoint of the other kind
    DETECTOR_KIND: "{path} holds a {found} model, not a detector (scripts/track.py runs SiamRPN checkpoints)",
    TRACKER_KIND: "{path} is not a SiamRPN checkpoint (train one with scripts/train_tracker.py)",
}


@dataclass(frozen=True)
class Loaded:
    """A checkpoint's model, ready: ``model`` in eval mode on the device, ``config`` its training config,
    ``categories`` a detector's classes, ``tracker`` a SiamRPN's :class:`SiamRPNTracker` (around ``model``)."""

    kind: str
    path: Path
    model: torch.nn.Module
    config: DictConfig
    categories: CategoryMap | None = None
    tracker: SiamRPNTracker | None = None


def load(checkpoint: str | Path, device: torch.device | str = "cpu", *, kind: str | None = None,
         overrides: dict[str, Any] | None = None) -> Loaded:
    """The model of ``checkpoint`` (a path, or ``"shipped"``), built as its ``kind`` says.

    Args:
        kind: the kind the caller needs (a :class:`CheckpointError` naming the file otherwise); None: any.
        overrides: a detector's dotted config keys to change at test time
            (``{"model.roi_heads.score_thresh": 0.3}``), or a tracker's proposal-selection values
            (``{"window_influence": 0.3}``).
    """
    path = SHIPPED_TRACKER if str(checkpoint) == "shipped" else Path(checkpoint)
    ckpt = load_checkpoint(path, map_location="cpu")
    found = ckpt.get("kind", DETECTOR_KIND)
    if kind is not None and found != kind:
        raise CheckpointError("checkpoint " + _NOT_THE_KIND[kind].format(path=checkpoint, found=found))
    device = torch.device(device) if isinstance(device, str) else device
    if found == DETECTOR_KIND:
        model, categories, cfg = detector_from_checkpoint(ckpt, checkpoint, device, overrides)
        return Loaded(found, path, model, cfg, categories=categories)
    if found == TRACKER_KIND:
        tracker = tracker_from_checkpoint(ckpt, device, overrides)
        return Loaded(found, path, tracker.model, OmegaConf.create(ckpt["config"]), tracker=tracker)
    raise CheckpointError(f"checkpoint {checkpoint} holds a {found!r} model; frcnn loads {' and '.join(KINDS)} checkpoints")


def load_model(checkpoint: str | Path, device: torch.device, overrides: dict[str, Any] | None = None
               ) -> tuple[torch.nn.Module, CategoryMap, DictConfig]:
    """A detector checkpoint's model (eval mode, on ``device``), category map and training config: :func:`load`
    with ``kind="faster_rcnn"``. ``overrides``: dotted config keys to change at test time."""
    loaded = load(checkpoint, device, kind=DETECTOR_KIND, overrides=overrides)
    return loaded.model, loaded.categories, loaded.config


def load_tracker(checkpoint: str | Path, device: torch.device | str = "cpu", settings: dict[str, float] | None = None
                 ) -> SiamRPNTracker:
    """A SiamRPN checkpoint's tracker (``"shipped"``: the one that comes with frcnn): :func:`load` with
    ``kind="siamrpn"``. ``settings``: proposal-selection values overriding the run's ``tracker`` config."""
    return load(checkpoint, device, kind=TRACKER_KIND, overrides=settings).tracker
