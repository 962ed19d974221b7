"""Training faults: a non-finite loss stops the run cleanly; SIGTERM saves and resumes."""

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frcnn.engine.trainer import TrainingError
from frcnn.modeling.model import FasterRCNN
from frcnn.tasks.train import train
from tests.conftest import TINY_TRAIN, compose_train

REPO = Path(__file__).resolve().parents[2]

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
    # the 3 completed steps are kept (the checkpoint period was 2): last.pt of the last completed step
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 3


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
    # Resumed in this process (the CLI is the thin wrapper above): no second interpreter to start.
    resumed = train(compose_train(TINY_TRAIN + [f"data.root={tiny_data}", "trainer.eval_period=0",
                                                "trainer.checkpoint_period=1000", f"trainer.max_iters={stopped_at + 2}",
                                                f"train.resume={run / 'last.pt'}", f"run_dir={tmp_path / 'resumed'}"]))
    assert resumed["iteration"] == stopped_at + 2 and resumed["stopped_by_signal"] is None
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
    with pytest.warns(UserWarning, match="skipping unreadable image"), pytest.raises(
        TrainingError, match=r"2 training images are unreadable.*image ids \[.*data\.preflight=true lists them all"
    ):
        train(cfg)
    assert "skipped at load time" in (tmp_path / "run" / "data_report.txt").read_text()


def test_amp_overflow_streak_fails_the_run():
    from frcnn.engine.hooks import OverflowMonitor

    m = OverflowMonitor(3)
    for it, overflow in enumerate([True, True, False, True, True]):
        m.update(overflow, it)
    assert (m.streak, m.total) == (2, 4)
    with pytest.raises(TrainingError, match="3 fp16 overflows in a row at iteration 9 .5 skipped"):
        m.update(True, 9)


def _copy_data(tiny_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def test_corrupt_validation_image_is_left_out_counted_and_the_run_kept(tiny_data, tmp_path):
    data = _copy_data(tiny_data, tmp_path)
    png = data / "val" / "000001.png"
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])  # truncated
    run = tmp_path / "run"
    cfg = compose_train(TINY_TRAIN + [f"data.root={data}", "trainer.max_iters=2", "trainer.eval_period=2",
                                      "trainer.checkpoint_period=1000", f"run_dir={run}"])
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        out = train(cfg)
    assert out["iteration"] == 2 and out["val/unreadable_images"] == 1
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 2
    assert (run / "best.pt").is_file()
    val = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "val/AP" in l]
    assert val[-1]["val/unreadable_images"] == 1


def test_a_failure_in_evaluation_keeps_the_steps_checkpoint(tiny_data, tmp_path, monkeypatch):
    import frcnn.tasks.train as hooks

    def broken(*args, **kwargs):
        # the step's checkpoint is already on disk when evaluation runs
        assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 2
        raise OSError("No space left on device")

    run = tmp_path / "run"
    monkeypatch.setattr(hooks, "evaluate_results", broken)
    cfg = compose_train(TINY_TRAIN + [f"data.root={tiny_data}", "trainer.max_iters=2", "trainer.eval_period=2",
                                      "trainer.checkpoint_period=1000", f"run_dir={run}"])
    with pytest.raises(OSError, match="No space left"):
        train(cfg)
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 2  # saved before evaluating


def test_any_failure_after_training_started_leaves_the_last_completed_step(tiny_data, tmp_path, monkeypatch):
    real_forward = FasterRCNN.forward
    calls = {"n": 0}

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")  # any bug or fault
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(FasterRCNN, "forward", crashing)
    run = tmp_path / "run"
    cfg = compose_train(TINY_TRAIN + [f"data.root={tiny_data}", "trainer.max_iters=8", "trainer.eval_period=0",
                                      "trainer.checkpoint_period=1000", f"run_dir={run}"])
    with pytest.raises(RuntimeError, match="illegal memory access"):  # our bugs keep their traceback
        train(cfg)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 3
    resumed = train(compose_train(TINY_TRAIN + [f"data.root={tiny_data}", "trainer.max_iters=4", "trainer.eval_period=0",
                                                f"train.resume={run / 'last.pt'}", f"run_dir={tmp_path / 'resumed'}"]))
    assert resumed["iteration"] == 4


