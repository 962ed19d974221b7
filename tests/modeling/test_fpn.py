"""A feature-pyramid model through every tool, via the real CLIs on tiny data: train → evaluate → infer →
export (onnxruntime parity at several sizes) → explain (Grad-CAM on the detection's own pyramid level)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY_TRAIN_FPN, run_script_in_process

pytestmark = pytest.mark.slow

# The tiny run of the other CLI tests on ResNet-18-FPN, with AdamW: a few dozen steps find the objects.
FPN_TRAIN = [*TINY_TRAIN_FPN, "model.rpn.post_nms_topk_test=100", "optim=adamw", "optim.lr=0.001"]


@pytest.fixture(scope="module")
def fpn_run(tiny_data, tmp_path_factory) -> Path:
    """scripts/train.py on ResNet-18-FPN, once for this module (its output goes to pytest's capture)."""
    run = tmp_path_factory.mktemp("fpn") / "run"
    args = [*FPN_TRAIN, f"data.root={tiny_data}", "trainer.max_iters=40", "trainer.eval_period=40",
            "trainer.checkpoint_period=40", "trainer.log_period=20", f"hydra.run.dir={run}"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert run_script_in_process(monkeypatch, "train.py", args) == 0
    return run


def _image(tiny_data: Path, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(tiny_data / "val" / f"{index:06d}.png").convert("RGB"))


def test_the_pyramid_checkpoint_trains_and_evaluates(fpn_run, tmp_path, run_script):
    config = torch.load(fpn_run / "last.pt", weights_only=True)["config"]
    assert config["model"]["backbone"]["_target_"].endswith("ResNetFPN")
    rows = [json.loads(line) for line in (fpn_run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/AP" in row for row in rows) and rows[0]["loss"] > rows[-2]["loss"]
    result = run_script("evaluate.py", [f"checkpoint={fpn_run / 'last.pt'}", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads((tmp_path / "metrics.json").read_text())["stats"]
    assert 0 <= stats["AP"] <= 1


def test_the_pyramid_model_infers_exports_and_runs_in_onnxruntime(fpn_run, tiny_data, tmp_path, run_script):
    from frcnn.export.runtime import OnnxDetector
    from frcnn.tasks.load import load_model
    from tests.export.test_export import assert_parity

    checkpoint = fpn_run / "last.pt"
    result = run_script("infer.py", [f"checkpoint={checkpoint}", f"image={tiny_data / 'val' / '000000.png'}", "score_thresh=0.1",
                                     f"hydra.run.dir={tmp_path / 'infer'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "infer" / "000000.png").is_file()
    onnx_file = tmp_path / "model.onnx"
    result = run_script("export.py", [f"checkpoint={checkpoint}", f"output={onnx_file}", "sample_hw=[128,160]",
                                      f"hydra.run.dir={tmp_path / 'export'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    model, _, _ = load_model(checkpoint, torch.device("cpu"))
    runtime = OnnxDetector(onnx_file)
    base = _image(tiny_data)
    cases = {"as traced": np.asarray(Image.fromarray(base).resize((160, 128))), "own size": base,
             "portrait, odd": np.asarray(Image.fromarray(base).resize((131, 197))), "grey": np.full((128, 160, 3), 128, np.uint8)}
    checked, _ = assert_parity(model, runtime, cases)
    assert checked >= 3, "the parity cases must contain detections to compare"


def test_the_pyramid_model_is_explained_on_its_own_level(fpn_run, tiny_data, tmp_path, run_script):
    from frcnn.explain.methods import cam_level
    from frcnn.tasks.load import load_model

    model, _, _ = load_model(fpn_run / "last.pt", torch.device("cpu"))
    # Grad-CAM reads the level the RoI stage pools a box from: small boxes P2, the canonical 224 px P4.
    assert cam_level(model, torch.tensor([0.0, 0.0, 20.0, 20.0]), 192, 256) == 0
    assert cam_level(model, None, 192, 256) == 2
    out = tmp_path / "explain"
    result = run_script("explain.py", [f"checkpoint={fpn_run / 'last.pt'}", f"image={tiny_data / 'val' / '000000.png'}",
                                       "methods=[gradcam,drise]", "detections=top2", "score_thresh=0.05", "options.drise.masks=16",
                                       "max_rois=4", "faithfulness.steps=4", f"hydra.run.dir={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "explanations.json").read_text())
    assert report["detections"]
    maps = np.load(out / "explanations.npz")
    for entry in report["detections"]:
        cam = maps[f"{entry['name']}/gradcam"]
        assert cam.shape == (192, 256) and np.isfinite(cam).all()


def test_the_sanity_checks_cascade_walks_a_pyramid_top_down():
    from frcnn.explain.faithfulness import cascade_stages
    from tests.conftest import small_model

    names = [name for name, _ in cascade_stages(small_model(overrides=["model/backbone=r18_fpn"]))]
    assert names[:4] == ["roi_heads.predictor", "roi_heads.box_head", "rpn.head", "backbone.fpn"]
    assert names[4:] == ["backbone.body.layer4", "backbone.body.layer3", "backbone.body.layer2", "backbone.body.layer1",
                         "backbone.body.bn1", "backbone.body.conv1"]


def test_a_pyramid_refuses_what_it_cannot_do():
    from frcnn.errors import ConfigError
    from frcnn.modeling.backbones import ResNetFPN
    from tests.conftest import small_model

    model = small_model(overrides=["model/backbone=r18_fpn"]).eval()
    batch, _ = model.preprocess([torch.rand(3, 96, 128)])
    with pytest.raises(ConfigError, match="5 levels but one feature map"):
        model.rpn(batch, torch.zeros(1, 256, 24, 32))
    with pytest.raises(ConfigError, match="pooled from levels"):
        model.roi_heads.predict(torch.zeros(1, 256, 24, 32), torch.zeros(1, 2, 4))
    with pytest.raises(ConfigError, match="freeze_at=5 freezes res5"):
        ResNetFPN(depth=18, returned_layers=[1, 2, 3], freeze_at=5)
    assert ResNetFPN(depth=18, returned_layers=[2, 3, 4]).strides == (8, 16, 32, 64)


def test_freezing_a_resnet_fpn_freezes_the_stem_and_its_norm_and_leaves_the_pyramid_trainable():
    from torchvision.ops import FrozenBatchNorm2d

    from frcnn.modeling.backbones import ResNetFPN

    backbone = ResNetFPN(depth=18, norm="bn", freeze_at=2)
    body = backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d) and not body.conv1.weight.requires_grad
    assert all(isinstance(m, FrozenBatchNorm2d) for m in body.layer1.modules() if "BatchNorm" in type(m).__name__)
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters()) and isinstance(body.layer2[0].bn1, torch.nn.BatchNorm2d)
    assert all(p.requires_grad for p in backbone.fpn.parameters())
