"""The attribution methods (frcnn/explain/methods.py, api.py): each method's defining rule on hand-built and toy cases, and every method on a real model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from frcnn.errors import ConfigError
from frcnn.explain import DetectionScore, explain, find_detections
from frcnn.explain.methods import (
    METHODS,
    _feature_map_to_image,
    drise,
    guided_backprop,
    integrated_gradients,
    random_masks,
)
from tests.conftest import small_model
from tests.explain.helpers import Toy, region_detector


def test_guided_backprop_passes_gradient_only_where_activation_and_gradient_are_positive():
    # y = w2 · relu(x) on three "pixels": activations relu([1, 2, -1]) = [1, 2, 0], incoming gradient
    # w2 = [1, -1, 1]. Plain gradient: [1, -1, 0]; guided: only unit 0 has both positive -> [1, 0, 0].
    w2 = torch.tensor([1.0, -1.0, 1.0])
    relu = nn.ReLU(inplace=True)  # in place, as torchvision's ResNets have them

    class Net(Toy):
        def __init__(self):
            super().__init__(None)
            self.relu = relu

        def forward(self, images):
            return (self.relu(images.flatten(1) * 1.0) * w2).sum(1, keepdim=True)

    x = torch.tensor([1.0, 2.0, -1.0]).view(3, 1, 1)
    result = guided_backprop(Net(), x)
    torch.testing.assert_close(result.attributions[0].flatten(), torch.tensor([1.0, 0.0, 0.0]))
    assert relu.inplace, "the ReLU's in-place flag is restored afterwards"


def test_integrated_gradients_is_exact_and_complete_on_a_linear_model():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 8, 8, generator=g)
    image = torch.rand(3, 8, 8, generator=g)
    result = integrated_gradients(Toy(lambda x: (x * w).flatten(1).sum(1)), image, steps=4, baseline="black")
    torch.testing.assert_close(result.attributions[0], w * image)  # attribution = w · (x − 0), any step count
    assert result.info[0]["completeness_error"] < 1e-4
    assert result.info[0]["score_gap"] == pytest.approx(float((w * image).sum()), rel=1e-5)


def test_integrated_gradients_states_its_rule_and_reports_a_small_completeness_error():
    # Issue 29: the rule is Gauss-Legendre (captum's default), stated and reported with its completeness
    # error |Σ attributions − (s(x) − s(x'))|, on a small smooth network (conv, tanh, mean).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1), nn.Sigmoid())
    model = Toy(lambda x: net(x).flatten(1).mean(1) * 4)
    image = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(1))
    result = integrated_gradients(model, image, steps=16, baseline="black")
    info = result.info[0]
    assert info["rule"] == "gausslegendre"
    with torch.no_grad():
        gap = float(model(image[None]) - model(torch.zeros(1, 3, 12, 12)))
    assert info["score_gap"] == pytest.approx(gap, rel=1e-5)
    assert info["completeness_error"] == pytest.approx(abs(float(result.attributions.double().sum()) - gap), abs=1e-6)
    assert info["completeness_error"] < 1e-3 * abs(gap)
    riemann = integrated_gradients(model, image, steps=4, baseline="black", rule="riemann_left").info[0]
    assert riemann["rule"] == "riemann_left" and riemann["completeness_error"] > info["completeness_error"]
    with pytest.raises(ConfigError, match="rule='simpson'"):
        integrated_gradients(model, image, rule="simpson")


def test_drise_finds_the_region_a_toy_detector_depends_on():
    image = torch.ones(3, 48, 64)
    rows, cols = slice(8, 20), slice(36, 52)
    result = drise(region_detector(rows, cols), image, masks=256, grid=8, batch_size=64, seed=0)
    saliency = result.maps[0]
    y, x = divmod(int(saliency.argmax()), saliency.shape[1])
    assert rows.start <= y < rows.stop and cols.start <= x < cols.stop
    inside = saliency[rows, cols].mean()
    outside = torch.cat([saliency[:, :30].flatten(), saliency[30:].flatten()]).mean()
    # A RISE map is E[s · M(p)]: about E[s] · keep = 0.25 everywhere, raised where keeping p raises s.
    assert inside - outside > 0.02
    again = drise(region_detector(rows, cols), image, masks=256, grid=8, batch_size=64, seed=0).maps
    torch.testing.assert_close(again, result.maps)  # seeded


def test_random_masks_are_shifted_upsampled_grids_in_unit_range():
    masks = random_masks(64, 30, 40, grid=5, keep=0.5, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (64, 1, 30, 40)
    assert masks.min() >= 0 and masks.max() <= 1
    assert 0.35 < masks.mean() < 0.65
    assert not torch.equal(masks[0], masks[1])


def test_gradcam_map_is_put_back_through_resize_and_padding():
    model = small_model()  # resizes to 128 px, pads to a multiple of 32, stride 16
    pre = model.preprocessor
    height, width = 90, 100  # -> 128 x 142, padded to 128 x 160: the 8 x 10 feature map's last column is padding
    nh, nw = pre.target_size(height, width, pre.min_size_test)
    assert (nh, nw) == (128, 142)
    cam = torch.zeros(1, 8, 10)
    cam[0, :, 9] = 1.0  # only the padding column (x in [144, 160) of the network input)
    mapped = _feature_map_to_image(cam, model, height, width)
    assert mapped.shape == (1, height, width)
    # The image ends at x = 142 of the network input: the padding column (centre x = 152) reaches only
    # the image's last columns through the bilinear blend. A plain resize of the 8 x 10 map to 90 x 100
    # would give that column the image's last tenth and bleed into x >= 85.
    assert mapped[0, :, :90].abs().max() == 0
    cam = torch.zeros(1, 8, 10)
    cam[0, 0, 0] = 1.0  # the top-left cell: the top-left of the image
    mapped = _feature_map_to_image(cam, model, height, width)
    y, x = divmod(int(mapped[0].argmax()), width)
    assert y < 12 and x < 12


def test_odam_is_gradient_times_activation_summed_over_channels(trained_model):
    # By hand with autograd: y = the detection's class logit at the RoI it follows; A = the trunk's output.
    from frcnn.explain.methods import odam
    from frcnn.explain.target import DetectionOutput

    model, image, _ = trained_model
    detections = find_detections(model, image, top=2, score_thresh=0.05)
    score = DetectionScore(model, detections, max_rois=8)
    output = DetectionOutput(score, "logit")
    for m in range(len(detections)):
        captured = {}
        layer = model.backbone.cam_layer(0)
        handle = layer.register_forward_hook(lambda mod, inp, out: captured.update(a=out))
        y = output(image[None].clone())[0, m]
        handle.remove()
        (grad,) = torch.autograd.grad(y, captured["a"])
        by_hand = _feature_map_to_image(F.relu((grad * captured["a"]).sum(dim=1)).detach(), model, *image.shape[-2:])
        torch.testing.assert_close(odam(score, image).maps[m], by_hand[0], rtol=1e-4, atol=1e-6)


def test_every_method_explains_detections_of_a_real_model(trained_model):
    model, image, _ = trained_model
    detections = find_detections(model, image, top=2, score_thresh=0.05)
    quick = {
        "integrated_gradients": {"steps": 4, "batch_size": 4},
        "smoothgrad": {"samples": 2},
        "vargrad": {"samples": 2},
        "drise": {"masks": 16},
        "kernel_shap": {"samples": 24, "patch": 64},
    }
    for name in METHODS:
        explanations = explain(model, image, detections, method=name, max_rois=8, **quick.get(name, {}))
        assert len(explanations) == len(detections)
        for m, e in enumerate(explanations):
            assert e.saliency.shape == image.shape[-2:], name
            assert torch.isfinite(e.saliency).all(), name
            # Grad-CAM's ReLU leaves nothing where the weighted RoI features are negative throughout: on the
            # head, the quick model's second detection (score 0.44) is such a case. The best one has a map.
            if name != "gradcam_head" or m == 0:
                assert e.saliency.abs().sum() > 0, f"{name} gave an all-zero map"
            assert e.score == pytest.approx(float(e.detection.probs[e.detection.label] / e.detection.probs.norm()), abs=1e-4)
            assert e.seconds > 0
    single = explain(model, image, detections[0], method="gradient", target="roi_score", max_rois=8)
    assert single.detection is detections[0] and single.score == pytest.approx(detections[0].score, abs=1e-4)

