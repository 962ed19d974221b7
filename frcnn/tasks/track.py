"""Track one target through a sequence: the task behind ``scripts/track.py`` (``conf/track.yaml``).

Writes into the output folder ``track.json`` (per-frame ``[x, y, w, h]`` boxes and scores), the
annotated frames (``frames/00000001.jpg`` ...) and an animation of the track (``track.gif`` or ``track.mp4``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw

from frcnn.config import resolve_device
from frcnn.errors import ConfigError
from frcnn.tasks.load import load_tracker
from frcnn.tracking.evaluate import iou_xywh, ope_scores
from frcnn.tracking.sequences import (
    GROUNDTRUTH_NAMES,
    groundtruth_file,
    read_frames,
    read_groundtruth,
)

ANIMATIONS = ("gif", "mp4", "none")


def initial_box(cfg: DictConfig) -> np.ndarray:
    """``cfg.init`` as ``(x, y, w, h)``, or the first ground-truth box of the sequence folder when it is null."""
    if cfg.init is not None:
        box = list(cfg.init)
        if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
            raise ConfigError(f"init={box} must be [x, y, w, h] with w > 0 and h > 0 (the target in the first frame)")
        return np.asarray(box, dtype=np.float64)
    gt = groundtruth_file(cfg.sequence)
    if gt is None:
        raise ConfigError(f"init=[x,y,w,h] is needed: {cfg.sequence} has no {GROUNDTRUTH_NAMES[0]} to take the first box from")
    return read_groundtruth(gt)[0]


def draw_track(frame: np.ndarray, box: np.ndarray, score: float, index: int) -> Image.Image:
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    x, y, w, h = box
    width = max(2, round(max(frame.shape[:2]) / 200))
    draw.rectangle([x, y, x + w, y + h], outline=(255, 40, 40), width=width)
    draw.text((4, 4), f"#{index + 1} score {score:.2f}", fill=(255, 255, 0))
    return image


def track(cfg: DictConfig) -> Path:
    """Track the target ``cfg.init`` through ``cfg.sequence`` with ``cfg.checkpoint``; returns ``track.json``'s path."""
    if cfg.animation not in ANIMATIONS:
        raise ConfigError(f"animation={cfg.animation!r} is not valid; allowed: {' | '.join(ANIMATIONS)}")
    device = resolve_device(cfg.device, "device")
    box0 = initial_box(cfg)
    given = {k: v for k, v in OmegaConf.to_container(cfg.tracker).items() if v is not None} if cfg.get("tracker") else {}
    tracker = load_tracker(cfg.checkpoint, device, given)  # null: the run's value
    out = Path(cfg.output_dir)
    (out / "frames").mkdir(parents=True, exist_ok=True)
    boxes, scores, drawn, seconds = [], [], [], 0.0
    for index, frame in enumerate(read_frames(cfg.sequence)):
        start = time.perf_counter()
        if index == 0:
            tracker.init(frame, box0)
            box, score = box0, 1.0
        else:
            box, score = tracker.update(frame)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        boxes.append([round(float(v), 2) for v in box])
        scores.append(round(float(score), 4))
        image = draw_track(frame, np.asarray(box), score, index)
        if cfg.save_frames:
            image.save(out / "frames" / f"{index + 1:08d}.jpg", quality=90)
        if cfg.animation != "none":
            drawn.append(image)
    if not boxes:
        raise ConfigError(f"sequence={cfg.sequence} has no frames")
    result = out / "track.json"
    record = {"sequence": str(cfg.sequence), "init": [float(v) for v in box0], "boxes_xywh": boxes, "scores": scores,
              "fps": len(boxes) / seconds, "tracker": dataclasses.asdict(tracker.settings)}
    scored = _against_groundtruth(cfg.sequence, np.asarray(boxes, dtype=np.float64))
    if scored is not None:
        record["groundtruth"] = scored
    result.write_text(json.dumps(record, indent=1))
    if cfg.animation == "gif":
        drawn[0].save(out / "track.gif", save_all=True, append_images=drawn[1:], duration=int(1000 / cfg.fps), loop=0)
    elif cfg.animation == "mp4":
        import cv2

        h, w = drawn[0].height, drawn[0].width
        writer = cv2.VideoWriter(str(out / "track.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), float(cfg.fps), (w, h))
        for image in drawn:
            writer.write(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR))
        writer.release()
    print(f"{cfg.sequence}: {len(boxes)} frames tracked at {len(boxes) / seconds:.1f} fps -> {result}")
    if scored is not None:
        print(f"against {scored['file']}: mean IoU {scored['mean_iou']:.3f}, success AUC {scored['success_auc']:.3f}, "
              f"precision@20px {scored['precision']:.3f} over {scored['frames_scored']} frames (the first, given, not scored)")
    return result


def _against_groundtruth(sequence: str, boxes: np.ndarray) -> dict | None:
    """The OPE scores of ``boxes`` ``[T, 4]`` (x, y, w, h) against the sequence folder's ground truth, if it has
    one with a box for every frame; None otherwise."""
    gt_path = groundtruth_file(sequence)
    if gt_path is None:
        return None
    gt = read_groundtruth(gt_path)
    if len(gt) != len(boxes):
        print(f"{gt_path} has {len(gt)} boxes for {len(boxes)} frames: not scored")
        return None
    scores = ope_scores([(boxes, gt)], seconds=1.0)
    valid = (gt[1:, 2] > 0) & (gt[1:, 3] > 0)
    iou = iou_xywh(boxes[1:][valid], gt[1:][valid])
    return {"file": str(gt_path), "mean_iou": float(iou.mean()) if len(iou) else 0.0, "success_auc": scores.success_auc,
            "precision": scores.precision, "frames_scored": int(valid.sum())}
