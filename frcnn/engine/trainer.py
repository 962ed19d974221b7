"""The training loop: a readable step (forward, losses, backward, step) and small hooks around it.

Everything here is driven by a composed config (``conf/train.yaml``); ``train(cfg)`` is what
``scripts/train.py`` and the tests call.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from frcnn.data.coco import CategoryMap
from frcnn.engine import builders
from frcnn.engine.checkpoint import load_checkpoint, save_checkpoint
from frcnn.engine.distributed import DistInfo, all_ranks_true, cleanup, gather_objects, init_distributed
from frcnn.evaluation.coco_eval import evaluate_results, predict


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, repeated AMP overflow); the last checkpoint is intact."""


_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain lists (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class OverflowMonitor:
    """Counts fp16 steps the GradScaler skipped (its scale dropped); fails after ``max_streak`` in a row."""

    def __init__(self, max_streak: int) -> None:
        self.max_streak = max_streak
        self.streak = 0
        self.total = 0

    def update(self, overflowed: bool, iteration: int) -> None:
        if not overflowed:
            self.streak = 0
            return
        self.streak += 1
        self.total += 1
        if self.streak >= self.max_streak:
            raise TrainingError(
                f"{self.streak} fp16 overflows in a row at iteration {iteration} ({self.total} skipped steps in all); "
                "use trainer.amp=bf16, lower optim.lr or set trainer.clip_grad_norm"
            )


class _StopFlag:
    """Set by SIGTERM/SIGINT (preemption): the loop saves at the next step boundary and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum, frame) -> None:
        self.signal = signum


def build_model(cfg: DictConfig, categories: CategoryMap) -> torch.nn.Module:
    if int(cfg.data.num_classes) != categories.num_classes:
        raise ValueError(
            f"data.num_classes={cfg.data.num_classes} but {cfg.data.train.annotations} has "
            f"{categories.num_classes} categories; set data.num_classes={categories.num_classes}"
        )
    return instantiate(cfg.model)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a detector as ``cfg`` says; return the final metrics. Writes into ``cfg.run_dir``."""
    device = resolve_device(cfg.trainer.device)
    dist_info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    try:
        return _train(cfg, device, dist_info)
    finally:
        cleanup()


def _train(cfg: DictConfig, device: torch.device, dist_info: DistInfo) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    is_main = dist_info.is_main
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(int(cfg.seed) + dist_info.rank)
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))

    builders.ensure_synthetic(cfg, dist_info)
    train_set = builders.build_dataset(cfg, "train", train=True)
    categories = train_set.categories
    val_set = builders.build_dataset(cfg, "val", train=False, categories=categories) if cfg.data.get("val") else None
    if is_main:
        summary = f"train: {len(train_set)} images; {train_set.report.summary()}"
        print(summary, flush=True)
        (run_dir / "data_report.txt").write_text(summary + "\n")

    model = build_model(cfg, categories).to(device)
    if cfg.model.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    world = dist_info.world_size
    # Trainable BN sees 2-8 images per GPU: synchronize its statistics across GPUs. (SyncBatchNorm is
    # CUDA-only; on CPU, DDP broadcasts rank 0's BN buffers at every forward instead.)
    if world > 1 and device.type == "cuda" and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = builders.build_optimizer(cfg, model, world)  # lr scaled to the total batch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, instantiate(cfg.schedule))
    amp_dtype = _AMP[str(cfg.trainer.amp)]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_iter, best_ap = 0, -1.0
    resume = cfg.train.get("resume")
    if resume:
        ckpt = load_checkpoint(resume, map_location="cpu")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_iter = int(ckpt["iteration"])
        best_ap = float(ckpt.get("best_ap", -1.0))
        set_rng_state(ckpt["rng"][dist_info.rank] if dist_info.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        if is_main:
            print(f"resumed from {resume} at iteration {start_iter}", flush=True)

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else None
    step_model = ddp or model
    loader = builders.train_loader(cfg, train_set, dist_info, start_iter)
    max_iters = int(cfg.trainer.max_iters)
    writer = _tensorboard(run_dir) if is_main and cfg.trainer.tensorboard else None
    metrics_file = open(run_dir / "metrics.jsonl", "a") if is_main else None
    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    overflows = OverflowMonitor(int(cfg.trainer.max_overflow_streak))
    skipped_images: set[int] = set()  # unreadable training images met so far (each replaced, never grey-filled)
    max_bad = float(cfg.data.get("max_bad_image_fraction", 0.01)) * len(train_set)
    last_metrics: dict[str, Any] = {}

    def checkpoint(name: str, it: int) -> None:
        rngs = gather_objects(rng_state())
        if world > 1:
            # Replicas must hold identical weights; log each rank's checksum so a drift is visible.
            sums = gather_objects(float(sum(p.detach().double().sum() for p in model.parameters())))
            if is_main:
                _log(metrics_file, None, {"iteration": it, "replica_checksums": sums}, it)
        if is_main:
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "iteration": it,
                    "best_ap": best_ap,
                    "rng": rngs,
                    "categories": categories.to_dict(),
                    "config": OmegaConf.to_container(cfg, resolve=True),
                },
                run_dir / name,
            )

    def evaluate(it: int) -> dict[str, Any]:
        loader_val = builders.eval_loader(cfg, val_set, dist_info)
        results = predict(model, loader_val, categories, device, amp_dtype=amp_dtype, progress=is_main)
        all_results = [r for part in gather_objects(results) for r in part]
        out: dict[str, Any] = {}
        if is_main:
            ev = evaluate_results(val_set.coco, all_results)
            out = {"iteration": it, **{f"val/{k}": v for k, v in ev["stats"].items()}}
            print(f"[iter {it}] val AP {ev['stats']['AP']:.4f}  AP50 {ev['stats']['AP50']:.4f}", flush=True)
        return gather_objects(out)[0]

    model.train()
    bar = tqdm(total=max_iters, initial=start_iter, disable=not is_main or not cfg.trainer.progress, dynamic_ncols=True)
    t_last, it = time.perf_counter(), start_iter
    data_iter = iter(loader)
    try:
        while it < max_iters:
            images, targets = next(data_iter)
            for t in targets:
                skipped_images.update(t.pop("skipped").tolist())
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = step_model(images, targets).losses
            loss = sum(losses.values())
            # Host sync, once per step: every rank must agree before anyone steps or saves.
            finite, data_ok, keep_going = all_ranks_true(
                [bool(torch.isfinite(loss)), len(skipped_images) <= max_bad, stop.signal is None], device
            )
            if not data_ok:
                raise TrainingError(
                    f"more than data.max_bad_image_fraction={cfg.data.max_bad_image_fraction} of the training images are "
                    f"unreadable (this rank skipped image ids {sorted(skipped_images)[:10]}); fix or remove them "
                    f"(data.preflight=true lists them all before training)"
                )
            if not finite:
                raise TrainingError(
                    f"non-finite loss at iteration {it} ({ {k: float(v.detach()) for k, v in losses.items()} }); the last "
                    f"checkpoint in {run_dir} is untouched. Lower optim.lr, enable trainer.clip_grad_norm, or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.trainer.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.trainer.clip_grad_norm))
            scale_before = scaler.get_scale() if scaler.is_enabled() else None
            scaler.step(optimizer)
            scaler.update()
            if scale_before is not None:
                overflows.update(scaler.get_scale() < scale_before, it)
            scheduler.step()
            it += 1
            bar.update(1)

            if it % int(cfg.trainer.log_period) == 0 or it == max_iters:
                now = time.perf_counter()
                rate = int(cfg.trainer.log_period) / max(now - t_last, 1e-9)
                t_last = now
                record = {"iteration": it, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0], "it_per_s": rate,
                          "amp_skipped_steps": overflows.total,
                          **{k: float(v.detach()) for k, v in losses.items()}}
                if is_main:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", it_s=f"{rate:.2f}")
                    _log(metrics_file, writer, record, it)
            if val_set is not None and int(cfg.trainer.eval_period) > 0 and (it % int(cfg.trainer.eval_period) == 0 or it == max_iters):
                last_metrics = evaluate(it)  # the same dict on every rank
                if is_main:
                    _log(metrics_file, writer, last_metrics, it)
                if last_metrics["val/AP"] > best_ap:
                    best_ap = last_metrics["val/AP"]
                    checkpoint("best.pt", it)  # collective: every rank takes part
            if it % int(cfg.trainer.checkpoint_period) == 0 or it == max_iters:
                checkpoint("last.pt", it)
            if not keep_going:  # a rank got SIGTERM/SIGINT: all save together at this step boundary
                checkpoint("last.pt", it)
                if is_main:
                    print(f"stopped by signal at iteration {it}; resume with train.resume={run_dir / 'last.pt'}", flush=True)
                break
    finally:
        bar.close()
        if is_main and skipped_images:
            with open(run_dir / "data_report.txt", "a") as f:
                f.write(f"unreadable training images skipped at load time on rank 0: {sorted(skipped_images)}\n")
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if metrics_file:
            metrics_file.close()
        if writer:
            writer.close()
    return {"iteration": it, "best_ap": best_ap, "stopped_by_signal": stop.signal, **last_metrics}


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _log(metrics_file, writer, record: dict[str, Any], it: int) -> None:
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()
    if writer is not None:
        for k, v in record.items():
            if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                writer.add_scalar(k, v, it)
