"""Shared fixtures: devices to run on, a small model built through the real Hydra config."""

from __future__ import annotations

import logging
import os
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

# albumentations asks PyPI for a newer version on import (up to 2 s, in every training process): not in tests.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Under pytest-xdist (`make test` runs two workers on the 2-core machine) each worker, and every process it
# starts (CLI runs, torchrun ranks, notebook kernels), computes with one thread: two workers with a thread
# per core each would oversubscribe the cores.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate

from frcnn.cli import compose_train  # noqa: E402

if XDIST_WORKER:
    torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device test runs on CPU, and on CUDA too when one is present (skipped cleanly otherwise)."""
    return torch.device(request.param)


SMALL = [
    "model.rpn.anchor_generator.sizes=[32,64,128]",
    "model.rpn.min_size=8",
    "model.roi_heads.pooler_resolution=7",
    "data.min_size_train=[128]",
    "data.min_size_test=128",
    "data.max_size=192",
]


# The same for a feature pyramid (model/backbone=r18_fpn etc.): one anchor size per level, the 7x7 pool of its file.
SMALL_FPN = [o for o in SMALL if not o.startswith(("model.rpn.anchor_generator.sizes", "model.roi_heads.pooler"))]
SMALL_FPN += ["data.fpn_anchor_sizes=[8,16,32,64,128]"]


def small_model(num_classes: int = 3, overrides: list[str] | None = None) -> torch.nn.Module:
    """ResNet-18-C4 Faster R-CNN at 128 px (or the pyramid an override names), built from conf/ as training builds it."""
    overrides = overrides or []
    base = SMALL_FPN if any(o.startswith("model/backbone=") and "fpn" in o for o in overrides) else SMALL
    cfg = compose_train(base + [f"data.num_classes={num_classes}"] + overrides)
    return instantiate(cfg.model)


TINY_TRAIN = [
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "data.num_workers=0",
    "data.min_size_train=[128]",
    "data.min_size_test=128",
    "data.max_size=192",
    "model.rpn.anchor_generator.sizes=[32,64,128]",
    "model.roi_heads.pooler_resolution=7",
    "model.roi_heads.batch_size_per_image=32",
    "model.rpn.post_nms_topk_test=50",
    "trainer.reference_batch_size=2",
    "optim.lr=0.01",
    "schedule.warmup_iters=2",
    "trainer.device=cpu",
    "trainer.log_period=1",
    "trainer.progress=false",
    "trainer.tensorboard=false",
]


# The same tiny run on ResNet-18-FPN: its own anchors (one size per level) and pool size, a smaller box head.
TINY_TRAIN_FPN = [o for o in TINY_TRAIN if not o.startswith(("model.rpn.anchor_generator.sizes", "model.roi_heads.pooler"))]
TINY_TRAIN_FPN += ["model/backbone=r18_fpn", "data.fpn_anchor_sizes=[8,16,32,64,128]",
                   "model.roi_heads.box_head.representation_size=256", "model.rpn.post_nms_topk_train=200"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A synthetic COCO-format data set of 8 training and 4 validation images."""
    from frcnn.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, num_train=8, num_val=4, seed=0)
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The quick run of ``frcnn.recipes`` (notebook 3's, ~1 CPU minute), trained once per test session.

    Shared with notebook 3 through ``FRCNN_TRAINED_RUN`` (its kernel inherits the environment) and
    with every test that needs a trained model, so the suite trains one small model, not several. Under
    pytest-xdist the workers share it too: the first to need it trains it in the session's folder (under a
    file lock); the others wait for it and reuse it.
    """
    from filelock import FileLock

    from frcnn.recipes import SHARED_RUN_ENV, quick_run

    if XDIST_WORKER:
        shared = tmp_path_factory.getbasetemp().parent / "trained"  # pytest-N/: this session's, every worker's
        with FileLock(str(shared) + ".lock"):
            if not (shared / "READY").is_file():
                quick_run(shared)
                (shared / "READY").touch()
        run = shared / "run"
    else:
        run = quick_run(tmp_path_factory.mktemp("trained"))
    os.environ[SHARED_RUN_ENV] = str(run)
    return run


@pytest.fixture(scope="session")
def tiny_checkpoint(trained_run) -> Path:
    """A trained checkpoint (the shared quick run's ``last.pt``) for inference and evaluation tests."""
    return trained_run / "last.pt"


REPO = Path(__file__).resolve().parents[1]


@dataclass
class ScriptResult:
    returncode: int
    stdout: str
    stderr: str


def run_script_in_process(monkeypatch: pytest.MonkeyPatch, name: str, args: list[str]) -> int:
    """Run ``scripts/<name>`` with ``args`` as its ``__main__`` in this process; its exit status.

    Hydra's logging set-up, its global state and ``HYDRA_FULL_ERROR`` are undone afterwards.
    """
    from hydra.core.global_hydra import GlobalHydra

    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    monkeypatch.setattr(sys, "argv", [str(REPO / "scripts" / name), *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code = 0
    try:
        runpy.run_path(str(REPO / "scripts" / name), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        GlobalHydra.instance().clear()
        for handler in root.handlers[:]:  # Hydra's console and file handlers: closed, pytest's put back
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
    return code


@pytest.fixture
def run_script(monkeypatch, capfd):
    """Run ``scripts/<name>`` with ``args`` as its ``__main__``, in this process: ``ScriptResult``.

    The script's own code runs as from the command line (argument parsing, Hydra's app, friendly errors,
    exit status), without a second interpreter paying the 10-15 s import of torch and torchvision again.
    Output is captured at the file-descriptor level (``capfd``), so what a forked data-loader worker
    writes is seen too. Real processes stay where they are the point: ``train.py`` under torchrun, on
    SIGTERM and in a multirun, and the wrong-override cases of the
    scripts that have them.
    """

    def run(name: str, args: list[str]) -> ScriptResult:
        code = run_script_in_process(monkeypatch, name, args)
        captured = capfd.readouterr()
        return ScriptResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def tiny_sequences(tmp_path_factory):
    """Two generated 10-frame tracking sequences (tests/tracking, tests/tasks/test_track.py)."""
    from frcnn.tracking.sequences import generate_sequences

    return generate_sequences(tmp_path_factory.mktemp("seqs"), num_sequences=2, length=10, seed=0)
