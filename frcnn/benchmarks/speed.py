"""Speed and peak memory of frcnn and its torchvision peer, configured alike (``scripts/benchmark.py``).

Both detectors come from one model config: frcnn is instantiated from it and torchvision's detector is
:func:`frcnn.benchmarks.peers.torchvision_peer` of that model (same trunk and box head, anchors, RPN
and RoI sampling numbers, pooled size, image size, normalization and initial weights). The inputs
are random images with four random boxes each.

- Speed (:func:`measure_speed`): a training step (forward, backward, SGD step), inference per image at
  batch 1 and batch 8, and a backbone-only baseline (trunk + box head forward and backward, nothing
  else) whose ratio to the training step is the framework's overhead. Each measurement alternates
  between the two detectors, and which one goes first alternates from one repetition to the next, so
  neither drift on a noisy machine nor the position in the order favours one; medians are reported,
  with the range of the per-repetition ratios.
- Peak memory (:func:`peak_memory_mib`): three training steps in a fresh process per detector, so
  neither sees the other's (or the timing's) allocations: CUDA max allocated, or the process's own
  peak resident set on CPU.
- :func:`profile_pair`: torch.profiler tables and Chrome traces instead of timings.
"""

from __future__ import annotations

import multiprocessing
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from frcnn.benchmarks.peers import PeerAdapter, torchvision_peer
from frcnn.config import AMP_DTYPES
from frcnn.modeling.model import FasterRCNN
from frcnn.modeling.preprocess import Preprocessor
from frcnn.modeling.structures import FeatureMaps

SPEED_KEYS = ("train_step_s", "infer_per_image_b1_s", "infer_per_image_b8_s", "backbone_only_s", "overhead_ratio")


@dataclass(frozen=True)
class SpeedSettings:
    """What both detectors are measured on.

    Attributes:
        image_hw: ``(H, W)`` of the random input images (before the detectors' own resizing).
        channels_last: convert both models and the inputs to channels-last memory format.
        reps: timed repetitions per measurement (the median is reported).
        warmup: untimed repetitions first (allocator, caches, cuDNN autotuning).
    """

    image_hw: tuple[int, int] = (192, 256)
    channels_last: bool = False
    reps: int = 10
    warmup: int = 3


def build_pair(model_cfg: DictConfig | dict[str, Any]) -> dict[str, nn.Module]:
    """``{"frcnn": ours, "torchvision": peer}`` from the model config (``cfg.model``), same initial weights."""
    torch.manual_seed(0)
    ours = instantiate(model_cfg)
    return {"frcnn": ours, "torchvision": PeerAdapter(torchvision_peer(ours))}


def machine(device: torch.device) -> dict[str, str]:
    """The date and the machine the numbers are measured on: device (GPU name, or CPU and its threads) and versions."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"date": time.strftime("%Y-%m-%d"), "device": name, "torch": torch.__version__, "torchvision": torchvision.__version__}


def model_summary(ours: FasterRCNN, image_hw: tuple[int, int]) -> dict[str, Any]:
    """The settings of frcnn's model that decide the work per step (the peer copies them)."""
    backbone, heads = ours.backbone, ours.roi_heads
    return {
        "backbone": f"{type(backbone).__name__}-{getattr(backbone, 'depth', '')} norm={getattr(backbone, 'norm', '')}",
        "anchors": ours.rpn.anchor_generator.level_sizes,
        "rpn_min_size": ours.rpn.min_size,
        "rois_per_image": heads.batch_size_per_image,
        "positive_fraction": heads.positive_fraction,
        "pool": heads.pooler_resolution,
        "sampling_ratio": heads.sampling_ratio,
        "padded_input": padded_hw(ours.preprocessor, image_hw),
    }


def benchmark(
    pair: dict[str, nn.Module], model_cfg: DictConfig, settings: SpeedSettings, device: torch.device, *,
    batches: Sequence[int], amps: Sequence[str], memory: bool = True,
) -> Iterator[dict[str, Any]]:
    """One row per (amp, batch): ``{"batch", "amp", "frcnn": {...}, "torchvision": {...}, "ratio": {...}}``.

    Each detector's entry holds :data:`SPEED_KEYS` (seconds, and the overhead ratio) and, with
    ``memory``, ``peak_memory_mib``; ``ratio`` is frcnn's value over torchvision's for each key. Rows
    are yielded as they are measured (a large setting takes minutes).

    Args:
        pair: :func:`build_pair` of ``model_cfg`` (timed here); the memory processes build their own from ``model_cfg``.
        batches: training batch sizes; amps: ``"none" | "bf16" | "fp16"`` (autocast dtype).
    """
    for amp in amps:
        for batch in batches:
            speed = measure_speed(pair, settings, device, batch, AMP_DTYPES[amp])
            if memory:
                for name in ("frcnn", "torchvision"):
                    speed[name]["peak_memory_mib"] = peak_memory_mib(model_cfg, name, settings, device, batch, AMP_DTYPES[amp])
                speed["ratio"]["peak_memory_mib"] = speed["frcnn"]["peak_memory_mib"] / speed["torchvision"]["peak_memory_mib"]
            yield {"batch": batch, "amp": amp, **speed}


