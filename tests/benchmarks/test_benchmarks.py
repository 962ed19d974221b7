"""frcnn.benchmarks.speed in-process, and scripts/benchmark.py and scripts/race.py end to end on tiny inputs, run as
``__main__`` in this process (their wrong-override case in a process of its own)
(no real timing is asserted). The race's turn-taking (frcnn.benchmarks.race) on a clock stepped by hand; the
race itself only through its script."""

from __future__ import annotations

import itertools
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from frcnn.benchmarks import race, speed
from frcnn.cli import compose_train

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "data.min_size_train=[96]",
    "data.min_size_test=96",
    "data.max_size=128",
    "model.roi_heads.batch_size_per_image=8",
    "model.rpn.post_nms_topk_test=20",
]
TINY = speed.SpeedSettings(image_hw=(96, 128), reps=1, warmup=0)


def run(script: str, args: list[str], expect_rc: int = 0) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == expect_rc, res.stderr[-3000:]
    return res


def small_demo_model_cfg():
    return compose_train(["experiment=demo", "run_dir=outputs/benchmark", *SMALL]).model


def _rss_mib() -> float:
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS:")) / 1024


def test_benchmark_measures_both_frameworks(monkeypatch):
    model_cfg = small_demo_model_cfg()
    peaks = {"frcnn": 300.0, "torchvision": 400.0}  # the real measurement: the next test (a fresh process each)
    monkeypatch.setattr(speed, "peak_memory_mib", lambda cfg, name, *args: peaks[name])
    (row,) = speed.benchmark(speed.build_pair(model_cfg), model_cfg, TINY, torch.device("cpu"), batches=[1], amps=["none"])
    assert (row["batch"], row["amp"]) == (1, "none")
    for name in ("frcnn", "torchvision", "ratio"):
        assert set(row[name]) == {*speed.SPEED_KEYS, "peak_memory_mib"}
        assert all(v > 0 for v in row[name].values())
    assert row["ratio"]["peak_memory_mib"] == 0.75
    assert row["ratio"]["train_step_s"] == row["frcnn"]["train_step_s"] / row["torchvision"]["train_step_s"]
    # the per-repetition ratios: their range holds each one; the split says who ran first
    for key in ("train_step_s", "infer_per_image_b1_s", "infer_per_image_b8_s", "backbone_only_s"):
        low, high = row["ratio_range"][key]
        assert 0 < low <= high
        assert all(low <= r <= high for r in row["ratio_by_order"][key].values())
        assert set(row["ratio_by_order"][key]) == {"frcnn_first"}  # one timed repetition, after no warm-up: frcnn first


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads this process's resident set from Linux's /proc")
def test_peak_memory_is_the_fresh_processs_own():
    ballast = np.ones(2**30, dtype=np.uint8)  # 1 GiB resident here: more than a memory process of the tiny model holds
    here = _rss_mib()
    peak = speed.peak_memory_mib(small_demo_model_cfg(), "torchvision", TINY, torch.device("cpu"), 1, None)
    # ru_maxrss carries over fork + exec: a process started from this one used to report at least this
    # one's size, ballast included.
    assert 0 < peak < here - 512, (peak, here)
    del ballast


@pytest.mark.slow
def test_benchmark_script_writes_its_json(tmp_path, run_script):
    out = tmp_path / "bench.json"
    res = run_script("benchmark.py", ["--reps", "1", "--warmup", "0", "--image-hw", "96", "128", "--batch", "1", "--no-memory", "--json", str(out), "--", *SMALL])
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["env"]["model"]["rois_per_image"] == 8 and data["env"]["model"]["padded_input"] == [96, 128]
    (row,) = data["results"]
    for name in ("frcnn", "torchvision", "ratio"):
        assert set(row[name]) == set(speed.SPEED_KEYS)
        assert all(v > 0 for v in row[name].values())
    assert [json.loads(line) for line in res.stdout.splitlines()] == [data["env"], row]  # printed as measured


@pytest.mark.slow
def test_race_trains_and_scores_both(tmp_path, tiny_data, run_script):
    out = tmp_path / "race.json"
    args = ["--budget", "1", "--interleave", "0.5", "--json", str(out), "--", f"data.root={tiny_data}", "data.num_workers=0", *SMALL]
    res = run_script("race.py", args)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["framework"] for r in rows] == ["frcnn", "torchvision"]
    for r in rows:
        assert r["steps"] >= r["turns"] >= 1 and r["train_s"] >= 1 and 0 <= r["AP"] <= 1
    assert "AP frcnn - torchvision" in res.stdout
    assert json.loads(out.read_text())["env"]["interleave_s"] == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("script", ["benchmark.py", "race.py"])
