"""Taking a trained detector out of the training framework.

* :mod:`~frcnn.export.onnx` — the whole inference pipeline as one ONNX graph (``scripts/export.py``).
* :mod:`~frcnn.export.runtime` — that graph run by onnxruntime (``scripts/infer.py runtime=onnxruntime``).
* :mod:`~frcnn.export.quantize` — an int8 copy of that graph (``scripts/export.py ... quantize=int8``).

The shipped PyTorch inference path (BatchNorm folded into the convolutions, channels-last, ``torch.inference_mode``)
is :func:`frcnn.inference.prepare_for_inference`; what each step buys is in docs/benchmarks.md.
``onnx`` and ``onnxruntime`` are the optional ``export`` extra.
"""