def test_decompression_bomb_in_training_is_skipped_and_counted(tiny_data, tmp_path):
    from tests.data.test_coco import bomb_png

    data = _copy_data(tiny_data, tmp_path)
    bomb_png(data / "train" / "000002.png")
    run = tmp_path / "run"
    cfg = compose_train(TINY_TRAIN + [f"data.root={data}", "trainer.max_iters=4", "trainer.eval_period=0",
                                      "data.max_bad_image_fraction=0.2", f"run_dir={run}"])
    with pytest.warns(UserWarning, match="skipping unreadable image .*30000x30000"):
        assert train(cfg)["iteration"] == 4
    report = (run / "data_report.txt").read_text()
    assert "skipped at load time" in report
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    assert records[-1]["unreadable_train_images"] == 1


def test_max_time_ends_training_on_time_with_a_full_schedule(tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = compose_train(TINY_TRAIN + [f"data.root={tiny_data}", "trainer.max_iters=100000", "trainer.max_time=3",
                                      "trainer.eval_period=0", "schedule=cosine", f"run_dir={run}"])
    out = train(cfg)
    assert 1 <= out["iteration"] < 100000  # however slow the machine: the budget, not the step count, ended it
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    # the cosine schedule ran over the time budget: the last step's lr is near zero, not near the base
    # lr it would still have at step ~5 of a 100000-step schedule
    assert records[-1]["lr"] < 0.2 * cfg.optim.lr
    assert records[-1]["elapsed_s"] >= 3
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == out["iteration"]


class _InfGradient(torch.autograd.Function):
    """Adds 0 to the loss, sends an infinite gradient into ``x``: what an fp16 overflow looks like."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return torch.full(ctx.shape, float("inf"), dtype=grad.dtype, device=grad.device)


def test_fp16_overflows_in_real_steps_are_counted_and_fail_the_run(tiny_data, tmp_path, monkeypatch):
    """trainer.amp=fp16 with a GradScaler: steps whose gradients overflow are skipped (the scale drops),
    the monitor counts them, and max_overflow_streak of them in a row end the run with last.pt kept."""
    real_forward = FasterRCNN.forward
    calls = {"n": 0}

    def overflowing(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if out.losses and calls["n"] > 2:  # two clean steps, then overflow every step
            out.losses["loss_cls"] = out.losses["loss_cls"] + _InfGradient.apply(self.rpn.head.conv.weight)
        return out

    monkeypatch.setattr(FasterRCNN, "forward", overflowing)
    # fp16 arithmetic is emulated on a CPU (~10x slower): compute in fp32 and keep the rest of the fp16
    # path (GradScaler, skipped steps, the monitor), which is what this test is about.
    monkeypatch.setattr(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext())
    run = tmp_path / "run"
    cfg = compose_train(TINY_TRAIN + [f"data.root={tiny_data}", "trainer.max_iters=20", "trainer.eval_period=0",
                                      "trainer.amp=fp16", "trainer.max_overflow_streak=3", "trainer.checkpoint_period=1000",
                                      f"run_dir={run}"])
    with pytest.raises(TrainingError, match="3 fp16 overflows in a row at iteration 5 .3 skipped steps in all"):
        train(cfg)
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    assert [r["amp_skipped_steps"] for r in records] == [0, 0, 1, 2]  # logged every step (log_period=1)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 5 and ckpt["scaler"]["scale"] < 65536.0  # the scale dropped at each overflow


def test_diverged_weights_never_replace_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    real_forward = FasterRCNN.forward
    calls = {"n": 0}

    def diverged(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # as if step 3's update had blown the classifier's weights up
            with torch.no_grad():
                self.roi_heads.predictor.cls_score.weight.fill_(float("nan"))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(FasterRCNN, "forward", diverged)
    run = tmp_path / "run"
    cfg = compose_train(TINY_TRAIN + [f"data.root={tiny_data}", "trainer.max_iters=6", "trainer.eval_period=0",
                                      "trainer.checkpoint_period=2", f"run_dir={run}"])
    with pytest.raises(TrainingError, match="non-finite loss at iteration 3"):
        train(cfg)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
