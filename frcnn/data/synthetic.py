"""A synthetic COCO-format detection data set, reproducible from a seed: the built-in default.

Five shape classes (circle, square, triangle, star, cross) drawn with random colours and textures
(solid, stripes, checkerboard, noise) on textured backgrounds, at sizes from small (< 32 px) to large,
with overlaps and partial occlusion (later shapes are drawn over earlier ones; a shape more than
``max_occlusion`` hidden is not placed). Boxes are the tight extent of each full shape, in COCO
``[x, y, width, height]`` form; category ids are deliberately non-contiguous (1, 3, 5, 7, 9) so the
label mapping is exercised as it is with COCO's 1..90.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "cross")
CATEGORY_IDS = (1, 3, 5, 7, 9)


def shape_polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape of nominal ``size`` (its extent) centred at ``(cx, cy)``."""
    r = size / 2
    if kind == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif kind == "triangle":
        pts = [(0, -r), (r, r), (-r, r)]
    elif kind == "star":
        pts = [((r if i % 2 == 0 else 0.45 * r) * math.sin(i * math.pi / 5), -(r if i % 2 == 0 else 0.45 * r) * math.cos(i * math.pi / 5)) for i in range(10)]
    elif kind == "cross":
        t = r / 3
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)]
    else:
        return None
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An ``[h, w, 3]`` uint8 fill: solid, stripes, checkerboard or noisy colour."""
    base = rng.integers(0, 256, size=3)
    other = rng.integers(0, 256, size=3)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 0:
        mask = np.zeros((h, w), bool)
    elif kind == 1:
        period = rng.integers(4, 12)
        theta = rng.uniform(0, math.pi)
        mask = ((xx * math.cos(theta) + yy * math.sin(theta)) // period) % 2 == 0
    elif kind == 2:
        period = rng.integers(4, 12)
        mask = ((xx // period + yy // period) % 2) == 0
    else:
        noise = rng.normal(0, 25, size=(h, w, 3))
        return np.clip(base + noise, 0, 255).astype(np.uint8)
    return np.where(mask[..., None], other, base).astype(np.uint8)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth two-colour gradient with noise and a few faint blobs of clutter."""
    a = rng.integers(0, 256, size=3).astype(np.float32)
    b = rng.integers(0, 256, size=3).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(theta) + yy * math.sin(theta)) / max(h, w)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = a * (1 - t[..., None]) + b * t[..., None] + rng.normal(0, 8, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image(rng: np.random.Generator, height: int, width: int, max_objects: int, min_size: int, max_size: int, max_occlusion: float):
    """One image and its annotations ``[(class_index, x1, y1, x2, y2), ...]``."""
    canvas = Image.fromarray(background(rng, height, width))
    occupied = np.zeros((height, width), np.int32) - 1  # which object owns each pixel
    objects: list[tuple[int, float, float, float, float]] = []
    areas: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(len(CLASSES)))
        # log-uniform sizes: small objects are as common as large ones
        size = float(math.exp(rng.uniform(math.log(min_size), math.log(max_size))))
        cx = rng.uniform(size / 2, width - size / 2)
        cy = rng.uniform(size / 2, height - size / 2)
        mask_img = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(mask_img)
        kind = CLASSES[cls]
        if kind == "circle":
            draw.ellipse([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2], fill=255)
        else:
            draw.polygon(shape_polygon(kind, cx, cy, size, rng.uniform(-0.3, 0.3)), fill=255)
        mask = np.asarray(mask_img) > 127
        if mask.sum() < 16:
            continue
        # Would this shape hide too much of an earlier one?
        hidden = np.bincount(occupied[mask][occupied[mask] >= 0], minlength=len(objects))
        if any(hidden[i] > max_occlusion * areas[i] for i in range(len(objects))):
            continue
        ys, xs = np.nonzero(mask)
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        tex = texture(rng, height, width)
        arr = np.asarray(canvas).copy()
        arr[mask] = tex[mask]
        canvas = Image.fromarray(arr)
        occupied[mask] = len(objects)
        objects.append((cls, float(x1), float(y1), float(x2), float(y2)))
        areas.append(int(mask.sum()))
    return canvas, objects


def generate(
    root: str | Path,
    *,
    num_train: int = 800,
    num_val: int = 100,
    height: int = 192,
    width: int = 256,
    max_objects: int = 8,
    min_size: int = 20,
    max_size: int = 120,
    max_occlusion: float = 0.35,
    seed: int = 0,
) -> Path:
    """Write ``root/{train,val}/*.png`` and ``root/annotations/{train,val}.json`` (COCO format).

    Image sizes alternate between landscape ``height x width`` and portrait ``width x height`` so the
    aspect-ratio grouping is exercised. The same seed gives byte-identical files.
    """
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(CATEGORY_IDS, CLASSES)]
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1_000_003)):
        rng = np.random.default_rng(split_seed)
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            h, w = (height, width) if i % 4 != 3 else (width, height)
            img, objects = make_image(rng, h, w, max_objects, min_size, max_size, max_occlusion)
            name = f"{i:06d}.png"
            img.save(root / split / name)
            image_id = i + 1
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            for cls, x1, y1, x2, y2 in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": CATEGORY_IDS[cls],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
        with open(root / "annotations" / f"{split}.json", "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    (root / "READY").write_text(json.dumps({"seed": seed, "num_train": num_train, "num_val": num_val}))
    return root
