"""Inference (frcnn.inference) and the evaluation of a checkpoint (frcnn.tasks.evaluate) on a trained
tiny checkpoint and every kind of image users have.

One run of each script as its ``__main__`` (scripts/infer.py on every image kind; scripts/evaluate.py ending
in a user's error raised in a data-loader worker), in this process (the ``run_script`` fixture); every
other case calls the task function under the same :func:`frcnn.cli.friendly_errors` the scripts use.
"""

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn.cli import compose_config
from frcnn.data.synthetic import CATEGORY_IDS, CLASSES
from frcnn.evaluation.coco_eval import STAT_NAMES
from frcnn.tasks.evaluate import evaluate
from frcnn.tasks.infer import infer
from tests.test_cli import exits_with_one_line
from tests.data.test_coco import bomb_png

pytestmark = pytest.mark.slow


def make_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Files of each kind, and the (width, height) each must be seen at (display orientation)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    rgb.save(folder / "photo.jpg")
    rgb.save(folder / "plain.png")
    rgb.save(folder / "bitmap.bmp")
    rgb.save(folder / "web.webp")
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("RGBA").save(folder / "alpha.png")
    rgb.convert("P").save(folder / "palette.png")
    Image.fromarray((rng.integers(0, 65535, (90, 120))).astype(np.uint16)).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(folder / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(rng.integers(0, 255, (12, 9, 3), dtype=np.uint8)).save(folder / "tiny.png")
    Image.fromarray(rng.integers(0, 255, (20, 600, 3), dtype=np.uint8)).save(folder / "long.png")
    sizes = {p.stem: (120, 90) for p in folder.iterdir()}
    sizes.update(rotated=(90, 120), tiny=(9, 12), long=(600, 20))
    return sizes


def test_infer_every_image_kind(tiny_checkpoint, tmp_path, run_script):
    sizes = make_images(tmp_path / "in")
    # a validation image of the checkpoint's own data: the trained model finds objects in it
    cfg = torch.load(tiny_checkpoint, weights_only=True)["config"]
    val = Path(cfg["data"]["val"]["images"]) / "000000.png"
    shutil.copy(val, tmp_path / "in" / "shapes.png")
    sizes["shapes"] = Image.open(val).size
    out = tmp_path / "out"
    res = run_script("infer.py", [f"checkpoint={tiny_checkpoint}", f"image={tmp_path / 'in'}", "score_thresh=0.0",
                                  "device=cpu", f"hydra.run.dir={out}"])
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert len(lines) == len(sizes) + 1  # one line per image, in name order, then the summary
    assert lines[-1].startswith(f"{len(sizes)} images: {len(sizes)} done (") and ", 0 skipped; results in " in lines[-1]
    assert "doesn't contain any box" not in res.stderr  # an image without detections is drawn without torchvision's warning
    for line, path in zip(lines, sorted((tmp_path / "in").iterdir())):
        assert line.startswith(f"{path}: ") and " detections, " in line and line.endswith(f" ms -> {out / path.stem}.png"), line
    counts = {}
    for stem, (w, h) in sizes.items():
        png = Image.open(out / f"{stem}.png")
        assert png.size == (w, h) and png.mode == "RGB", stem
        data = json.loads((out / f"{stem}.json").read_text())
        assert (data["width"], data["height"]) == (w, h)
        for det in data["detections"]:
            x1, y1, x2, y2 = det["box_xyxy"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h, (stem, det)
            # labels 1..K map back to the data set's own (non-contiguous) ids and names
            assert det["category_id"] == CATEGORY_IDS[det["label"] - 1], det
            assert det["category"] == CLASSES[det["label"] - 1], det
        counts[stem] = len(data["detections"])
    assert counts["shapes"] >= 1, counts


def test_infer_unreadable_file_is_a_clear_error(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    cfg = compose_config("infer", [f"checkpoint={tiny_checkpoint}", f"image={bad}", "device=cpu", f"output_dir={tmp_path / 'o'}"])
    assert "broken.jpg" in exits_with_one_line(lambda: infer(cfg), capsys)


def test_a_folder_run_skips_what_it_cannot_read_and_says_so(tiny_checkpoint, tmp_path, capsys):
    """2 of 3 images readable: both are done, the broken one is named, the summary counts it, and the run
    ends with one error line (a non-zero exit) after the readable ones."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("RGB", (50, 70), (10, 200, 30)).save(folder / "c.png")
    out = tmp_path / "o"
    cfg = compose_config("infer", [f"checkpoint={tiny_checkpoint}", f"image={folder}", "device=cpu", f"output_dir={out}"])
    message = exits_with_one_line(lambda: infer(cfg), capsys)
    assert message.startswith("error: 1 of 3 images in ") and message.endswith("could not be read and were skipped: b.jpg")
    assert (out / "a.png").is_file() and (out / "c.png").is_file() and not (out / "b.png").exists()


def test_evaluate_a_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    metrics = evaluate(compose_config("evaluate", [f"checkpoint={tiny_checkpoint}", "device=cpu", f"output_dir={out}"]))
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert set(metrics["stats"]) == set(STAT_NAMES)
    dets = json.loads((out / "detections.json").read_text())
    assert metrics["num_detections"] == len(dets) >= 1 and all(d["category_id"] in CATEGORY_IDS for d in dets)
    assert metrics["stats"]["AP50"] > 0  # the trained model's detections match the ground truth's ids
    assert (out / "pr_curves.png").is_file()
    table = (out / "per_class_ap.md").read_text()
    assert all(f"| {name} |" in table for name in CLASSES)
    said = capsys.readouterr()
    assert "evaluate: 100%" in said.err  # a progress bar over the images while it works, also when not a terminal
    report, *lines = said.out.splitlines()
    assert report.endswith("val.json: 16 images; boxes clipped to the image: 0; boxes dropped: none; crowd regions kept out of training: 0; "
                           "images without boxes: 0 (0 dropped); unreadable images left out before training (pre-flight check or conversion): 0"), report
    assert lines[0] == " ".join(f"{n}={metrics['stats'][n]:.4f}" for n in STAT_NAMES)
    assert "\n".join(lines[1:-1]) + "\n" == table
    assert lines[-1] == f"COCO AP@[.5:.95] = {metrics['stats']['AP']:.4f}; results in {out}; report: {out / 'report.html'}"


def test_a_test_time_proposal_budget_reaches_the_model(tiny_checkpoint, tmp_path):
    from frcnn.tasks.load import load_model, proposal_overrides

    assert proposal_overrides(None) == {}
    model, _, cfg = load_model(tiny_checkpoint, torch.device("cpu"), proposal_overrides(7))
    assert model.rpn.post_nms_topk_test == 7 and cfg.model.rpn.post_nms_topk_test == 7
    full = evaluate(compose_config("evaluate", [f"checkpoint={tiny_checkpoint}", "device=cpu", f"output_dir={tmp_path / 'a'}"]))
    one = evaluate(compose_config("evaluate", [f"checkpoint={tiny_checkpoint}", "device=cpu", "proposals=1", f"output_dir={tmp_path / 'b'}"]))
    assert one["num_detections"] < full["num_detections"]
    per_image = Counter(d["image_id"] for d in json.loads((tmp_path / "b" / "detections.json").read_text()))
    assert max(per_image.values()) <= len(CLASSES)  # one proposal: at most one box per class


def test_decompression_bomb_is_one_line_in_evaluation_and_inference(tiny_checkpoint, tmp_path, capfd, run_script):
    """A file whose header claims 30000x30000 ends evaluation and inference with one line naming it;
    the limit is configurable (raised, the same file gets as far as decoding and is found truncated).
    Evaluation runs through its script: the error is raised in a data-loader worker and still ends as one line."""
    folder = tmp_path / "in"
    folder.mkdir()
    bomb_png(folder / "bomb.png")
    ann = {"images": [{"id": 1, "file_name": "bomb.png", "width": 30000, "height": 30000}], "annotations": [],
           "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASSES)]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    res = run_script("evaluate.py", [f"checkpoint={tiny_checkpoint}", f"images={folder}", f"annotations={tmp_path / 'ann.json'}",
                                     "device=cpu", "num_workers=1", f"hydra.run.dir={tmp_path / 'evaluate'}"])
    # besides the progress bar over the images (carriage-return updates, "evaluate: ..."), one line
    lines = [line for line in res.stderr.strip().splitlines() if line.strip() and not line.startswith("evaluate:")]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("error: ") and "bomb.png" in lines[0] and "its header claims 30000x30000" in lines[0], lines

    for limit, expected in (([], "its header claims 30000x30000"), (["max_pixels=1000000000"], "cannot decode image")):
        cfg = compose_config("infer", [f"checkpoint={tiny_checkpoint}", f"image={folder / 'bomb.png'}", "device=cpu",
                                       f"output_dir={tmp_path / 'infer'}", *limit])
        line = exits_with_one_line(lambda: infer(cfg), capfd)
        assert "bomb.png" in line and expected in line, line


def test_load_a_checkpoint_in_one_line(tiny_checkpoint, tmp_path):
    """frcnn.load(path)(image): the detections infer.py writes for that image, as the same records."""
    import frcnn

    cfg = torch.load(tiny_checkpoint, weights_only=True)["config"]
    image_path = Path(cfg["data"]["val"]["images"]) / "000000.png"
    detector = frcnn.load(tiny_checkpoint, device="cpu", score_thresh=0.0)
    found = detector(image_path)
    assert found and found == sorted(found, key=lambda d: -d["score"])
    assert set(found[0]) == {"box_xyxy", "score", "label", "category_id", "category"}
    assert detector(np.asarray(Image.open(image_path).convert("RGB"))) == found  # a path or an array
    infer(compose_config("infer", [f"checkpoint={tiny_checkpoint}", f"image={image_path}", "score_thresh=0.0",
                                   "device=cpu", f"output_dir={tmp_path / 'o'}"]))
    assert json.loads((tmp_path / "o" / "000000.json").read_text())["detections"] == found


def test_infer_in_bf16_and_an_unknown_precision(tiny_checkpoint, tmp_path, capfd):
    """infer.py precision=bf16 runs the bf16 shipped path: its best box is one the fp32 path found too (same class,
    IoU > 0.5, the NMS threshold: a near-tie may keep another box of the pair); precision=fp16 is one line."""
    from torchvision.ops import box_iou

    cfg = torch.load(tiny_checkpoint, weights_only=True)["config"]
    image_path = Path(cfg["data"]["val"]["images"]) / "000000.png"
    found = {}
    for precision in ("fp32", "bf16"):
        infer(compose_config("infer", [f"checkpoint={tiny_checkpoint}", f"image={image_path}", "score_thresh=0.0",
                                       "device=cpu", f"precision={precision}", f"output_dir={tmp_path / precision}"]))
        found[precision] = json.loads((tmp_path / precision / "000000.json").read_text())["detections"]
    assert found["fp32"] and found["bf16"]
    best = found["bf16"][0]
    same_class = [d["box_xyxy"] for d in found["fp32"] if d["category_id"] == best["category_id"]]
    assert box_iou(torch.tensor([best["box_xyxy"]]), torch.tensor(same_class)).max() > 0.5
    bad = compose_config("infer", [f"checkpoint={tiny_checkpoint}", f"image={image_path}", "device=cpu", "precision=fp16",
                                   f"output_dir={tmp_path / 'bad'}"])
    line = exits_with_one_line(lambda: infer(bad), capfd)
    assert "precision='fp16'" in line and "fp32, bf16" in line, line
    onnx = compose_config("infer", ["runtime=onnxruntime", f"onnx={tmp_path / 'model.onnx'}", f"image={image_path}", "device=cpu",
                                    "precision=bf16", f"output_dir={tmp_path / 'onnx'}"])
    line = exits_with_one_line(lambda: infer(onnx), capfd)  # not silently run in fp32
    assert "precision=bf16 is for runtime=torch" in line, line
