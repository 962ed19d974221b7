import errno
import io
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from frcnn.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/frcnn_pwned",))


def test_round_trip_and_no_temporary_left(tmp_path):
    path = save_checkpoint({"w": torch.ones(3), "iteration": 7, "names": ["a", "b"]}, tmp_path / "last.pt")
    out = load_checkpoint(path)
    assert out["iteration"] == 7 and torch.equal(out["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_save_that_fails_half_way_keeps_the_previous_file(tmp_path, monkeypatch):
    """The writer puts half the bytes where it was told to, then fails (e.g. the disk fills up).

    A plain ``torch.save(state, path)`` leaves a truncated ``path``; an atomic save leaves it untouched.
    """
    path = save_checkpoint({"iteration": 1, "w": torch.arange(10_000.0)}, tmp_path / "last.pt")
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(half)
        else:
            f.write(half)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"iteration": 2, "w": torch.arange(10_000.0)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _changed_and_nonempty(folder: Path, before: dict[str, tuple[int, int]]) -> bool:
    """Some file in ``folder`` differs from ``before`` and has bytes in it: whatever the writer's scheme,
    it has started writing (a plain save truncates and rewrites ``path``; an atomic one fills a new file)."""
    for entry in os.scandir(folder):
        st = entry.stat()
        if (st.st_size, st.st_mtime_ns) != before.get(entry.name) and st.st_size > 0:
            return True
    return False


def test_a_save_killed_mid_write_keeps_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process while it writes a 32 MB checkpoint over a good one, 20 times at different points
    of the write: ``last.pt`` always loads, and holds the old checkpoint or (killed after the rename)
    the new one, never a mix. The writer is a forked child, so each round costs no interpreter start."""
    path = tmp_path / "last.pt"
    weights = torch.zeros(8 * 2**20)  # 32 MiB of float32
    save_checkpoint({"iteration": 0, "w": weights}, path)
    t0 = time.perf_counter()
    save_checkpoint({"iteration": 0, "w": weights}, tmp_path / "timing.pt")
    write_s = time.perf_counter() - t0
    (tmp_path / "timing.pt").unlink()

    ctx = multiprocessing.get_context("fork")  # the parent's torch, already imported: no start-up per round
    previous, killed_mid_write, rounds = 0, 0, 20
    for i in range(1, rounds + 1):
        weights.fill_(float(i))
        before = {e.name: (e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(tmp_path)}
        child = ctx.Process(target=save_checkpoint, args=({"iteration": i, "w": weights}, path))
        child.start()
        deadline = time.monotonic() + 60
        while not _changed_and_nonempty(tmp_path, before) and child.is_alive():
            assert time.monotonic() < deadline, "the writer never started writing"
        # Kill points spread over the first half of the measured write time, so that most land mid-write
        # even if this child writes twice as fast as the measurement (a busy or a quiet machine).
        time.sleep(write_s * 0.5 * (i - 1) / rounds)
        os.kill(child.pid, signal.SIGKILL)
        child.join()

        ckpt = load_checkpoint(path)  # CheckpointError if the kill left a truncated file
        assert ckpt["iteration"] in (previous, i), (i, ckpt["iteration"])
        assert float(ckpt["w"][0]) == float(ckpt["w"][-1]) == ckpt["iteration"]
        killed_mid_write += ckpt["iteration"] == previous
        previous = ckpt["iteration"]
        for leftover in tmp_path.iterdir():  # a killed atomic writer leaves its temporary file
            if leftover != path:
                leftover.unlink()
    # The test only means something if most kills landed before the save completed.
    assert killed_mid_write >= rounds // 4, f"only {killed_mid_write} of {rounds} kills landed mid-write"


def test_arbitrary_pickled_objects_are_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    if os.path.exists("/tmp/frcnn_pwned"):
        os.remove("/tmp/frcnn_pwned")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/frcnn_pwned")


def test_truncated_and_missing(tmp_path):
    path = save_checkpoint({"w": torch.randn(1000)}, tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_a_checkpoint_of_the_earlier_layout_loads_for_inference_but_not_for_resume(tmp_path, tiny_checkpoint):
    """Before frcnn.modeling, stages were top-level modules and the backbone owned the box head."""
    import re

    from frcnn.errors import ConfigError
    from frcnn.tasks.load import load_model

    state = torch.load(tiny_checkpoint, weights_only=True)
    assert any(k.startswith("roi_heads.box_head.") for k in state["model"])
    old = dict(state)
    old["model"] = {k.replace("roi_heads.box_head.", "backbone.box_head."): v for k, v in state["model"].items()}

    def old_targets(node):
        if isinstance(node, dict):
            return {k: re.sub(r"^frcnn\.modeling\.", "frcnn.", v) if k == "_target_" else old_targets(v) for k, v in node.items()}
        return node

    old["config"] = old_targets(state["config"])
    assert old["config"]["model"]["_target_"] == "frcnn.model.FasterRCNN"
    save_checkpoint(old, tmp_path / "old.pt")

    image = torch.rand(3, 128, 160)
    new_model, _, _ = load_model(tiny_checkpoint, torch.device("cpu"))
    old_model, _, _ = load_model(tmp_path / "old.pt", torch.device("cpu"))
    with torch.no_grad():
        a, b = new_model([image]).detections[0], old_model([image]).detections[0]
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(a[key], b[key])

    from frcnn.cli import compose_train
    from frcnn.tasks.train import train
    from tests.conftest import TINY_TRAIN

    # data.root does not exist: the built-in data set would be generated there if the refusal came after it
    data = tmp_path / "not_generated"
    cfg = compose_train(TINY_TRAIN + [f"data.root={data}", f"train.resume={tmp_path / 'old.pt'}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="earlier frcnn"):
        train(cfg)
    assert not data.exists()  # refused before any data were generated or read
