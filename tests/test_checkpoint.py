import os

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


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint({"iteration": 1}, tmp_path / "last.pt")

    def boom(*a, **k):
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"iteration": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


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
