"""Loading ImageNet weights: torchvision's weights API, or a local state-dict file.

No data set or weights are bundled; a user either has network access (torchvision downloads the file
into ``$TORCH_HOME/hub/checkpoints`` once) or points ``model.backbone.weights`` at a local file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_weight

from frcnn.errors import UserError


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights were asked for but can be neither found locally nor downloaded."""


def load_state_dict(weights: str, enum_prefix: str) -> dict[str, torch.Tensor]:
    """Resolve ``weights`` to a state dict.

    Args:
        weights: a local file path (``.pth``/``.pt``, a plain state dict, loaded with
            ``weights_only=True``), or the name of a torchvision weights entry such as
            ``"IMAGENET1K_V1"`` or ``"ResNet50_Weights.IMAGENET1K_V2"``.
        enum_prefix: torchvision weights enum for bare names, e.g. ``"ResNet50_Weights"``.
    """
    path = Path(os.path.expanduser(weights))
    if path.suffix in (".pth", ".pt", ".bin") or path.exists():
        if not path.is_file():
            raise WeightsUnavailableError(
                f"backbone weights file {path} does not exist: set model.backbone.weights to the path of a "
                "torchvision ImageNet state dict, or to null to train from scratch"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        return state
    name = weights if "." in weights else f"{enum_prefix}.{weights}"
    try:
        entry = get_weight(name)
    except (ValueError, KeyError) as err:
        raise WeightsUnavailableError(
            f"unknown backbone weights {weights!r}: use a torchvision name such as {enum_prefix}.IMAGENET1K_V1, "
            "a local .pth path, or null"
        ) from err
    try:
        return entry.get_state_dict(progress=False, check_hash=False)
    except Exception as err:  # URLError, socket timeouts, HTTP errors: all mean "could not fetch"
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsUnavailableError(
            f"could not download {name} from {entry.url} ({type(err).__name__}: {err}). Without network, "
            f"download that file elsewhere and either copy it into {hub}/ or pass "
            "model.backbone.weights=/path/to/file.pth; or set model.backbone.weights=null to train from scratch"
        ) from err


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``, ignoring the classifier keys the detector does not use."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsUnavailableError(
            f"backbone weights from {source} lack {len(missing)} tensors (first: {missing[0]}): they do not "
            "belong to this architecture"
        )
    bad = [k for k, v in usable.items() if v.shape != own[k].shape]
    if bad:
        raise WeightsUnavailableError(
            f"backbone weights from {source} have the wrong shape for {bad[0]}: {tuple(usable[bad[0]].shape)} "
            f"vs {tuple(own[bad[0]].shape)}"
        )
    module.load_state_dict(usable, strict=False)
