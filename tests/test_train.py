"""Training through the real Hydra entry point: run directory, resume, sweeps, DDP with gloo, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frcnn.engine.trainer import train
from tests.conftest import TINY_TRAIN, compose_train

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def tiny(data: Path, run_dir: Path, extra: list[str] = ()) -> list[str]:
    """Overrides for a seconds-long CPU run."""
    return [
        *TINY_TRAIN,
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


def test_training_run_writes_its_run_directory(tiny_data, tmp_path):
    run = tmp_path / "run"
    res = cli("train.py", tiny(tiny_data, run, ["trainer.tensorboard=true"]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "best val AP" in res.stdout
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "data_report.txt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert any("val/AP" in r for r in records)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["iteration"] == 4
    assert ckpt["categories"]["category_ids"] == [1, 3, 5, 7, 9]


def _run(cfg_overrides, tmp):
    cfg = compose_train([o for o in cfg_overrides if not o.startswith("hydra.")] + [f"run_dir={tmp}"])
    return train(cfg)


def test_resume_continues_exactly_where_it_stopped(tiny_data, tmp_path):
    common = ["data.augment=null", "trainer.eval_period=0"]
    _run(tiny(tiny_data, tmp_path / "straight", common), tmp_path / "straight")
    _run(tiny(tiny_data, tmp_path / "a", common + ["trainer.max_iters=2"]), tmp_path / "a")
    out = _run(tiny(tiny_data, tmp_path / "b", common + [f"train.resume={tmp_path / 'a' / 'last.pt'}"]), tmp_path / "b")
    assert out["iteration"] == 4
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert resumed["scheduler"]["last_epoch"] == straight["scheduler"]["last_epoch"] == 4
    iters = [json.loads(l)["iteration"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert iters == [3, 4]


def test_multirun_sweep(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny(tiny_data, tmp_path, ["trainer.max_iters=2", "trainer.eval_period=0"]) if not o.startswith("hydra.run")]
    res = cli("train.py", overrides + ["optim.lr=0.01,0.02", f"hydra.sweep.dir={sweep}"], multirun=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (sweep / "0" / "last.pt").is_file() and (sweep / "1" / "last.pt").is_file()


def test_two_gloo_ranks_stay_in_step(tiny_data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / "scripts" / "train.py"),
           *tiny(tiny_data, run, ["trainer.checkpoint_period=1"])]
    res = run_group(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    sums = [r["replica_checksums"] for r in records if "replica_checksums" in r]
    assert len(sums) >= 4 and all(len(s) == 2 for s in sums)  # every checkpoint (period 1), best.pt too
    assert all(s[0] == s[1] for s in sums)  # identical weights on both ranks after every step
    assert len({tuple(s) for s in sums}) == 4  # and they did change
    assert torch.load(run / "last.pt", weights_only=True)["iteration"] == 4


def test_config_errors_are_one_clear_message(tiny_data, tmp_path):
    res = cli("train.py", tiny(tiny_data, tmp_path / "x", ["model.roi_heads.pooler=bilinear"]))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: roi_heads.pooler must be 'align' or 'pool'")
    res = cli("train.py", tiny(tiny_data, tmp_path / "y", ["model.rpn.no_such_key=1"]))
    assert res.returncode != 0 and "no_such_key" in res.stderr and "Traceback" not in res.stderr
    res = cli("train.py", tiny(tiny_data, tmp_path / "z", ["data.num_classes=4"]))
    assert res.returncode == 2 and "data.num_classes=5" in res.stderr
