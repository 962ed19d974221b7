"""Accuracy race: frcnn and torchvision's Faster R-CNN from scratch, same data, same loop, same wall-clock budget.

    python scripts/race.py --budget 480                      # the demo's settings, 8 minutes each
    python scripts/race.py --budget 480 --order torchvision frcnn
    python scripts/race.py --budget 60 -- model.roi_heads.batch_size_per_image=64   # Hydra overrides after --

Both detectors come from one composed training config (default ``experiment=demo``): frcnn is
instantiated from it, and torchvision's is :func:`frcnn.benchmarks.peers.torchvision_peer` of that model, so they
share the trunk and box head architecture, the initial weights, 9 anchors, the RPN and RoI sampling
numbers, the pooled size, the image size and normalization. They also share everything around the
model: the same training batches in the same order (same seed, same augmentation), the same optimizer
and weight decay, gradient clipping, and learning-rate schedule. The schedule is a function of time,
not of iterations: linear warm-up over ``schedule.warmup_iters`` steps, then cosine decay to zero at
the end of the budget, so each detector gets a complete schedule however many steps it manages.
Training stops at the first step boundary after the budget; evaluation (COCO AP on the validation
split, pycocotools) is not counted. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from frcnn.cli import compose_train, friendly_errors  # noqa: E402
from frcnn.config import validate_train_config  # noqa: E402
from frcnn.engine import builders  # noqa: E402
from frcnn.engine.distributed import DistInfo  # noqa: E402
from frcnn.engine.schedule import WarmupCosine  # noqa: E402
from frcnn.engine.trainer import TrainingError, seed_everything  # noqa: E402
from frcnn.evaluation.coco_eval import evaluate_results, predict  # noqa: E402
from frcnn.benchmarks.peers import PeerAdapter, torchvision_peer  # noqa: E402


def race_one(name: str, model: torch.nn.Module, cfg, train_set, val_set, budget: float) -> dict:
    """Train ``model`` for ``budget`` seconds with the config's optimizer and data, then evaluate it."""
    torch.manual_seed(int(cfg.seed))
    single = DistInfo()
    loader = builders.train_loader(cfg, train_set, single, 0)
    optimizer = builders.build_optimizer(cfg, model)  # as the trainer builds it
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    clip = float(cfg.trainer.clip_grad_norm or 0)
    # Linear warm-up by step, then cosine to zero over the fraction of the time budget spent: the
    # trainer's schedule under trainer.max_time.
    schedule = WarmupCosine(max_iters=1, warmup_iters=int(cfg.schedule.warmup_iters),
                            warmup_factor=float(cfg.schedule.warmup_factor), final_factor=0.0)

    model.train()
    it, losses_log = 0, []
    data_iter = iter(loader)
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        factor = schedule.factor(it, min(elapsed / budget, 1.0))
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * factor
        images, targets = next(data_iter)
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        loss = sum(model(images, targets).losses.values())
        if not torch.isfinite(loss):
            raise TrainingError(f"{name}: non-finite loss at step {it}; lower optim.lr or set trainer.clip_grad_norm")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        it += 1
        losses_log.append(float(loss.detach()))
        if it % 50 == 0:
            print(f"  {name}: step {it}, {elapsed:.0f} s, loss {sum(losses_log[-50:]) / 50:.3f}", flush=True)
    train_s = time.perf_counter() - start

    t0 = time.perf_counter()
    results = predict(model, builders.eval_loader(cfg, val_set, single), train_set.categories, torch.device("cpu"))
    ev = evaluate_results(val_set.coco, results)
    return {
        "framework": name,
        "steps": it,
        "train_s": round(train_s, 1),
        "steps_per_s": round(it / train_s, 3),
        "final_loss_avg50": round(sum(losses_log[-50:]) / max(len(losses_log[-50:]), 1), 4),
        "eval_s": round(time.perf_counter() - t0, 1),
        **{k: round(v, 4) for k, v in ev["stats"].items() if k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
    }


@friendly_errors
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=480.0, help="training seconds per framework")
    p.add_argument("--order", nargs="+", default=["frcnn", "torchvision"], choices=["frcnn", "torchvision"])
    p.add_argument("--experiment", default="demo", help="conf/experiment/<name>.yaml ('none' for the plain defaults)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (after --)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    overrides = ([] if a.experiment == "none" else [f"experiment={a.experiment}"]) + ["run_dir=outputs/race"] + a.overrides
    cfg = compose_train(overrides)
    validate_train_config(cfg)
    env = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "budget_s": a.budget,
        "overrides": overrides,
    }
    print(json.dumps(env), flush=True)

    seed_everything(int(cfg.seed))
    builders.ensure_synthetic(cfg, DistInfo())
    train_set = builders.build_dataset(cfg, "train", train=True)
    val_set = builders.build_dataset(cfg, "val", train=False, categories=train_set.categories)
    ours = instantiate(cfg.model)
    peer = PeerAdapter(torchvision_peer(ours))  # a copy of the same initial weights
    if cfg.model.get("channels_last"):
        ours = ours.to(memory_format=torch.channels_last)
    models = {"frcnn": ours, "torchvision": peer}

    results = []
    for name in a.order:
        row = race_one(name, models[name], cfg, train_set, val_set, a.budget)
        results.append(row)
        print(json.dumps(row), flush=True)
    by = {r["framework"]: r for r in results}
    if len(by) == 2:
        print(f"AP frcnn - torchvision = {by['frcnn']['AP'] - by['torchvision']['AP']:+.4f}", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"env": env, "results": results}, indent=1))


if __name__ == "__main__":
    main()
