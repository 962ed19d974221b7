"""Checkpoints written atomically and loaded with ``weights_only=True``.

A checkpoint is a dict of plain types and tensors only (model/optimizer/scheduler/scaler state,
iteration, RNG states, the resolved config, the category mapping), so loading never executes pickled
code: a file carrying arbitrary objects is refused by ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frcnn.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, corrupt, or holds objects other than tensors and plain data."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed, fsynced,
    then renamed over ``path``. A process killed mid-save leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; one clear error for anything wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass checkpoint=/path/to/last.pt or best.pt from a run directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data and was refused (weights_only=True); "
            f"only load checkpoints written by frcnn or from a source you trust ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({err}); use another checkpoint") from err
    return upgrade(state)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch, CUDA) as tensors and plain lists, so that a
    checkpoint holding them loads with ``weights_only=True``."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA's only where CUDA is available)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Before frcnn.modeling existed (2026-11-23), the stages were top-level modules and the backbone owned
# the box head; checkpoints of that layout load unchanged through this map.
_MOVED_MODULES = re.compile(
    r"^frcnn\.(structures|preprocess|anchors|box_coder|matching|sampling|rpn|proposals|roi_heads|postprocess|model|backbones)\b"
)


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a checkpoint of an earlier frcnn layout to the current one (in place; returned).

    Config ``_target_`` paths ``frcnn.<stage>`` become ``frcnn.modeling.<stage>``, and model weights
    ``backbone.box_head.*`` become ``roi_heads.box_head.*`` (the RoI stage owns the box head).
    """

    def retarget(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (_MOVED_MODULES.sub(r"frcnn.modeling.\1", v) if k == "_target_" and isinstance(v, str) else retarget(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [retarget(v) for v in node]
        return node

    if isinstance(state, dict) and isinstance(state.get("config"), dict):
        state["config"] = retarget(state["config"])
    weights = state.get("model") if isinstance(state, dict) else None
    if isinstance(weights, dict) and any(k.startswith("backbone.box_head.") for k in weights):
        state["upgraded_from_layout"] = "2026-11-22"  # the optimizer's per-parameter state follows the old order
        state["model"] = type(weights)(
            (("roi_heads." + k[len("backbone."):]) if k.startswith("backbone.box_head.") else k, v) for k, v in weights.items()
        )
    return state


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """Load every tensor of ``state`` whose name and shape match ``model``'s; the rest keep their values.

    Returns:
        ``(loaded, skipped)``: how many of the model's tensors were loaded, and one ``"name (why)"`` per
        model tensor that was not (its shape differs, or ``state`` lacks it). BatchNorm's batch counters
        (``num_batches_tracked``) are neither counted nor reported.
    """
    own = model.state_dict()
    usable, skipped = {}, []
    for name, tensor in own.items():
        if name.endswith("num_batches_tracked"):
            continue
        if name not in state:
            skipped.append(f"{name} (not in the checkpoint)")
        elif state[name].shape != tensor.shape:
            skipped.append(f"{name} (shape {list(state[name].shape)} in the checkpoint, {list(tensor.shape)} here)")
        else:
            usable[name] = state[name]
    model.load_state_dict(usable, strict=False)
    return len(usable), skipped
