"""SiamRPN crops (frcnn/tracking/crops.py): context, scale and the mean-colour fill."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frcnn.tracking.crops import (
    SEARCH_SIZE,
    context_side,
    crop,
    from_crop,
    to_crop,
)


def test_context_side_and_the_docstring_example():
    assert context_side(20, 10) == pytest.approx(math.sqrt(35 * 25))  # p = 15
    side = context_side(20, 10) * 255 / 127
    box = to_crop(np.array([40.0, 35.0, 60.0, 45.0]), (50.0, 40.0), side, SEARCH_SIZE)
    assert (box[0] + box[2]) / 2 == pytest.approx(127.5) and (box[1] + box[3]) / 2 == pytest.approx(127.5)
    assert box[2] - box[0] == pytest.approx(20 * 127 / math.sqrt(35 * 25))  # 85.9
    np.testing.assert_allclose(from_crop(box, (50.0, 40.0), side, SEARCH_SIZE), [40, 35, 60, 45])


def test_crop_at_unit_scale_is_a_window_of_the_frame():
    yy, xx = np.mgrid[0:100, 0:120]
    frame = np.stack([xx, yy, (xx + yy) % 256], axis=-1).astype(np.uint8)
    out = crop(frame, (50.0, 40.0), 20, 20)  # pixels x in [40, 60), y in [30, 50)
    np.testing.assert_array_equal(out, frame[30:50, 40:60])
    half = crop(frame, (50.0, 40.0), 40, 20)  # 2x down: output pixel u covers x = 30 + 2u .. 32 + 2u, centre 31 + 2u
    assert half[0, 0, 0] == pytest.approx(30.5, abs=0.6) and half[0, 5, 0] == pytest.approx(40.5, abs=0.6)


def test_crop_leaving_the_frame_is_filled_with_the_mean_colour():
    frame = np.full((50, 60, 3), 200, np.uint8)
    frame[:25] = 0  # mean colour 100
    out = crop(frame, (5.0, 5.0), 20, 20)  # covers x, y in [-5, 15): its top-left 5x5 lies outside
    np.testing.assert_array_equal(out[:5, :5], 100)
    np.testing.assert_array_equal(out[5:, 5:], 0)
    np.testing.assert_array_equal(crop(frame, (5.0, 5.0), 20, 20, fill=np.array([1, 2, 3]))[0, 0], [1, 2, 3])

