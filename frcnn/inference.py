"""Rebuild a trained detector from its checkpoint, and run it on single images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from frcnn.data.coco import CategoryMap
from frcnn.engine.checkpoint import CheckpointError, load_checkpoint


def load_model(
    checkpoint: str | Path, device: torch.device, overrides: dict[str, Any] | None = None
) -> tuple[torch.nn.Module, CategoryMap, DictConfig]:
    """The model of ``checkpoint`` in eval mode on ``device``, its category map and training config.

    Args:
        overrides: dotted config keys to change at test time, e.g.
            ``{"model.roi_heads.score_thresh": 0.3}``.
    """
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    for key in ("model", "config", "categories"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {checkpoint} has no '{key}' entry; it was not written by frcnn's trainer")
    cfg = OmegaConf.create(ckpt["config"])
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, key, value, force_add=False)
    OmegaConf.update(cfg, "model.backbone.weights", None)  # the checkpoint holds the trained weights
    model = instantiate(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), CategoryMap.from_dict(ckpt["categories"]), cfg


@torch.no_grad()
def detect(model: torch.nn.Module, image: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Detections for one ``[H, W, 3]`` uint8 RGB image, boxes in its pixels (on the CPU)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(device)
    det = model([tensor]).detections[0]
    return {k: v.cpu() for k, v in det.items()}