def measure_speed(
    pair: dict[str, nn.Module], settings: SpeedSettings, device: torch.device, batch: int, amp: torch.dtype | None
) -> dict[str, dict[str, float]]:
    """Median times of each detector of ``pair`` (:data:`SPEED_KEYS`), and their ratios frcnn / torchvision."""
    fns = {n: step_fns(m, pair["frcnn"], settings, device, batch, amp) for n, m in pair.items()}
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer1": [], "infer8": [], "backbone": []} for n in fns}
    names = list(fns)
    for rep in range(settings.warmup + settings.reps):
        # Each measurement alternates which detector goes first: a harness that favoured the first or the
        # second runner (caches, allocator, clock boost) would otherwise favour one detector every time.
        for key in ("train", "infer1", "infer8", "backbone"):
            for n in names if rep % 2 == 0 else names[::-1]:
                train_step, infer, backbone_only = fns[n]
                fn = {"train": train_step, "infer1": infer(1), "infer8": infer(8), "backbone": backbone_only}[key]
                dt = timed(fn, device)
                if rep >= settings.warmup:
                    times[n][key].append(dt)
    out = {}
    for n, t in times.items():
        med = {k: statistics.median(v) for k, v in t.items()}
        out[n] = {
            "train_step_s": med["train"],
            "infer_per_image_b1_s": med["infer1"],
            "infer_per_image_b8_s": med["infer8"] / 8,
            "backbone_only_s": med["backbone"],
            "overhead_ratio": med["train"] / med["backbone"],
        }
    out["ratio"] = {k: out["frcnn"][k] / out["torchvision"][k] for k in out["frcnn"]}
    # Spread: the ratio of each repetition's pair of measurements (taken back to back), min and max; and the
    # order effect itself: the median ratio over the repetitions where frcnn ran first, and over those where
    # it ran second (timed repetitions start at `warmup`, so parity decides who went first).
    pairs = {"train_step_s": "train", "infer_per_image_b1_s": "infer1", "infer_per_image_b8_s": "infer8", "backbone_only_s": "backbone"}
    frcnn_first = [(settings.warmup + i) % 2 == 0 for i in range(settings.reps)]
    out["ratio_range"], out["ratio_by_order"] = {}, {}
    for k, key in pairs.items():
        ratios = [a / b for a, b in zip(times["frcnn"][key], times["torchvision"][key])]
        out["ratio_range"][k] = [min(ratios), max(ratios)]
        by_order = {"frcnn_first": [r for r, f in zip(ratios, frcnn_first) if f],
                    "torchvision_first": [r for r, f in zip(ratios, frcnn_first) if not f]}
        out["ratio_by_order"][k] = {order: statistics.median(r) for order, r in by_order.items() if r}
    return out


def peak_memory_mib(
    model_cfg: DictConfig | dict[str, Any], name: str, settings: SpeedSettings, device: torch.device, batch: int, amp: torch.dtype | None
) -> float:
    """Peak memory (MiB) of three training steps of detector ``name`` ("frcnn" or "torchvision"), in a fresh process.

    Spawned, not forked: the process starts from nothing (no copy of this one's memory, no CUDA context),
    so its peak is its own (imports, the pair, the steps) whatever this process holds.
    """
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)  # plain data: it is pickled to the child
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        job = pool.submit(_peak_memory_here, model_cfg, name, settings, str(device), batch, amp, torch.get_num_threads())
        return job.result()


def _peak_memory_here(
    model_cfg: dict[str, Any], name: str, settings: SpeedSettings, device_name: str, batch: int, amp: torch.dtype | None, threads: int
) -> float:
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    pair = build_pair(model_cfg)
    train_step, _, _ = step_fns(pair[name], pair["frcnn"], settings, device, batch, amp)
    for _ in range(3):
        train_step()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _peak_rss_mib()


