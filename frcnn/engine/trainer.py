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
from frcnn.config import amp_dtype as amp_dtype_of
from frcnn.config import parse_duration, resolve_device, validate_train_config
from frcnn.engine.distributed import DistInfo, agree_across_ranks, cleanup, gather_objects, init_distributed
from frcnn.errors import ConfigError, UserError
from frcnn.evaluation.coco_eval import evaluate_results, predict


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (non-finite loss, repeated AMP overflow, too many unreadable images);
    ``last.pt`` holds the last completed step."""


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
        raise ConfigError(
            f"data.num_classes={cfg.data.num_classes} but {cfg.data.train.annotations} has "
            f"{categories.num_classes} categories; set data.num_classes={categories.num_classes}"
        )
    return instantiate(cfg.model)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train a detector as ``cfg`` says; return the final metrics. Writes into ``cfg.run_dir``."""
    validate_train_config(cfg)
    device = resolve_device(cfg.trainer.device, "trainer.device")
    dist_info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    try:
        return _train(cfg, device, dist_info)
    finally:
        cleanup()


class Budget:
    """How far training is: ``max_iters`` steps, and optionally ``max_time`` seconds of wall clock.

    ``progress`` is the larger of the two fractions spent, so a schedule defined over it ends on time
    whichever limit comes first (a cluster time limit, or a slower machine than the one a recipe was
    tuned on). Time already spent by an interrupted run (``spent``) counts, so a resumed run keeps
    its budget.
    """

    def __init__(self, max_iters: int, max_time: float | None, spent: float = 0.0) -> None:
        self.max_iters = max_iters
        self.max_time = max_time
        self.started = time.perf_counter() - spent
        self.agreed: float | None = None  # elapsed time all ranks agreed on at this step (set by the loop)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def progress(self, it: int) -> float:
        """Fraction spent. Under DDP the time is the one all ranks agreed on at this step (``agreed``),
        so every rank computes the same learning rate."""
        fraction = it / max(self.max_iters, 1)
        if self.max_time:
            elapsed = self.agreed if self.agreed is not None else self.elapsed()
            fraction = max(fraction, elapsed / self.max_time)
        return min(fraction, 1.0)

    def time_left(self, elapsed: float | None = None) -> bool:
        elapsed = self.elapsed() if elapsed is None else elapsed
        return self.max_time is None or elapsed < self.max_time


