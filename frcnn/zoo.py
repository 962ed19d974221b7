"""torchvision's COCO detectors as frcnn checkpoints: the same weights, the same detections.

``import_torchvision("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_coco.pth", "r50_fpn_coco.pt")``
(or ``scripts/import_weights.py``) reads a torchvision state dict from a local file and writes an ordinary
frcnn checkpoint — model config, weights, COCO's category mapping — that ``infer.py``, ``evaluate.py``,
``explain.py``, ``export.py``, ``deploy_benchmark.py`` and ``train.py train.init_from=`` take unchanged.

How each of torchvision's conventions is reproduced lives in config values, one file per builder:
``conf/experiment/torchvision/<builder>.yaml`` (anchor centres at cell corners and rounded cell anchors,
strides taken from the padded input, RoIAlign without the half-pixel shift, the RPN's filters after each
level's top-k and its proposals from a batch's padding, 800 / 1333 px inputs with floor rounding, frozen
BatchNorm, v2's BatchNorm pyramid, two-conv RPN head and 4conv1fc box head, the minimum box sizes). What
happens here is only the renaming of tensors, plus one permutation: torchvision orders a location's
anchors ratio-major (``(r0, s0), (r0, s1), ...``), frcnn size-major, so with several sizes per level
(MobileNetV3's 5 sizes x 3 ratios) the RPN head's output channels are reordered to match.

The state dict is first loaded into torchvision's own model (built with ``weights=None``, nothing
downloaded): that checks it belongs to the builder before anything is written, and brings old key
layouts to today's.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from frcnn.errors import ConfigError, MissingFileError, UserError


class ZooWeightsError(UserError, ValueError):
    """A weights file that is not a state dict of the named torchvision builder."""


@dataclass(frozen=True)
class ZooEntry:
    """One torchvision detector frcnn imports.

    Attributes:
        builder: the function in ``torchvision.models.detection``.
        experiment: the Hydra experiment with its conventions (``conf/experiment/<experiment>.yaml``).
        coco_box_ap: torchvision's reported COCO val2017 box AP of its weights.
        weights_file: the file name torchvision downloads its COCO weights as.
    """

    builder: str
    experiment: str
    coco_box_ap: float
    weights_file: str


ZOO: dict[str, ZooEntry] = {
    e.builder: e
    for e in (
        ZooEntry("fasterrcnn_resnet50_fpn", "torchvision/fasterrcnn_resnet50_fpn", 37.0,
                 "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"),
        ZooEntry("fasterrcnn_resnet50_fpn_v2", "torchvision/fasterrcnn_resnet50_fpn_v2", 46.7,
                 "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth"),
        ZooEntry("fasterrcnn_mobilenet_v3_large_fpn", "torchvision/fasterrcnn_mobilenet_v3_large_fpn", 32.8,
                 "fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth"),
        ZooEntry("fasterrcnn_mobilenet_v3_large_320_fpn", "torchvision/fasterrcnn_mobilenet_v3_large_320_fpn", 22.8,
                 "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth"),
    )
}


def entry(builder: str) -> ZooEntry:
    """The :class:`ZooEntry` of ``builder``; a :class:`ConfigError` naming the choices otherwise."""
    if builder not in ZOO:
        raise ConfigError(f"torchvision={builder!r} is not importable; choose one of {' | '.join(ZOO)}")
    return ZOO[builder]


def coco_categories() -> dict[str, list]:
    """COCO's 91-id layout as a :class:`~frcnn.data.coco.CategoryMap` dict: labels 1..90 are category ids
    1..90, 80 of them named classes and 10 unused ids named ``"N/A"`` (torchvision's layout)."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    names = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # 91 names, "__background__" first
    return {"category_ids": list(range(1, len(names))), "names": list(names[1:])}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict of tensors from ``path`` (``weights_only=True``); one clear error for anything else.

    Accepts a plain state dict (torchvision's downloads) or a training checkpoint with a ``"model"``
    state dict (torchvision's reference scripts).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"weights file {path} not found; pass weights=/path/to/<builder>.pth (a state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        held = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a pickled {held.group(1)} object" if held else "pickled Python objects"
        raise ZooWeightsError(
            f"weights file {path} holds {what}, not a state dict (refused with weights_only=True): save "
            "torch.save(model.state_dict(), path) from the model and import that"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        reason = str(err).splitlines()[0].split(". ")[0] if str(err) else type(err).__name__
        raise ZooWeightsError(f"weights file {path} is truncated or corrupt ({reason}); download it again") from err
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ZooWeightsError(
            f"weights file {path} holds a {type(state).__name__}, not a state dict of tensors: import a file "
            "written by torch.save(model.state_dict(), path)"
        )
    return dict(state)


def torchvision_model(builder: str, state: Mapping[str, Tensor], source: str | Path) -> torch.nn.Module:
    """torchvision's ``builder`` (``weights=None``) with ``state`` loaded strictly, in eval mode."""
    from torchvision.models import detection

    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state:
        raise ZooWeightsError(f"weights file {source} has no {key}: it is {_looks_like(state)}, not a torchvision Faster R-CNN")
    num_classes = int(state[key].shape[0])
    model = getattr(detection, builder)(weights=None, weights_backbone=None, num_classes=num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ZooWeightsError(
            f"weights file {source} is not a {builder} state dict: {_mismatch(model.state_dict(), state)}; "
            f"it looks like {_looks_like(state)}"
        ) from err
    return model.eval()


def frcnn_config(builder: str, num_classes: int, overrides: list[str] | None = None) -> DictConfig:
    """The resolved training config of ``builder``'s frcnn model (COCO's data settings, ``num_classes``)."""
    from frcnn.cli import compose_train

    cfg = compose_train([
        f"experiment={entry(builder).experiment}", "data=coco", "data.root=datasets/coco",
        f"data.num_classes={num_classes}", "run_dir=outputs/imported", *(overrides or []),
    ])
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def convert_state_dict(tv_state: Mapping[str, Tensor], cfg: DictConfig) -> dict[str, Tensor]:
    """torchvision's tensor names (today's layout, from its model's ``state_dict()``) → frcnn's.

    ``cfg`` is the frcnn config (:func:`frcnn_config`): it says how many RPN convs there are and how the
    anchors are ordered.
    """
    rpn_convs = int(cfg.model.rpn.head.get("num_convs", 1))
    anchors = cfg.model.rpn.anchor_generator
    sizes = anchors.sizes[0] if not isinstance(anchors.sizes[0], (int, float)) else anchors.sizes
    order = _anchor_order(len(sizes), len(anchors.aspect_ratios))
    out: dict[str, Tensor] = {}
    for name, tensor in tv_state.items():
        new = _rename(name, rpn_convs)
        if new.startswith("rpn.head.objectness."):
            tensor = tensor[order]
        elif new.startswith("rpn.head.deltas."):
            tensor = tensor.reshape(len(order), 4, *tensor.shape[1:])[order].reshape(tensor.shape)
        out[new] = tensor
    return out


def import_torchvision(
    builder: str, weights: str | Path, out: str | Path | None = None, *, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Import a torchvision detector's state dict as an frcnn checkpoint (written to ``out`` atomically).

    Args:
        builder: one of :data:`ZOO` (``fasterrcnn_resnet50_fpn``, ``..._v2``, ``fasterrcnn_mobilenet_v3_large_fpn``,
            ``..._320_fpn``).
        weights: a local ``.pth`` state dict of that builder (torchvision's download, or
            ``torch.save(model.state_dict(), path)``).
        out: where to write the checkpoint; None: only return it.
        overrides: Hydra overrides of the model config (e.g. ``model.roi_heads.score_thresh=0.3``).

    Returns:
        The checkpoint dict: ``model`` (weights), ``config`` (resolved training config), ``categories``
        (COCO's 91-id layout when the model has 91 outputs, else ``class_1..class_K``), ``kind``,
        ``iteration`` 0 and ``imported_from``.

    Raises:
        ZooWeightsError / MissingFileError / ConfigError: a file that is missing, truncated, a pickled
            model, or the state dict of another builder; an unknown builder. Nothing is written then.
    """
    from hydra.utils import instantiate

    from frcnn.engine.checkpoint import save_checkpoint

    entry(builder)
    tv_model = torchvision_model(builder, read_state_dict(weights), weights)
    tv_state = tv_model.state_dict()
    num_classes = int(tv_state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1
    cfg = frcnn_config(builder, num_classes, overrides)
    model = instantiate(cfg.model)
    own = model.state_dict()
    converted = convert_state_dict(tv_state, cfg)
    # frozen BatchNorm has no batch counter; a state dict from BatchNorm (weights=None builds) has one
    converted = {k: v for k, v in converted.items() if k in own or not k.endswith("num_batches_tracked")}
    # Our mapping must cover both sides exactly: a gap here is a bug in this module, not the user's file.
    assert set(converted) == set(own), (sorted(set(converted) - set(own))[:5], sorted(set(own) - set(converted))[:5])
    model.load_state_dict(converted, strict=True)
    categories = coco_categories() if num_classes == 90 else {
        "category_ids": list(range(1, num_classes + 1)), "names": [f"class_{i}" for i in range(1, num_classes + 1)]}
    ckpt = {
        "model": model.state_dict(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "categories": categories,
        "kind": "faster_rcnn",
        "iteration": 0,
        "imported_from": {"torchvision": builder, "weights": str(weights)},
    }
    if out is not None:
        save_checkpoint(ckpt, out)
    return ckpt


def _rename(name: str, rpn_convs: int) -> str:
    """One torchvision tensor name → frcnn's (everything not listed keeps its name: ``backbone.body``,
    ``backbone.fpn`` and the 2-fc box head's ``fc6``/``fc7`` are the same modules under the same names)."""
    m = re.match(r"rpn\.head\.conv\.(\d+)\.0\.(\w+)$", name)
    if m:  # Conv2dNormActivation(conv, ReLU) per conv → frcnn's conv, or Sequential(conv, ReLU, conv)
        return f"rpn.head.conv.{m.group(2)}" if rpn_convs == 1 else f"rpn.head.conv.{2 * int(m.group(1))}.{m.group(2)}"
    m = re.match(r"roi_heads\.box_head\.(\d+)\.([01])\.(\w+)$", name)
    if m:  # v2's 4conv1fc: Conv2dNormActivation(conv, BN, ReLU) x 4 → ConvFCHead.convs [conv, bn, relu] x 4
        return f"roi_heads.box_head.convs.{3 * int(m.group(1)) + int(m.group(2))}.{m.group(3)}"
    m = re.match(r"roi_heads\.box_head\.(\d+)\.(weight|bias)$", name)
    if m:  # v2's fc after the four convs and the Flatten
        return f"roi_heads.box_head.fc.{m.group(2)}"
    for old, new in (("rpn.head.cls_logits.", "rpn.head.objectness."), ("rpn.head.bbox_pred.", "rpn.head.deltas."),
                     ("roi_heads.box_predictor.", "roi_heads.predictor.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _anchor_order(num_sizes: int, num_ratios: int) -> list[int]:
    """For frcnn's anchor ``a = s * R + r`` (size-major), torchvision's index ``r * S + s`` (ratio-major)."""
    return [r * num_sizes + s for s in range(num_sizes) for r in range(num_ratios)]


def _mismatch(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> str:
    """``"N tensors missing (first: ...), M unexpected (first: ...)"`` or the first shape difference."""
    ignore = re.compile(r"num_batches_tracked$")
    missing = [k for k in expected if k not in given and not ignore.search(k)]
    unexpected = [k for k in given if k not in expected and not ignore.search(k)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if not parts:
        bad = next((k for k in expected if k in given and expected[k].shape != given[k].shape), None)
        if bad is not None:
            parts.append(f"{bad} has shape {tuple(given[bad].shape)}, the builder's is {tuple(expected[bad].shape)}")
    return ", ".join(parts) or "it does not load"


def _looks_like(state: Mapping[str, Any]) -> str:
    """A guess at which model a state dict belongs to, from its key names."""
    keys = set(state)
    if any(k.startswith("backbone.body.layer4.") for k in keys):
        v2 = any(k.startswith("roi_heads.box_head.0.0.") for k in keys)
        return "a fasterrcnn_resnet50_fpn_v2 state dict" if v2 else "a fasterrcnn_resnet50_fpn state dict"
    if any(k.startswith("backbone.body.16.") for k in keys):
        return "a fasterrcnn_mobilenet_v3_large(_320)_fpn state dict"
    if any(k.startswith("layer4.") for k in keys) and "fc.weight" in keys:
        return "an ImageNet ResNet classifier (use it as model.backbone.weights)"
    if any(k.startswith("features.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        return "an ImageNet classifier (use it as model.backbone.weights)"
    first = next(iter(keys), "")
    return f"another model (first tensor: {first})"


# torchvision models with seeded random weights that make real detections, for tests and benchmarks where
# no trained weights can be downloaded: the background logit's offset per builder leaves a uniform grey
# image without detections and textured ones with many.
_BACKGROUND_OFFSET = {"fasterrcnn_resnet50_fpn": 7.5, "fasterrcnn_resnet50_fpn_v2": 12.0,
                      "fasterrcnn_mobilenet_v3_large_fpn": 8.5, "fasterrcnn_mobilenet_v3_large_320_fpn": 8.5}


@torch.no_grad()
def random_detector(builder: str, seed: int = 0) -> torch.nn.Module:
    """torchvision's ``builder`` (91 outputs, eval mode) with seeded random weights that detect things.

    A randomly initialized detector detects nothing (its features vanish or explode through the backbone
    and every class probability is about 1/91), which would make a comparison of detections vacuous. So,
    on one random calibration image: each pyramid level's output conv is scaled to unit standard deviation,
    the RPN's objectness and the classifier's weights are scaled up (30x), the classifier's logits are
    centred on the mean box-head feature (so that different RoIs get different classes), the background
    logit is offset so that a uniform grey image has no detection, and the box deltas are scaled up (10x).
    """
    from torchvision.models import detection

    entry(builder)
    torch.manual_seed(seed)
    model = getattr(detection, builder)(weights=None, weights_backbone=None, num_classes=91).eval()
    image = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(seed + 1))
    batch, _ = model.transform([image])
    levels = model.backbone.fpn(model.backbone.body(batch.tensors))
    for block, level in zip(model.backbone.fpn.layer_blocks, levels.values()):
        last = [m for m in block.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))][-1]
        scale = 1.0 / level.std().item()
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)
    model.rpn.head.cls_logits.weight.mul_(30)
    predictor = model.roi_heads.box_predictor
    predictor.cls_score.weight.mul_(30)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    x = model.roi_heads.box_head(model.roi_heads.box_roi_pool(features, proposals, batch.image_sizes))
    predictor.cls_score.bias.copy_(-predictor.cls_score.weight @ x.mean(0))
    predictor.cls_score.bias[0] += _BACKGROUND_OFFSET[builder]
    predictor.bbox_pred.weight.mul_(10)
    return model
