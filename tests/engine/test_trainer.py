"""The trainer's parts on their own: the time budget, DDP settings, and agreement across ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import frcnn.engine.schedule as schedule
from frcnn.config import ConfigError, parse_duration
from frcnn.engine.distributed import agree_across_ranks
from frcnn.engine.schedule import WarmupCosine, WarmupMultiStep
from frcnn.engine.trainer import Budget, ddp_broadcasts_buffers
from tests.conftest import small_model


def test_parse_duration():
    assert parse_duration(None) is None
    assert parse_duration(90) == 90.0
    assert parse_duration("00:10:30") == 630.0
    assert parse_duration("1:00:00:05") == 86405.0
    for bad in ("soon", 0, -5, "1:2:3:4:5"):
        with pytest.raises(ConfigError, match="trainer.max_time=.* allowed: null, seconds > 0"):
            parse_duration(bad)


def test_budget_progress_is_the_larger_fraction_and_counts_time_spent_before_resume(monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: clock["now"])
    b = Budget(max_iters=100, max_time=60.0, spent=15.0)  # resumed after 15 s
    assert b.progress(10) == pytest.approx(0.25)  # 15/60 > 10/100
    clock["now"] += 15
    assert b.progress(10) == pytest.approx(0.5) and b.time_left()
    assert b.progress(80) == pytest.approx(0.8)  # the step count is further along
    clock["now"] += 30
    assert b.progress(80) == 1.0 and not b.time_left()
    assert Budget(max_iters=100, max_time=None).progress(25) == 0.25


def test_schedules_over_the_budget_fraction():
    cos = WarmupCosine(max_iters=1000, warmup_iters=10, warmup_factor=0.1)
    assert cos.factor(500, progress=0.5) == pytest.approx(0.5)  # half the budget: half way down the cosine
    assert cos.factor(20, progress=1.0) == pytest.approx(0.0)  # time's up at step 20
    assert cos.factor(5, progress=0.0) == pytest.approx(0.55)  # warm-up counts steps
    step = WarmupMultiStep(milestones=[600, 800], max_iters=1000, warmup_iters=0)
    assert [step.factor(10, p) for p in (0.59, 0.6, 0.79, 0.8)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert step(600) == pytest.approx(0.1) and step(599) == 1.0  # by steps without a progress


def test_ddp_broadcasts_buffers_only_when_batchnorm_updates_statistics():
    frozen = small_model(overrides=["model.backbone.norm=frozen_bn"])
    assert not ddp_broadcasts_buffers(frozen)
    assert not ddp_broadcasts_buffers(small_model(overrides=["model.backbone.norm=gn"]))
    assert ddp_broadcasts_buffers(small_model(overrides=["model.backbone.norm=bn"]))


def _agree(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # rank 0 met 1 unreadable image, rank 1 met 2; only rank 1 has a non-finite loss
        flags_and_count = agree_across_ranks([True, rank == 0], [rank + 1, 0.5 * rank], device=torch.device("cpu"))
        queue.put((rank, flags_and_count))
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_flags_and_the_global_count():
    """The bad-image count is summed over ranks (a per-rank count lets N times the fraction through)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_agree, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == {0: [True, False, 3, 0.5], 1: [True, False, 3, 0.5]}


def test_a_failure_saves_the_last_completed_step_only_if_it_is_whole_and_finite(tmp_path, capsys):
    """The failure path (Checkpointer.on_failure): no save before the first step, in the middle of an
    optimizer update or with non-finite weights; otherwise the failing rank saves its completed step once."""
    from types import SimpleNamespace

    from frcnn.engine.hooks import Checkpointer, MetricsLogger, OverflowMonitor

    model = torch.nn.Linear(2, 2)
    run = SimpleNamespace(it=0, start_iter=0, updating=False, model=model, world=1, is_main=True, run_dir=tmp_path)
    run.checkpoint_state = lambda rngs: {"iteration": run.it, "rng": rngs}
    log = MetricsLogger(tmp_path, period=1, tensorboard=False, progress=False, overflows=OverflowMonitor(3))
    checkpointer = Checkpointer(period=1000, log=log)
    last, error = tmp_path / "last.pt", RuntimeError("any failure")

    checkpointer.on_failure(run, error)  # no step completed
    run.it, run.updating = 3, True
    checkpointer.on_failure(run, error)  # the weights are neither step 2's nor step 3's
    assert not last.exists()
    run.updating = False
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    checkpointer.on_failure(run, error)
    assert not last.exists() and "the weights are not finite" in capsys.readouterr().out
    with torch.no_grad():
        model.weight[0, 0] = 1.0
    checkpointer.on_failure(run, error)
    assert torch.load(last, weights_only=True)["iteration"] == 3 and checkpointer.saved_at == 3
    last.unlink()
    checkpointer.on_failure(run, error)  # step 3 is already saved
    assert not last.exists()


def test_a_gpu_sized_run_on_the_cpu_says_so_once_its_pace_is_known():
    """30 s a step with 89 990 steps left and no time budget: one line with the pace, the hours and what to run."""
    from frcnn.engine.trainer import cpu_pace_message

    line = cpu_pace_message(30.0, 89_990, None)
    assert line.startswith("on the CPU a step takes about 30.0 s: the 89990 steps left would take about 750 hours")
    assert "experiment=demo_fpn" in line and "trainer.max_time" in line
    assert cpu_pace_message(30.0, 100, None) is None  # under an hour: nothing to say
    assert cpu_pace_message(30.0, 89_990, 600.0) is None  # a time budget bounds the run
