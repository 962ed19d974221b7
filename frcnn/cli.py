"""Shared helpers for the command-line entry points: one line for the user's mistakes, a traceback for ours.

A mistake the user can fix (a wrong config key or value, a missing file, bad data) ends the process with
one line on stderr, ``error: <what is wrong and how to fix it>``, and exit status 2. Everything else is
a bug in frcnn or a library and is re-raised with its traceback: a ``ValueError`` from inside torch
is not the user's fault, so errors are told apart by class (:mod:`frcnn.errors`), never by built-in base.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from frcnn.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with Hydra ``overrides`` outside a Hydra app (tests, benchmarks).

    ``run_dir`` (train) and ``output_dir`` (evaluate, infer) interpolate Hydra's runtime output folder,
    which exists only inside ``@hydra.main``: override them before resolving the config.
    """
    if GlobalHydra.instance().is_initialized():  # inside one of our Hydra apps: the same config folder
        return compose(config_name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/train.yaml`` composed with Hydra ``overrides``: :func:`compose_config` of ``"train"``."""
    return compose_config("train", overrides)


def user_message(err: BaseException) -> str | None:
    """The one-line message for a mistake the user can fix, or None for a bug (keep its traceback).

    User mistakes are the project's own errors (:class:`frcnn.errors.UserError`, matched by class, never
    by a built-in base such as ``ValueError``), Hydra's complaints about the overrides or the composition,
    OmegaConf's about a config value, and a config whose keys do not fit the signature of its ``_target_``.
    """
    if isinstance(err, UserError):
        return _one_line(_unwrap_worker_message(str(err)))
    if isinstance(err, InstantiationException):
        return _instantiation_message(err)
    if isinstance(err, OverrideParseException):
        lines = str(err).splitlines()
        detail = f" ({lines[1].strip()})" if len(lines) > 1 else ""
        return f"cannot parse the override {err.override!r}{detail}; overrides are key=value, e.g. trainer.max_iters=100"
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"{group}={name} is not a config option; allowed: {' | '.join(err.options)}"
    if isinstance(err, ConfigCompositionException) and isinstance(err.__cause__, (ConfigAttributeError, ConfigKeyError)):
        return _unknown_key_message(err.__cause__) or _one_line(f"{err} ({err.__cause__})")
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        cause = f" ({err.__cause__})" if isinstance(err.__cause__, OmegaConfBaseException) else ""
        return _one_line(f"{err}{cause}")
    return None


def _instantiation_message(err: InstantiationException) -> str | None:
    cause = err.__cause__
    if cause is None:  # Hydra's own check of the node (e.g. the type of _args_)
        return _one_line(str(err))
    inner = user_message(cause)  # e.g. a ConfigError raised by a constructor
    if inner is not None:
        return inner
    tb = cause.__traceback__
    if isinstance(cause, TypeError) and tb is not None and tb.tb_next is None:
        # Raised by the call itself, before the target ran a line: the config's keys do not fit its signature.
        return _one_line(str(err))
    if str(err).startswith("Error locating target"):
        return _one_line(f"{err} ({cause})")
    return None  # the target itself failed: a bug, keep the traceback


def _unknown_key_message(cause: ConfigAttributeError | ConfigKeyError) -> str | None:
    """``model.rpn.nms_tresh is not a config key; did you mean model.rpn.nms_thresh? ...``."""
    parent = cause.parent_node
    if not isinstance(parent, DictConfig) or not cause.full_key or not isinstance(cause.key, str):
        return None
    keys = [str(k) for k in parent.keys() if not str(k).startswith("_")]
    where = cause.full_key.rpartition(".")[0]
    prefix = f"{where}." if where else ""
    close = difflib.get_close_matches(cause.key, keys, n=1)
    guess = f"did you mean {prefix}{close[0]}? " if close else ""
    return (
        f"{cause.full_key} is not a config key; {guess}{where or 'the top level'} has: {', '.join(keys)} "
        f"(+{cause.full_key}=... adds a new key)"
    )


def _unwrap_worker_message(msg: str) -> str:
    """The original message of an error a DataLoader worker raised.

    torch re-raises a worker's exception in the main process as the same class, with the message
    ``"Caught <Error> in DataLoader worker process N.\nOriginal Traceback ...\n<module>.<Error>: <message>"``.
    """
    if not msg.startswith("Caught ") or "\nOriginal Traceback" not in msg:
        return msg
    last = msg.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def _one_line(msg: str) -> str:
    return "; ".join(line.strip() for line in msg.strip().splitlines() if line.strip())


def _exit_with(msg: str) -> NoReturn:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def friendly_errors(fn: Callable) -> Callable:
    """Run ``fn``; a user mistake ends the process with one line on stderr and exit status 2, a bug is re-raised."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            msg = user_message(err)
            if msg is None:
                raise
            _exit_with(msg)

    return wrapper


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """``@hydra.main`` on ``conf/<config_name>.yaml``, with :func:`friendly_errors` for the task and for Hydra.

    Hydra parses the overrides and composes the config before the task runs, and reports a mistake
    there (an unknown key, a bad override, a missing config option) in several lines with exit status 1.
    ``HYDRA_FULL_ERROR=1``, Hydra's documented switch, makes it raise instead: it is set while the app
    runs so that those errors become one line here, and a bug's traceback is printed in full. Everything
    else (multirun with ``-m``, ``hydra.*`` overrides, ``--cfg``, launchers) is Hydra's, unchanged. A
    user who sets ``HYDRA_FULL_ERROR=1`` gets Hydra's tracebacks for composition errors, as documented.
    """

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(friendly_errors(task))
        friendly_app = friendly_errors(app)  # Hydra's own (composition) errors, raised under HYDRA_FULL_ERROR=1

        @wraps(app)
        def main(*args, **kwargs):
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                return app(*args, **kwargs)
            os.environ["HYDRA_FULL_ERROR"] = "1"
            try:
                return friendly_app(*args, **kwargs)
            finally:
                os.environ.pop("HYDRA_FULL_ERROR", None)

        return main

    return decorate
