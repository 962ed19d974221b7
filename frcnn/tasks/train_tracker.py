"""Train the SiamRPN tracker: ``train_tracker(cfg)`` is what ``scripts/train_tracker.py`` and the tests call
(``conf/siamrpn.yaml``), the detector's training loop with the tracker's builders
(:data:`frcnn.tracking.training.TRACKER`)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from frcnn.config import amp_dtype
from frcnn.engine.launch import load_resume, run_training
from frcnn.tracking.training import CHECKPOINT_KIND, TRACKER


def train_tracker(cfg: DictConfig) -> dict[str, Any]:
    """Train SiamRPN as ``cfg`` says, writing into ``cfg.run_dir``; returns ``iteration`` and ``stopped_by_signal``."""
    amp_dtype(cfg.trainer.amp, "trainer.amp")
    return run_training(cfg, TRACKER, load_resume(cfg, CHECKPOINT_KIND))
