"""Benchmark the explanation methods on a trained checkpoint (docs/explanations.md).

    python scripts/explain_benchmark.py --checkpoint outputs/demo/best.pt --images 4 --out outputs/explain_benchmark.json

Faithfulness (deletion / insertion AUC on four substrates; grey is the mean colour of the checkpoint's
training images, ImageNet's when they are not here), pointing game (15 px and 0 px), sanity check and
seconds per detection for each method on the first validation images of the checkpoint's data set. The work is
:func:`frcnn.explain.benchmark.benchmark`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from frcnn.cli import friendly_errors


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-root", help="default: the checkpoint's data.root")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--top", type=int, default=3)
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=16, help="deletion / insertion steps")
    parser.add_argument("--drise-masks", type=int, default=1000)
    parser.add_argument("--sanity-detections", type=int, default=2)
    parser.add_argument("--max-rois", type=int, default=16, help="follow detections through their nearest proposals (0: all)")
    parser.add_argument("--agreement-masks", type=int, default=300, help="D-RISE masks for the max-rois agreement check")
    parser.add_argument("--out", default="outputs/explain_benchmark.json")
    args = parser.parse_args()

    import torch

    from frcnn.explain.benchmark import benchmark, markdown_table
    from frcnn.explain.substrates import training_mean
    from frcnn.tasks.load import load_model

    model, categories, cfg = load_model(args.checkpoint, torch.device("cpu"))
    if args.data_root:
        cfg.data.root = args.data_root
    methods = {
        "gradient": {}, "guided_backprop": {}, "gradcam": {}, "gradcam_head": {}, "odam": {}, "guided_gradcam": {},
        "integrated_gradients": {"steps": 32}, "smoothgrad": {"samples": 32}, "vargrad": {"samples": 32},
        "drise": {"masks": args.drise_masks}, "kernel_shap": {"samples": 200, "patch": 32},
    }
    # The sanity check recomputes each map under the randomized model: the black-box methods at a
    # tenth of their samples there (a correlation needs the map's layout, not its last digit).
    sanity = {"drise": {"masks": max(100, args.drise_masks // 10)}, "kernel_shap": {"samples": 100, "patch": 32}}
    grey = training_mean(cfg)
    print(f"grey substrate: RGB {', '.join(f'{v:.3f}' for v in grey.rgb)}, {grey.source}")
    start = time.time()
    result = benchmark(
        model, categories, Path(cfg.data.val.annotations), Path(cfg.data.val.images), methods=methods,
        num_images=args.images, top=args.top, score_thresh=args.score_thresh, steps=args.steps,
        sanity_detections=args.sanity_detections, sanity_options=sanity, max_rois=args.max_rois or None,
        agreement={"gradcam": {}, "integrated_gradients": {"steps": 16}, "drise": {"masks": args.agreement_masks}},
        mean=grey.tensor(),
    )
    result["setup"] = {
        "checkpoint": args.checkpoint, "images": args.images, "top": args.top, "score_thresh": args.score_thresh,
        "steps": args.steps, "methods": methods, "max_rois": args.max_rois, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "wall_s": round(time.time() - start, 1),
        "date": time.strftime("%Y-%m-%d"), "grey_mean": grey.record(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown_table(result))
    print(f"\nwall time {result['setup']['wall_s']} s -> {args.out}")


if __name__ == "__main__":
    main()
