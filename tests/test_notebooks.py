"""Every notebook in notebooks/ runs top to bottom (its checks are assertions), so none can rot."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


# Each notebook runs in under 60 s on an idle 2-core machine (notebook 3 reuses the session's trained
# run); a cell may take 3x that on a busy machine before it counts as hung.
CELL_TIMEOUT_S = 180


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, trained_run):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    # Executed from notebooks/, as Jupyter does when a user opens it there.
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", shutdown_kernel="immediate", resources={"metadata": {"path": str(path.parent)}}).execute()


def test_notebooks_match_their_scripts():
    """Each notebook's source is a percent-format script beside it (jupytext's py:percent, paired): the .ipynb must
    hold exactly the script's cells, so that what is reviewed and linted is what runs."""
    import jupytext

    scripts = sorted((REPO / "notebooks").glob("*.py"))
    assert [p.stem for p in scripts] == [p.stem for p in NOTEBOOKS]  # one script per notebook, no other script
    for script, path in zip(scripts, NOTEBOOKS):
        text = script.read_text()
        assert "format_name: percent" in text and "formats: ipynb,py:percent" in text, script.name
        source, nb = jupytext.read(script), nbformat.read(path, as_version=4)
        assert [(c.cell_type, c.source) for c in nb.cells] == [(c.cell_type, c.source) for c in source.cells], (
            f"{path.name} differs from {script.name}: run jupytext --sync {script.relative_to(REPO)}")


def test_notebook_1_with_a_tracker_checkpoint(tmp_path, monkeypatch):
    """Notebook 1's branch taken once `make track-demo` has run: a SiamRPN checkpoint is there (here an untrained
    one of the demo's configuration, named by FRCNN_SIAMRPN_CHECKPOINT)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from frcnn.cli import compose_config
    from frcnn.engine.checkpoint import save_checkpoint
    from frcnn.tracking.training import CHECKPOINT_KIND

    cfg = compose_config("siamrpn", ["experiment=siamrpn_demo", f"run_dir={tmp_path / 'run'}"])
    model = instantiate(cfg.model)
    checkpoint = save_checkpoint({"kind": CHECKPOINT_KIND, "model": model.state_dict(),
                                  "config": OmegaConf.to_container(cfg, resolve=True)}, tmp_path / "last.pt")
    monkeypatch.setenv("FRCNN_SIAMRPN_CHECKPOINT", str(checkpoint))
    path = REPO / "notebooks" / "1_anchors_and_the_rpn.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", shutdown_kernel="immediate",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "response from SiamRPN of last.pt ; peak at cell" in outputs
