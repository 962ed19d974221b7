"""Training through the real Hydra entry point: run directory, resume, sweeps, DDP with gloo, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frcnn.tasks.train import train
from tests.conftest import TINY_TRAIN, TINY_TRAIN_FPN, compose_train

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def tiny(data: Path, run_dir: Path, extra: list[str] = (), base: list[str] = TINY_TRAIN) -> list[str]:
    """Overrides for a seconds-long CPU run (``base``: ``TINY_TRAIN``, or ``TINY_TRAIN_FPN`` for ResNet-18-FPN)."""
    return [
        *base,
        f"data.root={data}",
        "trainer.max_iters=4",
        "trainer.eval_period=4",
        "trainer.checkpoint_period=2",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def cli(script: str, overrides: list[str], *, env=None, multirun=False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / script), *(["-m"] if multirun else []), *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def run_group(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (torchrun's workers too)."""
    import signal

    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[3:5]} hung for {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _run(cfg_overrides, tmp):
    cfg = compose_train([o for o in cfg_overrides if not o.startswith("hydra.")] + [f"run_dir={tmp}"])
    return train(cfg)


@pytest.mark.parametrize("base", [TINY_TRAIN, TINY_TRAIN_FPN], ids=["c4", "fpn"])
def test_resume_continues_exactly_where_it_stopped(tiny_data, tmp_path, monkeypatch, base):
    # Augmentation on (flip and colour jitter on every image) and one DataLoader worker: each sample's
    # augmentation is a function of (seed, epoch, index), so the resumed run sees the very same pixels.
    common = ["data.num_workers=1", "data.augment.hflip=0.5", "data.augment.jitter_prob=1.0", "trainer.eval_period=0",
              "trainer.checkpoint_period=1000"]
    _run(tiny(tiny_data, tmp_path / "straight", common, base), tmp_path / "straight")
    # The same 4-step run, interrupted (Ctrl-C) in its third step: last.pt holds the 2 completed steps.
    from frcnn.modeling.model import FasterRCNN

    real_forward, calls = FasterRCNN.forward, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_forward(self, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(FasterRCNN, "forward", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _run(tiny(tiny_data, tmp_path / "a", common, base), tmp_path / "a")
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["iteration"] == 2
    out = _run(tiny(tiny_data, tmp_path / "b", common + [f"train.resume={tmp_path / 'a' / 'last.pt'}"], base), tmp_path / "b")
    assert out["iteration"] == 4
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert resumed["scheduler"]["last_epoch"] == straight["scheduler"]["last_epoch"] == 4
    iters = [json.loads(l)["iteration"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert iters == [3, 4]


def test_multirun_sweep_writes_a_run_directory_per_job(tiny_data, tmp_path):
    """One Hydra multirun of train.py: each job's run directory is complete and each job trained with
    its own value of the swept key (one process for both checks: the CLI's import is ~10 s)."""
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny(tiny_data, tmp_path, ["trainer.tensorboard=true"]) if not o.startswith("hydra.run")]
    res = cli("train.py", overrides + ["optim.lr=0.01,0.02", f"hydra.sweep.dir={sweep}"], multirun=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("best val AP") == 2
    from omegaconf import OmegaConf

    current_lrs = []
    for job, lr in (("0", 0.01), ("1", 0.02)):
        run = sweep / job
        for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "data_report.txt"):
            assert (run / name).is_file(), (job, name)
        report = (run / "data_report.txt").read_text().splitlines()  # each split's load report
        assert report[0].startswith("train: ") and report[1].startswith("val: ") and "boxes dropped" in report[1]
        assert any((run / "tensorboard").iterdir())
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in records if "loss" in r] == [1, 2, 3, 4]
        assert any("val/AP" in r for r in records)
        # each job ran with its own value of the swept key
        assert OmegaConf.load(run / "config.yaml").optim.lr == lr
        ckpt = torch.load(run / "last.pt", weights_only=True)
        assert ckpt["iteration"] == 4
        assert ckpt["categories"]["category_ids"] == [1, 3, 5, 7, 9]
        assert ckpt["config"]["optim"]["lr"] == lr
        groups = ckpt["optimizer"]["param_groups"]
        # the optimizer was built with it: data.batch_size = trainer.reference_batch_size = 2, so no scaling
        assert [g["initial_lr"] for g in groups] == pytest.approx([lr] * len(groups), rel=1e-12)
        current_lrs.append([g["lr"] for g in groups])
    # the same schedule multiplies both: the lrs they trained with at the end differ by the swept ratio
    assert current_lrs[1] == pytest.approx([2 * x for x in current_lrs[0]], rel=1e-9) and min(current_lrs[0]) > 0


# Loaded by each rank (a sitecustomize on PYTHONPATH): records the image ids every rank trains on.
_RECORD_IDS = """
import os
from frcnn.data import coco

_getitem = coco.CocoDetection.__getitem__

def _recording(self, key):
    image, target = _getitem(self, key)
    if isinstance(key, tuple):  # a training sample
        with open(os.path.join(os.environ["FRCNN_IDS_DIR"], "rank" + os.environ.get("RANK", "0")), "a") as f:
            f.write(f"{int(target['image_id'])}\\n")
    return image, target

coco.CocoDetection.__getitem__ = _recording
"""


def test_two_gloo_ranks_stay_in_step_on_their_own_shards(tiny_data, tmp_path):
    """Two gloo ranks under torchrun: each reads its own shard; rank 0 trains on images without boxes only
    while rank 1 has boxes at every step, and neither hangs; the replicas are identical after every step."""
    import shutil

    from frcnn.data.coco import CocoDetection
    from frcnn.engine.builders import InfiniteBatches
    from frcnn.engine.distributed import DistInfo

    seed, steps = 6, 4
    data = CocoDetection(tiny_data / "train", tiny_data / "annotations" / "train.json")
    streams = []  # the image ids of each batch each rank trains on
    for rank in (0, 1):
        batches = iter(InfiniteBatches(data, 2, seed, DistInfo(rank=rank, world_size=2)))
        streams.append([[data.records[index]["image_id"] for index, _ in next(batches)] for _ in range(steps)])
    # Rank 0's images lose their boxes; under this seed each of rank 1's batches keeps an image with boxes.
    negative = {i for batch in streams[0] for i in batch}
    assert all(set(batch) - negative for batch in streams[1]), f"seed={seed} no longer mixes the ranks; pick another"
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    ann = root / "annotations" / "train.json"
    coco = json.loads(ann.read_text())
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] not in negative]
    ann.write_text(json.dumps(coco))

    run = tmp_path / "ddp"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_RECORD_IDS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FRCNN_IDS_DIR": str(hooks),
           "PYTHONPATH": os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "scripts" / "train.py"),
           *tiny(root, run, ["trainer.checkpoint_period=1", f"seed={seed}"])]
    res = run_group(cmd, env=env, timeout=300)  # a rank waiting for the other's gradients forever fails here
    assert res.returncode == 0, res.stderr[-3000:]
    # Each rank reads its own DistributedSampler shard: the images each rank trained on are exactly its
    # own stream (both ranks reading one shard, or the whole set, would not match), and the two
    # ranks' first-epoch shards are disjoint.
    ids = [[int(i) for i in (hooks / f"rank{r}").read_text().split()] for r in (0, 1)]
    for rank in (0, 1):
        assert ids[rank] == [i for batch in streams[rank] for i in batch], (rank, ids)
    shards = [set(InfiniteBatches(data, 2, seed, DistInfo(rank=r, world_size=2)).batches.sampler) for r in (0, 1)]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 8
    assert ids[0] != ids[1]
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    # Rank 0 logs its own losses: no boxes, so exactly zero box regression, and a classification loss.
    losses = [r for r in records if "loss" in r]
    assert [r["loss_box_reg"] for r in losses] == [0.0] * steps and all(r["loss_cls"] > 0 for r in losses)
    sums = [r["replica_checksums"] for r in records if "replica_checksums" in r]
    assert len(sums) >= 4 and all(len(s) == 2 for s in sums)  # every checkpoint (period 1), best.pt too
    assert all(s[0] == s[1] for s in sums)  # identical weights on both ranks after every step
    assert len({tuple(s) for s in sums}) == 4  # and they did change
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 4


def test_config_errors_are_one_clear_message(tiny_data, tmp_path):
    res = cli("train.py", tiny(tiny_data, tmp_path / "x", ["model.roi_heads.pooler=bilinear"]))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: model.roi_heads.pooler='bilinear' is not valid; allowed: align | pool"]
    # an unknown key: tests/test_cli.py; a value that only the data can contradict (raised in-process):
    from frcnn.config import ConfigError

    with pytest.raises(ConfigError, match="data.num_classes=4 but .* has 5 categories; set data.num_classes=5"):
        _run(tiny(tiny_data, tmp_path / "z", ["data.num_classes=4"]), tmp_path / "z")
    # a mistyped resume names train.resume (checked before the checkpoint is read, and before any data)
    with pytest.raises(ConfigError, match=r"train.resume=.*nope.pt is not a file; pass the last.pt of the run to continue"):
        _run(tiny(tiny_data, tmp_path / "r", [f"train.resume={tmp_path / 'nope.pt'}"]), tmp_path / "r")
