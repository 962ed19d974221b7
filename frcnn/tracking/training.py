"""Train SiamRPN with the detector's trainer: the same loop, hooks (checkpoints, resume, preemption, AMP
overflow, logging), DDP and bad-input handling; only the data, the model and the batch differ.

``train_tracker(cfg)`` is what ``scripts/train_tracker.py`` and the tests call (``conf/siamrpn.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from frcnn.config import amp_dtype
from frcnn.data.coco import CocoDetection
from frcnn.engine.builders import ensure_generated, ensure_synthetic_at
from frcnn.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from frcnn.engine.trainer import Trainer
from frcnn.tracking.model import SiamRPN
from frcnn.tracking.pairs import PairBatch, TrackingPairs, collate_pairs
from frcnn.tracking.sequences import generate_sequences, load_sequences
from frcnn.tracking.tracker import SiamRPNTracker, TrackerSettings

CHECKPOINT_KIND = "siamrpn"
# The tracker that comes with frcnn (docs/tracking.md, "The shipped tracker"): ``checkpoint=shipped``.
SHIPPED_TRACKER = Path(__file__).parent / "weights" / "siamrpn_shipped.pt"


def train_tracker(cfg: DictConfig) -> dict[str, Any]:
    """Train SiamRPN as ``cfg`` says, writing into ``cfg.run_dir``; returns ``iteration`` and ``stopped_by_signal``."""
    amp_dtype(cfg.trainer.amp, "trainer.amp")
    return TrackerTrainer.run(cfg)


class TrackerTrainer(Trainer):
    """:class:`~frcnn.engine.trainer.Trainer` on (template, search, box) pairs."""

    collate_fn = staticmethod(collate_pairs)
    checkpoint_kind = CHECKPOINT_KIND
    # SyncBatchNorm would replace the backbone's SiameseBatchNorm2d and with it the template branch's own
    # statistics; a GPU's batch of 16-32 pairs gives BatchNorm enough samples by itself.
    sync_batchnorm = False
    bad_input_name = "frame"  # ids: the sequences' frames in order, then one per still image (pairs.TrackingPairs)
    bad_input_hint = "each skipped frame's file is named in a warning above"

    def _build_data(self) -> None:
        cfg = self.cfg
        if cfg.data.get("sequences") is not None:
            ensure_generated(cfg.data.sequences.root, cfg.data.sequences.get("generate"), self.dist, generate_sequences,
                             "synthetic tracking sequences", key="data.sequences")
        still = None
        if cfg.data.get("still") is not None:
            ensure_synthetic_at(cfg.data.still.root, cfg.data.still.get("generate"), self.dist, key="data.still")
            still = CocoDetection(cfg.data.still.images, cfg.data.still.annotations, on_unreadable="replace")
        sequences = load_sequences(cfg.data.sequences.root) if cfg.data.get("sequences") is not None else []
        d = cfg.data
        self.train_set = TrackingPairs(
            sequences, still, max_gap=int(d.max_gap), shift=float(d.shift), scale_jitter=float(d.scale_jitter),
            negative_fraction=float(d.negative_fraction), distractor_fraction=float(d.get("distractor_fraction", 0.0)),
            context=float(d.context),
        )
        self.categories = None
        self.val_set = None
        # The skipped ids count sequence frames and still images (one id per image, however many objects it has).
        self.num_inputs = len(self.train_set.frames) + (len(still.records) if still is not None else 0)
        self.max_bad_images = float(d.get("max_bad_image_fraction", 0.01)) * self.num_inputs
        if self.is_main:
            summary = (f"train: {len(self.train_set)} pair keys ({len(self.train_set.frames)} frames of {len(sequences)} "
                       f"sequences, {len(self.train_set.objects)} objects of still images)")
            print(summary, flush=True)
            (self.run_dir / "data_report.txt").write_text(summary + "\n")

    def new_model(self) -> torch.nn.Module:
        return instantiate(self.cfg.model)

    def forward_losses(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        self.skipped_images.update(batch.skipped.tolist())
        templates, searches, boxes = (t.to(self.device, non_blocking=True) for t in batch[:3])
        return self.step_model(templates, searches, boxes).losses


def load_tracker(checkpoint: str | Path, device: torch.device | str = "cpu", settings: dict[str, float] | None = None) -> SiamRPNTracker:
    """A :class:`SiamRPNTracker` around the model of a SiamRPN training checkpoint (``weights_only=True``);
    ``checkpoint="shipped"``: the tracker that comes with frcnn (:data:`SHIPPED_TRACKER`).

    ``settings``: proposal-selection values overriding the run's ``tracker`` config.
    """
    if str(checkpoint) == "shipped":
        checkpoint = SHIPPED_TRACKER
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"checkpoint {checkpoint} is not a SiamRPN checkpoint (train one with scripts/train_tracker.py)")
    cfg = OmegaConf.create(ckpt["config"])
    model: SiamRPN = instantiate(cfg.model)
    model.load_state_dict(ckpt["model"])
    # The crops' context is the one the model was trained with.
    values = {"context": float(cfg.data.context)} | dict(OmegaConf.to_container(cfg.get("tracker", {}))) | dict(settings or {})
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
