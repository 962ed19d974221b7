"""RemOve And Retrain's pieces (frcnn/explain/roar.py): exactly the top fraction removed, maps of every object."""

from __future__ import annotations

import numpy as np
import torch


def test_roar_removes_exactly_the_top_fraction_and_the_oracle_ranks_boxes_first():
    from frcnn.explain.roar import image_saliency, remove_top

    image = np.full((10, 20, 3), 200, dtype=np.uint8)
    saliency = torch.arange(200, dtype=torch.float32).view(10, 20)  # the last pixels are the most salient
    out = remove_top(image, saliency, 0.25, fill=(10.2, 20.0, 30.0))
    removed = (out != image).any(axis=2)
    assert removed.sum() == 50 and removed.reshape(-1)[-50:].all()
    assert (out[removed] == [10, 20, 30]).all()
    boxes = torch.tensor([[2.0, 1.0, 6.0, 4.0]])  # 4 x 3 = 12 pixels
    oracle = image_saliency("oracle", None, torch.zeros(3, 10, 20), boxes, torch.tensor([1]))
    top12 = oracle.flatten().argsort(descending=True)[:12]
    inside = torch.zeros(10, 20, dtype=torch.bool)
    inside[1:4, 2:6] = True
    assert inside.flatten()[top12].all()
    random_map = image_saliency("random", None, torch.zeros(3, 10, 20), boxes, torch.tensor([1]), seed=3)
    torch.testing.assert_close(random_map, image_saliency("random", None, torch.zeros(3, 10, 20), boxes, torch.tensor([1]), seed=3))


def test_roar_saliency_of_a_real_model_explains_every_ground_truth_object(trained_model):
    from frcnn.explain.roar import image_saliency

    model, image, truth = trained_model
    labels = torch.ones(len(truth["boxes"]), dtype=torch.long)
    for method in ("gradcam", "gradient"):
        saliency = image_saliency(method, model, image, truth["boxes"], labels)
        assert saliency.shape == image.shape[-2:] and saliency.abs().sum() > 0

