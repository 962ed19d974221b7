"""The detector learns: ResNet-18-C4 overfits two synthetic images to AP50 = 1.0 on CPU."""

import pytest
import torch

from frcnn.data.coco import CocoDetection, collate
from frcnn.data.synthetic import generate
from frcnn.evaluation.coco_eval import evaluate_results, predict
from tests.conftest import small_model

pytestmark = pytest.mark.slow

MAX_STEPS = 300
EVAL_EVERY = 10


def test_overfits_two_images(tmp_path):
    torch.manual_seed(0)
    root = generate(tmp_path, num_train=2, num_val=1, height=128, width=128, max_objects=3, min_size=24, max_size=80, seed=5)
    data = CocoDetection(root / "train", root / "annotations" / "train.json")
    images, targets = collate([data[i] for i in range(len(data))])
    model = small_model(
        num_classes=5,
        overrides=["model.roi_heads.batch_size_per_image=32", "model.rpn.post_nms_topk_test=50", "model.roi_heads.sampling_ratio=2"],
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
    device = torch.device("cpu")
    history = []
    for step in range(1, MAX_STEPS + 1):
        model.train()
        warm = min(1.0, step / 20)
        for g in opt.param_groups:
            g["lr"] = 0.02 * warm
        loss = sum(model(images, targets).losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % EVAL_EVERY == 0:
            results = predict(model, [(images, targets)], data.categories, device)
            ap50 = evaluate_results(data.coco, results)["stats"]["AP50"]
            history.append((step, round(float(loss.detach()), 3), round(ap50, 3)))
            print(history[-1], flush=True)
            if ap50 >= 0.999:  # COCOeval's 101-point interpolation sums to 1.0 only up to float error
                break
    assert history[-1][2] == 1.0, f"did not reach AP50 = 1.0 in {MAX_STEPS} steps: (step, loss, AP50) = {history}"
