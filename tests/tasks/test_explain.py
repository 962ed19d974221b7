"""scripts/explain.py and its task (frcnn/tasks/explain.py): panels, maps and scores; the cost line; one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from frcnn.errors import ConfigError
from frcnn.explain import explain, find_detections
from frcnn.explain.methods import (
    METHODS,
)
from tests.conftest import small_model


def test_odam_options_are_checked_before_the_model_loads():
    from frcnn.cli import compose_config
    from frcnn.tasks.explain import run_explain

    base = ["checkpoint=none.pt", "image=none.png", "methods=[odam]"]
    cases = {"options.odam.attribute=width": "options.odam.attribute='width' is not valid; allowed: score | logit | x1",
             "target=roi_score": "needs explain=detections and target=similarity",
             "explain=proposals": "needs explain=detections and target=similarity"}
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            run_explain(compose_config("explain", [*base, override]))


def test_explain_script_writes_panels_maps_and_scores(tiny_checkpoint, trained_run, tmp_path, run_script):
    from omegaconf import OmegaConf

    from frcnn.data.images import read_rgb

    cfg = OmegaConf.load(trained_run / "config.yaml")
    image = sorted(Path(cfg.data.val.images).glob("*.png"))[0]
    out = tmp_path / "explain"
    annotations = Path(cfg.data.val.annotations)
    proc = run_script("explain.py", [f"checkpoint={tiny_checkpoint}", f"image={image}", "methods=[gradcam,drise]",
                                     "detections=top2", "score_thresh=0.05", "options.drise.masks=32", "max_rois=4",
                                     "faithfulness.steps=8", f"annotations={annotations}", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "explanations.json").read_text())
    assert 1 <= len(report["detections"]) <= 2
    # The first line: each method's expected time on this machine, before any is run.
    first = proc.stdout.splitlines()[0]
    assert re.fullmatch(rf"{re.escape(str(image))}: explaining [12] detections?; one forward pass takes [0-9.]+ s here "
                        r"\([0-9.]+ s per image in a batch\), so expect about: gradcam ≈ [0-9.]+ (s|min), drise ≈ [0-9.]+ (s|min)", first)
    # The ground truth of the image, drawn on the panels, is the annotation file's.
    gt = json.loads(annotations.read_text())
    image_id = next(im["id"] for im in gt["images"] if Path(im["file_name"]).name == image.name)
    boxes = [a["bbox"] for a in gt["annotations"] if a["image_id"] == image_id]
    assert [b["box_xyxy"] for b in report["ground_truth"]] == [[x, y, x + w, y + h] for x, y, w, h in boxes]
    maps = np.load(out / "explanations.npz")
    for entry in report["detections"]:
        assert Path(entry["panel"]).is_file()
        for method in ("gradcam", "drise"):
            scores = entry["methods"][method]
            assert 0 <= scores["deletion_auc"] <= 1 and 0 <= scores["insertion_auc"] <= 1
            assert maps[f"{entry['name']}/{method}"].shape == read_rgb(image).shape[:2]


def test_expected_passes_follow_each_methods_options():
    from frcnn.explain.methods import expected_passes

    assert expected_passes("gradcam", {}, 2) == 6  # a forward and a backward (two) per detection
    assert expected_passes("integrated_gradients", {}, 1) == 3 * 32  # its default steps
    assert expected_passes("integrated_gradients", {"steps": 8}, 3) == 3 * 8 * 3
    assert expected_passes("drise", {"masks": 500}, 4) == 500  # masks shared by the image's detections
    assert expected_passes("kernel_shap", {}, 2) == 400
    assert all(expected_passes(name, {}, 1) > 0 for name in METHODS)


def test_ground_truth_of_an_image_not_in_the_annotations_is_one_line(tmp_path):
    from frcnn.errors import InputError
    from frcnn.tasks.explain import ground_truth

    gt = {"images": [{"id": 1, "file_name": "a/x.png", "width": 10, "height": 10}, {"id": 2, "file_name": "b/x.png", "width": 10, "height": 10}],
          "categories": [{"id": 1, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert ground_truth(str(tmp_path / "gt.json"), Path("/data/b/x.png")) == [("cat", [1, 2, 4, 6])]  # the one in b/
    with pytest.raises(InputError, match="several images named x.png"):
        ground_truth(str(tmp_path / "gt.json"), Path("/data/ab/x.png"))  # ab/x.png is neither a/x.png nor b/x.png
    assert ground_truth(None, Path("x.png")) is None
    with pytest.raises(InputError, match="have no image named y.png"):
        ground_truth(str(tmp_path / "gt.json"), Path("y.png"))


def test_explain_config_errors_name_the_key(tiny_checkpoint, tmp_path):
    from frcnn.cli import compose_config
    from frcnn.errors import ConfigError
    from frcnn.tasks.explain import run_explain

    base = [f"checkpoint={tiny_checkpoint}", "image=none.png", f"output_dir={tmp_path}"]
    cases = {
        "methods=[gradcam,lime]": "unknown explanation method 'lime'",
        "faithfulness.substrate=white": "faithfulness.substrate='white'",
        "target=logit": "target='logit'",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            run_explain(compose_config("explain", [*base, override]))
    with pytest.raises(FileNotFoundError, match="none.png"):
        run_explain(compose_config("explain", base))


def test_gradcam_head_on_proposals_is_refused_in_one_line():
    # Issue 29: a proposal's target stops at the RPN, so the box head's activation was never captured
    # and autograd raised from deep inside. Both the library call and the CLI's config refuse it.
    from frcnn.cli import compose_config
    from frcnn.tasks.explain import run_explain

    torch.manual_seed(0)
    model = small_model().eval()
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0))
    proposals = find_detections(model, image, top=1, score_thresh=0.0, kind="proposal")
    with pytest.raises(ConfigError, match="gradcam_head .*proposals"):
        explain(model, image, proposals, method="gradcam_head")
    cfg = compose_config("explain", ["checkpoint=none.pt", "image=none.png", "explain=proposals", "methods=[gradcam,gradcam_head]"])
    with pytest.raises(ConfigError, match="gradcam_head .*explain=proposals"):
        run_explain(cfg)

