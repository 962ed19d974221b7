"""Shared fixtures: devices to run on, a small model built through the real Hydra config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = str(Path(__file__).resolve().parents[1] / "conf")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device test runs on CPU, and on CUDA too when one is present (skipped cleanly otherwise)."""
    return torch.device(request.param)


def compose_train(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=overrides or [])


SMALL = [
    "model.rpn.anchor_generator.sizes=[32,64,128]",
    "model.rpn.min_size=8",
    "model.roi_heads.pooler_resolution=7",
    "data.min_size_train=[128]",
    "data.min_size_test=128",
    "data.max_size=192",
]


def small_model(num_classes: int = 3, overrides: list[str] | None = None) -> torch.nn.Module:
    """ResNet-18-C4 Faster R-CNN at 128 px, built from conf/ exactly as training builds it."""
    cfg = compose_train(SMALL + [f"data.num_classes={num_classes}"] + (overrides or []))
    return instantiate(cfg.model)
