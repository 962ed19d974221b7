"""Importing torchvision's detectors (frcnn.zoo, scripts/import_weights.py): wrong files, the command, and
fine-tuning an imported model on another class count (train.init_from). Parity: tests/test_zoo_parity.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frcnn.errors import ConfigError, MissingFileError
from frcnn.tasks.load import load_model
from frcnn.zoo import ZooWeightsError, import_torchvision, random_detector

ROOT = Path(__file__).resolve().parents[1]
IMAGE = torch.rand(3, 300, 600, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "mobilenet_320.pth"
    torch.save(random_detector("fasterrcnn_mobilenet_v3_large_320_fpn").state_dict(), path)
    return path


def test_wrong_weights_say_what_the_file_holds(mobilenet_weights, tmp_path):
    out = tmp_path / "out.pt"
    with pytest.raises(ZooWeightsError, match=r"mobilenet_320.pth is not a fasterrcnn_resnet50_fpn state dict.*mobilenet"):
        import_torchvision("fasterrcnn_resnet50_fpn", mobilenet_weights, out)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(mobilenet_weights.read_bytes()[:100_000])
    with pytest.raises(ZooWeightsError, match="truncated.pth is truncated or corrupt"):
        import_torchvision("fasterrcnn_mobilenet_v3_large_320_fpn", truncated, out)
    pickled = tmp_path / "pickled.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), pickled)
    with pytest.raises(ZooWeightsError, match=r"pickled.pth holds a pickled torch.nn.modules.container.Sequential object, not a state dict"):
        import_torchvision("fasterrcnn_mobilenet_v3_large_320_fpn", pickled, out)
    classifier = tmp_path / "resnet50.pth"
    torch.save({"conv1.weight": torch.zeros(1), "layer4.0.conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, classifier)
    with pytest.raises(ZooWeightsError, match="no roi_heads.box_predictor.cls_score.weight.*ImageNet ResNet classifier"):
        import_torchvision("fasterrcnn_resnet50_fpn", classifier, out)
    with pytest.raises(MissingFileError, match="absent.pth not found"):
        import_torchvision("fasterrcnn_resnet50_fpn", tmp_path / "absent.pth", out)
    with pytest.raises(ConfigError, match="choose one of fasterrcnn_resnet50_fpn"):
        import_torchvision("retinanet_resnet50_fpn", mobilenet_weights, out)
    assert not out.exists()  # nothing half-written


def test_import_weights_script_then_every_command(mobilenet_weights, tmp_path):
    """docs/training.md's path: import_weights.py writes a checkpoint that infer.py and evaluate.py take as it is."""
    ckpt = tmp_path / "m320.pt"
    run = [sys.executable, str(ROOT / "scripts/import_weights.py"), "torchvision=fasterrcnn_mobilenet_v3_large_320_fpn",
           f"weights={mobilenet_weights}", f"out={ckpt}"]
    done = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert f"wrote {ckpt}" in done.stdout and ckpt.is_file()

    bad = subprocess.run([*run[:2], "torchvision=retinanet_resnet50_fpn", f"weights={mobilenet_weights}", f"out={tmp_path / 'x.pt'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "choose one of fasterrcnn_resnet50_fpn" in bad.stderr

    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray((IMAGE.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(image)
    infer = subprocess.run([sys.executable, str(ROOT / "scripts/infer.py"), f"checkpoint={ckpt}", f"image={image}",
                            "score_thresh=0.05", f"hydra.run.dir={tmp_path / 'infer'}"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    assert infer.returncode == 0, infer.stderr
    assert (tmp_path / "infer" / "image.json").is_file()


def test_fine_tune_an_imported_model_on_another_class_count(tmp_path, capsys):
    """train.init_from=<imported R50-FPN> with data.num_classes=5: every tensor but the classifier and box
    deltas loads (one line says which start fresh), the loss falls, and evaluation and inference run."""
    from torchvision.models import detection

    from frcnn.cli import compose_train
    from frcnn.data.synthetic import generate
    from frcnn.inference import detect
    from frcnn.tasks.train import train

    torch.manual_seed(0)  # torchvision's own random initialization: a start that trains (random_detector's does not)
    torch.save(detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(), tmp_path / "w.pth")
    import_torchvision("fasterrcnn_resnet50_fpn", tmp_path / "w.pth", tmp_path / "r50.pt")
    root = generate(tmp_path / "data", num_train=4, num_val=3, seed=0)  # three landscape training images: one batch
    cfg = compose_train([
        "experiment=torchvision/fasterrcnn_resnet50_fpn", f"train.init_from={tmp_path / 'r50.pt'}", f"data.root={root}",
        "model.preprocessor.min_size=[192]", "model.preprocessor.min_size_test=192", "model.preprocessor.max_size=256",
        "model.roi_heads.batch_size_per_image=128", "data.batch_size=3", "trainer.reference_batch_size=3",
        "optim.lr=0.002", "trainer.clip_grad_norm=10", "schedule.warmup_iters=2", "data.augment.hflip=0",
        "trainer.max_iters=6", "trainer.eval_period=6", "trainer.log_period=1", "data.num_workers=0",
        "trainer.progress=false", "trainer.tensorboard=false", f"run_dir={tmp_path / 'run'}",
    ])
    torch.manual_seed(0)
    train(cfg)
    said = capsys.readouterr().out
    assert "initialized from" in said and "291 of 295 tensors loaded" in said
    fresh = said.split("starting fresh: ")[1].splitlines()[0]
    assert fresh.count("(shape ") == 4 and "roi_heads.predictor.cls_score.weight (shape [91, 1024] in the checkpoint, [6, 1024] here)" in fresh

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < 0.6 * losses[0], losses
    assert any("val/AP" in r for r in records)  # evaluation ran
    model, categories, _ = load_model(tmp_path / "run" / "last.pt", torch.device("cpu"))
    assert categories.num_classes == 5
    image = (IMAGE.permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    assert set(detect(model, image, torch.device("cpu"))) >= {"boxes", "scores", "labels"}


def test_init_from_refuses_another_architecture(tmp_path, mobilenet_weights):
    from frcnn.cli import compose_train
    from frcnn.data.synthetic import generate
    from frcnn.tasks.train import train

    import_torchvision("fasterrcnn_mobilenet_v3_large_320_fpn", mobilenet_weights, tmp_path / "m.pt")
    root = generate(tmp_path / "data", num_train=2, num_val=1, seed=0)
    cfg = compose_train(["experiment=demo_fpn", f"train.init_from={tmp_path / 'm.pt'}", f"run_dir={tmp_path / 'run'}",
                         f"data.root={root}", "data.num_workers=0", "trainer.max_iters=1"])
    with pytest.raises(ConfigError, match=r"fits only \d+ of this model's \d+ tensors.*MobileNetV3FPN model"):
        train(cfg)


def test_evaluate_an_imported_model_on_a_split_with_some_of_cocos_categories(mobilenet_weights, tmp_path, capsys):
    """COCO val has 80 of the imported model's 90 label ids (10 are unused, "N/A"): the split's categories
    need only be among the model's; detections of categories the split lacks are left out, and said so."""
    from frcnn.cli import compose_config
    from frcnn.data.coco import AnnotationError
    from frcnn.data.synthetic import generate
    from frcnn.tasks.evaluate import evaluate
    from frcnn.zoo import coco_categories

    import_torchvision("fasterrcnn_mobilenet_v3_large_320_fpn", mobilenet_weights, tmp_path / "m.pt")
    root = generate(tmp_path / "data", num_train=1, num_val=3, seed=0)
    coco_names = dict(zip(coco_categories()["category_ids"], coco_categories()["names"]))
    split = json.loads((root / "annotations" / "val.json").read_text())
    shapes_named = tmp_path / "shapes.json"
    shapes_named.write_text(json.dumps(split))
    for category in split["categories"]:  # ids 1, 3, 5, 7, 9 under COCO's names for them
        category["name"] = coco_names[category["id"]]
    coco_named = tmp_path / "coco_named.json"
    coco_named.write_text(json.dumps(split))

    def run(annotations: Path):
        return evaluate(compose_config("evaluate", [f"checkpoint={tmp_path / 'm.pt'}", f"images={root / 'val'}",
                                                    f"annotations={annotations}", f"output_dir={tmp_path / 'eval'}"]))

    metrics = run(coco_named)
    assert set(metrics["per_class_ap"]) == {coco_names[i] for i in (1, 3, 5, 7, 9)}
    assert "detections of categories the ground truth lacks" in capsys.readouterr().out
    with pytest.raises(AnnotationError, match=r"shapes.json: categories .* are not among the model's"):
        run(shapes_named)
