"""COCO evaluation against pycocotools run directly, on hand-made fixtures; the evaluation task on a results file."""

import contextlib
import copy
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn.benchmarks.eval_backends import compare, jittered_detections
from frcnn.cli import compose_config
from frcnn.errors import ConfigError, InputError, MissingFileError
from frcnn.evaluation.coco_eval import STAT_NAMES, evaluate_results, per_class_table
from frcnn.evaluation.plots import plot_pr_curves
from frcnn.tasks.evaluate import evaluate
from tests.evaluation.fixtures import coco_from

GT = {
    "images": [{"id": 1, "width": 200, "height": 200, "file_name": "1.png"}, {"id": 2, "width": 200, "height": 100, "file_name": "2.png"}],
    "categories": [{"id": 3, "name": "cat"}, {"id": 8, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 8, "bbox": [100, 100, 80, 90], "area": 7200, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 8, "bbox": [120, 10, 60, 60], "area": 3600, "iscrowd": 1},
    ],
}


def gt_coco() -> COCO:
    return coco_from(GT)


def one_image(boxes: list[list[float]]) -> COCO:
    """A 300x300 image with one category (id 1) and the given ``[x, y, w, h]`` boxes (not crowd)."""
    return coco_from({
        "images": [{"id": 1, "width": 300, "height": 300, "file_name": "1.png"}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for i, b in enumerate(boxes)],
    })


def perfect():
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in GT["annotations"] if not a["iscrowd"]]


def reference(results):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = gt_coco()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    return dict(zip(STAT_NAMES, ev.stats))


def test_perfect_detections_score_one():
    stats = evaluate_results(gt_coco(), perfect())["stats"]
    for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert stats[name] == pytest.approx(1.0), name
    # areas 2000 and 400 are small/medium, 7200 medium: no large ground truth, so APl is undefined (-1)
    assert stats["APs"] == pytest.approx(1.0) and stats["APm"] == pytest.approx(1.0)
    assert stats["APl"] == -1.0


@pytest.mark.parametrize(
    "results",
    [
        perfect()[:-1],  # one missed box
        perfect() + [{"image_id": 1, "category_id": 3, "bbox": [150, 10, 30, 30], "score": 0.99}],  # high false positive
        perfect() + [{"image_id": 2, "category_id": 8, "bbox": [121, 11, 58, 58], "score": 0.95}],  # on a crowd region: ignored
        [{**r, "bbox": [r["bbox"][0] + 4, r["bbox"][1] + 3, r["bbox"][2], r["bbox"][3]]} for r in perfect()],  # shifted
    ],
    ids=["missed", "false_positive", "crowd", "shifted"],
)
def test_agrees_with_pycocotools(results):
    ours = evaluate_results(gt_coco(), results)["stats"]
    ref = reference(results)
    for name in STAT_NAMES:
        assert ours[name] == pytest.approx(ref[name], abs=1e-12), name


