"""What a data set decides, read off its training annotations: ``data.<key>: auto`` in a data config.

Anchor sizes, the proposals' minimum size and the schedule fit the objects and the size of the set
(``conf/data/synthetic.yaml`` and ``coco.yaml`` state them by hand). For one's own data
(``data=custom``, ``yolo``, ``labelme``) they are ``auto``: :func:`resolve_auto` derives each from the
training split before anything is built, prints what it chose and why, and writes the numbers into the
config (so the run's ``config.yaml`` and checkpoints hold them). A number given for a key wins.

Rules (sizes are ``sqrt(w * h)`` of the non-crowd boxes, at the training scale: short side
``mean(data.min_size_train)``, long side at most ``data.max_size``):

- ``anchor_sizes``: three sizes an octave apart (the paper's 128/256/512 pattern), centred in log space
  on the objects' 5-95 % size range: ``a, 2a, 4a`` with ``a = round(c / 2)``, ``c = sqrt(q5 * q95)``.
- ``fpn_anchor_sizes``: five, an octave apart, one per level P2-P6: ``b ... 16b``, ``b = round(c / 4)``
  (at least 4 px, P2's stride).
- ``rpn_min_size``: half the 1st percentile of the objects' shorter side in original pixels, at most the
  paper's 16 (so that 99 % of the objects can still be proposed).
- ``num_train_images``: the training split's images.
- ``max_iters``: ``data.epochs`` (12, detectron2's 1x) over the set at ``trainer.reference_batch_size``.
- ``warmup_iters``: a tenth of ``max_iters``, at most 1000 (detectron2's, for 90k steps).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from frcnn.errors import ConfigError, InputError

AUTO_KEYS = ("anchor_sizes", "fpn_anchor_sizes", "rpn_min_size", "num_train_images", "max_iters", "warmup_iters")


@dataclass(frozen=True)
class ObjectSizes:
    """The training split's objects, measured for :func:`derive`.

    Attributes:
        num_images: images in the split; num_objects: its non-crowd boxes.
        scaled: ``[N]`` ``sqrt(w * h)`` of each box at the training scale (px).
        shorter: ``[N]`` each box's shorter side in original pixels.
    """

    num_images: int
    num_objects: int
    scaled: np.ndarray
    shorter: np.ndarray


def object_sizes(dataset: dict[str, Any], min_size: float, max_size: float, source: str) -> ObjectSizes:
    """Measure the non-crowd boxes of a COCO annotation dict at the training scale.

    Raises:
        InputError: the split has no usable box to measure (``source`` names it).
    """
    images = {im["id"]: im for im in dataset.get("images", [])}
    boxes, scales = [], []
    for a in dataset.get("annotations", []):
        im = images.get(a["image_id"])
        w, h = float(a["bbox"][2]), float(a["bbox"][3])
        if a.get("iscrowd", 0) or im is None or w <= 0 or h <= 0:
            continue
        short, long = min(im["width"], im["height"]), max(im["width"], im["height"])
        boxes.append((w, h))
        scales.append(min(min_size / short, max_size / long))
    if not boxes:
        raise InputError(f"{source} has no object box to derive data settings from (data.<key>: auto); "
                         f"state them: data.anchor_sizes=[...], data.rpn_min_size=..., data.max_iters=...")
    wh, scale = np.array(boxes), np.array(scales)
    return ObjectSizes(len(images), len(boxes), np.sqrt(wh[:, 0] * wh[:, 1]) * scale, wh.min(axis=1))


def derive(sizes: ObjectSizes, *, epochs: float, reference_batch: int, schedule_iters: int | None = None) -> dict[str, tuple[Any, str]]:
    """Every key of ``AUTO_KEYS``: ``(value, why)`` by the rules of the module docstring.

    Args:
        schedule_iters: the steps the run will take when ``trainer.max_iters`` is given (the warm-up is a
            tenth of those); None: the derived ``max_iters``.
    """
    q1_short = float(np.percentile(sizes.shorter, 1))
    q5, q50, q95 = (float(v) for v in np.percentile(sizes.scaled, [5, 50, 95]))
    centre = math.sqrt(q5 * q95)
    spread = f"the objects' 5/50/95 % sizes are {q5:.0f}/{q50:.0f}/{q95:.0f} px at the training scale"
    max_iters = max(1, math.ceil(epochs * sizes.num_images / reference_batch))
    steps = max_iters if schedule_iters is None else schedule_iters
    return {
        "anchor_sizes": (_octaves(centre / 2, 3, smallest=1),
                         f"three sizes an octave apart, centred on the 5-95 % range ({spread})"),
        "fpn_anchor_sizes": (_octaves(centre / 4, 5, smallest=4),
                             "one per level P2-P6, an octave apart, centred on the same range"),
        "rpn_min_size": (min(16, math.floor(q1_short / 2)),
                         f"half the 1st percentile of the objects' shorter side ({q1_short:.0f} px in the images), at most the paper's 16"),
        "num_train_images": (sizes.num_images, "the training split's images"),
        "max_iters": (max_iters, f"{epochs:g} epochs (data.epochs) at the reference batch of {reference_batch}"),
        "warmup_iters": (min(1000, max(1, round(steps / 10))), f"a tenth of the {steps}-step schedule, at most 1000"),
    }


def _octaves(first: float, count: int, *, smallest: int) -> list[int]:
    """``count`` whole sizes an octave apart from ``first`` (rounded, at least ``smallest``): exact doublings."""
    base = max(smallest, round(first))
    return [base * 2**i for i in range(count)]


def resolve_auto(cfg: DictConfig, resumed_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Replace each ``data.<key>: auto`` of ``cfg`` by its derived value; print what was chosen and why
    (rank 0 only). Returns ``{key: value}`` of what was derived (empty when nothing is ``auto``).

    A run resumed from ``train.resume`` keeps what its first start derived, even if the annotations changed
    since: ``resumed_config`` is that checkpoint's ``config``, which the caller has loaded."""
    data = cfg.data
    wanted = [k for k in AUTO_KEYS if data.get(k) == "auto"]
    if not wanted:
        return {}
    resume = cfg.get("train", {}).get("resume")
    if resume:
        if resumed_config is None:  # only scripts/train.py resumes, and it passes the checkpoint's config
            raise ConfigError(f"train.resume={resume}: this command does not resume a run; drop train.resume")
        return _from_resumed(cfg, wanted, str(resume), resumed_config)
    from frcnn.data.coco import load_coco
    from frcnn.data.formats import split_annotations

    source = split_annotations(cfg, "train")
    dataset = load_coco(source).dataset
    where = source if isinstance(source, str) else source.source
    scales = data.min_size_train  # a list (multi-scale training) or one size
    min_size = float(np.mean(list(scales) if OmegaConf.is_list(scales) else [scales]))
    sizes_ = object_sizes(dataset, min_size, float(data.max_size), str(where))
    given = cfg.trainer.get("max_iters") if not _interpolates(cfg.trainer, "max_iters") else None
    chosen = derive(sizes_, epochs=float(data.get("epochs", 12)), reference_batch=int(cfg.trainer.reference_batch_size),
                    schedule_iters=None if given in (None, "auto") else int(given))
    derived = {k: chosen[k][0] for k in wanted}
    with open_dict(data):
        for k, v in derived.items():
            data[k] = v
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"data settings derived from {where} ({sizes_.num_images} images, {sizes_.num_objects} objects); "
              "a value given as data.<key>=... wins:")
        for k in wanted:
            print(f"  data.{k}={str(chosen[k][0]).replace(' ', '')}: {chosen[k][1]}")
    return derived


def _interpolates(node: DictConfig, key: str) -> bool:
    """``node.key`` is an interpolation (``${data.max_iters}``): not a value of its own."""
    return key in node and OmegaConf.is_interpolation(node, key)


def _from_resumed(cfg: DictConfig, wanted: list[str], resume: str, resumed_config: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``wanted`` that the run being resumed derived (its checkpoint's config)."""
    saved = resumed_config.get("data", {})
    missing = [k for k in wanted if k not in saved or saved[k] == "auto"]
    if missing:
        raise InputError(f"train.resume={resume} holds no derived data.{missing[0]}; give it: data.{missing[0]}=...")
    derived = {k: saved[k] for k in wanted}
    with open_dict(cfg.data):
        for k, v in derived.items():
            cfg.data[k] = v
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"data settings of the run being resumed ({resume}): "
              + ", ".join(f"data.{k}={str(v).replace(' ', '')}" for k, v in derived.items()))
    return derived
