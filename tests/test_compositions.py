"""Every default composition is a configuration someone would run: for each data set x backbone (and
the primary config as it is), the anchors fit the images and the schedule fits the data set."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from frcnn.cli import compose_train

OPTIM_FILES = sorted((Path(__file__).resolve().parents[1] / "conf" / "optim").glob("*.yaml"))

DATA = {"synthetic": [], "coco": ["data.root=/datasets/coco"], "voc": ["data.root=/datasets/VOC2012"]}
# One's own data: what fits it is derived from its annotations when training starts (tests/data/test_derive.py).
DERIVED = {"yolo": ["data.root=/datasets/mine", "data.num_classes=3"], "labelme": ["data.root=/datasets/mine", "data.num_classes=3"],
           "custom": ["data.num_classes=3", *(f"data.{s}.{k}=/datasets/mine/{s}" for s in ("train", "val") for k in ("images", "annotations"))]}
BACKBONES = ["r18_c4", "r50_c4", "vgg16", "r18_fpn", "r50_fpn", "mobilenet_v3_fpn"]
SCHEDULES = ["step", "cosine"]


def anchors_inside(cfg, level: int, size: float) -> float:
    """Share of the anchors of one ``size`` on one level that lie wholly inside a test image (all aspect ratios)."""
    gen = instantiate(cfg.model.rpn.anchor_generator)
    h = int(cfg.data.min_size_test)
    w = int(min(cfg.data.max_size, round(h * 4 / 3)))  # a 3:4 image at the test scale
    stride = gen.strides[level]
    anchors = gen.grid(level, -(-h // stride), -(-w // stride)).view(-1, gen.num_anchors, 4)
    ratios = len(gen.aspect_ratios)
    which = list(gen.level_sizes[level]).index(size)
    a = anchors[:, which * ratios : (which + 1) * ratios].reshape(-1, 4)  # anchors are size-major per cell
    inside = (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] <= w) & (a[:, 3] <= h)
    return float(inside.float().mean())


@pytest.mark.parametrize("data,backbone,schedule", list(itertools.product(DATA, BACKBONES, SCHEDULES)))
def test_each_composition_fits_its_data(data, backbone, schedule):
    cfg = compose_train([f"data={data}", f"model/backbone={backbone}", f"schedule={schedule}", *DATA[data], "run_dir=/tmp/x"])
    OmegaConf.resolve(cfg)
    # Anchors: every size has anchors wholly inside the image (the RPN's positives come from IoU, not
    # only from the best-anchor rule) and the largest is no larger than the image's shorter side.
    gen = instantiate(cfg.model.rpn.anchor_generator)
    model = instantiate(cfg.model)  # the backbone's strides are the anchors' (FasterRCNN checks)
    assert model.backbone.strides == gen.strides
    sizes = [s for level in gen.level_sizes for s in level]
    assert max(sizes) <= cfg.data.min_size_test, sizes
    for level, level_sizes in enumerate(gen.level_sizes):
        # the paper's 512 px anchors on a 600x800 image: 3 % inside; on 192x256: none. (An anchor as large as
        # the image fits only where a cell centre falls on the image's centre: not checked.)
        for s in (s for s in level_sizes if s <= 0.9 * cfg.data.min_size_test):
            assert anchors_inside(cfg, level, s) >= 0.02, (level, s, anchors_inside(cfg, level, s))
    # A pyramid's anchors cover the data's object sizes, an octave apart (FPN paper: 32-512 at ~800 px).
    if gen.num_levels > 1:
        ladder = sorted(set(sizes))
        assert all(b / a == 2 for a, b in zip(ladder, ladder[1:])), ladder
        assert ladder[0] <= 0.07 * cfg.data.min_size_test and ladder[-1] >= 0.6 * cfg.data.min_size_test, ladder
    # Proposals' minimum size is ~16 px at the paper's ~600 px scale, scaled to the data's images.
    assert 0.5 <= cfg.model.rpn.min_size / (16 * cfg.data.min_size_test / 600) <= 2
    # Schedule: 5-50 epochs at the batch the learning rate is defined for, warm-up <= 20 % of it, and
    # the step schedule's decays inside the run.
    epochs = cfg.trainer.max_iters * cfg.trainer.reference_batch_size / cfg.data.num_train_images
    assert 5 <= epochs <= 50, epochs
    assert cfg.schedule.warmup_iters <= 0.2 * cfg.trainer.max_iters
    sched = instantiate(cfg.schedule)
    if schedule == "step":
        assert 0 < min(sched.milestones) and max(sched.milestones) < cfg.trainer.max_iters
    assert sched(cfg.trainer.max_iters - 1) < 0.2  # the learning rate has decayed by the end


def test_primary_config_as_it_is_fits_the_built_in_data():
    cfg = compose_train(["run_dir=/tmp/x"])
    OmegaConf.resolve(cfg)
    assert cfg.data.generate is not None  # the built-in data, generated on first use
    assert list(cfg.model.rpn.anchor_generator.sizes) == [32, 64, 128]
    assert cfg.trainer.max_iters * cfg.trainer.reference_batch_size / cfg.data.num_train_images == 20
    # the paper's settings where the data are the paper's
    coco = compose_train(["data=coco", "data.root=/d", "run_dir=/tmp/x"])
    assert list(coco.model.rpn.anchor_generator.sizes) == [128, 256, 512] and coco.model.rpn.min_size == 16
    assert coco.trainer.max_iters == 90000 and list(instantiate(coco.schedule).milestones) == [60000, 80000]


def test_demo_experiment_fits_the_built_in_data():
    cfg = compose_train(["experiment=demo", "run_dir=/tmp/x"])
    OmegaConf.resolve(cfg)
    assert list(cfg.model.rpn.anchor_generator.sizes) == [32, 64, 128] and cfg.model.rpn.min_size == 8
    assert cfg.trainer.max_time is not None  # a wall-clock budget keeps make demo within its bound


@pytest.mark.parametrize("path", OPTIM_FILES, ids=[p.stem for p in OPTIM_FILES])
def test_each_optimizer_config_instantiates_as_it_stands(path):
    """A group file of conf/optim is a partial optimizer whose keys are all its arguments: the parameters
    are all it lacks (the trainer scales lr and splits the parameters into weight-decay groups)."""
    cfg = OmegaConf.load(path)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = instantiate(cfg)([weight])
    assert type(optimizer).__name__ == cfg._target_.rsplit(".", 1)[1]
    group = optimizer.param_groups[0]
    assert group["lr"] == cfg.lr and group["weight_decay"] == cfg.weight_decay
    weight.sum().backward()
    optimizer.step()
    assert (weight < 1).all()  # it steps against the gradient


@pytest.mark.parametrize("data,backbone", list(itertools.product(DERIVED, BACKBONES)))
def test_each_derived_composition_builds_from_its_data(data, backbone):
    from frcnn.data.derive import AUTO_KEYS, ObjectSizes, derive

    cfg = compose_train([f"data={data}", f"model/backbone={backbone}", *DERIVED[data], "run_dir=/tmp/x"])
    assert all(cfg.data[k] == "auto" for k in AUTO_KEYS)
    # Objects of 16-320 px (a photo set at the training scale), as resolve_auto measures them.
    rng = np.random.default_rng(0)
    scaled = np.exp(rng.uniform(np.log(16), np.log(320), 2000))
    derived = derive(ObjectSizes(1000, 2000, scaled, scaled / 1.5), epochs=float(cfg.data.epochs),
                     reference_batch=int(cfg.trainer.reference_batch_size))
    for k in AUTO_KEYS:
        cfg.data[k] = derived[k][0]
    OmegaConf.resolve(cfg)
    gen = instantiate(cfg.model.rpn.anchor_generator)
    model = instantiate(cfg.model)
    assert model.backbone.strides == gen.strides
    ladder = sorted({s for level in gen.level_sizes for s in level})
    assert all(b / a == pytest.approx(2, rel=0.02) for a, b in zip(ladder, ladder[1:])), ladder
    q5, q95 = np.percentile(scaled, [5, 95])
    assert math.sqrt(ladder[0] * ladder[-1]) == pytest.approx(math.sqrt(q5 * q95), rel=0.02)  # octaves around the objects' middle
    assert cfg.trainer.max_iters * cfg.trainer.reference_batch_size / cfg.data.num_train_images == pytest.approx(12, rel=0.01)
    assert cfg.schedule.warmup_iters <= 0.2 * cfg.trainer.max_iters
