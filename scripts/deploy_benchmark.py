"""Inference as shipped vs torchvision's eager detector, same weights: latency per image and COCO AP.

    python scripts/deploy_benchmark.py --checkpoint outputs/demo/best.pt --out outputs/deploy_benchmark

Exports the checkpoint to ONNX (unless ``--onnx`` names a file, or the export extra is missing), then
times torchvision's peer, frcnn eager, each step of the shipped path (inference_mode, BatchNorm folded,
channels_last) and onnxruntime at batch 1 and 8 on the validation images, shuffling the order every
repetition, and scores each frcnn variant's COCO AP. Prints the markdown table for docs/benchmarks.md
and writes ``deploy.json``. The work is in :mod:`frcnn.benchmarks.deploy`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from frcnn.cli import friendly_errors


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default="data/synthetic", help="a COCO-format root with val/ and annotations/val.json")
    parser.add_argument("--onnx", default=None, help="an exported model (default: export the checkpoint into --out)")
    parser.add_argument("--out", default="outputs/deploy_benchmark")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads (default: all cores)")
    parser.add_argument("--proposals", type=int, nargs="*", default=[],
                        help="also time the shipped path at these test-time proposal budgets (infer.py proposals=N)")
    parser.add_argument("--int8", action="store_true", help="also time onnxruntime on the graph with int8 convolutions")
    parser.add_argument("--bf16", action="store_true", help="also time the shipped path with precision=bf16")
    parser.add_argument("--calibration", default=None, help="int8: folder of calibration images (default: <data>/train)")
    parser.add_argument("--no-ap", action="store_true", help="skip the COCO AP of each variant")
    parser.add_argument("--torchvision-weights", default=None,
                        help="a checkpoint of scripts/import_weights.py: the torchvision state dict it was imported from, "
                             "for torchvision's own model as the peer (default: the path recorded at import)")
    args = parser.parse_args()

    import torch

    from frcnn.benchmarks.deploy import markdown, run_benchmark
    from frcnn.benchmarks.speed import machine
    from frcnn.engine.checkpoint import load_checkpoint
    from frcnn.tasks.load import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, categories, _ = load_model(args.checkpoint, torch.device("cpu"))
    onnx_path = Path(args.onnx) if args.onnx else None
    if onnx_path is None:
        try:
            from frcnn.export.onnx import export_onnx

            onnx_path = export_onnx(model, out / "model.onnx", categories)
        except ImportError:
            print("onnx / onnxruntime not installed (pip install 'frcnn[export]'): no onnxruntime row")
    int8_path = None
    if args.int8 and onnx_path is not None:
        from frcnn.export.quantize import calibration_images, quantize_onnx

        int8_path = quantize_onnx(onnx_path, out / "model_int8.onnx", calibration_images(args.calibration or Path(args.data) / "train", 32))
    peer = None
    imported = load_checkpoint(args.checkpoint).get("imported_from")
    if imported:  # a torchvision model imported by frcnn.zoo: its peer is torchvision's own model with those weights
        from frcnn.zoo import read_state_dict, torchvision_model

        weights = args.torchvision_weights or imported["weights"]
        peer = torchvision_model(imported["torchvision"], read_state_dict(weights), weights)
    result = run_benchmark(model, categories, Path(args.data), onnx_path, batches=tuple(args.batch), reps=args.reps,
                           warmup=args.warmup, threads=args.threads, ap=not args.no_ap, proposals=tuple(args.proposals),
                           int8_path=int8_path, peer=peer, bf16=args.bf16)
    result["machine"] = machine(torch.device("cpu"))
    result["setup"] = vars(args)
    (out / "deploy.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["machine"]))
    print(markdown(result))


if __name__ == "__main__":
    main()
