"""VOC, YOLO and LabelMe sets (frcnn.data.formats): round trips through globox's writers, bad files, the
optional dependency, scripts/convert.py and the training path on a VOC layout."""

from __future__ import annotations

import importlib
import json
import runpy
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

import frcnn.data.formats
from frcnn.cli import compose_train, user_message
from frcnn.data.coco import CocoDetection
from frcnn.data.formats import FormatError, read_split
from frcnn.data.synthetic import generate

globox = pytest.importorskip("globox")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """The built-in generator's COCO-format set, 6 training and 3 validation images."""
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, num_train=6, num_val=3, max_objects=4, seed=0)
    return root


def coco_names(coco_root: Path) -> list[str]:
    cats = json.loads((coco_root / "annotations" / "train.json").read_text())["categories"]
    return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]


def write_voc(coco_root: Path, out: Path) -> Path:
    """The synthetic set in VOC's layout, written by globox: VOC boxes are integer pixel indices, 1-based with
    the maximum inclusive, so a 0-based continuous box [x1, x2) is written as xmin = x1 + 1, xmax = x2."""
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / d).mkdir(parents=True, exist_ok=True)

    def to_voc(a):
        boxes = [globox.BoundingBox(label=b.label, xmin=round(b.xmin) + 1, ymin=round(b.ymin) + 1,
                                    xmax=round(b.xmax), ymax=round(b.ymax)) for b in a.boxes]
        return globox.Annotation(a.image_id, a.image_size, boxes)

    for split in ("train", "val"):
        gt = globox.AnnotationSet.from_coco(coco_root / "annotations" / f"{split}.json")
        # Both splits' images share JPEGImages: give the validation images their own names.
        gt = gt.map(lambda a, s=split: globox.Annotation(f"{s}_{a.image_id}", a.image_size, a.boxes))
        gt.map(to_voc).save_pascal_voc(out / "Annotations")
        for image in sorted((coco_root / split).iterdir()):
            shutil.copy(image, out / "JPEGImages" / f"{split}_{image.name}")
        (out / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{Path(i).stem}\n" for i in sorted(gt.image_ids)))
    return out


def drop_class_from_voc_val(voc: Path, name: str) -> None:
    """Remove every ``name`` object from the validation XMLs, so that the split's own files lack the class."""
    for image_id in (voc / "ImageSets/Main/val.txt").read_text().split():
        xml = voc / "Annotations" / f"{image_id}.xml"
        tree = ET.parse(xml)
        for obj in [o for o in tree.getroot().iter("object") if o.findtext("name") == name]:
            tree.getroot().remove(obj)
        tree.write(xml)


def write_yolo(coco_root: Path, out: Path) -> Path:
    """The synthetic set in Ultralytics' layout, labels written by globox (normalized cx cy w h)."""
    names = coco_names(coco_root)
    for split in ("train", "val"):
        (out / "labels").mkdir(parents=True, exist_ok=True)
        gt = globox.AnnotationSet.from_coco(coco_root / "annotations" / f"{split}.json")
        gt.save_yolo_darknet(out / "labels" / split, label_to_id={n: i for i, n in enumerate(names)})
        shutil.copytree(coco_root / split, out / "images" / split)
    (out / "data.yaml").write_text("names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return out


def write_labelme(coco_root: Path, out: Path) -> Path:
    """The synthetic set as LabelMe saves it: images and, beside them, one JSON each."""
    for split in ("train", "val"):
        shutil.copytree(coco_root / split, out / split)
        globox.AnnotationSet.from_coco(coco_root / "annotations" / f"{split}.json").save_labelme(out / split)
    return out


def boxes_by_image(ds: CocoDetection) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{file name: [(class name, xyxy box)]}``, boxes sorted, from the dataset's records."""
    out = {}
    for rec in ds.records:
        pairs = [(ds.categories.name(int(lab)), box) for box, lab in zip(rec["boxes"], rec["labels"])]
        out[Path(rec["path"]).name] = sorted(pairs, key=lambda p: (p[0], *p[1].tolist()))
    return out


def assert_same_sets(ours: CocoDetection, reference: CocoDetection, atol: float, rename=lambda name: name) -> None:
    """The same images (sizes too), classes and boxes, within ``atol`` pixels."""
    assert sorted(ours.categories.names) == sorted(reference.categories.names)
    ref = {rename(name): boxes for name, boxes in boxes_by_image(reference).items()}
    got = boxes_by_image(ours)
    assert sorted(got) == sorted(ref)
    sizes = {rename(Path(r["path"]).name): (r["width"], r["height"]) for r in reference.records}
    assert {Path(r["path"]).name: (r["width"], r["height"]) for r in ours.records} == sizes
    for name, boxes in ref.items():
        assert [c for c, _ in got[name]] == [c for c, _ in boxes], name
        if boxes:
            np.testing.assert_allclose(np.stack([b for _, b in got[name]]), np.stack([b for _, b in boxes]), atol=atol, rtol=0)


def reference(coco_root: Path, split: str = "train") -> CocoDetection:
    return CocoDetection(coco_root / split, coco_root / "annotations" / f"{split}.json")


def test_voc_round_trip(synthetic, tmp_path):
    # VOC stores integers: boxes come back within 0.5 px (exactly, for the generator's integer boxes). Had the
    # loader not shifted xmin/ymin by the 1-based convention, every box would be 1 px off and fail.
    voc = write_voc(synthetic, tmp_path / "my voc")  # a space in the path
    data = read_split("voc", images=voc / "JPEGImages", annotations=voc / "Annotations",
                      image_set=voc / "ImageSets/Main/train.txt")
    assert [c["id"] for c in data.dataset["categories"]] == list(range(1, 6))
    assert all(a["id"] >= 1 for a in data.dataset["annotations"])
    assert_same_sets(CocoDetection(voc / "JPEGImages", data), reference(synthetic), atol=0.5, rename=lambda n: f"train_{n}")


def test_yolo_round_trip(synthetic, tmp_path):
    # globox writes full float precision; a writer with 6 decimals (Ultralytics') is within 5e-7 x 256 px.
    yolo = write_yolo(synthetic, tmp_path / "my yolo")
    for split in ("train", "val"):
        data = read_split("yolo", images=yolo / "images" / split, annotations=yolo / "labels" / split,
                          names_file=yolo / "data.yaml")
        assert [c["name"] for c in data.dataset["categories"]] == coco_names(synthetic)  # data.yaml's order
        assert_same_sets(CocoDetection(yolo / "images" / split, data), reference(synthetic, split), atol=1e-3)


def test_labelme_round_trip(synthetic, tmp_path):
    labelme = write_labelme(synthetic, tmp_path / "labelme")
    data = read_split("labelme", images=labelme / "train", annotations=labelme / "train")
    assert_same_sets(CocoDetection(labelme / "train", data), reference(synthetic), atol=1e-6)


def test_labelme_polygons_and_image_paths_relative_to_the_json(tmp_path):
    from PIL import Image

    # LabelMe writes imagePath relative to the JSON file: here the JSON files are kept apart from the images.
    (tmp_path / "images").mkdir()
    (tmp_path / "json" / "train").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.jpg")
    shapes = [{"label": "cat", "points": [[30, 20], [4, 2]], "shape_type": "rectangle"},
              {"label": "dog", "points": [[10, 5], [20, 8], [15, 25]], "shape_type": "polygon"}]
    (tmp_path / "json" / "train" / "a.json").write_text(json.dumps(
        {"imagePath": "../../images/a.jpg", "imageWidth": 40, "imageHeight": 30, "shapes": shapes, "imageData": None}))
    data = read_split("labelme", images=tmp_path / "images", annotations=tmp_path / "json" / "train")
    assert [i["file_name"] for i in data.dataset["images"]] == ["a.jpg"]
    assert [c["name"] for c in data.dataset["categories"]] == ["cat", "dog"]
    # The rectangle's corners in either order; the polygon as its bounding box.
    assert [(a["category_id"], a["bbox"]) for a in data.dataset["annotations"]] == [(1, [4, 2, 26, 18]), (2, [10, 5, 10, 20])]
    assert len(CocoDetection(tmp_path / "images", data)[0][1]["boxes"]) == 2


def test_labelme_circles_are_boxes_and_points_and_lines_are_counted_not_lost(tmp_path, monkeypatch, capsys):
    from PIL import Image

    root, tmp_path = tmp_path, tmp_path / "train"  # data=labelme's layout: <root>/train/
    tmp_path.mkdir()

    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "b.jpg")
    shapes = {
        "a": [{"label": "ball", "points": [[20, 15], [23, 19]], "shape_type": "circle"},  # centre, a point on it: r = 5
              {"label": "ball", "points": [[3, 4]], "shape_type": "point"},
              {"label": "edge", "points": [[1, 1], [9, 9]], "shape_type": "line"}],
        "b": [{"label": "ball", "points": [[5, 5]], "shape_type": "point"},
              {"label": "cat", "points": [[30, 20], [4, 2]], "shape_type": "rectangle"},
              {"label": "cat", "points": [[1, 2], [5, 2], [3, 9]], "shape_type": None},  # LabelMe: a polygon
              {"label": "cat", "points": [[2, 3], [6, 8]]},  # no type at all: a polygon too
              {"label": "cat", "points": [[10, 11], [14, 19]], "shape_type": "mask", "mask": "iVBOR..."}],
    }
    for stem, shape_list in shapes.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(
            {"imagePath": f"{stem}.jpg", "imageWidth": 40, "imageHeight": 30, "shapes": shape_list, "imageData": None}))
    data = read_split("labelme", images=tmp_path, annotations=tmp_path)
    assert [c["name"] for c in data.dataset["categories"]] == ["ball", "cat"]
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in data.dataset["annotations"]] == [
        (1, 1, [15.0, 10.0, 10.0, 10.0]), (2, 2, [4, 2, 26, 18]), (2, 2, [1, 2, 4, 7]), (2, 2, [2, 3, 4, 5]), (2, 2, [10, 11, 4, 8])]
    assert dict(data.not_boxes) == {f"LabelMe 'point' shapes (not a region; first in {tmp_path / 'a.json'})": 2,
                                    f"LabelMe 'line' shapes (not a region; first in {tmp_path / 'a.json'})": 1}
    report = CocoDetection(tmp_path, data).report
    assert sum(report.boxes_dropped.values()) == 3 and "'point' shapes" in report.summary()
    code, stdout, err = convert(["--format", "labelme", "--root", str(root), "--split", "train", "--out", str(root / "t.json")],
                                monkeypatch, capsys)
    assert code == 0, err
    assert "left out (not boxes): 2 LabelMe 'point' shapes" in stdout and "1 LabelMe 'line' shapes" in stdout

    (tmp_path / "a.json").write_text(json.dumps({"imagePath": "a.jpg", "imageWidth": 40, "imageHeight": 30, "imageData": None,
                                                 "shapes": [{"label": "ball", "points": [[20, 15]], "shape_type": "circle"}]}))
    with pytest.raises(FormatError, match=r"a.json: shape 0 \(circle\) needs a label and points \[\[cx, cy\], \[x, y\]\]"):
        read_split("labelme", images=tmp_path, annotations=tmp_path)
    (tmp_path / "a.json").write_text(json.dumps({"imagePath": "a.jpg", "imageWidth": 40, "imageHeight": 30, "imageData": None,
                                                 "shapes": [{"points": [[2, 3], [6, 8]], "shape_type": "rectangle"}]}))
    with pytest.raises(FormatError, match=r"a.json: shape 0 \(rectangle\) needs a label and points"):
        read_split("labelme", images=tmp_path, annotations=tmp_path)