def test_a_wrong_override_is_one_line_not_a_traceback(script):
    res = run(script, ["--", "model.rpn.no_such_key=1"], expect_rc=2)
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error:") and "no_such_key" in res.stderr


@pytest.mark.parametrize(("args", "says"), [(["--interleave", "nan"], "--interleave"), (["--budget", "-1"], "--budget"),
                                            (["--order", "frcnn", "frcnn"], "each framework once")])
def test_race_refuses_values_it_cannot_run_with(args, says, run_script):
    res = run_script("race.py", args)
    assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr


class _Clock:
    """The race's clock, moved only by the toy models' steps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _TimedModel(torch.nn.Module):
    """A detector whose training step costs ``cost`` seconds of ``clock``; logs its name and learning rate per step."""

    def __init__(self, name: str, cost: float, clock: _Clock, log: list) -> None:
        super().__init__()
        self.name, self.cost, self.clock, self.log = name, cost, clock, log
        self.w = torch.nn.Parameter(torch.ones(2))
        self.optimizer: torch.optim.Optimizer | None = None

    def forward(self, images, targets):
        self.clock.now += self.cost
        draws = (torch.rand(()).item(), np.random.rand(), random.random())  # as the samplers and augmentation draw
        self.log.append((self.name, self.optimizer.param_groups[0]["lr"], draws))
        return SimpleNamespace(losses={"loss": (self.w**2).sum()})


def _entrant(name: str, cost: float, clock: _Clock, log: list, budget: float) -> race.RaceEntrant:
    model = _TimedModel(name, cost, clock, log)
    model.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = ([torch.zeros(3, 4, 4)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])
    schedule = race.WarmupCosine(max_iters=1, warmup_iters=2, warmup_factor=0.5, final_factor=0.0)
    return race.RaceEntrant(name, model, itertools.repeat(batch), model.optimizer, schedule, budget, seed=7)


def test_detectors_take_turns_of_their_own_time_and_train_as_they_would_alone(monkeypatch):
    clock, log = _Clock(), []
    monkeypatch.setattr(race, "clock", clock)
    a, b = _entrant("a", 1.0, clock, log, budget=5), _entrant("b", 1.5, clock, log, budget=5)
    torch.manual_seed(0)
    outside = torch.rand(3)
    torch.manual_seed(0)
    race.take_turns([a, b], seconds=2)
    assert torch.equal(torch.rand(3), outside)  # the caller's random state is left as it was
    # Turns of >= 2 s each, first mover swapping: a (0->2 s), b (0->3), b (3->6, done), a (2->4), a (4->5, done).
    assert [name for name, *_ in log] == list("aabbbbaaa")
    assert (a.steps, a.train_s, a.turns) == (5, 5.0, 3) and (b.steps, b.train_s, b.turns) == (4, 6.0, 2)
    assert a.done and b.done

    # Each detector's schedule runs on its own time: in turns as alone (seconds=inf, one after the other).
    alone_log = []
    monkeypatch.setattr(race, "clock", alone_clock := _Clock())
    a2, b2 = _entrant("a", 1.0, alone_clock, alone_log, 5), _entrant("b", 1.5, alone_clock, alone_log, 5)
    race.take_turns([a2, b2], seconds=math.inf)
    assert [name for name, *_ in alone_log] == list("aaaaabbbb")
    for name in "ab":
        turns, alone = [entry[1:] for entry in log if entry[0] == name], [entry[1:] for entry in alone_log if entry[0] == name]
        assert [lr for lr, _ in turns] == pytest.approx([lr for lr, _ in alone])
        assert [draws for _, draws in turns] == [draws for _, draws in alone]  # its own random numbers
    # and both start from the seed: the same draws, step for step (b stops at its 4th step)
    assert [d for n, _, d in log if n == "a"][:4] == [d for n, _, d in log if n == "b"]
    # warm-up by step (0.5, 0.75 of 0.1), then cosine over the budget's fraction spent: a's steps at 0, 1, 2, 3, 4 s
    expected_a = [0.1 * w * 0.5 * (1 + math.cos(math.pi * t / 5)) for w, t in zip([0.5, 0.75, 1, 1, 1], range(5))]
    assert [lr for n, lr, _ in log if n == "a"] == pytest.approx(expected_a)
    assert a.model.w.detach().abs().max() < 1  # the optimizer stepped


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan])
def test_a_turn_that_cannot_end_a_budget_is_refused(seconds):
    clock = _Clock()
    with pytest.raises(ValueError, match="turn must last"):
        race.take_turns([_entrant("a", 1.0, clock, [], budget=5)], seconds=seconds)
