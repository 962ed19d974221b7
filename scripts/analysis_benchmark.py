"""Time the error analysis (``evaluate.py analyze=true``) on a COCO-sized results file, beside the original tidecv.

    python scripts/analysis_benchmark.py                      # 5000 images, 80 categories, 500k detections
    python scripts/analysis_benchmark.py --images 100 --no-tidecv

Generates the data (:func:`frcnn.benchmarks.analysis.coco_sized`), then times each stage of
:func:`frcnn.evaluation.analysis.analyze`, the whole, and tidecv on the same input; prints one JSON row
(docs/benchmarks.md holds the recorded ones).
"""

from __future__ import annotations

import argparse
import json
import time

from frcnn.cli import friendly_errors


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--per-image", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-tidecv", action="store_true", help="skip the peer (tidecv is a dev dependency)")
    args = parser.parse_args()

    from frcnn.benchmarks.analysis import coco_sized, time_analysis

    data, results = coco_sized(args.seed, images=args.images, categories=args.categories, per_image=args.per_image)
    row = time_analysis(data, results, with_tidecv=not args.no_tidecv)
    row["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
