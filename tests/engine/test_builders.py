"""Optimizer building (lr scaling, weight-decay groups) and the resumable training batch stream."""

import itertools

import pytest
import torch
from torch import nn

from frcnn.cli import compose_train
from frcnn.engine import builders
from frcnn.engine.distributed import DistInfo
from tests.conftest import small_model


@pytest.mark.parametrize(
    "overrides, world, optimizer, lr",
    [
        (["data.batch_size=3", "optim.lr=0.02", "trainer.reference_batch_size=16"], 4, torch.optim.SGD, 0.02 * 3 * 4 / 16),
        (["data.batch_size=3", "optim.lr=0.02", "trainer.reference_batch_size=16"], 1, torch.optim.SGD, 0.02 * 3 / 16),
        (["optim=adamw", "data.batch_size=2"], 1, torch.optim.AdamW, 1e-4 * 2 / 16),  # conf/optim/adamw.yaml: lr 1e-4 at 16
    ],
)
def test_lr_scales_with_the_total_batch(overrides, world, optimizer, lr):
    """lr = optim.lr x data.batch_size x world_size / trainer.reference_batch_size (linear scaling rule)."""
    cfg = compose_train(overrides)
    opt = builders.build_optimizer(cfg, nn.Linear(3, 2), world_size=world)
    assert type(opt) is optimizer
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr, lr], rel=1e-12)
    assert [g["weight_decay"] for g in opt.param_groups] == pytest.approx([float(cfg.optim.weight_decay), 0.0])


class Toy(nn.Module):
    """One of each kind of parameter owner, and a frozen conv."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Conv2d(3, 4, 3)
        self.frozen.requires_grad_(False)
        self.conv = nn.Conv2d(4, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 2)
        self.no_bias = nn.Conv2d(8, 8, 1, bias=False)


def test_param_groups_decay_weights_only():
    toy = Toy()
    groups = builders.param_groups(toy, weight_decay=1e-4)
    by_id = {id(p): name for name, p in toy.named_parameters()}
    names = [sorted(by_id[id(p)] for p in g["params"]) for g in groups]
    assert names == [
        ["conv.weight", "fc.weight", "no_bias.weight"],
        ["bn.bias", "bn.weight", "conv.bias", "fc.bias", "gn.bias", "gn.weight"],
    ]
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]


def test_every_trainable_parameter_of_the_detector_is_in_exactly_one_group():
    # freeze_at=1: the stem is frozen; norm=bn (from scratch): trainable BatchNorm everywhere else
    model = small_model(overrides=["model.backbone.freeze_at=1", "model.backbone.norm=bn"])
    cfg = compose_train(["optim.weight_decay=0.0003"])
    opt = builders.build_optimizer(cfg, model)
    name_of = {id(p): n for n, p in model.named_parameters()}
    grouped = [name_of[id(p)] for g in opt.param_groups for p in g["params"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and set(frozen) == {n for n in name_of.values() if n.startswith("backbone.trunk.0.")}
    assert sorted(grouped) == sorted(trainable)  # each trainable parameter once, no frozen one
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == pytest.approx(0.0003) and no_decay["weight_decay"] == 0.0
    norm_types = (nn.BatchNorm2d, nn.GroupNorm)
    owner = {f"{m}.{n}" if m else n: mod for m, mod in model.named_modules() for n, _ in mod.named_parameters(recurse=False)}
    for p in decay["params"]:
        name = name_of[id(p)]
        assert name.endswith(".weight") and isinstance(owner[name], (nn.Conv2d, nn.Linear)), name
    for p in no_decay["params"]:
        name = name_of[id(p)]
        assert name.endswith(".bias") or isinstance(owner[name], norm_types), name


class FakeImages(torch.utils.data.Dataset):
    """Only what the batch sampler reads: a length and each image's orientation group."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def aspect_ratio_group(self, index: int) -> int:
        return int(index % 3 == 0)  # a third portrait

    def __getitem__(self, key):
        raise AssertionError("the sampler must not load images")


def take(sampler, n: int) -> list:
    return list(itertools.islice(iter(sampler), n))


def indices(batch: list) -> list[int]:
    """Dataset indices of a batch, whether its keys are plain indices or ``(index, ...)`` tuples."""
    return [k[0] if isinstance(k, tuple) else k for k in batch]


DISTS = [DistInfo(), DistInfo(rank=1, world_size=2)]