@pytest.mark.parametrize("false_positive", [False, True], ids=["alone", "behind_a_false_positive"])
@pytest.mark.parametrize(
    "w, h, dx, area",
    [(25, 20, 6.5, "s"), (60, 50, 16, "m"), (120, 100, 31, "l")],  # areas 500 < 32², 3000, 12000 > 96²
)
def test_stats_by_name_for_one_detection_at_iou_0_58(w, h, dx, area, false_positive):
    """One ground-truth box, one detection of the same size shifted right by ``dx``: IoU = (w - dx) / (w + dx)
    ≈ 0.58. It is a true positive at the IoU thresholds 0.50 and 0.55 and a miss at 0.60 ... 0.95, so each
    threshold's AP and recall is 1 or 0 and AP@[.5:.95] = AR = 2 / 10. Only the box's area range has
    ground truth; the other two are undefined (-1).

    With a higher-scoring false positive of the same size ranked first, the interpolated precision at
    every recall is 1/2 where the match counts: AP50 = 0.5, AP = 0.1, recall is unchanged (AR10 =
    AR100 = 0.2) except AR1 = 0 (the one detection allowed is the false positive). This separates the
    AP stats from the AR stats that equal them in the first case."""
    iou = (w - dx) / (w + dx)
    assert 0.55 < iou < 0.6
    dets = [{"image_id": 1, "category_id": 1, "bbox": [50 + dx, 50, w, h], "score": 0.9}]
    if false_positive:
        dets.append({"image_id": 1, "category_id": 1, "bbox": [50, 70 + h, w, h], "score": 0.95})  # below the object
    stats = evaluate_results(one_image([[50, 50, w, h]]), dets)["stats"]
    precision = 0.5 if false_positive else 1.0
    expected = {"AP": 0.2 * precision, "AP50": precision, "AP75": 0.0, "AR1": 0.0 if false_positive else 0.2, "AR10": 0.2, "AR100": 0.2}
    for size in "sml":
        expected[f"AP{size}"] = 0.2 * precision if size == area else -1.0
        expected[f"AR{size}"] = 0.2 if size == area else -1.0
    assert set(stats) == set(expected)
    for name, value in expected.items():
        assert stats[name] == pytest.approx(value, abs=1e-12), name


def test_recall_by_name_at_each_max_detections():
    """Twelve separate ground-truth boxes in one image, each found exactly: AR1 counts only the best
    detection (1/12), AR10 the ten best (10/12), AR100 all twelve (1); AP (at 100) is 1."""
    boxes = [[10 + 40 * (i % 6), 10 + 60 * (i // 6), 30, 40] for i in range(12)]  # area 1200: medium
    dets = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 0.9 - 0.01 * i} for i, b in enumerate(boxes)]
    stats = evaluate_results(one_image(boxes), dets)["stats"]
    expected = {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": -1.0, "APm": 1.0, "APl": -1.0,
                "AR1": 1 / 12, "AR10": 10 / 12, "AR100": 1.0, "ARs": -1.0, "ARm": 1.0, "ARl": -1.0}
    for name, value in expected.items():
        assert stats[name] == pytest.approx(value, abs=1e-12), name


def test_crowd_detection_does_not_count_as_false_positive():
    with_crowd_hit = perfect() + [{"image_id": 2, "category_id": 8, "bbox": [121, 11, 58, 58], "score": 0.95}]
    assert evaluate_results(gt_coco(), with_crowd_hit)["stats"]["AP"] == pytest.approx(1.0)


def test_empty_detections_give_zero():
    out = evaluate_results(gt_coco(), [])
    assert all(v == 0.0 for v in out["stats"].values())
    assert out["per_class_ap"] == {"cat": 0.0, "dog": 0.0}


def test_unknown_category_is_a_clear_error():
    with pytest.raises(ValueError, match="category_id 5, which is not in the ground truth"):
        evaluate_results(gt_coco(), [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 5, 5], "score": 0.5}])


