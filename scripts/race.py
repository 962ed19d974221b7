"""Accuracy race: frcnn and torchvision's Faster R-CNN from scratch, same data, same loop, same wall-clock budget.

    python scripts/race.py --budget 480                      # the demo's settings, 8 minutes each, in 10-second turns
    python scripts/race.py --budget 480 --interleave 0 --order torchvision frcnn   # one after the other
    python scripts/race.py --budget 60 -- model.roi_heads.batch_size_per_image=64   # Hydra overrides after --

Both detectors come from one composed training config (default ``experiment=demo``) and share the
data, the loop, the optimizer and a schedule over the time budget: :mod:`frcnn.benchmarks.race`. By default
they take turns of 10 seconds of training (``--interleave``), so a change in the host's load slows both alike.
Prints the machine, then one JSON row per detector once both have trained and it is scored, then the AP
difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from frcnn.cli import compose_train, friendly_errors
from frcnn.data.derive import resolve_auto


@friendly_errors
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=480.0, help="training seconds per framework")
    p.add_argument("--order", nargs="+", default=["frcnn", "torchvision"], choices=["frcnn", "torchvision"])
    p.add_argument("--interleave", type=float, default=10.0,
                   help="seconds of training per turn, the detectors taking turns; 0: each trains its whole budget in --order")
    p.add_argument("--experiment", default="demo", help="conf/experiment/<name>.yaml ('none' for the plain defaults)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (after --)")
    a = p.parse_args()
    if not a.interleave >= 0 or not 0 < a.budget < float("inf"):  # also NaN
        p.error(f"--interleave must be >= 0 seconds and --budget finite and > 0, got {a.interleave} and {a.budget}")
    if len(set(a.order)) != len(a.order):
        p.error(f"--order names each framework once, got {' '.join(a.order)}")
    overrides = ([] if a.experiment == "none" else [f"experiment={a.experiment}"]) + ["run_dir=outputs/race"] + a.overrides
    cfg = compose_train(overrides)
    resolve_auto(cfg)  # data.<key>: auto, as training derives it

    # Imported once the config has composed: a mistaken override ends in a second, before torch loads.
    import torch

    from frcnn.benchmarks.race import race
    from frcnn.benchmarks.speed import machine
    from frcnn.config import validate_train_config

    validate_train_config(cfg)
    if a.threads:
        torch.set_num_threads(a.threads)
    env = {**machine(torch.device("cpu")), "budget_s": a.budget, "interleave_s": a.interleave, "order": a.order, "overrides": overrides}
    print(json.dumps(env), flush=True)
    results = []
    for row in race(cfg, order=a.order, budget=a.budget, interleave=a.interleave):
        results.append(row)
        print(json.dumps(row), flush=True)
    by = {r["framework"]: r for r in results}
    if len(by) == 2:
        print(f"AP frcnn - torchvision = {by['frcnn']['AP'] - by['torchvision']['AP']:+.4f}", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"env": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
