"""``scripts/evaluate.py analyze=true``: report.html parsed (every section, every image decodes), metrics.json,
two results files side by side, bad results files, and the trained model's analysis against tidecv."""

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from frcnn.benchmarks.analysis import tidecv_dap
from frcnn.cli import compose_config
from frcnn.evaluation.tide import MAIN_ERRORS, SPECIAL_ERRORS
from frcnn.tasks.evaluate import evaluate, model_names
from tests.evaluation.fixtures import random_case
from tests.test_cli import exits_with_one_line

SECTIONS = ["coco-stats", "per-class-ap", "pr-curves", "tide-error-types", "coco-analyze", "confusion-matrix", "calibration",
            "images-with-the-most-errors"]
FIGURES = ["tide.png", "coco_analyze.png", "coco_analyze_per_class.png", "confusion_matrix.png", "calibration.png", "pr_curves.png"]


class Page(HTMLParser):
    """The section ids, the images' data and the tables of a report."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.tables, self.figures = [], [], 0, 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")  # inline: the page opens from disk, offline
            self.images.append(Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1]))))
        elif tag == "table":
            self.tables += 1
        elif tag == "figure":
            self.figures += 1
        assert not (tag in ("script", "link") and ("src" in attrs or "href" in attrs))  # nothing fetched from anywhere


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A random data set with images on disk, and its results file."""
    root = tmp_path_factory.mktemp("case")
    gt, dets = random_case(0, num_images=24, decimals=7)
    gt["categories"][0]["name"] = "<b>&amp"  # a name that HTML would read as markup
    (root / "images").mkdir()
    for im in gt["images"]:
        Image.new("RGB", (im["width"], im["height"]), (90, 120, 150)).save(root / "images" / im["file_name"])
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "res.json").write_text(json.dumps(dets))
    return root, gt, dets


def run(out, *overrides):
    return evaluate(compose_config("evaluate", [f"output_dir={out}", "progress=false", *overrides]))


def test_the_report_of_a_results_file(case, tmp_path, capsys):
    root, gt, dets = case
    out = tmp_path / "out"
    metrics = run(out, f"predictions={root / 'res.json'}", f"annotations={root / 'gt.json'}", f"images={root / 'images'}", "analyze=true",
                  "analysis.worst_images=5")
    page = Page((out / "report.html").read_text())
    assert page.sections == SECTIONS
    for im in page.images:
        im.load()  # decodes (raises on broken data)
        assert min(im.size) > 50
    assert page.figures == 5 and len(list((out / "worst").glob("*.png"))) == 5
    assert all((out / f).is_file() for f in FIGURES)
    a = metrics["analysis"]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert set(a) == {"tide", "coco_analyze", "confusion_matrix", "calibration", "per_image", "detections_over_cap"}
    assert len(a["per_image"]) == len(gt["images"]) and set(a["tide"]["per_class"]) == {c["name"] for c in gt["categories"]}
    ap, dap, _ = tidecv_dap(gt, dets)
    assert a["tide"]["ap50"] == pytest.approx(ap, abs=1e-6)
    assert max(abs(a["tide"]["dap"][n] - dap[n]) for n in dap) < 1e-6
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;&amp;amp" in text and "<b>&amp<" not in text  # the category name shown, not read as markup
    said = capsys.readouterr().out.splitlines()
    assert said[-2].startswith("TIDE dAP (AP50 points, AP50 ") and all(f" {e} " in said[-2] + " " for e in (*MAIN_ERRORS, *SPECIAL_ERRORS))


def test_without_images_the_gallery_says_how(case, tmp_path):
    root, _, _ = case
    out = tmp_path / "out"
    run(out, f"predictions={root / 'res.json'}", f"annotations={root / 'gt.json'}", "analyze=true")
    text = (out / "report.html").read_text()
    assert "Pass <code>images=/path/to/image/folder</code> to draw these images." in text
    assert Page(text).figures == 0 and not (out / "worst").exists()


def test_without_analyze_the_report_has_the_scores(case, tmp_path):
    root, _, _ = case
    out = tmp_path / "out"
    metrics = run(out, f"predictions={root / 'res.json'}", f"annotations={root / 'gt.json'}")
    page = Page((out / "report.html").read_text())
    assert page.sections == SECTIONS[:3] and "analysis" not in metrics and "analyze=true" in (out / "report.html").read_text()