def test_per_class_table_and_pr_plot(tmp_path):
    out = evaluate_results(gt_coco(), perfect()[:-1])
    table = per_class_table(out["per_class_ap"])
    assert "| cat |" in table and "| dog |" in table
    png = plot_pr_curves(out["precision"], list(out["per_class_ap"]), tmp_path / "pr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_evaluate_script_scores_a_results_file(tmp_path, run_script):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "res.json").write_text(json.dumps(perfect()[:-1]))
    out = tmp_path / "out"
    # As its __main__ in this process (the run_script fixture): a second interpreter would add ~13 s of imports.
    res = run_script("evaluate.py", [f"predictions={tmp_path / 'res.json'}", f"annotations={tmp_path / 'gt.json'}", f"hydra.run.dir={out}"])
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stats"]["AP"] == pytest.approx(reference(perfect()[:-1])["AP"])
    assert metrics["num_detections"] == len(perfect()) - 1
    assert (out / "pr_curves.png").is_file() and not (out / "detections.json").exists()
    table = (out / "per_class_ap.md").read_text()
    assert table == per_class_table(metrics["per_class_ap"]) + "\n"
    lines = res.stdout.splitlines()
    assert lines[0] == " ".join(f"{n}={metrics['stats'][n]:.4f}" for n in STAT_NAMES)
    assert "\n".join(lines[1:-1]) + "\n" == table
    assert lines[-1] == f"COCO AP@[.5:.95] = {metrics['stats']['AP']:.4f}; results in {out}; report: {out / 'report.html'}"


def test_evaluate_without_detections_writes_zeros_and_no_curves(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "res.json").write_text("[]")
    out = tmp_path / "out"
    metrics = evaluate(compose_config("evaluate", [f"predictions={tmp_path / 'res.json'}", f"annotations={tmp_path / 'gt.json'}",
                                                   f"output_dir={out}"]))
    assert metrics == {"stats": {n: 0.0 for n in STAT_NAMES}, "per_class_ap": {"cat": 0.0, "dog": 0.0}, "num_detections": 0}
    assert json.loads((out / "metrics.json").read_text()) == metrics and not (out / "pr_curves.png").exists()
    assert capsys.readouterr().out.splitlines()[-1] == f"COCO AP@[.5:.95] = 0.0000; results in {out}; report: {out / 'report.html'}"


@pytest.mark.parametrize(
    "predictions, annotations, error, message",
    [
        ("missing.json", "gt.json", MissingFileError, "predictions file .*missing.json not found; pass predictions="),
        ("broken.json", "gt.json", InputError, "predictions file .*broken.json is not valid JSON"),
        ("res.json", None, ConfigError, "predictions=... needs annotations="),
    ],
)
def test_evaluate_results_file_mistakes(tmp_path, predictions, annotations, error, message):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "res.json").write_text(json.dumps(perfect()))
    (tmp_path / "broken.json").write_text("[{")
    overrides = [f"predictions={tmp_path / predictions}", f"output_dir={tmp_path / 'out'}"]
    cfg = compose_config("evaluate", overrides + ([f"annotations={tmp_path / annotations}"] if annotations else []))
    with pytest.raises(error, match=message):
        evaluate(cfg)


def _entry(**changes):
    entry = {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 20.0, 20.0], "score": 0.9}
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize(
    "results, message",
    [
        ({"annotations": []}, r"holds a JSON dict, not a list of detections"),
        ([_entry(), "box"], r"entry 1 is a JSON str, not an object"),
        ([_entry(score=_DROP)], r"entry 0 \(image_id 1\) lacks score"),
        ([_entry(bbox=_DROP, category_id=_DROP)], r"entry 0 \(image_id 1\) lacks category_id, bbox"),
        ([_entry(image_id="1")], r"entry 0 \(image_id '1'\) has image_id '1': ids are integers"),
        ([_entry(category_id=1.5)], r"has category_id 1.5: ids are integers"),
        ([_entry(bbox=[1, 2, 3])], r"has bbox \[1, 2, 3\]: a bbox is four finite numbers"),
        ([_entry(bbox=[1, 2, "3", 4])], r"a bbox is four finite numbers"),
        ([_entry(), _entry(score=float("nan"))], r"entry 1 \(image_id 1\) has score nan: a score is a finite number"),
        ([_entry(score=None)], r"has score None"),
        ([_entry(bbox=[1, 2, float("inf"), 4])], r"a bbox is four finite numbers"),
    ],
)
def test_malformed_results_files_are_refused_naming_the_entry(tmp_path, results, message):
    """Each malformed kind: one line naming the file, the entry's index and image id, and the fix."""
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "res.json").write_text(json.dumps(results))
    cfg = compose_config("evaluate", [f"predictions={tmp_path / 'res.json'}", f"annotations={tmp_path / 'gt.json'}",
                                      f"output_dir={tmp_path / 'out'}"])
    with pytest.raises(InputError, match=r"predictions file .*res.json.*" + message):
        evaluate(cfg)