VOC_XML = """<annotation><filename>{name}.png</filename>{size}
  <object><name>cat</name><difficult>0</difficult><bndbox><xmin>3</xmin><ymin>5</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
  <object><name>dog</name><difficult>1</difficult>{box}</object>
</annotation>"""
SIZE = "<size><width>40</width><height>32</height><depth>3</depth></size>"
BOX = "<bndbox><xmin>21</xmin><ymin>1</ymin><xmax>40</xmax><ymax>12</ymax></bndbox>"


def voc_dir(tmp_path: Path, xml: str, ids=("a",), image_ids=("a",)) -> Path:
    from PIL import Image

    for d in ("JPEGImages", "Annotations"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    for i in image_ids:
        Image.new("RGB", (40, 32)).save(tmp_path / "JPEGImages" / f"{i}.png")
    (tmp_path / "Annotations" / "a.xml").write_text(xml)
    (tmp_path / "train.txt").write_text("\n".join(ids) + "\n")
    return tmp_path


def read_voc(root: Path, class_names=None):
    return read_split("voc", images=root / "JPEGImages", annotations=root / "Annotations",
                      image_set=root / "train.txt", class_names=class_names)


def test_voc_difficult_objects_are_crowd_regions_and_an_id_without_xml_is_an_empty_image(tmp_path):
    root = voc_dir(tmp_path, VOC_XML.format(name="a", size=SIZE, box=BOX), ids=("a", "b"), image_ids=("a", "b"))
    data = read_voc(root)
    anns = data.dataset["annotations"]
    assert [(a["bbox"], a["iscrowd"]) for a in anns] == [([2.0, 4.0, 18.0, 26.0], 0), ([20.0, 0.0, 20.0, 12.0], 1)]
    ds = CocoDetection(root / "JPEGImages", data)
    assert ds.report.crowd_regions == 1 and ds.report.empty_images == 1  # b has no XML: an image without boxes
    _, target = ds[0]
    assert target["labels"].tolist() == [1]  # cat; the difficult dog is not a training target
    assert ds.coco.imgs[2]["file_name"] == "b.png" and (ds.coco.imgs[2]["width"], ds.coco.imgs[2]["height"]) == (40, 32)
    # The given class list numbers the classes, and a class outside it is an error naming the file.
    assert [c["name"] for c in read_voc(root, ["dog", "cat"]).dataset["categories"]] == ["dog", "cat"]
    with pytest.raises(FormatError, match=r"a\.xml: class 'dog' is not one of the 1 classes"):
        read_voc(root, ["cat"])


def test_voc_image_set_lines_and_the_image_of_an_id(tmp_path):
    from PIL import Image

    # "my a" (a space in the id) and a class file's "b  1" line; a.xml's <filename> is stale (the set was
    # renamed): "b.png" exists but is another image, so the id's own image is taken, as VOC loaders do.
    xml = VOC_XML.format(name="b", size=SIZE, box=BOX).replace("<name>cat</name>", "<name> cat\n</name>")
    root = voc_dir(tmp_path, xml, ids=("my a", "b  1"), image_ids=("b",))
    (root / "Annotations" / "a.xml").rename(root / "Annotations" / "my a.xml")
    Image.new("RGB", (40, 32)).save(root / "JPEGImages" / "my a.jpg")
    data = read_voc(root)
    assert [i["file_name"] for i in data.dataset["images"]] == ["my a.jpg", "b.png"]
    assert [c["name"] for c in data.dataset["categories"]] == ["cat", "dog"]  # "<name> cat\n</name>" is cat
    assert [a["image_id"] for a in data.dataset["annotations"]] == [1, 1]


@pytest.mark.parametrize(
    "fmt,expected",
    [("voc", "train.txt lists no ids"), ("yolo", "no image (.bmp"), ("labelme", "no JSON file in")],
)
def test_an_empty_split_is_an_error_naming_the_folder(tmp_path, fmt, expected):
    for d in ("JPEGImages", "Annotations", "images", "labels"):
        (tmp_path / d).mkdir()
    (tmp_path / "train.txt").write_text("\n")
    folders = {"voc": ("JPEGImages", "Annotations"), "yolo": ("images", "labels"), "labelme": ("images", "images")}[fmt]
    with pytest.raises(FormatError, match=r"data\.train \(data\.format=" + fmt) as exc:
        read_split(fmt, images=tmp_path / folders[0], annotations=tmp_path / folders[1], split="train",
                   image_set=tmp_path / "train.txt" if fmt == "voc" else None, class_names=["cat"])
    assert expected in str(exc.value)


def test_class_names_from_files_without_objects_is_an_error(tmp_path):
    root = voc_dir(tmp_path, VOC_XML.format(name="a", size=SIZE, box=BOX), ids=("b",), image_ids=("b",))
    with pytest.raises(FormatError, match="no object in the files of .*Annotations, so no class names"):
        read_voc(root)
    assert read_voc(root, ["cat"]).dataset["images"][0]["file_name"] == "b.png"  # named classes: an empty image


@pytest.mark.parametrize(
    "size,box,expected",
    [("", BOX, "no <size> with <width> and <height>"),
     (SIZE, "", "object 2 (dog) has no <bndbox>")],
    ids=["no size", "no bndbox"],
)
def test_voc_malformed_files_name_the_file_and_the_element(tmp_path, size, box, expected):
    root = voc_dir(tmp_path, VOC_XML.format(name="a", size=size, box=box))
    with pytest.raises(FormatError) as exc:
        read_voc(root)
    msg = user_message(exc.value)  # what the CLI prints: one line
    assert msg is not None and "\n" not in msg
    assert str(root / "Annotations" / "a.xml") in msg and expected in msg


def yolo_dir(tmp_path: Path, labels: dict[str, str], images=("a", "b")) -> Path:
    from PIL import Image

    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    for name in images:
        Image.new("RGB", (100, 50)).save(tmp_path / "images" / f"{name}.jpg")
    for name, text in labels.items():
        (tmp_path / "labels" / f"{name}.txt").write_text(text)
    return tmp_path


def read_yolo(root: Path):
    return read_split("yolo", images=root / "images", annotations=root / "labels", class_names=["cat", "dog"])


def test_yolo_image_without_label_file_is_an_empty_image(tmp_path):
    root = yolo_dir(tmp_path, {"a": "\ufeff1 0.5 0.5 0.2 0.4\n\n"})  # with the BOM Windows' Notepad writes
    data = read_yolo(root)
    assert [i["file_name"] for i in data.dataset["images"]] == ["a.jpg", "b.jpg"]
    assert [(a["image_id"], a["category_id"]) for a in data.dataset["annotations"]] == [(1, 2)]
    np.testing.assert_allclose(data.dataset["annotations"][0]["bbox"], [40, 15, 20, 20])
    ds = CocoDetection(root / "images", data)
    assert ds.report.empty_images == 1 and ds[1][1]["boxes"].shape == (0, 4)


@pytest.mark.parametrize(
    "labels,where,expected",
    [({"a": "0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n"}, "a.txt:2", "class 2 is out of range; the 2 classes are 0..1"),
     ({"a": "-1 0.5 0.5 0.2 0.2\n"}, "a.txt:1", "class -1 is out of range"),
     ({"a": "0.5 0.5 0.5 0.2 0.2\n"}, "a.txt:1", "class 0.5 is out of range"),
     ({"a": "0 1.5 0.5 0.2 0.2\n"}, "a.txt:1", "cx=1.5 is outside [0, 1]"),
     ({"a": "0 0.5 0.5 0.2 1.2\n"}, "a.txt:1", "h=1.2 is outside [0, 1]"),
     ({"a": "0 0.9 0.5 0.5 0.2 0.2\n"}, "a.txt:1", "has six values"),
     ({"a": "0 0.5 0.5 -0.2 0.2\n"}, "a.txt:1", "is not 'class cx cy w h'"),
     ({"a": "0 0.5 0.5\n"}, "a.txt:1", "is not 'class cx cy w h'"),
     ({"c": "0 0.5 0.5 0.2 0.2\n"}, "c.txt", "a label file without an image")],
    ids=["class out of range", "negative class", "fractional class", "coordinate outside [0, 1]", "size outside [0, 1]",
         "six values", "negative size", "short line", "label without image"],
)
def test_yolo_bad_labels_name_the_file_and_line(tmp_path, labels, where, expected):
    root = yolo_dir(tmp_path, labels)
    with pytest.raises(FormatError) as exc:
        read_yolo(root)
    msg = user_message(exc.value)
    assert msg is not None and "\n" not in msg
    assert str(root / "labels" / where) in msg and expected in msg


def test_yolo_coordinates_are_relative_to_the_displayed_image(tmp_path):
    from PIL import Image

    # Stored 100x50 with EXIF orientation 6 (rotate 90): shown, read and labelled as 50x100.
    root = yolo_dir(tmp_path, {"a": "0 0.5 0.25 0.2 0.1\n"}, images=())
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 50)).save(root / "images" / "a.jpg", exif=exif)
    data = read_yolo(root)
    assert (data.dataset["images"][0]["width"], data.dataset["images"][0]["height"]) == (50, 100)
    np.testing.assert_allclose(data.dataset["annotations"][0]["bbox"], [20, 20, 10, 10])
    image, _ = CocoDetection(root / "images", data)[0]  # read_rgb rotates it too: no size mismatch
    assert image.shape == (3, 100, 50)


