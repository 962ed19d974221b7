"""Seconds per detection of Grad-CAM, ODAM, Integrated Gradients (32 steps) and D-RISE (1000 masks) on one model
(docs/explanations.md, "Speed").

    python scripts/explain_speed.py --checkpoint outputs/demo/best.pt
    python scripts/explain_speed.py --torchvision-random fasterrcnn_mobilenet_v3_large_320_fpn   # a zoo model

``--torchvision-random`` imports torchvision's builder with seeded, calibrated random weights
(:func:`frcnn.zoo.random_detector`): nothing to download, and the cost of an explanation does not depend on
the weights' values, only on the architecture, the input size and the number of RoIs followed.
Prints one JSON row: the model, its input size, the detections explained, and each method's seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from frcnn.cli import friendly_errors


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument("--torchvision-random", metavar="BUILDER")
    parser.add_argument("--image", default="data/synthetic/val/000000.png")
    parser.add_argument("--top", type=int, default=2)
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument("--max-rois", type=int, default=16)
    args = parser.parse_args()

    import torch

    from frcnn.data.images import read_rgb
    from frcnn.explain import explain, find_detections
    from frcnn.explain.api import as_image_tensor
    from frcnn.tasks.load import load_model

    checkpoint = args.checkpoint
    if args.torchvision_random:
        from frcnn.zoo import import_torchvision, random_detector

        tmp = Path(tempfile.mkdtemp())
        torch.save(random_detector(args.torchvision_random).state_dict(), tmp / "weights.pth")
        checkpoint = str(tmp / "model.pt")
        import_torchvision(args.torchvision_random, tmp / "weights.pth", checkpoint)
    model, _, _ = load_model(checkpoint, torch.device("cpu"))
    image = as_image_tensor(read_rgb(args.image), torch.device("cpu"))
    detections = find_detections(model, image, top=args.top, score_thresh=args.score_thresh)
    if not detections:
        raise SystemExit(f"no detection scoring >= {args.score_thresh} on {args.image}: lower --score-thresh")
    methods = {"gradcam": {}, "odam": {}, "integrated_gradients": {"steps": 32}, "drise": {"masks": 1000}}
    explain(model, image, detections[:1], method="gradcam", max_rois=args.max_rois)  # warm-up: imports, first-call allocations
    seconds = {}
    for name, options in methods.items():
        start = time.perf_counter()
        explain(model, image, detections, method=name, max_rois=args.max_rois, **options)
        seconds[name] = round((time.perf_counter() - start) / len(detections), 3)
    (nh, nw), _ = model.preprocessor.test_size(*image.shape[-2:])
    print(json.dumps({
        "model": args.torchvision_random or checkpoint, "input_hw": [nh, nw], "detections": len(detections),
        "max_rois": args.max_rois, "seconds_per_detection": seconds, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }))


if __name__ == "__main__":
    main()
