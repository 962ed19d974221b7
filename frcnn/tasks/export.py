"""Export a detector: ``export_checkpoint(cfg)`` is the task behind ``scripts/export.py`` (``conf/export.yaml``):
checkpoint → ONNX file, checked against PyTorch in onnxruntime, and optionally an int8 copy calibrated on
training images (:mod:`frcnn.export`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from frcnn.config import validate_export_config
from frcnn.errors import MissingFileError, UserError
from frcnn.export.onnx import export_onnx, match_detections, sample_image
from frcnn.tasks.load import load_model, proposal_overrides


def export_checkpoint(cfg: DictConfig) -> Path:
    """Checkpoint → ONNX file (+ onnxruntime check, + int8 with ``quantize=int8``); returns the ONNX file.

    Raises:
        UserError: a bad config value, a missing or unreadable checkpoint, or the export extra not installed.
    """
    validate_export_config(cfg)
    sample_hw = tuple(cfg.sample_hw)
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise UserError("format=onnx needs onnx and onnxruntime: pip install 'frcnn[export]' (or uv sync --extra export)") from exc
    model, categories, train_cfg = load_model(cfg.checkpoint, torch.device("cpu"), proposal_overrides(cfg.get("proposals")))
    int8 = cfg.get("quantize", "none") == "int8"
    calibration = Path(cfg.get("calibration") or train_cfg.data.train.images) if int8 else None
    if calibration is not None and not calibration.is_dir():  # before the export, not after it
        raise MissingFileError(f"calibration folder {calibration} not found (quantize=int8 calibrates on training images); "
                               "set calibration=/path/to/images")
    out = Path(cfg.output) if cfg.get("output") else Path(cfg.checkpoint).with_name("model.onnx")
    export_onnx(model, out, categories, opset=cfg.opset, sample_hw=sample_hw,
                metadata={"frcnn.checkpoint": str(cfg.checkpoint)})
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, opset {cfg.opset}, dynamic batch/height/width)")
    check = cfg.get("check", True)
    if check:
        image = sample_image(*sample_hw)
        with torch.inference_mode():
            reference = {k: v for k, v in model([image]).detections[0].items()}
        check_onnx(out, image, reference, sample_hw)
    if int8:
        from frcnn.export.quantize import calibration_images, quantize_onnx

        images = calibration_images(calibration, int(cfg.get("calibration_images", 32)))
        int8_path = quantize_onnx(out, out.with_name(f"{out.stem}_int8.onnx"), images)
        print(f"wrote {int8_path} ({int8_path.stat().st_size / 2**20:.1f} MiB, int8 convolutions calibrated on {len(images)} "
              f"images of {calibration})")
        if check:
            from frcnn.export.runtime import OnnxDetector

            got = OnnxDetector(int8_path).detect(image.permute(1, 2, 0).numpy())
            report = match_detections(reference, got, min_score=0.5)
            # int8 is not the same arithmetic: reported, not enforced (the AP check is the deploy benchmark's)
            print(f"int8 vs PyTorch, detections scoring > 0.5: {report['checked']} checked, lowest IoU {report['min_iou']:.3f}, "
                  f"largest score difference {report['max_score_diff']:.3f}, unmatched {report['unmatched']}")
    return out


def check_onnx(path: Path, image: Tensor, reference: dict[str, Tensor], sample_hw: tuple[int, int]) -> None:
    """onnxruntime's detections on ``image`` (``[3, H, W]`` uint8) against PyTorch's ``reference``: printed, and a
    RuntimeError (not the user's input: the exporter or the runtime computes something else) beyond IoU 0.99 /
    score 1e-3 or a different count."""
    from frcnn.export.runtime import OnnxDetector

    got = OnnxDetector(path).detect(image.permute(1, 2, 0).numpy())
    report = match_detections(reference, got)
    print(f"onnxruntime vs PyTorch on a {sample_hw[0]}x{sample_hw[1]} synthetic image: {len(got['scores'])} vs "
          f"{len(reference['scores'])} detections; {report['checked']} (score > 0.1) checked: lowest IoU "
          f"{report['min_iou']:.4f}, largest score difference {report['max_score_diff']:.2e}, unmatched {report['unmatched']}")
    if (len(got["scores"]) != len(reference["scores"]) or report["unmatched"] or report["min_iou"] < 0.99
            or report["max_score_diff"] > 1e-3):
        raise RuntimeError(f"{path}: onnxruntime's detections differ from PyTorch's beyond IoU 0.99 / score 1e-3 ({report})")
