"""Sequence folders (frcnn/tracking/sequences.py): groundtruth parsing, the generator, scripts/make_sequences.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from frcnn.errors import InputError
from frcnn.tracking.sequences import (
    generate_sequences,
    load_sequence,
    read_groundtruth,
)


def test_groundtruth_with_a_malformed_line_names_the_file_and_line(tmp_path):
    (tmp_path / "seq").mkdir()
    gt = tmp_path / "seq" / "groundtruth.txt"
    gt.write_text("1,2,3,4\n5\t6\t7\t8\n9,10,eleven,12\n")
    with pytest.raises(InputError, match=r"groundtruth.txt, line 3: expected 4 numbers") as info:
        load_sequence(tmp_path / "seq")
    assert "\n" not in str(info.value) and str(gt) in str(info.value)
    gt.write_text("1,2,3,4\n5 6 7 8\n")
    np.testing.assert_array_equal(read_groundtruth(gt), [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_generated_sequences_load_and_boxes_cover_the_target(tmp_path):
    root = generate_sequences(tmp_path / "seqs", num_sequences=2, length=12, seed=3)
    seq = load_sequence(root / "seq_001")
    assert len(seq) == 12 and seq.boxes.shape == (12, 4) and (seq.boxes[:, 2:] > 4).all()
    assert json.loads((root / "seq_001" / "attributes.json").read_text()) == seq.attributes
    again = generate_sequences(tmp_path / "again", num_sequences=2, length=12, seed=3)
    assert (again / "seq_001" / "groundtruth.txt").read_text() == (root / "seq_001" / "groundtruth.txt").read_text()


def test_make_sequences_writes_what_track_reads(run_script, tmp_path):
    done = run_script("make_sequences.py", ["--out", str(tmp_path / "seqs"), "--num-sequences", "2", "--length", "6", "--seed", "4"])
    assert done.returncode == 0, done.stderr
    assert f"sequence={tmp_path / 'seqs' / 'seq_000'}" in done.stdout
    sequence = load_sequence(tmp_path / "seqs" / "seq_001")
    assert len(sequence.frames) == 6 and sequence.boxes.shape == (6, 4)
    bad = run_script("make_sequences.py", ["--out", str(tmp_path / "x"), "--length", "1"])
    assert bad.returncode == 2 and "--length=1 is too small" in bad.stderr

