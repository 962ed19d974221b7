"""Named training runs as Hydra overrides of ``conf/train.yaml``, shared by notebooks, tests and docs.

``QUICK`` is the small run notebook 3 shows: the demo's settings (``experiment=demo``) on 160
synthetic images for 60 steps of 2 images, about a CPU minute. The test suite trains it once per session and
shares the run (``FRCNN_TRAINED_RUN``) with notebook 3 and every test that needs a trained model,
instead of training in many places.
"""

from __future__ import annotations

import os
from pathlib import Path

QUICK_DATA = {"num_train": 160, "num_val": 16, "seed": 0}
QUICK = [
    "experiment=demo",
    "data.num_workers=0",
    "data.batch_size=2",  # the demo's lr at half its batch (one CPU minute, not two; the same AP after 60 steps)
    "trainer.reference_batch_size=2",
    "trainer.max_iters=60",
    "trainer.max_time=null",  # 60 steps whatever the machine's speed (the demo's time budget is for make demo)
    "trainer.eval_period=60",
    "trainer.log_period=5",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "schedule.warmup_iters=20",
]
SHARED_RUN_ENV = "FRCNN_TRAINED_RUN"


def quick_run(work: str | Path, extra: list[str] | None = None) -> Path:
    """Generate the quick run's data under ``work/data`` and train it into ``work/run``; return the run dir."""
    import torch

    from frcnn.cli import compose_train
    from frcnn.data.synthetic import generate
    from frcnn.tasks.train import train

    work = Path(work)
    root = generate(work / "data", **QUICK_DATA)
    cfg = compose_train([*QUICK, f"data.root={root}", f"run_dir={work / 'run'}", *(extra or [])])
    torch.manual_seed(0)
    train(cfg)
    return work / "run"


def shared_run() -> Path | None:
    """The quick run a caller (the test suite) already trained and shared, if any."""
    path = os.environ.get(SHARED_RUN_ENV)
    if path and (Path(path) / "last.pt").is_file():
        return Path(path)
    return None
