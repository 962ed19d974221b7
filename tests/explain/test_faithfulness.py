"""Faithfulness checks (frcnn/explain/faithfulness.py): deletion / insertion, the pointing game, Spearman, the sanity check."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr

from frcnn.explain import explain, find_detections
from frcnn.explain.faithfulness import (
    deletion_insertion,
    pointing_game,
    sanity_check,
    spearman,
)
from tests.conftest import small_model
from tests.explain.helpers import region_detector


def test_deletion_and_insertion_auc_of_a_perfect_and_a_reversed_map():
    image = torch.ones(3, 16, 16)
    rows, cols = slice(4, 8), slice(4, 8)  # 16 of 256 pixels: 1/16 of the image
    detector = region_detector(rows, cols)
    perfect = torch.zeros(16, 16)
    perfect[rows, cols] = 1.0
    perfect += torch.linspace(0, 1e-3, 256).view(16, 16)  # break the ties inside each part
    reversed_map = -perfect

    def score(x):
        return detector(x)[:, 0]

    best = deletion_insertion(score, image, perfect, substrate="black", steps=16)
    worst = deletion_insertion(score, image, reversed_map, substrate="black", steps=16)
    # Perfect: the region goes with the first 1/16 of the pixels -> 1 at t=0, 0 from t=1/16: AUC 1/32.
    assert best.deletion_auc == pytest.approx(1 / 32)
    assert best.insertion_auc == pytest.approx(31 / 32)
    # Reversed: the region goes last -> 1 until t=15/16, 0 at t=1: AUC 31/32; insertion 1/32.
    assert worst.deletion_auc == pytest.approx(31 / 32)
    assert worst.insertion_auc == pytest.approx(1 / 32)
    assert best.fractions[0] == 0 and best.fractions[-1] == 1


def test_pointing_game():
    saliency = torch.zeros(20, 30)
    saliency[5, 12] = 1.0
    assert pointing_game(saliency, torch.tensor([10.0, 3.0, 15.0, 8.0]), tolerance=0)
    assert not pointing_game(saliency, torch.tensor([0.0, 0.0, 10.0, 5.0]), tolerance=0)
    assert pointing_game(saliency, torch.tensor([0.0, 0.0, 10.0, 5.0]), tolerance=3)
    assert not pointing_game(torch.zeros(20, 30), torch.tensor([0.0, 0.0, 30.0, 20.0]))  # no maximum


def test_pointing_game_defaults_to_zhang_et_al_15_px_and_the_benchmark_reports_both():
    # Issue 29: Zhang et al. (2016) count a maximum within 15 px of the object as a hit; the default was 0.
    from frcnn.explain.benchmark import pointing_hits

    saliency = torch.zeros(60, 80)
    saliency[30, 49] = 1.0  # pixel centre (49.5, 30.5): 10 px right of the box's edge x = 39.5
    box = torch.tensor([10.0, 20.0, 39.5, 40.0])
    assert pointing_game(saliency, box)
    assert not pointing_game(saliency, box, tolerance=0)
    assert pointing_hits(saliency, box) == {"pointing": 1.0, "pointing_0px": 0.0}
    # The distance is Euclidean: 12 px right and 12 px below the corner is 17 px away, a miss at 15.
    corner = torch.tensor([10.0, 10.0, 37.5, 18.5])
    assert not pointing_game(saliency, corner) and pointing_game(saliency, corner, tolerance=17)


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (200,), generator=g).float()  # many ties
    b = a + torch.randn(200, generator=g)
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-9)
    assert math.isnan(spearman(torch.ones(10), b[:10]))


def test_sanity_check_flags_a_map_that_ignores_the_weights_and_passes_gradcam(trained_model):
    model, image, _ = trained_model
    detection = find_detections(model, image, top=1, score_thresh=0.05)[0]
    edges = (image[:, 1:, 1:] - image[:, :-1, :-1]).abs().sum(0)  # an edge detector: no weights at all

    check = sanity_check(lambda _model: edges, model)
    assert check.flagged and all(c == pytest.approx(1.0) for c in check.correlations)
    assert check.stages[0] == "roi_heads.predictor" and check.stages[-1].startswith("backbone.trunk")

    # Grad-CAM of the trained model and of the randomized one are not alike: on the quick model the
    # randomized map lights up what the trained one leaves dark (ρ between -0.2 and -0.8). (Vanilla
    # gradient and guided backprop do not pass on this model: their maps follow the image's edges whatever
    # the weights, as Adebayo et al. found for guided backprop; docs/explanations.md has the numbers.)
    check = sanity_check(lambda m: explain(m, image, detection, method="gradcam", max_rois=8).saliency, model)
    assert not check.flagged, check.correlations
    assert check.correlations[-1] < 0, check.correlations
    assert model.roi_heads.predictor.cls_score.weight.abs().sum() > 0  # the model itself was not touched
    original = explain(model, image, detection, method="gradcam").saliency
    torch.testing.assert_close(original, explain(model, image, detection, method="gradcam").saliency)


def test_sanity_cascade_leaves_the_global_rng_alone_and_stays_seeded():
    # Issue 29: _reinitialize called torch.manual_seed, reseeding the caller's random stream.
    from frcnn.explain.faithfulness import randomized_cascade

    model = small_model()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = [m.roi_heads.predictor.cls_score.weight.clone() for _, m in randomized_cascade(model, seed=0)][-1]
    assert torch.equal(torch.get_rng_state(), state)
    second = [m.roi_heads.predictor.cls_score.weight.clone() for _, m in randomized_cascade(model, seed=0)][-1]
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # still a function of the seed
    assert not torch.equal(first, model.roi_heads.predictor.cls_score.weight)

