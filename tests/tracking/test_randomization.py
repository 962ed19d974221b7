"""The training generator's domain randomization (frcnn/tracking/randomization.py, sequences.make_sequence):
each randomization draws what it says on a seeded sequence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from frcnn.tracking.randomization import CHALLENGES, Randomization, pink_noise, texture
from frcnn.tracking.sequences import generate_sequences, load_sequence, make_sequence

# Every challenge off, plain solid looks: each test switches on what it checks.
PLAIN = Randomization(textures=("solid",), backgrounds=("gradient",), shapes=("blob",), **dict.fromkeys(CHALLENGES, 0.0))


def _draw(seed: int = 0, length: int = 12, **changes) -> tuple:
    return make_sequence(np.random.default_rng(seed), length=length, height=120, width=160,
                         randomization=dataclasses.replace(PLAIN, **changes))


def _target_pixels(seq, t: int) -> np.ndarray:
    x, y, w, h = (int(round(v)) for v in seq.boxes[t])
    box = seq.frames[t][y + h // 2 - 2 : y + h // 2 + 3, x + w // 2 - 2 : x + w // 2 + 3]  # the 5x5 centre
    return box.reshape(-1, 3)


def test_the_challenges_drawn_are_the_ones_asked_for():
    assert [a for a in _draw().attributes if ":" not in a] == []
    everything = _draw(**dict.fromkeys(CHALLENGES, 1.0))
    assert [a for a in everything.attributes if ":" not in a] == list(CHALLENGES)
    assert {"texture:solid", "shape:blob", "background:gradient"} <= set(everything.attributes)


@pytest.mark.parametrize("kind", ["solid", "noise"])
def test_the_target_texture_is_the_kind_asked_for(kind):
    seq = _draw(textures=(kind,), size=(40.0, 40.0))
    distinct = len(np.unique(_target_pixels(seq, 0), axis=0))  # the box's centre 5x5
    assert distinct == 1 if kind == "solid" else distinct > 10
    assert f"texture:{kind}" in seq.attributes


def test_pink_noise_has_a_falling_spectrum_and_stripes_are_two_colours():
    rng = np.random.default_rng(0)
    field = pink_noise(rng, 128, 128)
    assert field.min() == 0 and field.max() == pytest.approx(1)
    power = np.abs(np.fft.fft2(field - field.mean())) ** 2
    low, high = power[1:4, 1:4].mean(), power[40:60, 40:60].mean()
    assert low > 100 * high  # 1/f^beta: most power at low frequencies; white noise would be flat
    a, b = np.array([10.0, 20, 30]), np.array([200.0, 100, 0])
    stripes = texture(rng, "stripes", 32, 32, a, b).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(stripes, axis=0)} == {tuple(a), tuple(b)}


def test_a_low_contrast_target_is_close_to_the_background_and_a_plain_one_need_not_be():
    def distance(seq) -> float:
        target = _target_pixels(seq, 0).astype(float).mean(0)
        return float(np.abs(target - seq.frames[0].reshape(-1, 3).astype(float).mean(0)).max())

    close = [distance(_draw(seed, low_contrast=1.0, contrast=20.0)) for seed in range(6)]
    free = [distance(_draw(seed)) for seed in range(6)]
    assert max(close) <= 20.0 + 2 and max(free) > 40.0


def test_distractors_share_the_targets_look_and_have_boxes_every_frame():
    seq = _draw(distractors=1.0, max_distractors=2, textures=("solid",))
    assert all(1 <= len(d) <= 2 for d in seq.distractors)
    target_colour = _target_pixels(seq, 0)[0]
    x, y, w, h = (int(round(v)) for v in seq.distractors[0][0])
    centre = seq.frames[0][y + h // 2, x + w // 2]
    np.testing.assert_array_equal(centre, target_colour)  # same texture (solid: one colour)
    assert all(len(d) == 0 for d in _draw().distractors)


def test_clutter_adds_shapes_to_the_background_and_the_camera_pan_moves_it():
    def edges(seq) -> int:  # pixels on a strong edge: the smooth gradient background has none of its own
        return int((np.abs(np.diff(seq.frames[0].astype(float), axis=1)).max(-1) > 20).sum())

    for seed in range(3):
        assert edges(_draw(seed, clutter=1.0, max_clutter=10)) > edges(_draw(seed)) + 20
    still, panned = _draw(seed=3, length=20), _draw(seed=3, length=20, camera_pan=1.0)
    corner = (slice(0, 12), slice(0, 12))  # a corner the target rarely covers: compare its change over 19 frames
    def change(seq) -> float:
        return float(np.abs(seq.frames[19][corner].astype(float) - seq.frames[0][corner].astype(float)).mean())
    assert change(panned) > change(still) + 1


def test_occlusion_covers_part_of_the_target_in_some_frames_only_when_asked():
    def covered(seq) -> int:  # frames where the target's centre 5x5 is not all the target's colour
        colour = _target_pixels(seq, 0)[0]
        return sum(not (_target_pixels(seq, t) == colour).all() for t in range(len(seq.frames)))

    assert covered(_draw(seed=1, length=40)) == 0
    assert covered(_draw(seed=1, length=40, occlusion=1.0)) > 0


def test_illumination_changes_the_frame_brightness_and_blur_softens_edges():
    def brightness(seq) -> np.ndarray:
        return np.array([f.mean() for f in seq.frames])

    assert np.ptp(brightness(_draw(length=40))) < 2
    assert np.ptp(brightness(_draw(length=40, illumination=1.0))) > 10
    def edges(seq) -> float:
        return float(np.abs(np.diff(seq.frames[5].astype(float), axis=1)).mean())
    sharp, blurred = _draw(seed=2, textures=("stripes",)), _draw(seed=2, textures=("stripes",), motion_blur=1.0)
    assert edges(blurred) < edges(sharp)


def test_every_setting_is_checked_with_a_message_naming_it():
    with pytest.raises(ValueError, match="randomization.textures"):
        Randomization(textures=("plaid",))
    with pytest.raises(ValueError, match="randomization.occlusion"):
        Randomization(occlusion=1.5)
    with pytest.raises(ValueError, match="unknown randomization keys"):
        Randomization.from_settings({"texturez": ["solid"]})
    assert Randomization.from_settings({"shapes": ["blob"]}).shapes == ("blob",)


def test_generated_sequences_carry_their_distractors_and_settings(tmp_path):
    root = generate_sequences(tmp_path / "s", num_sequences=1, length=6, seed=2,
                              randomization={"distractors": 1.0, "textures": ["pink"]})
    seq = load_sequence(root / "seq_000")
    assert seq.distractors is not None and len(seq.distractors) == 6 and all(d.shape[1] == 4 for d in seq.distractors)
    assert "distractors" in seq.attributes and "texture:pink" in seq.attributes
    assert '"textures": ["pink"]' in (root / "READY").read_text()