def test_two_results_files_side_by_side(case, tmp_path, capsys):
    root, _, dets = case
    (root / "worse").mkdir(exist_ok=True)
    (root / "worse" / "res.json").write_text(json.dumps([{**d, "score": d["score"] / 2} for d in dets[::2]]))
    out = tmp_path / "out"
    metrics = run(out, f"predictions=[{root / 'res.json'},{root / 'worse' / 'res.json'}]", f"annotations={root / 'gt.json'}",
                  f"images={root / 'images'}", "analyze=true", "analysis.worst_images=2")
    assert list(metrics["models"]) == ["res", "worse/res"]
    first, second = metrics["models"].values()
    assert first["num_detections"] == len(dets) and second["num_detections"] == len(dets[::2])
    assert first["stats"]["AP"] > second["stats"]["AP"]
    page = Page((out / "report.html").read_text())
    assert page.sections == SECTIONS[:2] + ["pr-curves-res", "pr-curves-worse-res"] + SECTIONS[3:7] + [
        "images-with-the-most-errors-res", "images-with-the-most-errors-worse-res"]
    assert page.figures == 4 and (out / "worst_res").is_dir() and (out / "worst_worse_res").is_dir()
    assert (out / "confusion_matrix_res.png").is_file() and (out / "confusion_matrix_worse_res.png").is_file()
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("res: COCO AP@[.5:.95] = ") and "; worse/res: COCO AP@[.5:.95] = " in last


def test_model_names_are_what_the_paths_do_not_share():
    assert model_names(["a.json"]) == ["a"]
    assert model_names(["runs/a.json", "runs/b.json"]) == ["a", "b"]
    assert model_names(["x/eval/detections.json", "y/eval/detections.json"]) == ["x", "y"]
    assert model_names(["same.json", "same.json"]) == ["1:same", "2:same"]
    assert model_names(["a_b/det.json", "a/b/det.json"]) == ["1:a_b", "2:a/b"]  # a_b and a/b: one file name


def test_four_models_in_one_tide_figure(case, tmp_path):
    from frcnn.evaluation.plots import plot_tide

    tide = {"dap": dict.fromkeys((*MAIN_ERRORS, *SPECIAL_ERRORS), 1.0), "counts": dict.fromkeys(MAIN_ERRORS, 3)}
    png = plot_tide({f"m{i}": tide for i in range(4)}, tmp_path / "tide.png")
    assert Image.open(png).size[0] > 500


def test_no_detections_is_a_report_of_zeros(case, tmp_path):
    root, _, _ = case
    (root / "empty.json").write_text("[]")
    out = tmp_path / "out"
    metrics = run(out, f"predictions={root / 'empty.json'}", f"annotations={root / 'gt.json'}", f"images={root / 'images'}", "analyze=true")
    assert metrics["stats"]["AP"] == 0.0 and metrics["analysis"]["tide"]["ap50"] == 0.0
    assert Page((out / "report.html").read_text()).sections == [s for s in SECTIONS if s != "pr-curves"]


@pytest.mark.parametrize("key, value, message", [
    ("image_id", 7, "detection has image_id 7, which is not in the ground truth"),
    ("category_id", 2, "has category_id 2, which is not in the ground truth's categories [1, 4, 7, 10]"),
])
def test_results_naming_what_the_ground_truth_lacks_is_one_line(case, tmp_path, capsys, key, value, message):
    root, _, dets = case
    (tmp_path / "bad.json").write_text(json.dumps([*dets, {**dets[0], key: value}]))
    cfg = compose_config("evaluate", [f"predictions={tmp_path / 'bad.json'}", f"annotations={root / 'gt.json'}", "analyze=true",
                                      f"output_dir={tmp_path / 'out'}"])
    assert message in exits_with_one_line(lambda: evaluate(cfg), capsys)


@pytest.mark.parametrize("override, message", [
    ("analyze=maybe", "analyze='maybe' is not valid; allowed: true | false"),
    ("analysis.score_thresh=2", "analysis.score_thresh=2 is not valid; allowed: a number >= 0 and <= 1"),
    ("analysis.worst_images=-1", "analysis.worst_images=-1 is not valid"),
    ("predictions=[]", "predictions=[] is not valid; give one results file or a list"),
])
def test_bad_analysis_options(case, tmp_path, override, message):
    root, _, _ = case
    overrides = [f"predictions={root / 'res.json'}", f"annotations={root / 'gt.json'}", f"output_dir={tmp_path}", override]
    with pytest.raises(Exception, match=message.replace("[", "\\[").replace("]", "\\]")):
        evaluate(compose_config("evaluate", overrides))


def test_the_trained_models_analysis(tiny_checkpoint, trained_run, tmp_path):
    # The synthetic validation split of the shared quick run: its images drawn, its dAP against tidecv.
    out = tmp_path / "eval"
    metrics = run(out, f"checkpoint={tiny_checkpoint}", "device=cpu", "analyze=true")
    page = Page((out / "report.html").read_text())
    assert page.sections == SECTIONS and page.figures >= 1
    gt = json.loads((trained_run.parent / "data" / "annotations" / "val.json").read_text())
    dets = json.loads((out / "detections.json").read_text())
    ap, dap, _ = tidecv_dap(gt, dets)
    tide = metrics["analysis"]["tide"]
    assert tide["ap50"] == pytest.approx(ap, abs=1e-6)
    for name in dap:
        assert tide["dap"][name] == pytest.approx(dap[name], abs=0.01), name  # the bound: 0.5
    cm = np.array(metrics["analysis"]["confusion_matrix"]["counts"])
    assert cm[:-1].sum() == sum(not a.get("iscrowd", 0) for a in gt["annotations"])  # each object counted once