def test_degenerate_boxes_are_dropped_with_a_count(tmp_path, capsys):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    good = perfect()[:-1]
    (tmp_path / "res.json").write_text(json.dumps(good + [_entry(bbox=[5.0, 5.0, 0.0, 10.0]), _entry(bbox=[5.0, 5.0, 4.0, -1.0])]))
    metrics = evaluate(compose_config("evaluate", [f"predictions={tmp_path / 'res.json'}", f"annotations={tmp_path / 'gt.json'}",
                                                   f"output_dir={tmp_path / 'out'}"]))
    assert "left out 2 detections of" in capsys.readouterr().out
    assert metrics["num_detections"] == len(good)
    assert metrics["stats"]["AP"] == pytest.approx(reference(good)["AP"])


# --- the faster-coco-eval backend (the fast-eval extra): pycocotools is the reference -------------------


def _assert_backends_agree(coco: COCO, results: list[dict], image_ids=None) -> None:
    import numpy as np

    ref = evaluate_results(coco, results, image_ids)
    fast = evaluate_results(coco, results, image_ids, backend="faster_coco_eval")
    for name in STAT_NAMES:
        assert fast["stats"][name] == pytest.approx(ref["stats"][name], abs=1e-4), name
    assert fast["per_class_ap"] == pytest.approx(ref["per_class_ap"], abs=1e-4, nan_ok=True)
    if ref["precision"] is not None:
        assert fast["precision"].shape == ref["precision"].shape
        assert np.allclose(fast["precision"], ref["precision"], atol=1e-4)


def test_faster_coco_eval_agrees_on_crowds_non_contiguous_ids_and_images_without_detections():
    pytest.importorskip("faster_coco_eval", reason="the fast-eval extra (make installs it)")
    for results in (perfect(), perfect()[:-1], jittered_detections(GT, 0), [r for r in jittered_detections(GT, 1) if r["image_id"] == 1],
                    perfect() + [{"image_id": 2, "category_id": 8, "bbox": [121, 11, 58, 58], "score": 0.95}]):
        _assert_backends_agree(gt_coco(), results)
    _assert_backends_agree(gt_coco(), jittered_detections(GT, 2), image_ids=[2])
    # no detections at all: every stat 0 whichever backend was asked for (neither runs)
    assert evaluate_results(gt_coco(), [], backend="faster_coco_eval")["stats"] == {n: 0.0 for n in STAT_NAMES}


def test_faster_coco_eval_agrees_on_the_synthetic_validation_split(tmp_path):
    pytest.importorskip("faster_coco_eval", reason="the fast-eval extra (make installs it)")
    from frcnn.data.synthetic import generate

    root = generate(tmp_path, num_train=1, num_val=40, seed=3)
    dataset = json.loads((root / "annotations" / "val.json").read_text())
    for seed in range(3):
        _assert_backends_agree(coco_from(dataset), jittered_detections(dataset, seed))
    row = compare(coco_from(dataset), jittered_detections(dataset, 0), reps=1)  # the speed benchmark's own check
    assert row["max_abs_stat_difference"] < 1e-4 and row["detections"] == len(jittered_detections(dataset, 0)) > 40


def test_a_missing_fast_eval_extra_is_one_clear_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faster_coco_eval(name, *args, **kwargs):
        if name.startswith("faster_coco_eval"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faster_coco_eval)
    with pytest.raises(ConfigError, match="needs the fast-eval extra"):
        evaluate_results(gt_coco(), perfect(), backend="faster_coco_eval")


def test_an_unknown_backend_is_a_config_error(tmp_path):
    import re

    with pytest.raises(ConfigError, match=re.escape("backend='cocoapi' is not valid; allowed: pycocotools | faster_coco_eval")):
        evaluate(compose_config("evaluate", ["predictions=r.json", "annotations=g.json", "backend=cocoapi", f"output_dir={tmp_path}"]))
