"""Training pairs (frcnn/tracking/pairs.py): the target where the box says, unreadable frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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



def _edge_sequence(tmp_path) -> Sequence:
    from PIL import Image

    frame = np.full((120, 160, 3), 60, np.uint8)
    frame[50:70, 60:90] = (200, 150, 100)  # a 30 x 20 coloured target with sharp edges
    (tmp_path / "e").mkdir()
    for i in range(3):
        Image.fromarray(frame).save(tmp_path / "e" / f"{i + 1:08d}.png")
    return Sequence("e", sorted((tmp_path / "e").glob("*.png")), np.array([[60, 50, 30, 20]] * 3, dtype=float))


def test_photometric_augmentation_draws_what_it_says_and_leaves_the_geometry(tmp_path):
    seq = _edge_sequence(tmp_path)
    plain = TrackingPairs([seq], None)
    keys = [(i % 3, 50 + i) for i in range(12)]

    gray = TrackingPairs([seq], None, gray_fraction=1.0)
    for key in keys:
        t, s, box, _ = gray[key]
        assert (t[0] == t[1]).all() and (t[1] == t[2]).all() and (s[0] == s[2]).all()  # no colour left
        assert box.tolist() == plain[key][2].tolist()  # drawn after the pair's own draws: the same crop

    jitter = TrackingPairs([seq], None, color_jitter=0.3)
    for key in keys:
        assert jitter[key][2].tolist() == plain[key][2].tolist()
    # On a uniform frame contrast changes nothing: each crop is 100 x its brightness x its channel gains
    from PIL import Image

    (tmp_path / "u").mkdir()
    for i in range(3):
        Image.fromarray(np.full((120, 160, 3), 100, np.uint8)).save(tmp_path / "u" / f"{i + 1:08d}.png")
    uniform = Sequence("u", sorted((tmp_path / "u").glob("*.png")), np.array([[60, 50, 30, 20]] * 3, dtype=float))
    gains = []
    for key in keys:
        t, s, _, _ = TrackingPairs([uniform], None, color_jitter=0.3)[key]
        g_t, g_s = t.float().mean(dim=(1, 2)) / 100, s.float().mean(dim=(1, 2)) / 100  # [3] each
        assert ((g_t > np.exp(-0.45) - 0.01) & (g_t < np.exp(0.45) + 0.01)).all() and ((g_s > 0.62) & (g_s < 1.58)).all()
        gains.append((g_t, g_s))
    assert sum(not torch.allclose(g_t, g_s, atol=0.02) for g_t, g_s in gains) >= 10  # each crop its own lighting
    assert sum(float(g.std()) > 0.01 for pair in gains for g in pair) >= 20  # colour, not only brightness

    blur = TrackingPairs([seq], None, blur_fraction=1.0)
    for key in keys[:4]:
        t, s, _, _ = blur[key]
        t0, s0, _, _ = plain[key]
        assert (t == t0).all()  # the template stays sharp
        energy = lambda x: x.float().diff(dim=-1).pow(2).sum()  # noqa: E731 - of the horizontal edges
        assert energy(s) < 0.9 * energy(s0)
