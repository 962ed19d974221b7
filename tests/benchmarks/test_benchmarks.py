"""frcnn.benchmarks.speed in-process, and scripts/benchmark.py and scripts/race.py end to end on tiny inputs, run as
``__main__`` in this process (their wrong-override case in a process of its own)
(no timing is asserted). The race itself (frcnn.benchmarks.race) runs only through its script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from frcnn.benchmarks import speed
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
    res = run_script("race.py", ["--budget", "1", "--json", str(out), "--", f"data.root={tiny_data}", "data.num_workers=0", *SMALL])
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [r["framework"] for r in rows] == ["frcnn", "torchvision"]
    for r in rows:
        assert r["steps"] >= 1 and r["train_s"] >= 1 and 0 <= r["AP"] <= 1
    assert "AP frcnn - torchvision" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", ["benchmark.py", "race.py"])
def test_a_wrong_override_is_one_line_not_a_traceback(script):
    res = run(script, ["--", "model.rpn.no_such_key=1"], expect_rc=2)
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error:") and "no_such_key" in res.stderr
