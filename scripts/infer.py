"""Detect objects in one image or a folder: ``python scripts/infer.py checkpoint=... image=...``.

For each image writes ``<name>.png`` (boxes, class names and scores drawn) and ``<name>.json``
(detections in the original image's pixels) into the output folder, and prints the latency.
"""

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchvision.io import write_png
from torchvision.utils import draw_bounding_boxes

from frcnn.cli import hydra_app
from frcnn.config import resolve_device, validate_infer_config
from frcnn.data.images import DEFAULT_MAX_PIXELS, read_rgb
from frcnn.errors import MissingFileError
from frcnn.inference import detect, load_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def image_paths(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MissingFileError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return files
    if not path.exists():
        raise MissingFileError(f"image {path} not found")
    return [path]


def run(cfg: DictConfig) -> list[Path]:
    validate_infer_config(cfg)
    device = resolve_device(cfg.device, "device")
    model, categories, _ = load_model(cfg.checkpoint, device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in image_paths(Path(cfg.image)):
        image = read_rgb(path, max_pixels=cfg.get("max_pixels", DEFAULT_MAX_PIXELS))
        t0 = time.perf_counter()
        det = detect(model, image, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        latency = (time.perf_counter() - t0) * 1000
        keep = det["scores"] >= float(cfg.score_thresh)
        boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep]
        records = [
            {
                "box_xyxy": [round(float(v), 2) for v in b],
                "score": round(float(s), 4),
                "label": int(lab),
                "category_id": categories.category_id(int(lab)),
                "category": categories.name(int(lab)),
            }
            for b, s, lab in zip(boxes, scores, labels)
        ]
        h, w = image.shape[:2]
        (out / f"{path.stem}.json").write_text(
            json.dumps({"image": str(path), "width": w, "height": h, "detections": records}, indent=1)
        )
        canvas = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        names = [f"{r['category']} {r['score']:.2f}" for r in records]
        drawn = draw_bounding_boxes(canvas, boxes, labels=names, colors="red", width=max(1, round(max(h, w) / 300)))
        png = out / f"{path.stem}.png"
        write_png(drawn, str(png))
        written.append(png)
        print(f"{path}: {len(records)} detections, {latency:.1f} ms -> {png}")
    return written


@hydra_app("infer")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