def test_unreadable_and_missing_images_take_the_coco_path(tmp_path):
    from frcnn.data.images import ImageReadError

    # YOLO: an image whose header cannot be read has no size to denormalize with: left out and reported in
    # training, an error naming it where every image counts (standalone evaluation).
    root = yolo_dir(tmp_path / "yolo", {"a": "1 0.5 0.5 0.2 0.4\n"})
    (root / "images" / "b.jpg").write_bytes(b"not a jpeg")
    data = read_yolo(root)
    assert [i["file_name"] for i in data.dataset["images"]] == ["a.jpg"] and "b.jpg" in data.unreadable[0]
    with pytest.warns(UserWarning, match="b.jpg"):
        ds = CocoDetection(root / "images", data, on_unreadable="replace", max_bad_image_fraction=0.5)
    assert len(ds) == 1 and "b.jpg" in ds.report.summary()
    # Counted against data.max_bad_image_fraction as training counts an unreadable COCO image, with the
    # pre-flight check or without it.
    for preflight in (False, True):
        with pytest.warns(UserWarning), pytest.raises(ImageReadError, match="1 of 2 images .* unreadable, more than"):
            CocoDetection(root / "images", data, on_unreadable="replace", preflight=preflight, max_bad_image_fraction=0.4)
    with pytest.raises(ImageReadError, match="b.jpg"):
        CocoDetection(root / "images", data, on_unreadable="error")
    # VOC: the XML gives the size; a missing image is the COCO loader's missing file, found when it is read.
    root = voc_dir(tmp_path / "voc", VOC_XML.format(name="gone", size=SIZE, box=BOX), image_ids=())
    ds = CocoDetection(root / "JPEGImages", read_voc(root))
    with pytest.raises(ImageReadError, match=r"gone\.png: file not found"):
        ds[0]