def _peak_rss_mib() -> float:
    # Linux's VmHWM, not ru_maxrss: a process started by fork + exec inherits its parent's ru_maxrss
    # (the kernel keeps the larger of the two across exec), so ru_maxrss reads the parent's size
    # whenever that is larger, and both detectors come out identical.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def profile_pair(
    pair: dict[str, nn.Module], settings: SpeedSettings, device: torch.device, batch: int, amp: torch.dtype | None, out_dir: Path
) -> None:
    """torch.profiler over one training step and one batch-8 inference of each detector (after a
    warm-up): prints the ops by self time and writes Chrome traces into ``out_dir``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, model in pair.items():
        train_step, infer, _ = step_fns(model, pair["frcnn"], settings, device, batch, amp)
        for what, fn in (("train", train_step), ("infer8", infer(8))):
            fn()
            _sync(device)
            with profile(activities=activities) as prof:
                fn()
                _sync(device)
            print(f"== {name} {what} (batch {batch if what == 'train' else 8}, amp {amp})")
            print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=60))
            prof.export_chrome_trace(str(out_dir / f"{name}_{what}_b{batch}.json"))


def make_batch(
    settings: SpeedSettings, n: int, num_classes: int, device: torch.device, seed: int = 0
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``n`` random ``[3, H, W]`` images in [0, 1) of ``settings.image_hw``, with 4 random boxes each (16 px and up)."""
    g = torch.Generator().manual_seed(seed)
    h, w = settings.image_hw
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        k = 4
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device), "labels": torch.randint(1, num_classes + 1, (k,), generator=g).to(device)})
    return images, targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # kernels run asynchronously: the clock must wait for them


def timed(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds ``fn()`` takes, including the GPU work it queued."""
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def _mean_of(features: Tensor | FeatureMaps | dict[str, Tensor]) -> Tensor:
    """A scalar from a trunk's output: one map, frcnn's pyramid, or torchvision's ``{name: map}``."""
    if isinstance(features, Tensor):
        return features.float().mean()
    maps = features.maps if isinstance(features, FeatureMaps) else list(features.values())
    return sum(m.float().mean() for m in maps)


def padded_hw(prep: Preprocessor, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The padded input size frcnn's preprocessor gives an image of ``image_hw`` at test size."""
    return prep.test_size(*image_hw)[1]


def step_fns(
    model: nn.Module, ours: FasterRCNN, settings: SpeedSettings, device: torch.device, batch: int, amp: torch.dtype | None
) -> tuple[Callable[[], None], Callable[[int], Callable[[], None]], Callable[[], None]]:
    """Closures for one training step, inference at a batch size, and the backbone-only baseline.

    ``ours`` is the frcnn model of the pair: its settings give the shapes of the backbone-only baseline.
    """
    model = model.to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images, targets = make_batch(settings, batch, ours.num_classes, device)
    infer_images, _ = make_batch(settings, 8, ours.num_classes, device, seed=1)
    if settings.channels_last:
        images = [im.contiguous(memory_format=torch.channels_last) for im in images]

    def ctx() -> torch.autocast:
        return torch.autocast(device.type, dtype=amp) if amp is not None else torch.autocast(device.type, enabled=False)

    def train_step() -> None:
        model.train()
        with ctx():
            loss = sum(model(images, targets).losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer(n: int) -> Callable[[], None]:
        imgs = infer_images[:n]

        def run() -> None:
            model.eval()
            with torch.no_grad(), ctx():
                model(imgs)

        return run

    return train_step, infer, _backbone_only(model, ours, settings, device, batch, ctx)


def _backbone_only(model: nn.Module, ours: FasterRCNN, settings: SpeedSettings, device: torch.device, batch: int,
                   ctx: Callable[[], torch.autocast]) -> Callable[[], None]:
    """The baseline step: the trunk on the padded batch and the box head on R RoIs per image, forward and
    backward, nothing else. The modules are the model's own (trainable parts train, frozen ones don't)."""
    if isinstance(model, PeerAdapter):
        trunk = model.peer.backbone if hasattr(model.peer.backbone, "fpn") else model.peer.backbone.body
        head = model.peer.roi_heads.box_head
    else:
        trunk = model.backbone if hasattr(model.backbone, "fpn") else model.backbone.trunk
        head = model.roi_heads.box_head
    heads = ours.roi_heads
    s = heads.pooler_resolution
    pooled = torch.randn(batch * heads.batch_size_per_image, ours.backbone.out_channels, s, s, device=device)
    x = torch.randn(batch, 3, *padded_hw(ours.preprocessor, settings.image_hw), device=device)
    if settings.channels_last:
        pooled = pooled.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    pooled.requires_grad_(True)  # the real step's box head also backpropagates into RoIAlign

    def backbone_only() -> None:
        model.train()
        with ctx():
            loss = _mean_of(trunk(x)) + head(pooled).float().mean()
        loss.backward()

    return backbone_only
