"""Run an exported detector with onnxruntime, the same way the PyTorch path runs a checkpoint.

:class:`OnnxDetector` reads the graph written by :func:`frcnn.export.onnx.export_onnx`, takes the
category mapping from its metadata, and returns detections as :func:`frcnn.inference.detect` does, so
``scripts/infer.py runtime=onnxruntime onnx=model.onnx`` writes the same files as the PyTorch path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from frcnn.data.coco import CategoryMap
from frcnn.errors import MissingFileError, UserError


class OnnxModelError(UserError, RuntimeError):
    """An ONNX file that cannot be loaded, or that frcnn did not export."""


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError("runtime=onnxruntime needs onnxruntime: pip install 'frcnn[export]' (or uv sync --extra export)") from exc
    return onnxruntime


class OnnxDetector:
    """An exported frcnn detector in an onnxruntime session.

    Args:
        path: the ``.onnx`` file from ``scripts/export.py``.
        threads: intra-op threads (None: onnxruntime's default, one per core).
        providers: onnxruntime execution providers (default: CPU).
        spin: let idle intra-op threads spin (onnxruntime's default; faster alone, but it takes cores
            from other thread pools in the same process, e.g. torch's in a benchmark).

    Raises:
        MissingFileError: no file at ``path``.
        OnnxModelError: the file is not an ONNX model, or has no frcnn metadata.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: list | None = None, spin: bool = True) -> None:
        ort = _onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"ONNX model {path} not found; write one with scripts/export.py checkpoint=... format=onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spin:  # idle threads sleep instead of spinning (fair to other thread pools in the process)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types per failure (protobuf, graph, ...)
            raise OnnxModelError(f"{path} is not a loadable ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                                 "export it again with scripts/export.py") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if "frcnn.categories" not in meta:
            raise OnnxModelError(f"{path} has no frcnn.categories metadata: it was not written by scripts/export.py")
        try:
            self.categories = CategoryMap.from_dict(json.loads(meta["frcnn.categories"]))
            self.metadata = {k: json.loads(v) for k, v in meta.items() if k.startswith("frcnn.")}
        except (ValueError, KeyError, TypeError) as exc:
            raise OnnxModelError(f"{path}: unreadable frcnn metadata ({exc}); export it again with scripts/export.py") from exc
        self.path = path

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``[B, 3, H, W]`` uint8 RGB (one size) → ``(boxes [B, D, 4], scores [B, D], labels [B, D], count [B])``."""
        boxes, scores, labels, count = self.session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8)})
        return boxes, scores, labels, count

    def detect_batch(self, images: np.ndarray) -> list[dict[str, torch.Tensor]]:
        """``[B, 3, H, W]`` uint8 RGB (one size) → one ``{"boxes", "scores", "labels"}`` per image, padding cut off."""
        boxes, scores, labels, count = self.run(images)
        return [{"boxes": torch.from_numpy(boxes[i, :n]), "scores": torch.from_numpy(scores[i, :n]),
                 "labels": torch.from_numpy(labels[i, :n])} for i, n in enumerate(count.tolist())]

    def detect(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        """Detections for one ``[H, W, 3]`` uint8 RGB image, as :func:`frcnn.inference.detect` returns them."""
        return self.detect_batch(image.transpose(2, 0, 1)[None])[0]
