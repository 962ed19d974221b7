"""int8 post-training quantization of an exported detector, with onnxruntime's static quantizer.

With ResNet-C4, 90 % of inference arithmetic is convolutions (res5 once per proposal), so they are what
int8 speeds up. :func:`quantize_onnx` rewrites the fp32 graph of :func:`frcnn.export.onnx.export_onnx`:

* every ``Conv`` gets QuantizeLinear / DequantizeLinear pairs (QDQ format). Weights are int8 per output
  channel, activations uint8 per tensor. Their ranges are calibrated (min / max) on ``[3, H, W]`` uint8
  images, which should come from the training split, never from the one you score;
* two places stay fp32. The stem's convolution sees raw normalized pixels, and the RPN's convolutions
  decide which proposals the box head sees. Both cost little (the trunk's first layer and
  0.23 GFLOP of the demo model's 29.8), and both are where rounding moved AP. On the demo model,
  quantizing them too changed COCO AP by -0.0028 and +0.0022; keeping them fp32 changed it by -0.0002
  (docs/benchmarks.md);
* RoIAlign, NMS, the box predictor's fully connected layers and the postprocessing stay fp32.

onnxruntime runs the QDQ graph with integer kernels (on x86: u8s8 GEMM, AVX2 or VNNI). The result is
not the same detections: measure the AP (``scripts/deploy_benchmark.py --int8``) before shipping it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Convolutions kept in fp32 (see the module docstring), by where they sit in the exported graph.
KEEP_FP32 = ("stem", "rpn")


def _kept_nodes(graph, keep: Sequence[str]) -> list[str]:
    """Names of the convolutions to keep in fp32; raises if the graph's names are not the exporter's (a silent
    miss would quantize what must stay fp32)."""
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    kept = []
    if "stem" in keep:
        if not convs or not convs[0].startswith("/backbone/"):
            raise RuntimeError(f"the graph's first convolution is not the backbone's stem ({convs[:1]}); was it written by export_onnx?")
        kept.append(convs[0])
    if "rpn" in keep:
        rpn = [name for name in convs if name.startswith("/rpn/")]
        if not rpn:
            raise RuntimeError("no RPN convolution (named /rpn/...) in the graph; was it written by export_onnx?")
        kept += rpn
    return kept


def quantize_onnx(source: str | Path, target: str | Path, calibration: Sequence[np.ndarray], *, keep_fp32: Sequence[str] = KEEP_FP32) -> Path:
    """Write an int8 copy of the fp32 detector ``source`` to ``target`` (atomically) and return its path.

    Args:
        source: an ``.onnx`` file from :func:`~frcnn.export.onnx.export_onnx`.
        target: where the quantized graph goes.
        calibration: ``[3, H, W]`` uint8 images, one inference each, whose activation ranges set the
            int8 scales (the sizes may differ; a few dozen training images are enough).
        keep_fp32: which convolutions stay fp32: ``"stem"``, ``"rpn"`` (both by default).

    Raises:
        ValueError: no calibration image.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not len(calibration):
        raise ValueError("quantize_onnx needs at least one calibration image")
    source, target = Path(source), Path(target)
    model = onnx.load(str(source))
    input_name = model.graph.input[0].name
    kept = _kept_nodes(model.graph, keep_fp32)

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.images = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.images, None)
            return None if image is None else {input_name: np.ascontiguousarray(image[None], dtype=np.uint8)}

    tmp = target.with_name(f".{target.name}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        quantize_static(
            model, tmp, Images(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], nodes_to_exclude=kept,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(str(tmp))
        props = {p.key: p.value for p in model.metadata_props}  # the category map etc., kept
        props["frcnn.quantization"] = json.dumps({
            "format": "QDQ", "weights": "int8 per channel", "activations": "uint8 per tensor, min/max",
            "calibration_images": len(calibration), "fp32_convolutions": kept,
        })
        onnx.helper.set_model_props(quantized, props)
        onnx.save(quantized, str(tmp))
        tmp.replace(target)
    finally:  # (the quantizer's own scratch models live in a temporary folder it removes)
        tmp.unlink(missing_ok=True)
    return target


def calibration_images(folder: str | Path, count: int) -> list[np.ndarray]:
    """The first ``count`` images of ``folder`` (sorted by name) as ``[3, H, W]`` uint8 arrays."""
    from frcnn.data.images import read_rgb
    from frcnn.inference import image_paths

    paths = image_paths(Path(folder))[:count]
    return [np.ascontiguousarray(read_rgb(p).transpose(2, 0, 1)) for p in paths]
