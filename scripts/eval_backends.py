"""Time COCO evaluation with pycocotools and faster-coco-eval on the same synthetic results (docs/benchmarks.md).

    python scripts/eval_backends.py --images 500 --reps 3

Generates a synthetic validation split of ``--images`` images, jitters its boxes into detections, and
scores them with both backends in turn (interleaved, median of ``--reps``). The work is
:mod:`frcnn.benchmarks.eval_backends`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from frcnn.cli import friendly_errors


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from pathlib import Path

    from frcnn.benchmarks.eval_backends import compare, jittered_detections
    from frcnn.data.coco import load_coco
    from frcnn.data.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp), num_train=1, num_val=args.images, seed=args.seed)
        coco = load_coco(root / "annotations" / "val.json")
        results = jittered_detections(coco.dataset, args.seed)
        row = compare(coco, results, reps=args.reps)
    row |= {"images": args.images, "reps": args.reps, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
