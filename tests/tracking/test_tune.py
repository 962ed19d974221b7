"""Tuning the selection settings (frcnn/tracking/tune.py, scripts/tune_tracker.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frcnn.tracking.sequences import (
    Sequence,
)
from frcnn.tracking.tracker import TrackerSettings
from tests.tracking.helpers import SettingsDependentTracker, tiny_tracker_checkpoint


def test_a_tuned_checkpoint_carries_the_settings(tiny_sequences, tmp_path):
    from frcnn.tasks.load import load_tracker
    from frcnn.tracking.tune import Trial, tuned_checkpoint

    source = tiny_tracker_checkpoint(tiny_sequences, tmp_path)
    chosen = TrackerSettings(penalty_k=0.3, window_influence=0.1, lr=0.1)
    target = tuned_checkpoint(source, tmp_path / "tuned.pt", chosen, [Trial({"lr": 0.1}, 0.5), Trial({"lr": 0.2}, 0.7)])
    settings = load_tracker(target).settings
    assert (settings.penalty_k, settings.window_influence, settings.lr) == (0.3, 0.1, 0.1)
    assert torch.load(target, weights_only=True)["tuning"]["best_success_auc"] == 0.7
    assert load_tracker(source).settings.lr == TrackerSettings().lr  # the source is untouched


def test_tuning_finds_the_best_grid_point_by_coordinate_ascent(tmp_path, monkeypatch):
    from frcnn.tracking import tune

    sequences, frames = [], {}
    for s in range(2):
        boxes = np.array([[20.0 + t, 30.0, 40.0, 30.0] for t in range(6)])
        paths = [tmp_path / f"{s}_{t}.png" for t in range(6)]
        for t, p in enumerate(paths):
            frame = np.zeros((8, 8, 3), np.uint8)
            frame[0, 0] = (t, s, 0)
            frames[p] = frame
        sequences.append(Sequence(f"s{s}", paths, boxes))
    monkeypatch.setattr(tune, "read_rgb", lambda p, max_pixels=None: frames[p])
    grid = {"window_influence": (0.2, 0.3, 0.42), "penalty_k": (0.0, 0.055), "lr": (0.295, 0.45)}
    best, trials = tune.tune_settings(lambda st: SettingsDependentTracker(st, sequences), sequences, TrackerSettings(), grid)
    assert (best.window_influence, best.lr) == (0.3, 0.45) and best.penalty_k == 0.055  # ties keep the start
    assert trials[0].settings == {"window_influence": 0.42, "penalty_k": 0.055, "lr": 0.295}
    perfect = 20 / 21  # IoU 1 everywhere: success at every threshold but "IoU > 1"
    assert max(t.success_auc for t in trials) == pytest.approx(perfect) and trials[0].success_auc < perfect
    assert len({tuple(t.settings.values()) for t in trials}) == len(trials)  # no setting evaluated twice
    with pytest.raises(ValueError, match="unknown tracker settings"):
        tune.tune_settings(lambda st: None, sequences, TrackerSettings(), {"window": (0.1,)})


@pytest.mark.slow
def test_tune_cli_writes_a_checkpoint_the_tracker_reads(run_script, tiny_sequences, tmp_path):
    from frcnn.tasks.load import load_tracker

    checkpoint = tiny_tracker_checkpoint(tiny_sequences, tmp_path)
    result = run_script("tune_tracker.py", ["--checkpoint", str(checkpoint), "--sequences", str(tiny_sequences), "--num-sequences", "1"])
    assert result.returncode == 0, result.stderr
    tuned = checkpoint.with_name("tuned.pt")
    state = torch.load(tuned, map_location="cpu", weights_only=True)
    best = state["tuning"]["best"]
    assert state["tuning"]["best_success_auc"] == max(t["success_auc"] for t in state["tuning"]["trials"])
    assert {k: state["config"]["tracker"][k] for k in best} == best
    settings = load_tracker(tuned).settings
    assert (settings.penalty_k, settings.window_influence, settings.lr) == (best["penalty_k"], best["window_influence"], best["lr"])
    assert f"-> {tuned}" in result.stdout
    missing = run_script("tune_tracker.py", ["--checkpoint", str(checkpoint), "--sequences", str(tmp_path / "nowhere")])
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "nowhere" in missing.stderr

