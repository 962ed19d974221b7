"""The independent test family (frcnn/tracking/other_family.py): it loads like any sequence folder, is seeded,
and shares no drawing code with the training generator."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import frcnn.tracking.other_family as other_family
from frcnn.tracking.other_family import (
    BACKGROUNDS,
    FILLS,
    MOTIONS,
    OUTLINES,
    generate_other_family,
    make_other_sequence,
    trajectory,
)
from frcnn.tracking.sequences import load_sequences


def test_the_other_family_imports_nothing_of_the_training_generator():
    tree = ast.parse(Path(other_family.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "json", "math", "pathlib", "cv2", "numpy"}, imported


def test_it_draws_with_the_training_generators_drawing_broken(monkeypatch, tmp_path):
    import frcnn.data.synthetic as synthetic
    import frcnn.tracking.randomization as randomization
    import frcnn.tracking.sequences as sequences

    def broken(*args, **kwargs):
        raise AssertionError("the other family called the training generator")

    for module, names in ((randomization, ("texture", "outline_mask", "random_outline", "motion_blur", "light_field", "pink_noise")),
                          (sequences, ("make_sequence", "write_sequence", "_paint")), (synthetic, ("texture", "background", "shape_polygon"))):
        for name in names:
            monkeypatch.setattr(module, name, broken)
    root = generate_other_family(tmp_path / "other", num_sequences=2, length=5, seed=3)
    sequences_ = load_sequences(root)
    assert [len(s) for s in sequences_] == [5, 5] and all((s.boxes[:, 2:] > 2).all() for s in sequences_)


def test_it_is_seeded_and_its_boxes_hold_the_target():
    a = make_other_sequence(np.random.default_rng([4, 0, 7]), length=10, height=120, width=160)
    b = make_other_sequence(np.random.default_rng([4, 0, 7]), length=10, height=120, width=160)
    np.testing.assert_array_equal(a[1], b[1])
    assert all((x == y).all() for x, y in zip(a[0], b[0]))
    _, boxes, attributes = a
    assert boxes.shape == (10, 4) and (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 160).all()
    assert sum(a.startswith(("background:", "outline:", "fill:", "motion:")) for a in attributes) == 4


@pytest.mark.parametrize("motion", MOTIONS)
def test_every_path_stays_inside_the_margin(motion):
    path = trajectory(np.random.default_rng(1), motion, 80, 240, 320, margin=30)
    assert (path[:, 0] >= 30 - 1e-6).all() and (path[:, 0] <= 290 + 1e-6).all()
    assert (path[:, 1] >= 30 - 1e-6).all() and (path[:, 1] <= 210 + 1e-6).all()
    assert np.abs(np.diff(path, axis=0)).max() < 25  # no teleporting: a path, not a scatter


def test_its_kinds_differ_from_the_training_generators():
    from frcnn.tracking.randomization import BACKGROUNDS as TRAIN_BACKGROUNDS
    from frcnn.tracking.randomization import SHAPES, TEXTURES

    assert not set(BACKGROUNDS) & set(TRAIN_BACKGROUNDS)
    assert not set(OUTLINES) & set(SHAPES)
    assert not set(FILLS) & set(TEXTURES)