def test_yolo_names_from_data_yaml_list_or_dict(tmp_path):
    root = yolo_dir(tmp_path, {"a": "1 0.5 0.5 0.2 0.4\n"})
    for text in ("names: [cat, dog]\n", "names:\n  1: dog\n  0: cat\n"):  # a dict by its keys, not its order
        (root / "data.yaml").write_text(text)
        data = read_split("yolo", images=root / "images", annotations=root / "labels", names_file=root / "data.yaml")
        assert [(c["id"], c["name"]) for c in data.dataset["categories"]] == [(1, "cat"), (2, "dog")]
    (root / "data.yaml").write_text("names:\n  0: cat\n  2: dog\n")
    with pytest.raises(FormatError, match="keys must be 0..1 without gaps"):
        read_split("yolo", images=root / "images", annotations=root / "labels", names_file=root / "data.yaml")


def convert(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``scripts/convert.py args`` as ``__main__`` in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["convert.py", *args])
    try:
        runpy.run_path(str(REPO / "scripts" / "convert.py"), run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_without_globox_frcnn_runs_and_data_format_voc_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "globox", None)  # `import globox` now raises ImportError
    monkeypatch.setattr(frcnn.data, "formats", frcnn.data.formats)  # put back, with sys.modules, after the test
    monkeypatch.delitem(sys.modules, "frcnn.data.formats")
    importlib.import_module("frcnn.data.formats")  # a fresh import: the library is imported only when a set is read
    root = voc_dir(tmp_path, VOC_XML.format(name="a", size=SIZE, box=BOX))
    code, _, err = convert(["--format", "voc", "--root", str(root), "--out", str(tmp_path / "x.json"),
                            "data.train.image_set=null"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1, err  # one line, as every user mistake
    assert "data.format=voc" in err and "pip install 'frcnn[formats]'" in err


def test_convert_script_writes_a_coco_file_pycocotools_loads(synthetic, tmp_path, monkeypatch, capsys):
    voc = write_voc(synthetic, tmp_path / "my voc, (copy)")  # characters Hydra's override grammar would parse
    drop_class_from_voc_val(voc, "circle")
    out = tmp_path / "out" / "train.json"
    code, stdout, err = convert(["--format", "voc", "--root", str(voc), "--split", "train", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    assert f"relative to {voc / 'JPEGImages'}" in stdout
    gt = COCO(str(out))
    assert len(gt.getImgIds()) == 6 and len(gt.getAnnIds()) == len(reference(synthetic).coco.getAnnIds())
    # The file trains as data=coco would read it, with the same boxes.
    assert_same_sets(CocoDetection(voc / "JPEGImages", out), reference(synthetic), atol=0.5, rename=lambda n: f"train_{n}")
    # The validation split, whose files lack circles, numbers the classes as the training split does.
    val = tmp_path / "out" / "val.json"
    code, _, err = convert(["--format", "voc", "--root", str(voc), "--split", "val", "--out", str(val),
                            "--classes-from", str(out)], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(val.read_text())["categories"] == json.loads(out.read_text())["categories"]
    # A malformed file: one line naming it, status 2.
    (voc / "Annotations" / "train_000001.xml").write_text("<annotation><filename>x.png</filename></annotation>")
    code, _, err = convert(["--format", "voc", "--root", str(voc), "--out", str(out)], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "train_000001.xml: no <size>" in err, err


def test_an_unknown_data_format_names_the_choices():
    from frcnn.config import validate_train_config
    from frcnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.format='xml' is not valid; allowed: coco \| voc \| yolo \| labelme"):
        validate_train_config(compose_train(["data=voc", "data.root=/d", "data.format=xml"]))


def test_build_dataset_on_a_voc_layout_trains_and_evaluates_like_the_coco_files(synthetic, tmp_path):
    from frcnn.engine.builders import build_dataset
    from frcnn.evaluation.coco_eval import evaluate_results

    voc = write_voc(synthetic, tmp_path / "voc")
    # The validation files lack circles, the first class by name: labelled by their own names, every other
    # class would be off by one. They take the training split's names.
    drop_class_from_voc_val(voc, "circle")
    cfg = compose_train(["data=voc", f"data.root={voc}", "data.num_classes=5"])
    train = build_dataset(cfg, "train", train=False)
    val = build_dataset(cfg, "val", train=False, categories=train.categories)
    assert val.categories == train.categories and train.categories.names[0] == "circle"
    for ours, ref in ((train, reference(synthetic)), (val, reference(synthetic, "val"))):
        assert len(ours) == len(ref)
        for i in range(len(ours)):
            (image, target), (ref_image, ref_target) = ours[i], ref[i]
            assert image.shape == ref_image.shape
            names = [ours.categories.name(int(lab)) for lab in target["labels"]]
            keep = [ours is train or ref.categories.name(int(lab)) != "circle" for lab in ref_target["labels"]]
            assert names == [ref.categories.name(int(lab)) for lab, k in zip(ref_target["labels"], keep) if k]
            np.testing.assert_allclose(target["boxes"].numpy(), ref_target["boxes"].numpy()[keep], atol=0.5)
    # Periodic evaluation scores against the converted dict: the ground truth as detections is AP 1.
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in val.coco.dataset["annotations"]]
    assert evaluate_results(val.coco, results)["stats"]["AP"] == pytest.approx(1.0)


def test_standalone_evaluation_scores_a_voc_checkpoint_on_its_own_split(synthetic, tmp_path, capsys):
    # An untrained model's checkpoint (no training here): evaluate.py finds the VOC validation split through the
    # checkpoint's config, converts it with the checkpoint's class names and scores it with pycocotools.
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from frcnn.cli import compose_config
    from frcnn.data.coco import CategoryMap
    from frcnn.engine.checkpoint import save_checkpoint
    from frcnn.tasks.evaluate import evaluate
    from tests.conftest import SMALL

    voc = write_voc(synthetic, tmp_path / "voc")
    drop_class_from_voc_val(voc, "circle")  # the split's own files would number the classes otherwise
    cfg = compose_train([*SMALL, "data=voc", f"data.root={voc}", "data.num_classes=5", f"run_dir={tmp_path}"])
    names = tuple(sorted(coco_names(synthetic)))
    torch.manual_seed(0)
    save_checkpoint({"model": instantiate(cfg.model).state_dict(), "config": OmegaConf.to_container(cfg, resolve=True),
                     "categories": CategoryMap(tuple(range(1, 6)), names).to_dict()}, tmp_path / "best.pt")
    metrics = evaluate(compose_config("evaluate", [f"checkpoint={tmp_path / 'best.pt'}", f"output_dir={tmp_path / 'eval'}",
                                                   "device=cpu", "num_workers=0", "proposals=32"]))
    assert list(metrics["per_class_ap"]) == list(names) and 0 <= metrics["stats"]["AP"] <= 1
    report = capsys.readouterr().out.splitlines()[0]  # the split's load report names its folder, not the converted dict
    assert report.startswith(f"{voc}") and " images; boxes clipped to the image: 0" in report and "{" not in report, report
