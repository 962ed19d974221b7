"""The COCO-format data pipeline: category mapping, crowd, empty images, image modes, EXIF, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn.data.coco import AnnotationError, CategoryMap, CocoDetection, collate
from frcnn.data.images import ImageReadError, read_rgb
from frcnn.data.samplers import GroupedBatchSampler
from frcnn.data.transforms import Augment


def write_dataset(tmp_path, images, annotations, categories=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    cats = categories or [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}, {"id": 90, "name": "c"}]
    for im in images:
        path = tmp_path / "img" / im["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            Image.new("RGB", (im["width"], im["height"]), (100, 150, 200)).save(path)
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return tmp_path / "img", ann_file


def ann(i, image_id, cat, bbox, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd}


IMAGES = [
    {"id": 10, "file_name": "a.png", "width": 64, "height": 48},
    {"id": 20, "file_name": "sub/b.png", "width": 32, "height": 64},
    {"id": 30, "file_name": "c.png", "width": 40, "height": 40},
]


def test_category_mapping_crowd_and_empty_images(tmp_path):
    anns = [ann(1, 10, 90, [1, 2, 10, 20]), ann(2, 10, 7, [5, 5, 20, 20], crowd=1), ann(3, 20, 1, [0, 0, 16, 16])]
    root, f = write_dataset(tmp_path, IMAGES, anns)
    ds = CocoDetection(root, f)
    assert ds.categories == CategoryMap((1, 7, 90), ("a", "b", "c"))
    assert len(ds) == 3  # image 30 has no annotations and is kept
    img, t = ds[0]
    assert img.shape == (3, 48, 64) and img.dtype == torch.uint8
    assert t["labels"].tolist() == [3]  # category 90 -> label 3; the crowd box is not a target
    torch.testing.assert_close(t["boxes"], torch.tensor([[1.0, 2.0, 11.0, 22.0]]))
    assert ds.report.crowd_regions == 1 and ds.report.empty_images == 1
    assert len(CocoDetection(root, f, drop_empty=True)) == 2
    assert CategoryMap.from_dict(ds.categories.to_dict()) == ds.categories
    assert ds.categories.category_id(3) == 90 and ds.categories.name(2) == "b"
    _, t_empty = ds[2]
    assert t_empty["boxes"].shape == (0, 4)


def test_boxes_clipped_and_degenerate_dropped(tmp_path):
    anns = [ann(1, 10, 1, [-5, -5, 20, 20]), ann(2, 10, 1, [10, 10, 0, 5]), ann(3, 10, 1, [100, 100, 5, 5]),
            ann(4, 10, 1, [float("nan"), 1, 2, 2])]
    root, f = write_dataset(tmp_path, IMAGES, anns)
    ds = CocoDetection(root, f)
    _, t = ds[0]
    torch.testing.assert_close(t["boxes"], torch.tensor([[0.0, 0.0, 15.0, 15.0]]))
    assert ds.report.boxes_clipped == 1
    assert sum(ds.report.boxes_dropped.values()) == 3


@pytest.mark.parametrize(
    "images,anns,match",
    [
        (IMAGES + [IMAGES[0]], [], "duplicate image ids"),
        (IMAGES, [ann(1, 10, 1, [0, 0, 5, 5]), ann(1, 20, 1, [0, 0, 5, 5])], "duplicate annotation ids"),
        (IMAGES, [ann(5, 99, 1, [0, 0, 5, 5])], "annotation 5 refers to image 99"),
        (IMAGES, [ann(6, 10, 4, [0, 0, 5, 5])], "annotation 6 .* has category 4"),
        ([{"id": 1, "file_name": "../escape.png", "width": 4, "height": 4}], [], "outside the image root"),
    ],
)
def test_inconsistent_annotations_are_clear_errors(tmp_path, images, anns, match):
    root, f = write_dataset(tmp_path, images, anns) if "escape" not in str(images) else _escape(tmp_path, images)
    with pytest.raises(AnnotationError, match=match):
        CocoDetection(root, f)


def _escape(tmp_path, images):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "escape.png")
    f = tmp_path / "ann.json"
    f.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    return tmp_path / "img", f


def test_image_modes_become_rgb(tmp_path):
    gray = Image.fromarray(np.full((5, 6), 77, np.uint8), "L")
    rgba = Image.fromarray((np.zeros((5, 6, 4)) + [10, 20, 30, 0]).astype(np.uint8), "RGBA")
    pal = gray.convert("P")
    sixteen = Image.fromarray(np.array([[0, 65535, 32768]], dtype=np.uint16))
    cmyk = Image.new("CMYK", (6, 5), (0, 0, 0, 0))
    for name, im in [("g.png", gray), ("a.png", rgba), ("p.png", pal), ("s.png", sixteen), ("c.jpg", cmyk), ("w.webp", gray.convert("RGB")), ("b.bmp", gray)]:
        im.save(tmp_path / name)
        arr = read_rgb(tmp_path / name)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, name
    assert read_rgb(tmp_path / "g.png")[0, 0].tolist() == [77, 77, 77]
    assert read_rgb(tmp_path / "a.png")[0, 0].tolist() == [10, 20, 30]
    assert read_rgb(tmp_path / "s.png")[0].tolist() == [[0] * 3, [255] * 3, [128] * 3]  # rescaled, not clipped
    assert read_rgb(tmp_path / "c.jpg")[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # left strip blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    arr = read_rgb(tmp_path / "r.jpg")
    assert arr.shape == (40, 20, 3)  # displayed portrait
    assert arr[2, 10, 2] > 200 and arr[2, 10, 0] < 60  # the blue strip is now at the top


def test_unreadable_images_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_rgb(tmp_path / "bad.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "t.png")
    (tmp_path / "trunc.png").write_bytes((tmp_path / "t.png").read_bytes()[:60])
    with pytest.raises(ImageReadError, match="trunc.png"):
        read_rgb(tmp_path / "trunc.png")
    with pytest.raises(ImageReadError, match="t.png: its header claims 64x64 = 4096 pixels, over the limit of 100"):
        read_rgb(tmp_path / "t.png", max_pixels=100)
    with pytest.raises(ImageReadError, match="not found"):
        read_rgb(tmp_path / "missing.png")


def test_hflip_keeps_boxes_on_the_object():
    image = np.zeros((20, 40, 3), np.uint8)
    image[5:10, 2:8] = 255
    aug = Augment(hflip=1.0, jitter_prob=0.0)
    out, boxes, labels = aug(image, np.array([[2.0, 5.0, 8.0, 10.0]], np.float32), np.array([2]))
    np.testing.assert_allclose(boxes, [[32.0, 5.0, 38.0, 10.0]])
    assert out[5:10, 32:38].min() == 255 and labels.tolist() == [2]
    empty = aug(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert empty[1].shape == (0, 4)


def test_grouped_batches_share_orientation():
    groups = [0, 1] * 10
    batches = list(GroupedBatchSampler(range(20), groups, batch_size=3))
    assert all(len({groups[i] for i in b}) == 1 and len(b) == 3 for b in batches)
    assert len(batches) == len(GroupedBatchSampler(range(20), groups, batch_size=3)) == 6


def test_collate_keeps_variable_sizes():
    images, targets = collate([(torch.zeros(3, 4, 5), {"a": 1}), (torch.zeros(3, 6, 2), {"a": 2})])
    assert [im.shape for im in images] == [(3, 4, 5), (3, 6, 2)] and targets == [{"a": 1}, {"a": 2}]


def test_strict_mode_names_image_and_annotation(tmp_path):
    root, f = write_dataset(tmp_path, IMAGES, [ann(1, 10, 1, [0, 0, 5, 5]), ann(42, 20, 1, [3, 3, 0, 4])])
    with pytest.raises(AnnotationError, match="annotation 42 of image 20 .*data.strict=false"):
        CocoDetection(root, f, strict=True)


def bomb_png(path, width: int = 30000, height: int = 30000) -> None:
    """A small PNG whose header claims ``width x height`` pixels (a decompression bomb's calling card)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_decompression_bomb_is_a_clear_error_and_the_limit_is_ours(tmp_path):
    bomb_png(tmp_path / "bomb.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "bomb.png")  # what PIL alone does: not an OSError, a traceback
    with pytest.raises(ImageReadError, match=r"bomb.png: its header claims 30000x30000 .* max_pixels"):
        read_rgb(tmp_path / "bomb.png")
    # raising the limit admits an image above PIL's own limit: it is then decoded (and here found truncated)
    with pytest.raises(ImageReadError, match="bomb.png: cannot decode image"):
        read_rgb(tmp_path / "bomb.png", max_pixels=10**9)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # PIL's global limit is left as it was


def test_raising_max_pixels_admits_formats_pil_checks_again_while_loading(tmp_path, monkeypatch):
    """TIFF (like GIF and ICO) meets PIL's limit a second time in load(): ours must govern the whole read."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # stands in for PIL's 89 M pixels
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "big.tif")  # 400 px: over 2x PIL's limit
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.tif").load()
    assert read_rgb(tmp_path / "big.tif", max_pixels=None)[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(ImageReadError, match="big.tif: its header claims 20x20"):
        read_rgb(tmp_path / "big.tif", max_pixels=399)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


def _corrupt(tmp_path, name="b.png"):
    root, f = write_dataset(tmp_path, IMAGES, [ann(1, 10, 1, [0, 0, 5, 5]), ann(2, 20, 1, [0, 0, 5, 5])])
    (root / "sub" / name).write_bytes(b"\x89PNG garbage")
    return root, f


def test_unreadable_image_at_load_is_skipped_and_reported_not_grey(tmp_path):
    root, f = _corrupt(tmp_path)
    ds = CocoDetection(root, f, on_unreadable="replace")
    with pytest.warns(UserWarning, match="skipping unreadable image 20"):
        img, t = ds[1]  # image 20 is corrupt: the next image (30) takes its place
    assert t["image_id"].item() == 30 and t["skipped"].tolist() == [20]
    assert img.shape == (3, 40, 40)
    with pytest.raises(ImageReadError, match="b.png"):
        CocoDetection(root, f)[1]  # evaluation does not skip


def test_preflight_drops_and_counts_and_fails_above_fraction(tmp_path):
    root, f = _corrupt(tmp_path)
    ds = CocoDetection(root, f, preflight=True, max_bad_image_fraction=0.5)
    assert len(ds) == 2 and "image 20" in ds.report.summary()
    with pytest.raises(ImageReadError, match="1 of 3 images .* unreadable"):
        CocoDetection(root, f, preflight=True, max_bad_image_fraction=0.1)


def test_width_height_mismatch_is_an_error(tmp_path):
    root, f = write_dataset(tmp_path, [{"id": 1, "file_name": "x.png", "width": 10, "height": 10}], [])
    Image.new("RGB", (12, 10)).save(root / "x.png")
    with pytest.raises(AnnotationError, match=r"image 1 is 12x10 \(width x height, after EXIF rotation\) but .* says width 10, height 10"):
        CocoDetection(root, f)[0]
    with pytest.raises(AnnotationError, match=r"image 1 is 12x10 \(width x height"):
        CocoDetection(root, f).check_sizes()  # from the header, before any image is decoded


def test_a_wrong_image_size_ends_training_before_its_first_step_without_a_checkpoint(tmp_path):
    """The size check runs on the image headers before training: no step, no last.pt for a run that never trained."""
    from frcnn.cli import compose_train
    from frcnn.data.synthetic import generate
    from frcnn.tasks.train import train

    root = generate(tmp_path / "data", num_train=2, num_val=1, seed=0)
    annotations = root / "annotations" / "train.json"
    data = json.loads(annotations.read_text())
    data["images"][1]["width"] += 1
    annotations.write_text(json.dumps(data))
    cfg = compose_train(["experiment=demo_fpn", f"data.root={root}", "data.num_workers=0", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(AnnotationError, match=r"image 2 is \d+x\d+ \(width x height"):
        train(cfg)
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_augmentation_is_reproducible_from_its_seed():
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    boxes, labels = np.array([[1.0, 2.0, 9.0, 12.0]], np.float32), np.array([1])
    a = Augment(seed=5)
    first = [a(image, boxes, labels)[0].tobytes() for _ in range(8)]
    a.set_seed(5)
    assert [a(image, boxes, labels)[0].tobytes() for _ in range(8)] == first
    assert len(set(first)) > 1  # it does randomize
