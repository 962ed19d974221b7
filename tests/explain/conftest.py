"""The shared trained checkpoint as the explanation tests use it: the model, a validation image and its boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def _val_image(trained_run: Path) -> tuple[torch.Tensor, dict]:
    from omegaconf import OmegaConf

    from frcnn.data.images import read_rgb

    cfg = OmegaConf.load(trained_run / "config.yaml")
    annotations = json.loads(Path(cfg.data.val.annotations).read_text())
    info = annotations["images"][0]
    image = torch.from_numpy(read_rgb(Path(cfg.data.val.images) / info["file_name"])).permute(2, 0, 1).float() / 255
    boxes = [a["bbox"] for a in annotations["annotations"] if a["image_id"] == info["id"]]
    return image, {"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes])}


@pytest.fixture(scope="module")
def trained_model(tiny_checkpoint, trained_run):
    from frcnn.tasks.load import load_model

    model, _, _ = load_model(tiny_checkpoint, torch.device("cpu"))
    image, truth = _val_image(trained_run)
    return model, image, truth

