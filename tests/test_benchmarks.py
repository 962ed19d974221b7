"""scripts/benchmark.py and scripts/race.py run end to end on tiny inputs (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "data.min_size_train=[96]",
    "data.min_size_test=96",
    "data.max_size=128",
    "model.roi_heads.batch_size_per_image=8",
    "model.rpn.post_nms_topk_test=20",
]

pytestmark = pytest.mark.slow


def run(script: str, args: list[str], expect_rc: int = 0) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == expect_rc, res.stderr[-3000:]
    return res


def test_benchmark_measures_both_frameworks(tmp_path):
    out = tmp_path / "bench.json"
    run("benchmark.py", ["--reps", "1", "--warmup", "0", "--image-hw", "96", "128", "--batch", "1", "--json", str(out), "--", *SMALL])
    data = json.loads(out.read_text())
    assert data["env"]["model"]["rois_per_image"] == 8 and data["env"]["model"]["padded_input"] == [96, 128]
    (row,) = data["results"]
    for name in ("frcnn", "torchvision", "ratio"):
        assert set(row[name]) == {"train_step_s", "infer_per_image_b1_s", "infer_per_image_b8_s", "backbone_only_s", "overhead_ratio", "peak_memory_mib"}
        assert all(v > 0 for v in row[name].values())


def test_race_trains_and_scores_both(tmp_path, tiny_data):
    out = tmp_path / "race.json"
    res = run("race.py", ["--budget", "2", "--json", str(out), "--", f"data.root={tiny_data}", "data.num_workers=0", *SMALL])
    rows = json.loads(out.read_text())["results"]
    assert [r["framework"] for r in rows] == ["frcnn", "torchvision"]
    for r in rows:
        assert r["steps"] >= 1 and r["train_s"] >= 2 and 0 <= r["AP"] <= 1
    assert "AP frcnn - torchvision" in res.stdout


@pytest.mark.parametrize("script", ["benchmark.py", "race.py"])
def test_a_wrong_override_is_one_line_not_a_traceback(script):
    res = run(script, ["--", "model.rpn.no_such_key=1"], expect_rc=2)
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error:") and "no_such_key" in res.stderr
