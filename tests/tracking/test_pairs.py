"""Training pairs (frcnn/tracking/pairs.py): the target where the box says, unreadable frames."""

from __future__ import annotations

import numpy as np
import pytest

from frcnn.tracking.pairs import TrackingPairs, collate_pairs
from frcnn.tracking.sequences import (
    Sequence,
)


def test_pairs_put_the_target_where_the_box_says(tmp_path):
    frame = np.full((120, 160, 3), 40, np.uint8)
    frame[50:70, 60:90] = 250  # a 30 x 20 target
    from PIL import Image

    (tmp_path / "s").mkdir()
    for i in range(3):
        Image.fromarray(frame).save(tmp_path / "s" / f"{i + 1:08d}.png")
    seq = Sequence("s", sorted((tmp_path / "s").glob("*.png")), np.array([[60, 50, 30, 20]] * 3, dtype=float))
    pairs = TrackingPairs([seq], None, shift=30, scale_jitter=0.1, negative_fraction=0.0)
    batch = collate_pairs([pairs[(i, 100 + i)] for i in range(3)])
    assert batch.templates.shape == (3, 3, 127, 127) and batch.searches.shape == (3, 3, 255, 255)
    for search, box in zip(batch.searches, batch.boxes):
        x1, y1, x2, y2 = box.round().int().tolist()
        assert search[0, y1 + 3 : y2 - 3, x1 + 3 : x2 - 3].float().mean() > 245  # inside: the target
        assert search[0, y2 + 4 : y2 + 10, x1:x2].float().mean() < 60  # just below: background
    other_frame = np.full((120, 160, 3), 40, np.uint8)
    other_frame[30:60, 20:50] = 120  # another sequence's target, grey
    (tmp_path / "o").mkdir()
    for i in range(3):
        Image.fromarray(other_frame).save(tmp_path / "o" / f"{i + 1:08d}.png")
    other = Sequence("o", sorted((tmp_path / "o").glob("*.png")), np.array([[20, 30, 30, 30]] * 3, dtype=float))
    two = TrackingPairs([seq, other], None, negative_fraction=1.0)
    for key in [(0, 7), (1, 8), (2, 9)]:  # items of the first sequence: the negative comes from the other one
        template, search, box, _ = two[key]
        assert box.tolist() == [0, 0, 0, 0]
        assert template.max() == 250 and search.max() < 200  # the target (250) is nowhere in the search crop
    alone = TrackingPairs([seq], None, negative_fraction=1.0)[(0, 7)]  # no other object anywhere: stays positive
    assert alone[2].tolist() != [0, 0, 0, 0]


def test_an_unreadable_frame_is_replaced_and_reported_by_its_own_id(tmp_path):
    from PIL import Image

    (tmp_path / "s").mkdir()
    for i in range(4):
        Image.fromarray(np.full((60, 80, 3), 90 + i, np.uint8)).save(tmp_path / "s" / f"{i + 1:08d}.png")
    (tmp_path / "s" / "00000002.png").write_bytes(b"not a png")
    seq = Sequence("s", sorted((tmp_path / "s").glob("*.png")), np.array([[20, 20, 20, 20]] * 4, dtype=float))
    pairs = TrackingPairs([seq], None, max_gap=0)
    with pytest.warns(UserWarning, match="unreadable frame 1"):
        *_, skipped = pairs[(1, 0)]
    assert skipped.tolist() == [1]
    assert pairs[(2, 0)][3].tolist() == []

