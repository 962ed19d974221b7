"""torchvision's detectors imported as frcnn checkpoints (frcnn.zoo): the same detections, stage by stage.

(Importing, its errors, the script and fine-tuning: tests/test_zoo.py.)

No weights can be downloaded here: torchvision's models are built with ``weights=None`` and given seeded
random weights that make real detections (:func:`frcnn.zoo.random_detector`), saved as a state dict and
imported through ``import_torchvision``, then loaded the way every command loads a checkpoint.

The images: wide, tall and 4:3 ones, a 7.5:1 strip and a 4:1 band, a uniform grey image that the weights
leave without detections, and batches of two of different sizes (torchvision lets anchors on the padding
propose, so an image's detections depend on its batch: frcnn's imported config does the same). Every case
runs on the 320 px MobileNetV3; the 800 px models take the cheaper ones (ResNet-50 at 800 x 1066 px, twice
per image, would double the suite's longest file for no new case).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from frcnn.tasks.load import load_model
from frcnn.zoo import ZOO, import_torchvision, random_detector

ROOT = Path(__file__).resolve().parents[1]
BUILDERS = list(ZOO)


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
# Per builder: the single images and the batches of two compared.
CASES = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": (["wide", "tall", "4:3", "strip", "band", "grey"],
                                              [("strip", "grey"), ("wide", "strip"), ("tall", "wide")]),
    "fasterrcnn_mobilenet_v3_large_fpn": (["wide", "4:3", "strip", "grey"], [("strip", "grey")]),
    "fasterrcnn_resnet50_fpn": (["band", "strip", "grey"], [("strip", "grey")]),
    "fasterrcnn_resnet50_fpn_v2": (["band", "strip", "grey"], [("strip", "grey")]),
}


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
    names, batches = CASES[builder]
    counts = {}
    for name in names:
        expected, got = tv([IMAGES[name]])[0], model([IMAGES[name]]).detections[0]
        assert_same_detections(expected, got, f"{builder} on {name}")
        counts[name] = len(expected["boxes"])
    assert counts["grey"] == 0  # the image without detections
    assert all(counts[name] > 0 for name in names if name != "grey"), counts  # the others are not vacuous
    for pair_names in batches:
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