def ddp_broadcasts_buffers(model: torch.nn.Module) -> bool:
    """Whether DDP must broadcast rank 0's buffers each step: only if some BatchNorm updates running
    statistics (trainable ``BatchNorm2d`` without SyncBatchNorm). Frozen BN (``FrozenBatchNorm2d``,
    which frozen stages always use) and GroupNorm have no buffers that change."""
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm)
        and m.track_running_stats
        for m in model.modules()
    )


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
    max_iters = int(cfg.trainer.max_iters)
    schedule = instantiate(cfg.schedule)
    amp_dtype = amp_dtype_of(cfg.trainer.amp, "trainer.amp")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    resume = cfg.train.get("resume")
    ckpt = load_checkpoint(resume, map_location="cpu") if resume else None
    if ckpt is not None and ckpt.get("upgraded_from_layout"):
        raise ConfigError(
            f"train.resume={resume} was written by an earlier frcnn (backbone-owned box head), whose optimizer state "
            "does not map onto this version's parameters; evaluate or infer with it, or start a new run"
        )
    # The learning rate follows the fraction of the budget spent (iterations, or wall clock with
    # trainer.max_time; time spent before a resume counts); warm-up is counted in steps.
    budget = Budget(max_iters, parse_duration(cfg.trainer.get("max_time")), float(ckpt.get("elapsed_s", 0.0)) if ckpt else 0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step, budget.progress(step)))
    start_iter, best_ap = 0, -1.0
    if ckpt is not None:  # after the scheduler is built: building it rewrites the optimizer's lr
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_iter = int(ckpt["iteration"])
        best_ap = float(ckpt.get("best_ap", -1.0))
        set_rng_state(ckpt["rng"][dist_info.rank] if dist_info.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        if is_main:
            print(f"resumed from {resume} at iteration {start_iter} ({budget.elapsed():.0f} s of training so far)", flush=True)

    ddp = None
    if world > 1:
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=ddp_broadcasts_buffers(model),
        )
    step_model = ddp or model
    loader = builders.train_loader(cfg, train_set, dist_info, start_iter)
    writer = _tensorboard(run_dir) if is_main and cfg.trainer.tensorboard else None
    metrics_file = open(run_dir / "metrics.jsonl", "a") if is_main else None
    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    overflows = OverflowMonitor(int(cfg.trainer.max_overflow_streak))
    skipped_images: set[int] = set()  # unreadable training images this rank met (each replaced, never grey-filled)
    max_bad = float(cfg.data.get("max_bad_image_fraction", 0.01)) * len(train_set)
    last_metrics: dict[str, Any] = {}
    state = {"saved_at": start_iter if ckpt is not None else -1, "updating": False}

    def checkpoint(name: str, it: int, *, collective: bool = True) -> None:
        """Save the state after ``it`` completed steps. ``collective=False`` (failure path): rank 0
        alone, with its own RNG state, since other ranks may not reach a collective call."""
        rngs = gather_objects(rng_state()) if collective else [rng_state()]
        if world > 1 and collective:
            # Replicas must hold identical weights; log each rank's checksum so a drift is visible.
            sums = gather_objects(float(sum(p.detach().double().sum() for p in model.parameters())))
            if is_main:
                _log(metrics_file, None, {"iteration": it, "replica_checksums": sums}, it)
        if is_main or not collective:  # on the failure path the failing rank writes (replicas are equal)
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "iteration": it,
                    "best_ap": best_ap,
                    "elapsed_s": budget.elapsed(),
                    "rng": rngs,
                    "categories": categories.to_dict(),
                    "config": OmegaConf.to_container(cfg, resolve=True),
                },
                run_dir / name,
            )
        if name == "last.pt":
            state["saved_at"] = it

    def evaluate(it: int) -> dict[str, Any]:
        """COCO stats on the validation split; unreadable images are left out and counted."""
        loader_val = builders.eval_loader(cfg, val_set, dist_info)
        unreadable: list[int] = []
        results = predict(model, loader_val, categories, device, amp_dtype=amp_dtype, progress=is_main, unreadable=unreadable)
        all_results = [r for part in gather_objects(results) for r in part]
        all_unreadable = sorted(i for part in gather_objects(unreadable) for i in part)
        out: dict[str, Any] = {}
        if is_main:
            read_ids = sorted(set(val_set.coco.getImgIds()) - set(all_unreadable))
            ev = evaluate_results(val_set.coco, all_results, image_ids=read_ids if all_unreadable else None)
            out = {"iteration": it, **{f"val/{k}": v for k, v in ev["stats"].items()}, "val/unreadable_images": len(all_unreadable)}
            note = f" ({len(all_unreadable)} unreadable images left out: {all_unreadable[:10]})" if all_unreadable else ""
            print(f"[iter {it}] val AP {ev['stats']['AP']:.4f}  AP50 {ev['stats']['AP50']:.4f}{note}", flush=True)
        return gather_objects(out)[0]

    model.train()
    bar = tqdm(total=max_iters, initial=start_iter, disable=not is_main or not cfg.trainer.progress, dynamic_ncols=True)
    t_last, it = time.perf_counter(), start_iter
    data_iter = iter(loader)
    try:
        last_step = it >= max_iters or not budget.time_left()
        while not last_step:
            images, targets = next(data_iter)
            for t in targets:
                skipped_images.update(t.pop("skipped").tolist())
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                losses = step_model(images, targets).losses
            loss = sum(losses.values())
            # Host sync, once per step: every rank must agree before anyone steps or saves.
            finite, keep_going, bad_images, elapsed = agree_across_ranks(
                [bool(torch.isfinite(loss)), stop.signal is None], [len(skipped_images), budget.elapsed()], device
            )
            budget.agreed = elapsed / world  # the ranks' mean: one clock for the schedule and the stop
            time_left = budget.time_left(budget.agreed)
            if bad_images > max_bad:
                # A bad image met by two ranks in different epochs (shards reshuffle) is one image.
                bad_images = len(set().union(*gather_objects(skipped_images)))
            if bad_images > max_bad:
                raise TrainingError(
                    f"{bad_images} training images are unreadable, more than data.max_bad_image_fraction="
                    f"{cfg.data.max_bad_image_fraction} of {len(train_set)} (all ranks together; this rank skipped "
                    f"image ids {sorted(skipped_images)[:10]}); fix or remove them (data.preflight=true lists them all "
                    "before training)"
                )
            if not finite:
                raise TrainingError(
                    f"non-finite loss at iteration {it} ({ {k: float(v.detach()) for k, v in losses.items()} }); "
                    f"{run_dir / 'last.pt'} holds the last step with finite weights. Lower optim.lr, enable "
                    "trainer.clip_grad_norm, or check the data"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.trainer.clip_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.trainer.clip_grad_norm))
            scale_before = scaler.get_scale() if scaler.is_enabled() else None
            state["updating"] = True  # weights change from here until the step is complete
            scaler.step(optimizer)
            scaler.update()
            it += 1
            scheduler.step()
            state["updating"] = False
            if scale_before is not None:
                overflows.update(scaler.get_scale() < scale_before, it)
            bar.update(1)
            last_step = it >= max_iters or not time_left

            # Save first: nothing later at this step (logging, evaluation) can lose the step.
            if it % int(cfg.trainer.checkpoint_period) == 0 or last_step or not keep_going:
                checkpoint("last.pt", it)
            if it % int(cfg.trainer.log_period) == 0 or last_step:
                now = time.perf_counter()
                rate = int(cfg.trainer.log_period) / max(now - t_last, 1e-9)
                t_last = now
                record = {"iteration": it, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0], "it_per_s": rate,
                          "elapsed_s": round(budget.elapsed(), 1), "amp_skipped_steps": overflows.total,
                          "unreadable_train_images": bad_images, **{k: float(v.detach()) for k, v in losses.items()}}
                if is_main:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", it_s=f"{rate:.2f}")
                    _log(metrics_file, writer, record, it)
            evaluate_now = int(cfg.trainer.eval_period) > 0 and (it % int(cfg.trainer.eval_period) == 0 or last_step)
            if val_set is not None and evaluate_now and keep_going:  # preempted: no time to evaluate
                last_metrics = evaluate(it)  # the same dict on every rank
                if is_main:
                    _log(metrics_file, writer, last_metrics, it)
                if last_metrics["val/AP"] > best_ap:
                    best_ap = last_metrics["val/AP"]
                    checkpoint("best.pt", it)  # collective: every rank takes part
                    if state["saved_at"] == it:
                        checkpoint("last.pt", it)  # so that a resumed run knows this best AP
            if not keep_going:  # a rank got SIGTERM/SIGINT: all saved together at this step boundary
                if is_main:
                    print(f"stopped by signal at iteration {it}; resume with train.resume={run_dir / 'last.pt'}", flush=True)
                break
            if last_step and not time_left and it < max_iters and is_main:
                print(f"trainer.max_time={cfg.trainer.max_time} reached at iteration {it}", flush=True)
    except BaseException:
        # Whatever failed after training started, keep the last completed step, unless the failure
        # came in the middle of an optimizer update (the weights are neither step's) or the weights
        # are no longer finite (a diverged step must not replace the last good checkpoint).
        if it > start_iter and state["saved_at"] != it and not state["updating"]:
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                print(f"not saving iteration {it}: the weights are not finite; {run_dir / 'last.pt'} is the last good "
                      f"checkpoint (iteration {state['saved_at']})", flush=True)
            else:
                try:
                    checkpoint("last.pt", it, collective=False)
                    print(f"saved {run_dir / 'last.pt'} at iteration {it} (the last completed step) before stopping", flush=True)
                except Exception as save_error:  # e.g. a full disk, or a CUDA error that cannot be recovered
                    print(f"could not save iteration {it} before stopping ({save_error})", flush=True)
        raise
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
