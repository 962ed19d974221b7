"""frcnn.cli and the scripts' entry points: one line for the user's mistakes, a traceback for ours.

Mistakes Hydra finds while composing (unknown keys, bad override syntax) run through the scripts'
CLIs: the scripts import torch only after composing, so these end in about a second. Wrong values,
found by the task functions the scripts call, are checked in-process on those functions; such an
error raised inside a task runs through a script's CLI in tests/tasks/test_infer.py (evaluate.py on a
decompression bomb) and tests/tasks/test_train.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from frcnn.cli import compose_config, compose_train, friendly_errors, user_message
from frcnn.data.coco import AnnotationError
from frcnn.errors import ConfigError, MissingFileError
from frcnn.tasks.evaluate import evaluate
from frcnn.tasks.infer import infer
from frcnn.tasks.train import train

REPO = Path(__file__).resolve().parents[1]


def exits_with_one_line(fn, capsys) -> str:
    """``fn()`` under :func:`friendly_errors` ends with exit status 2 and one ``error: ...`` line on stderr; that line."""
    with pytest.raises(SystemExit) as exc:
        friendly_errors(fn)()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err.strip()


def _raise(err: BaseException):
    def fn():
        raise err

    return fn


def test_project_errors_are_one_line_and_exit_2(capsys):
    assert exits_with_one_line(_raise(ConfigError("trainer.amp='fp32' is not valid")), capsys) == "error: trainer.amp='fp32' is not valid"
    assert "a.jpg" in exits_with_one_line(_raise(MissingFileError("image a.jpg not found")), capsys)
    assert exits_with_one_line(_raise(AnnotationError("duplicate image ids [3]\nids must be unique")), capsys) == (
        "error: duplicate image ids [3]; ids must be unique"
    )


def test_a_value_error_from_inside_torch_keeps_its_traceback():
    def bug():
        torch.nn.functional.interpolate(torch.zeros(1, 1, 2, 2), size=4, scale_factor=2.0)

    with pytest.raises(ValueError, match="only one of size or scale_factor") as exc:
        friendly_errors(bug)()
    assert any("torch" in str(entry.path) for entry in exc.traceback)  # re-raised, not replaced
    for not_ours in (FileNotFoundError("x"), KeyError("amp"), RuntimeError("CUDA error")):
        with pytest.raises(type(not_ours)):
            friendly_errors(_raise(not_ours))()


def test_instantiate_errors_are_the_users_only_when_the_config_is_at_fault(capsys):
    # A key the target does not take: the call itself fails, so the config is at fault.
    bad_key = OmegaConf.create({"_target_": "frcnn.engine.schedule.WarmupCosine", "max_iters": 3, "bogus": 1})
    assert "bogus" in exits_with_one_line(lambda: instantiate(bad_key), capsys)
    # A project error raised by the constructor is reported as itself.
    bad_value = compose_train(["model.roi_heads.pooler=bilinear", "run_dir=x"]).model.roi_heads
    assert "'bilinear'" in exits_with_one_line(lambda: instantiate(bad_value), capsys)
    # Anything raised inside the target is a bug, even a TypeError: Hydra's wrapper is re-raised with its cause.
    for target, cause in (("tests.test_cli._buggy_target", TypeError), ("numpy.zeros", ValueError)):
        broken = OmegaConf.create({"_target_": target, "shape": -1})
        with pytest.raises(InstantiationException) as exc:
            friendly_errors(lambda: instantiate(broken))()
        assert isinstance(exc.value.__cause__, cause)


def _buggy_target(shape: int):
    return torch.zeros(abs(shape)) + "x"  # a TypeError inside the target, not from the call


@pytest.mark.parametrize(
    "override,expected",
    [
        ("model.rpn.nms_tresh=0.5", ["model.rpn.nms_tresh is not a config key", "did you mean model.rpn.nms_thresh?", "min_size"]),
        ("trainer.max_iters==", ["cannot parse the override 'trainer.max_iters=='", "key=value"]),
        ("model/backbone=r99", ["model/backbone=r99 is not a config option", "mobilenet_v3_fpn | r18_c4 | r18_fpn | r50_c4 | r50_fpn | vgg16"]),
    ],
)
def test_hydra_composition_errors_name_the_key_and_the_choices(override, expected):
    with pytest.raises(Exception) as exc:
        compose_train([override])
    msg = user_message(exc.value)
    assert msg is not None and "\n" not in msg
    for part in expected:
        assert part in msg


def run_script(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / script), *args]
    if "-m" in args:
        cmd.append(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    else:
        cmd.append(f"hydra.run.dir={tmp_path / 'run'}")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


COMPOSITION_MISTAKES = {
    "unknown key": ("train.py", ["model.rpn.no_such_key=1"], ["model.rpn.no_such_key", "nms_thresh"]),
    "unknown key in a sweep": ("train.py", ["-m", "optim.lr=0.01,0.02", "optim.no_such_key=1"], ["optim.no_such_key", "weight_decay"]),
    "override syntax": ("train.py", ["trainer.max_iters=="], ["trainer.max_iters==", "key=value"]),
    "evaluate unknown key": ("evaluate.py", ["checkpoint=best.pt", "batch_sise=4"], ["batch_sise is not a config key", "did you mean batch_size?"]),
    "infer unknown key": ("infer.py", ["checkpoint=best.pt", "image=a.jpg", "score_tresh=0.3"], ["score_tresh is not a config key", "did you mean score_thresh?"]),
    "explain unknown key": ("explain.py", ["checkpoint=best.pt", "image=a.jpg", "max_roi=4"], ["max_roi is not a config key", "did you mean max_rois?"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(COMPOSITION_MISTAKES))
def test_composition_mistakes_end_with_one_line_and_exit_2(case, tmp_path):
    script, args, expected = COMPOSITION_MISTAKES[case]
    data = tmp_path / "data"
    res = run_script(script, [*args, f"data.root={data}"] if script == "train.py" else args, tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    for part in expected:
        assert part in lines[0]
    assert not data.exists()  # it failed before generating any data


VALUE_MISTAKES = {
    "amp": (train, "train", ["trainer.amp=fp32"], ["trainer.amp='fp32'", "none | bf16 | fp16"]),
    "device": (train, "train", ["trainer.device=gpu"], ["trainer.device='gpu'", "auto | cpu | cuda"]),
    "evaluate amp": (evaluate, "evaluate", ["checkpoint=best.pt", "amp=fp32"], ["amp='fp32'", "none | bf16 | fp16"]),
    "infer device": (infer, "infer", ["checkpoint=best.pt", "image=a.jpg", "device=gpu"], ["device='gpu'", "auto | cpu | cuda"]),
}


@pytest.mark.parametrize("case", list(VALUE_MISTAKES))
def test_config_value_mistakes_end_with_one_line_before_any_work(case, tmp_path, capsys):
    """The task each script calls checks the values first: one line, exit status 2, no data and no output folder."""
    task, config_name, overrides, expected = VALUE_MISTAKES[case]
    data, out = tmp_path / "data", tmp_path / "out"
    where = [f"data.root={data}", f"run_dir={out}"] if config_name == "train" else [f"output_dir={out}"]
    cfg = compose_config(config_name, [*overrides, *where])
    line = exits_with_one_line(lambda: task(cfg), capsys)
    for part in expected:
        assert part in line
    assert not data.exists() and not out.exists()


@pytest.mark.slow
def test_a_bug_under_hydra_app_keeps_its_traceback(tmp_path):
    script = tmp_path / "buggy.py"
    script.write_text(textwrap.dedent(
        """
        import numpy as np
        from frcnn.cli import hydra_app

        @hydra_app("evaluate")
        def main(cfg):
            np.zeros(2).reshape(3)  # a ValueError from inside numpy: our bug, not the user's

        main()
        """
    ))
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    res = subprocess.run([sys.executable, str(script), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "reshape" in res.stderr and "ValueError" in res.stderr
    assert not res.stderr.startswith("error:")


def test_each_trainer_helps_with_its_own_config_groups(run_script):
    # The detector's --help lists the detector's groups; the tracker's (on conf/siamrpn.yaml's search path) are
    # listed by train_tracker.py's help, from a template that must name every option it has.
    detector = run_script("train.py", ["--help"])
    assert detector.returncode == 0 and "model/backbone: " in detector.stdout and "siamrpn" not in detector.stdout
    tracker = run_script("train_tracker.py", ["--help"])
    assert tracker.returncode == 0
    root = Path(__file__).resolve().parents[1]
    for folder, group in [("frcnn/tracking/conf", g) for g in ("siamrpn/backbone", "siamrpn/head", "experiment")] + [
            ("conf", g) for g in ("optim", "schedule", "trainer")]:
        options = ", ".join(sorted(p.stem for p in (root / folder / group).glob("*.yaml")))
        assert f"\n{group}: {options}\n" in tracker.stdout, group
    assert "model/backbone" not in tracker.stdout and "demo_fpn" not in tracker.stdout  # the detector's groups: not the tracker's


def test_every_script_ends_a_user_mistake_in_one_line():
    # A task script is a Hydra app (frcnn.cli.hydra_app), a benchmark an argparse main under friendly_errors.
    for script in sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py")):
        text = script.read_text()
        assert "@hydra_app(" in text or "@friendly_errors\ndef main(" in text, script.name