@pytest.mark.parametrize("dist", DISTS, ids=["single", "rank1_of_2"])
def test_resumed_stream_is_the_tail_of_the_full_stream(dist):
    data = FakeImages(23)
    full = take(builders.InfiniteBatches(data, 2, seed=5, dist_info=dist), 40)  # several epochs
    per_epoch = len(builders.InfiniteBatches(data, 2, seed=5, dist_info=dist).batches)
    assert 3 <= per_epoch < 12
    for start in (1, per_epoch - 1, per_epoch, per_epoch + 2, 3 * per_epoch + 1):
        resumed = take(builders.InfiniteBatches(data, 2, seed=5, dist_info=dist, start=start), 40 - start)
        assert resumed == full[start:], start
    epochs = [[indices(b) for b in full[e * per_epoch : (e + 1) * per_epoch]] for e in range(3)]
    assert epochs[0] != epochs[1] != epochs[2]  # every epoch is reshuffled
    for b in full:
        assert len({data.aspect_ratio_group(i) for i in indices(b)}) == 1  # one orientation per batch


@pytest.mark.parametrize("dist", DISTS, ids=["single", "rank1_of_2"])
def test_batch_order_depends_on_the_seed(dist):
    data = FakeImages(23)

    def order(seed):
        return [indices(b) for b in take(builders.InfiniteBatches(data, 2, seed=seed, dist_info=dist), 20)]

    assert order(0) == order(0)
    assert order(0) != order(1) and order(1) != order(2)


def test_synthetic_data_is_generated_once_and_never_over_a_data_set_it_did_not_write(tmp_path, capsys):
    from frcnn.errors import ConfigError

    cfg = compose_train(["run_dir=x", f"data.root={tmp_path / 'gen'}", "data.generate.num_train=2", "data.generate.num_val=1"])
    main = DistInfo(rank=0, world_size=1, local_rank=0)
    builders.ensure_synthetic(cfg, main)
    assert (tmp_path / "gen" / "READY").is_file() and len(list((tmp_path / "gen" / "train").iterdir())) == 2
    before = (tmp_path / "gen" / "train" / "000000.png").stat().st_mtime_ns
    builders.ensure_synthetic(cfg, main)  # READY: left as it is
    assert (tmp_path / "gen" / "train" / "000000.png").stat().st_mtime_ns == before
    assert "was generated with" not in capsys.readouterr().out
    changed = compose_train(["run_dir=x", f"data.root={tmp_path / 'gen'}", "data.generate.num_train=3", "data.generate.num_val=1"])
    builders.ensure_synthetic(changed, main)  # other settings: said, and the folder is used as it is
    assert f"data.root={tmp_path / 'gen'} was generated with data.generate.num_train=2 (not 3)" in capsys.readouterr().out
    assert (tmp_path / "gen" / "train" / "000000.png").stat().st_mtime_ns == before

    (tmp_path / "gen" / "READY").unlink()  # a folder with annotations the generator did not write (e.g. edited images)
    with pytest.raises(ConfigError, match="pass data.generate=null"):
        builders.ensure_synthetic(cfg, main)
    assert (tmp_path / "gen" / "train" / "000000.png").stat().st_mtime_ns == before
    builders.ensure_synthetic(compose_train(["run_dir=x", f"data.root={tmp_path / 'gen'}", "data.generate=null"]), main)


def test_a_set_without_one_full_batch_is_refused_not_looped_over_forever():
    from frcnn.errors import ConfigError

    """3 landscape + 1 portrait images at batch 4: no orientation group fills a batch, so the stream would never
    yield; a clear error instead (this hung fine-tuning on a 4-image set before)."""
    data = FakeImages(4)
    groups = [data.aspect_ratio_group(i) for i in range(4)]
    assert 0 < sum(groups) < 4  # both orientations
    with pytest.raises(ConfigError, match=r"make no full batch of data.batch_size=4: lower data.batch_size"):
        builders.InfiniteBatches(data, 4, seed=0, dist_info=DistInfo())
    assert take(builders.InfiniteBatches(data, max(groups.count(0), groups.count(1)), seed=0, dist_info=DistInfo()), 3)


def test_auto_data_workers_fit_the_machine(monkeypatch):
    """data=coco's default (auto) on a 2-core machine is 1 worker, not 4 (torch warned twice about 4)."""
    import os

    from frcnn.cli import compose_train
    from frcnn.config import validate_train_config
    from frcnn.errors import ConfigError

    for cores, expected in ((1, 0), (2, 1), (3, 2), (16, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert builders.num_workers("auto") == expected
    assert builders.num_workers(3) == 3
    cfg = compose_train(["data=coco", "data.root=/data/coco", "run_dir=/tmp/unused"])
    assert cfg.data.num_workers == "auto"
    validate_train_config(cfg)
    with pytest.raises(ConfigError, match=r"data.num_workers='many' is not valid; allowed: auto"):
        validate_train_config(compose_train(["data.num_workers=many", "run_dir=/tmp/unused"]))
