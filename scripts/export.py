"""Export a trained detector: ``python scripts/export.py checkpoint=outputs/demo/best.pt format=onnx``.

Writes the whole inference pipeline (preprocessing, RPN, proposals, RoI head, per-class NMS) as one ONNX
graph with dynamic batch, height and width, the category mapping in its metadata, and (``check=true``)
compares onnxruntime's detections with PyTorch's on a sample image. Run the file with
``scripts/infer.py runtime=onnxruntime onnx=<file>``. The work is :func:`frcnn.tasks.export.export_checkpoint`.
"""

from omegaconf import DictConfig

from frcnn.cli import hydra_app


@hydra_app("export")
def main(cfg: DictConfig) -> None:
    from frcnn.tasks.export import export_checkpoint

    export_checkpoint(cfg)


if __name__ == "__main__":
    main()
