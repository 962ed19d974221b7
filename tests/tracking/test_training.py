"""The tracker's training task (frcnn/tracking/training.py) and its checkpoints' kind."""

from __future__ import annotations

import pytest
import torch

from tests.tracking.helpers import tiny_tracker_args, tiny_tracker_checkpoint


def test_checkpoints_of_one_kind_are_refused_by_the_other(tiny_sequences, tmp_path, tiny_checkpoint):
    from frcnn.engine.checkpoint import CheckpointError
    from frcnn.tasks.load import load_model, load_tracker

    with pytest.raises(CheckpointError, match="not a SiamRPN checkpoint"):
        load_tracker(tiny_checkpoint)
    with pytest.raises(CheckpointError, match="holds a siamrpn model, not a detector"):
        load_model(tiny_tracker_checkpoint(tiny_sequences, tmp_path), torch.device("cpu"))


def test_too_many_unreadable_frames_fail_tracker_training_naming_frames(tiny_sequences, tiny_data, tmp_path):
    import shutil

    from frcnn.cli import compose_config
    from frcnn.engine.trainer import TrainingError
    from frcnn.tasks.train_tracker import train_tracker

    seqs = tmp_path / "seqs"
    shutil.copytree(tiny_sequences, seqs)
    for frame in sorted(p for p in seqs.rglob("*") if p.suffix in (".png", ".jpg"))[::2]:
        frame.write_bytes(b"corrupt")  # half of all frames
    args = [a for a in tiny_tracker_args(seqs, tmp_path, 4) if not a.startswith(("hydra.", "data.still"))]
    still = [f"data.still.root={tiny_data}", "data.still.generate=null"]  # 8 images, several objects each
    cfg = compose_config("siamrpn", args + still + [f"run_dir={tmp_path / 'run'}", "data.max_bad_image_fraction=0.01"])
    from frcnn.tracking.sequences import load_sequences

    # The ids count each frame with the target and each still image once (not each object): the fraction's base.
    frames = sum(int(((q.boxes[:, 2] > 1) & (q.boxes[:, 3] > 1)).sum()) for q in load_sequences(seqs))
    with pytest.warns(UserWarning, match="skipping unreadable frame"), pytest.raises(
        TrainingError, match=rf"training frames are unreadable.* of {frames + 8} .*frame ids \[.*named in a warning above"
    ):
        train_tracker(cfg)

