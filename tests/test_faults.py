"""Training faults: a non-finite loss stops the run cleanly; SIGTERM saves and resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frcnn.engine.trainer import TrainingError, train
from frcnn.model import FasterRCNN
from tests.conftest import TINY_TRAIN, compose_train

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    real_forward = FasterRCNN.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4 and out.losses:
            out.losses["loss_cls"] = out.losses["loss_cls"] * float("nan")
        return out

    monkeypatch.setattr(FasterRCNN, "forward", poisoned)
    cfg = compose_train(TINY_TRAIN + [f"data.root={tiny_data}", "trainer.max_iters=6", "trainer.eval_period=0",
                                      "trainer.checkpoint_period=2", f"run_dir={tmp_path}"])
    with pytest.raises(TrainingError, match="non-finite loss at iteration 3"):
        train(cfg)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 2


def test_sigterm_saves_at_step_boundary_and_resume_continues(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, str(REPO / "scripts" / "train.py"), *TINY_TRAIN, f"data.root={tiny_data}",
            "trainer.eval_period=0", "trainer.checkpoint_period=1000"]
    proc = subprocess.Popen(args + ["trainer.max_iters=1000", f"hydra.run.dir={run}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped_at = torch.load(run / "last.pt", weights_only=True)["iteration"]
    assert 2 <= stopped_at < 1000
    resumed = subprocess.run(args + [f"trainer.max_iters={stopped_at + 2}", f"train.resume={run / 'last.pt'}",
                                     f"hydra.run.dir={tmp_path / 'resumed'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    iters = [json.loads(l)["iteration"] for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert iters == [stopped_at + 1, stopped_at + 2]


def test_too_many_unreadable_training_images_fail_the_run(tiny_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for name in ("000000.png", "000001.png"):
        (data / "train" / name).write_bytes(b"corrupt")
    cfg = compose_train(TINY_TRAIN + [f"data.root={data}", "trainer.max_iters=8", "trainer.eval_period=0",
                                      "data.max_bad_image_fraction=0.1", f"run_dir={tmp_path / 'run'}"])
    with pytest.warns(UserWarning, match="skipping unreadable image"), pytest.raises(TrainingError, match="unreadable"):
        train(cfg)
    assert "skipped at load time" in (tmp_path / "run" / "data_report.txt").read_text()


def test_amp_overflow_streak_fails_the_run():
    from frcnn.engine.trainer import OverflowMonitor

    m = OverflowMonitor(3)
    for it, overflow in enumerate([True, True, False, True, True]):
        m.update(overflow, it)
    assert (m.streak, m.total) == (2, 4)
    with pytest.raises(TrainingError, match="3 fp16 overflows in a row at iteration 9 .5 skipped"):
        m.update(True, 9)


def test_ddp_ranks_with_only_negative_images_do_not_hang(tiny_data, tmp_path):
    import shutil

    from tests.test_train import run_group, tiny

    data = tmp_path / "neg"
    shutil.copytree(tiny_data, data)
    ann = data / "annotations" / "train.json"
    d = json.loads(ann.read_text())
    d["annotations"] = []
    ann.write_text(json.dumps(d))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "scripts" / "train.py"),
           *tiny(data, run, ["trainer.max_iters=3", "trainer.eval_period=0"])]
    res = run_group(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    assert [r["loss_box_reg"] for r in records] == [0.0, 0.0, 0.0] and all(r["loss_cls"] > 0 for r in records)
