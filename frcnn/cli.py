"""Shared helpers for the command-line entry points: one clear message instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from frcnn.backbones.weights import WeightsUnavailableError
from frcnn.data.coco import AnnotationError
from frcnn.data.images import ImageReadError
from frcnn.engine.checkpoint import CheckpointError
from frcnn.engine.trainer import TrainingError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/train.yaml`` composed with Hydra ``overrides`` outside a Hydra app (tests, benchmarks).

    ``run_dir`` interpolates Hydra's runtime output folder, which exists only inside ``@hydra.main``:
    override it before resolving the config.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


# Errors whose message already tells the user what is wrong and how to fix it.
USER_ERRORS = (
    AnnotationError,
    ImageReadError,
    CheckpointError,
    TrainingError,
    WeightsUnavailableError,
    FileNotFoundError,
    OmegaConfBaseException,
    HydraException,
    ValueError,
)


def friendly_errors(fn: Callable) -> Callable:
    """Run ``fn``; a user error ends the process with one line on stderr and exit code 2."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            cause = err
            # Hydra wraps errors raised in a _target_'s constructor: report the original one.
            while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
                cause = cause.__cause__
            msg = str(cause).strip().replace("\n", " ")
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapper
