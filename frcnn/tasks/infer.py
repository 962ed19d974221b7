"""Detect objects in images: ``infer(cfg)`` is the task behind ``scripts/infer.py`` (``conf/infer.yaml``):
a config in, one annotated PNG and one JSON of detections per image out, with the PyTorch model of a
checkpoint or an exported ONNX model (``runtime=onnxruntime``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.io import write_png

from frcnn.config import resolve_device, validate_infer_config
from frcnn.data.coco import CategoryMap
from frcnn.data.images import DEFAULT_MAX_PIXELS, ImageReadError, read_rgb
from frcnn.errors import ConfigError
from frcnn.inference import (
    detect,
    detection_records,
    draw,
    image_paths,
    prepare_for_inference,
)
from frcnn.tasks.load import load_model, proposal_overrides

# an HWC uint8 RGB image -> {"boxes" [N, 4] in its pixels, "scores" [N], "labels" [N]}
DetectFn = Callable[[np.ndarray], dict[str, torch.Tensor]]


def infer(cfg: DictConfig) -> list[Path]:
    """Detect objects in ``cfg.image`` (a file or a folder) with ``cfg.checkpoint``; ``conf/infer.yaml``.

    For each image writes ``<stem>.png`` (boxes, class names and scores drawn) and ``<stem>.json``
    (detections at or above ``cfg.score_thresh``, in the original image's pixels) into
    ``cfg.output_dir``, and prints one line with the count and the latency.

    Returns:
        The PNG files written, in the order of the images.

    Raises:
        UserError: a bad config value, a missing or unreadable checkpoint or image.
    """
    validate_infer_config(cfg)
    run, categories, device = build_detector(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = image_paths(Path(cfg.image))
    folder = Path(cfg.image).is_dir()
    written, skipped, latencies, detections = [], [], [], 0
    for path in paths:
        try:
            image = read_rgb(path, max_pixels=cfg.get("max_pixels", DEFAULT_MAX_PIXELS))
        except ImageReadError as err:
            if not folder:
                raise
            skipped.append(path)  # a folder run goes on with the rest, and says so at the end
            print(f"skipped {path}: {err}")
            continue
        png, count, latency = detect_and_write(run, image, path, out, categories, float(cfg.score_thresh), device)
        written.append(png)
        latencies.append(latency)
        detections += count
    if folder:
        mean = f"{sum(latencies) / len(latencies):.1f} ms" if latencies else "-"
        print(f"{len(paths)} images: {len(written)} done ({detections} detections, mean latency {mean}), "
              f"{len(skipped)} skipped; results in {out}")
        if skipped:  # a non-zero exit, after every readable image was done
            raise ImageReadError(f"{len(skipped)} of {len(paths)} images in {cfg.image} could not be read and were skipped: "
                                 + ", ".join(p.name for p in skipped))
    return written


def build_detector(cfg: DictConfig) -> tuple[DetectFn, CategoryMap, torch.device | None]:
    """The detection function ``cfg`` asks for, its class names and the torch device it runs on (None: onnxruntime).

    onnxruntime runs on the CPU unless a CUDA device is asked for by name (``device=auto`` stays on the CPU: the
    GPU build of onnxruntime is a separate package)."""
    if cfg.get("runtime", "torch") != "onnxruntime":
        device = resolve_device(cfg.device, "device")
        model, categories, _ = load_model(cfg.checkpoint, device, proposal_overrides(cfg.get("proposals")))
        optimize = cfg.get("optimize", True)
        model = prepare_for_inference(model, fold_bn=optimize, channels_last=optimize,
                                      precision=cfg.get("precision", "fp32"))
        return partial(detect, model, device=device), categories, device
    if cfg.get("precision", "fp32") != "fp32":
        raise ConfigError(f"precision={cfg.precision} is for runtime=torch; an ONNX model runs in the precision it was exported in "
                          "(scripts/export.py quantize=int8 for int8): drop precision= or set runtime=torch checkpoint=...")
    from frcnn.export.runtime import OnnxDetector

    device = torch.device("cpu") if cfg.device == "auto" else resolve_device(cfg.device, "device")
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    onnx_model = OnnxDetector(cfg.onnx, providers=providers)
    if device.type == "cuda" and "CUDAExecutionProvider" not in onnx_model.session.get_providers():
        raise ConfigError(f"device={cfg.device} with runtime=onnxruntime needs the onnxruntime-gpu package; or set device=cpu")
    return onnx_model.detect, onnx_model.categories, None


def detect_and_write(run: DetectFn, image: np.ndarray, path: Path, out: Path, categories: CategoryMap,
                     score_thresh: float, device: torch.device | None) -> tuple[Path, int, float]:
    """Detect in one ``image`` (read from ``path``), write ``<stem>.json`` and ``<stem>.png`` into ``out`` and print a
    line; returns the PNG, the number of detections kept and the latency in ms."""
    t0 = time.perf_counter()
    det = run(image)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()  # the kernels run asynchronously: wait for them before reading the clock
    latency = (time.perf_counter() - t0) * 1000
    keep = det["scores"] >= score_thresh
    boxes = det["boxes"][keep]
    records = detection_records(boxes, det["scores"][keep], det["labels"][keep], categories)
    h, w = image.shape[:2]
    (out / f"{path.stem}.json").write_text(
        json.dumps({"image": str(path), "width": w, "height": h, "detections": records}, indent=1)
    )
    png = out / f"{path.stem}.png"
    write_png(draw(image, boxes, [f"{r['category']} {r['score']:.2f}" for r in records]), str(png))
    print(f"{path}: {len(records)} detections, {latency:.1f} ms -> {png}")
    return png, len(records), latency
