"""Speed and memory of frcnn vs torchvision's Faster R-CNN, configured alike, measured in one run.

    python scripts/benchmark.py                                  # CPU: the demo's ResNet-18-C4 model and image size
    python scripts/benchmark.py --experiment none -- model.backbone.norm=frozen_bn model.backbone.freeze_at=2 \
        model.rpn.anchor_generator.sizes=[32,64,128]             # CPU: the paper's numbers at the demo image size
    python scripts/benchmark.py --device cuda --experiment none --image-hw 800 1333 --batch 2 8 --amp none bf16 -- \
        model/backbone=r50_c4 model.backbone.norm=frozen_bn model.backbone.freeze_at=2 \
        data.min_size_train=[800] data.min_size_test=800 data.max_size=1333

frcnn is instantiated from the composed training config (``conf/train.yaml`` with ``experiment=demo``
unless told otherwise, then the Hydra overrides after ``--``), and torchvision's detector is
:func:`frcnn.benchmarks.peers.torchvision_peer` of it: the same trunk and box head, 9 anchors, RPN and RoI sampling
numbers, pooled size, image size and normalization, and the same initial weights. Where torchvision
cannot be configured to match, it keeps its own behaviour (listed in :mod:`frcnn.benchmarks.peers`); nothing of
torchvision's is changed to favour frcnn. What is measured and how (alternating repetitions, medians,
peak memory in a fresh process per detector): :mod:`frcnn.benchmarks.speed`. ``--channels-last``
converts both models and inputs. Prints the machine and the model's settings, then one JSON row per
(amp, batch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from frcnn.cli import compose_train, friendly_errors
from frcnn.data.derive import resolve_auto


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--experiment", default="demo", help="conf/experiment/<name>.yaml ('none' for the plain defaults)")
    p.add_argument("--image-hw", type=int, nargs=2, default=[192, 256], help="size of the random input images")
    p.add_argument("--batch", type=int, nargs="+", default=[4], help="training batch sizes")
    p.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-memory", action="store_true", help="skip peak memory (it starts a fresh process per detector and setting)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--profile", type=Path, default=None, help="instead of timing: profile each detector, traces into this folder")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (after --)")
    a = p.parse_args()
    a.image_hw = tuple(a.image_hw)
    return a


@friendly_errors
def main() -> None:
    a = parse_args()
    experiment = [] if a.experiment == "none" else [f"experiment={a.experiment}"]
    cfg = compose_train(experiment + ["run_dir=outputs/benchmark"] + a.overrides)
    resolve_auto(cfg)  # data.<key>: auto, as training derives it

    # Imported once the config has composed: a mistaken override ends in a second, before torch loads.
    import torch

    from frcnn.benchmarks import speed
    from frcnn.config import AMP_DTYPES, resolve_device, validate_train_config

    validate_train_config(cfg)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device, "--device")
    settings = speed.SpeedSettings(image_hw=a.image_hw, channels_last=a.channels_last, reps=a.reps, warmup=a.warmup)
    pair = speed.build_pair(cfg.model)
    env = {
        **speed.machine(device),
        "settings": {k: v for k, v in vars(a).items() if k != "json"},
        "model": speed.model_summary(pair["frcnn"], a.image_hw),
    }
    print(json.dumps(env, default=str), flush=True)
    if a.profile:
        for amp in a.amp:
            speed.profile_pair(pair, settings, device, a.batch[0], AMP_DTYPES[amp], a.profile)
        return
    results = []
    for row in speed.benchmark(pair, cfg.model, settings, device, batches=a.batch, amps=a.amp, memory=not a.no_memory):
        results.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"env": env, "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
