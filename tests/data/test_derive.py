"""frcnn.data.derive: what a data set decides (anchor sizes, proposal minimum, schedule), from its annotations."""

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from frcnn.cli import compose_train
from frcnn.data.derive import AUTO_KEYS, ObjectSizes, derive, object_sizes, resolve_auto
from frcnn.errors import ConfigError, InputError


def test_object_sizes_at_the_training_scale():
    dataset = {
        "images": [{"id": 1, "width": 400, "height": 300}, {"id": 2, "width": 2000, "height": 1000}],
        "annotations": [
            {"image_id": 1, "bbox": [0, 0, 20, 80], "iscrowd": 0},  # sqrt(1600) = 40, x2 (short side 300 -> 600)
            {"image_id": 2, "bbox": [0, 0, 100, 100], "iscrowd": 0},  # 100, x0.5 (long side 2000 -> 1000)
            {"image_id": 2, "bbox": [0, 0, 500, 500], "iscrowd": 1},  # a crowd region: not an object
            {"image_id": 9, "bbox": [0, 0, 5, 5], "iscrowd": 0},  # no such image: not measured
        ],
    }
    sizes = object_sizes(dataset, 600, 1000, "x.json")
    assert sizes.num_images == 2 and sizes.num_objects == 2
    np.testing.assert_allclose(sizes.scaled, [80, 50])
    np.testing.assert_allclose(sizes.shorter, [20, 100])
    with pytest.raises(InputError, match="x.json has no object box to derive data settings from"):
        object_sizes({"images": dataset["images"], "annotations": []}, 600, 1000, "x.json")


def test_derived_values_by_hand():
    # Sizes 10..1000 px evenly in log space: the 5-95 % range's geometric middle is 100 px.
    scaled = np.geomspace(10, 1000, 10001)
    shorter = np.full(10001, 30.0)
    shorter[:50] = 4.0  # the 1st percentile of the shorter sides: 30 px (50 of 10001 are below it)
    chosen = derive(ObjectSizes(num_images=800, num_objects=10001, scaled=scaled, shorter=shorter), epochs=12, reference_batch=16)
    value = {k: v for k, (v, _) in chosen.items()}
    assert value["anchor_sizes"] == [50, 100, 200]  # a, 2a, 4a around 100
    assert value["fpn_anchor_sizes"] == [25, 50, 100, 200, 400]
    assert value["rpn_min_size"] == 15  # half of 30, at most 16
    assert value["num_train_images"] == 800
    assert value["max_iters"] == 600 and value["warmup_iters"] == 60  # 12 x 800 / 16; a tenth
    big = derive(ObjectSizes(num_images=118287, num_objects=10001, scaled=scaled, shorter=shorter + 100), epochs=12, reference_batch=16)
    assert big["max_iters"][0] == 88716 and big["warmup_iters"][0] == 1000 and big["rpn_min_size"][0] == 16


def custom(tiny_data, *extra):
    return compose_train([
        "data=custom", "data.num_classes=5", "run_dir=/tmp/x",
        f"data.train.images={tiny_data / 'train'}", f"data.train.annotations={tiny_data / 'annotations' / 'train.json'}",
        f"data.val.images={tiny_data / 'val'}", f"data.val.annotations={tiny_data / 'annotations' / 'val.json'}", *extra,
    ])


def test_resolve_auto_says_what_it_chose_and_overrides_win(tiny_data, capsys):
    cfg = custom(tiny_data, "data.anchor_sizes=[16,32,64]", "data.min_size_train=[128]", "data.min_size_test=128", "data.max_size=192")
    derived = resolve_auto(cfg)
    assert set(derived) == set(AUTO_KEYS) - {"anchor_sizes"}  # the given value wins
    assert list(cfg.data.anchor_sizes) == [16, 32, 64] and cfg.data.num_train_images == 8
    assert cfg.data.max_iters == 6 and cfg.trainer.max_iters == 6  # 12 epochs x 8 images / 16, read through
    lines = capsys.readouterr().out.splitlines()
    objects = sum(not a.get("iscrowd", 0) for a in json.loads((tiny_data / "annotations" / "train.json").read_text())["annotations"])
    assert lines[0] == (f"data settings derived from {tiny_data / 'annotations' / 'train.json'} ({8} images, {objects} objects); "
                        "a value given as data.<key>=... wins:")
    assert [line.split("=")[0].strip() for line in lines[1:]] == [f"data.{k}" for k in AUTO_KEYS if k != "anchor_sizes"]
    assert resolve_auto(cfg) == {}  # nothing left to derive
    OmegaConf.resolve(cfg)


def test_one_training_size_and_a_given_schedule_length(tiny_data):
    # data.min_size_train may be one number; the warm-up is a tenth of the steps the run will take.
    cfg = custom(tiny_data, "data.min_size_train=128", "data.max_size=192", "trainer.max_iters=300")
    resolve_auto(cfg)
    assert cfg.data.warmup_iters == 30 and cfg.trainer.max_iters == 300 and cfg.data.max_iters == 6


def test_a_resumed_run_keeps_the_values_it_derived(tiny_data, tmp_path, capsys):
    import torch

    saved = {"config": {"data": {"anchor_sizes": [8, 16, 32], "fpn_anchor_sizes": [4, 8, 16, 32, 64], "rpn_min_size": 3,
                                 "num_train_images": 7, "max_iters": 99, "warmup_iters": 9}}}
    torch.save(saved, tmp_path / "last.pt")
    cfg = custom(tiny_data, f"train.resume={tmp_path / 'last.pt'}")
    with pytest.raises(ConfigError, match="this command does not resume a run"):  # train() loads the checkpoint, once
        resolve_auto(cfg)
    assert resolve_auto(cfg, saved["config"]) == saved["config"]["data"]  # not re-derived from the (maybe changed) annotations
    assert cfg.trainer.max_iters == 99
    assert capsys.readouterr().out.startswith(f"data settings of the run being resumed ({tmp_path / 'last.pt'}): data.anchor_sizes=[8,16,32]")


@pytest.mark.slow
def test_a_custom_set_trains_with_what_was_derived(tiny_data, tmp_path, capsys):
    from frcnn.tasks.train import train
    from tests.conftest import TINY_TRAIN

    run = tmp_path / "run"
    tiny = [o for o in TINY_TRAIN if not o.startswith("model.rpn.anchor_generator.sizes")]
    cfg = custom(tiny_data, *tiny, "trainer.max_iters=2", "trainer.eval_period=0", f"run_dir={run}", "data.max_bad_image_fraction=0.5")
    train(cfg)
    assert "data settings derived from" in capsys.readouterr().out
    saved = OmegaConf.load(run / "config.yaml")
    assert all(saved.data[k] != "auto" for k in AUTO_KEYS)  # the run (and its checkpoints) hold the numbers
    assert list(saved.model.rpn.anchor_generator.sizes) == list(saved.data.anchor_sizes)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 2
