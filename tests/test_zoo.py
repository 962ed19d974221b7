"""torchvision's detectors imported as frcnn checkpoints (frcnn.zoo): the same detections, stage by stage.

No weights can be downloaded here: torchvision's models are built with ``weights=None`` and given seeded
random weights that make real detections (:func:`frcnn.zoo.random_detector`), saved as a state dict and
imported through ``import_torchvision``, then loaded the way every command loads a checkpoint.

The images: a wide one, a 7.5:1 strip, a uniform grey image that the weights leave without detections, and
batches of two of different sizes (torchvision lets anchors on the padding propose, so an image's
detections depend on its batch: frcnn's imported config does the same); for MobileNetV3 also a 4:3 and a
tall image and a third batch (ResNet-50 at 800 x 1066 px, twice per image, would double the suite's
longest file for no new case).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from frcnn.errors import ConfigError, MissingFileError
from frcnn.inference import load_model
from frcnn.zoo import ZOO, ZooWeightsError, import_torchvision, random_detector

ROOT = Path(__file__).resolve().parents[1]
BUILDERS = list(ZOO)
MOBILENETS = [b for b in BUILDERS if "mobilenet" in b]


def _images() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "wide": torch.rand(3, 300, 600, generator=g),
        "tall": torch.rand(3, 600, 240, generator=g),
        "strip": torch.rand(3, 120, 900, generator=g),
        "grey": torch.full((3, 100, 400), 0.5),
        "band": torch.rand(3, 100, 400, generator=g),
        "4:3": torch.rand(3, 300, 400, generator=g),
    }


IMAGES = _images()


@pytest.fixture(scope="module", params=BUILDERS)
def pair(request, tmp_path_factory):
    """``(builder, torchvision's model, frcnn's imported model)`` with the same weights, both in eval mode."""
    builder = request.param
    work = tmp_path_factory.mktemp(builder)
    tv = random_detector(builder)
    torch.save(tv.state_dict(), work / "weights.pth")
    import_torchvision(builder, work / "weights.pth", work / "model.pt")
    model, categories, _ = load_model(work / "model.pt", torch.device("cpu"))
    assert categories.num_classes == 90 and categories.name(1) == "person" and categories.category_id(90) == 90
    return builder, tv, model


def assert_same_detections(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str) -> None:
    """Every torchvision detection has an frcnn detection of the same label at IoU ≥ 0.999 with a score
    within 1e-4, and the counts agree."""
    n = len(expected["boxes"])
    assert len(got["boxes"]) == n, f"{what}: torchvision {n} detections, frcnn {len(got['boxes'])}"
    if n == 0:
        return
    iou = box_iou(expected["boxes"], got["boxes"]) * (expected["labels"][:, None] == got["labels"][None])
    best, index = iou.max(dim=1)
    assert best.min() >= 0.999, f"{what}: a detection's best same-label IoU is {best.min():.6f}"
    assert (expected["scores"] - got["scores"][index]).abs().max() <= 1e-4, what


@torch.no_grad()
def test_same_detections(pair):
    builder, tv, model = pair
    mobilenet = builder in MOBILENETS
    names = ["wide", "strip", "grey"] + (["tall", "4:3"] if mobilenet else [])
    counts = {}
    for name in names:
        expected, got = tv([IMAGES[name]])[0], model([IMAGES[name]]).detections[0]
        assert_same_detections(expected, got, f"{builder} on {name}")
        counts[name] = len(expected["boxes"])
    assert counts["grey"] == 0  # the image without detections
    assert all(counts[name] > 0 for name in names if name != "grey"), counts  # the others are not vacuous
    for pair_names in [("strip", "grey")] + ([("wide", "strip"), ("tall", "wide")] if mobilenet else []):
        batch = [IMAGES[name] for name in pair_names]
        for name, expected, got in zip(pair_names, tv(batch), model(batch).detections):
            assert_same_detections(expected, got, f"{builder} on {name} batched with {pair_names}")


@torch.no_grad()
def test_same_stages(pair):
    """Where a mismatch starts: the padded input, the pyramid, the proposals, the class logits on the same RoIs."""
    builder, tv, model = pair
    # (not the grey image: its uniform features give many proposals of exactly equal score, in no defined order)
    images = [IMAGES["strip"], IMAGES["band"]]
    tv_batch, _ = tv.transform(images)
    batch, _ = model.preprocess(images)
    assert batch.tensor.shape == tv_batch.tensors.shape
    assert batch.image_sizes.tolist() == [list(s) for s in tv_batch.image_sizes]
    torch.testing.assert_close(batch.tensor, tv_batch.tensors)

    tv_features = tv.backbone(tv_batch.tensors)
    features = model.features(batch)
    assert len(features.maps) == len(tv_features)
    for ours, theirs in zip(features.maps, tv_features.values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())

    tv_proposals, _ = tv.rpn(tv_batch, tv_features)
    proposals, _ = model.propose(batch, features)
    for i, theirs in enumerate(tv_proposals):
        ours = proposals.boxes[i][proposals.valid[i]]
        assert len(ours) == len(theirs), f"{builder}: image {i} has {len(theirs)} proposals in torchvision, {len(ours)} here"
        assert box_iou(theirs, ours).max(dim=1).values.min() >= 0.999

    # the box head on torchvision's own proposals
    boxes = torch.nn.utils.rnn.pad_sequence(list(tv_proposals), batch_first=True)
    logits, deltas = model.predict_rois(features, boxes)
    pooled = tv.roi_heads.box_roi_pool(tv_features, list(tv_proposals), tv_batch.image_sizes)
    tv_logits, tv_deltas = tv.roi_heads.box_predictor(tv.roi_heads.box_head(pooled))
    counts = [len(p) for p in tv_proposals]
    ours_logits = torch.cat([logits[i, :n] for i, n in enumerate(counts)])
    ours_deltas = torch.cat([deltas[i, :n] for i, n in enumerate(counts)]).flatten(1)
    torch.testing.assert_close(ours_logits, tv_logits, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours_deltas, tv_deltas, rtol=1e-4, atol=1e-3)


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
    """The README's path: import_weights.py writes a checkpoint that infer.py and evaluate.py take as it is."""
    ckpt = tmp_path / "m320.pt"
    run = [sys.executable, str(ROOT / "scripts/import_weights.py"), "torchvision=fasterrcnn_mobilenet_v3_large_320_fpn",
           f"weights={mobilenet_weights}", f"out={ckpt}"]
    done = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {ckpt}" in done.stdout and ckpt.is_file()

    bad = subprocess.run([*run[:2], "torchvision=fasterrcnn_resnet50_fpn", f"weights={mobilenet_weights}", f"out={tmp_path / 'x.pt'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "is not a fasterrcnn_resnet50_fpn state dict" in bad.stderr

    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray((IMAGES["wide"].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(image)
    infer = subprocess.run([sys.executable, str(ROOT / "scripts/infer.py"), f"checkpoint={ckpt}", f"image={image}",
                            "score_thresh=0.05", f"hydra.run.dir={tmp_path / 'infer'}"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert infer.returncode == 0, infer.stderr
    assert (tmp_path / "infer" / "image.json").is_file()


def test_fine_tune_an_imported_model_on_another_class_count(tmp_path, capsys):
    """train.init_from=<imported R50-FPN> with data.num_classes=5: every tensor but the classifier and box
    deltas loads (one line says which start fresh), the loss falls, and evaluation and inference run."""
    import torchvision.models.detection as detection

    from frcnn.cli import compose_train
    from frcnn.data.synthetic import generate
    from frcnn.engine.trainer import train
    from frcnn.inference import detect

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

    import json

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 6 and sum(losses[-2:]) / 2 < 0.6 * losses[0], losses
    assert any("val/AP" in r for r in records)  # evaluation ran
    model, categories, _ = load_model(tmp_path / "run" / "last.pt", torch.device("cpu"))
    assert categories.num_classes == 5
    image = (IMAGES["wide"].permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    assert set(detect(model, image, torch.device("cpu"))) >= {"boxes", "scores", "labels"}


def test_init_from_refuses_another_architecture(tmp_path, mobilenet_weights):
    from frcnn.cli import compose_train
    from frcnn.data.synthetic import generate
    from frcnn.engine.trainer import train

    import_torchvision("fasterrcnn_mobilenet_v3_large_320_fpn", mobilenet_weights, tmp_path / "m.pt")
    root = generate(tmp_path / "data", num_train=2, num_val=1, seed=0)
    cfg = compose_train(["experiment=demo_fpn", f"train.init_from={tmp_path / 'm.pt'}", f"run_dir={tmp_path / 'run'}",
                         f"data.root={root}", "data.num_workers=0", "trainer.max_iters=1"])
    with pytest.raises(ConfigError, match=r"fits only \d+ of this model's \d+ tensors.*MobileNetV3FPN model"):
        train(cfg)
