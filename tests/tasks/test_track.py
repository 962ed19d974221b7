"""scripts/train_tracker.py and scripts/track.py end to end (frcnn.tasks.train_tracker, frcnn.tasks.track)."""

from __future__ import annotations

import json

import pytest

from frcnn.tracking.sequences import (
    load_sequence,
)
from tests.tracking.helpers import tiny_tracker_args


@pytest.mark.slow
def test_train_resume_and_track_through_the_clis(run_script, tiny_sequences, tmp_path):
    run = tmp_path / "run"
    first = run_script("train_tracker.py", tiny_tracker_args(tiny_sequences, run, 2))
    assert first.returncode == 0, first.stderr
    assert "finished at iteration 2" in first.stdout
    resumed = run_script("train_tracker.py", tiny_tracker_args(tiny_sequences, tmp_path / "run2", 4) + [f"train.resume={run / 'last.pt'}",
                                                                                                    "tracker.penalty_k=0.07"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "finished at iteration 4" in resumed.stdout
    out = tmp_path / "track"
    tracked = run_script("track.py", [f"checkpoint={tmp_path / 'run2' / 'last.pt'}", f"sequence={tiny_sequences / 'seq_000'}", f"hydra.run.dir={out}",
                                      "tracker.template_rate=0.1"])  # a setting overridden without Hydra's '+'
    assert tracked.returncode == 0, tracked.stderr
    result = json.loads((out / "track.json").read_text())
    assert result["tracker"]["template_rate"] == 0.1 and result["tracker"]["penalty_k"] == 0.07  # the rest: the run's values
    assert len(result["boxes_xywh"]) == 10 and result["boxes_xywh"][0] == pytest.approx(list(load_sequence(tiny_sequences / "seq_000").boxes[0]))
    assert (out / "track.gif").is_file() and len(list((out / "frames").glob("*.jpg"))) == 10
    # the sequence has a groundtruth.txt: the track is scored against it, in the file and in one printed line
    scored = result["groundtruth"]
    assert scored["frames_scored"] == 9 and 0.0 <= scored["success_auc"] <= 1.0 and 0.0 <= scored["mean_iou"] <= 1.0
    assert f"mean IoU {scored['mean_iou']:.3f}, success AUC {scored['success_auc']:.3f}" in tracked.stdout
    bench = run_script("track_benchmark.py", ["--checkpoint", f"tiny={tmp_path / 'run2' / 'last.pt'}", "--sequences", str(tiny_sequences),
                                              "--distractor-aware", "0.5", "--peers", "--out", str(tmp_path / "bench")])
    assert bench.returncode == 0, bench.stderr
    scores = json.loads((tmp_path / "bench" / "scores.json").read_text())
    assert list(scores["families"]["given"]["scores"]) == ["SiamRPN tiny", "SiamRPN tiny + DaSiamRPN selection"]
    assert "share of a wrong believed size corrected" in bench.stdout and (tmp_path / "bench" / "success_given.png").is_file()
    assert list(scores["siamrpn_size_response"]) == ["0.7", "0.85", "1.18", "1.4"]  # frame 5 of each 10-frame sequence probed


def test_every_tracker_setting_can_be_overridden_by_track_yaml():
    import dataclasses

    from frcnn.cli import compose_config
    from frcnn.tracking.tracker import TrackerSettings

    cfg = compose_config("track", ["sequence=x", "tracker.window_influence=0.3"])
    assert list(cfg.tracker) == [f.name for f in dataclasses.fields(TrackerSettings)]
    assert {k: v for k, v in cfg.tracker.items() if v is not None} == {"window_influence": 0.3}


@pytest.mark.slow
def test_track_cli_errors_are_one_line(run_script, tiny_sequences, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for frame in sorted((tiny_sequences / "seq_000").glob("*.jpg"))[:3]:
        (bad / frame.name).write_bytes(frame.read_bytes())
    (bad / "groundtruth.txt").write_text("10,10,20,20\n11,11,20\n")
    result = run_script("track.py", [f"checkpoint={tmp_path / 'none.pt'}", f"sequence={bad}", f"hydra.run.dir={tmp_path / 'o'}"])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "groundtruth.txt, line 2" in result.stderr
    result = run_script("track.py", [f"checkpoint={tmp_path / 'none.pt'}", f"sequence={bad}", "init=[1,2,3]", f"hydra.run.dir={tmp_path / 'o'}"])
    assert result.returncode == 2 and "init=[1, 2, 3] must be [x, y, w, h]" in result.stderr

