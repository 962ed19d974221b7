"""Checkpoints written atomically and loaded with ``weights_only=True``.

A checkpoint is a dict of plain types and tensors only (model/optimizer/scheduler/scaler state,
iteration, RNG states, the resolved config, the category mapping), so loading never executes pickled
code: a file carrying arbitrary objects is refused by ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

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
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data and was refused (weights_only=True); "
            f"only load checkpoints written by frcnn or from a source you trust ({str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({err}); use another checkpoint") from err
