"""torchvision's single-threaded CPU kernels, spread over the CPU's threads: RoIAlign (forward and backward) and NMS.

``torchvision.ops.roi_align``, its backward and ``torchvision.ops.nms`` run on one core on the CPU (no
``parallel_for`` inside), while the convolutions around them use every core: on the 2-core machine they
were half of a batch-8 inference once the convolutions ran in bf16, and a seventh of a training step.
They release the GIL, so Python threads run them side by side:

* :func:`roi_align` cuts the ``M`` RoIs into one contiguous chunk per thread (at most ``MAX_CHUNKS``); each
  chunk is pooled by torchvision's kernel. The forward outputs are bitwise those of one call; the backward
  sums the chunks' input gradients (the same values up to the order of float additions; each chunk's
  gradient is a map of the input's size, hence the cap on chunks).
* :func:`batched_nms` runs ``torchvision.ops.nms`` once per group on the CPU (torchvision's own CPU path for
  more than 1000 boxes does the same, one group after another; for fewer it shifts each group's coordinates
  by its own offset and runs one NMS, which rounds the coordinates), the groups dealt to the threads by their
  NMS work (``n²``). The same survivors, sorted by score, whatever the batch or the number of boxes.

Both fall back to the plain torchvision call where threads cannot help or must not run: a CUDA tensor, ONNX
tracing, ``torch.compile`` (the graph holds one ``RoiAlign`` / ``NonMaxSuppression`` node), or a call from one
of the pool's own threads; and run in the calling thread for one thread (``torch.get_num_threads() == 1``) or
too little work. The pool is created on first use and dropped in a forked child (a DataLoader worker), which
makes its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import Tensor
from torchvision import ops

T = TypeVar("T")

MIN_ROIS_PER_THREAD = 32  # below this a chunk's pooling costs less than handing it to a thread
MIN_NMS_BOXES = 1000  # the same for NMS (the sum of n over the groups)
MAX_CHUNKS = 4  # RoIAlign's backward makes one input-sized gradient per chunk
_THREAD_PREFIX = "frcnn-kernels"

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _reset_after_fork() -> None:
    """In a forked child: the parent's threads do not exist there, and its lock may have been held."""
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _torchvision_only(device: torch.device) -> bool:
    """torchvision's own op must run: off the CPU, or while tracing, scripting or compiling (one graph node)."""
    return device.type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()


def thread_count(device: torch.device) -> int:
    """How many threads to spread a kernel over: torch's intra-op thread count on the CPU; 1 on other devices,
    while tracing or compiling, and inside the pool's own threads."""
    if _torchvision_only(device) or threading.current_thread().name.startswith(_THREAD_PREFIX):
        return 1
    return torch.get_num_threads()


def _get_pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool, with at least ``workers`` threads. A larger one replaces it when needed; the old one is
    left to the callers still using it (never shut down under them)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            _pool_size = max(workers, os.cpu_count() or 1)
            _pool = ThreadPoolExecutor(_pool_size, thread_name_prefix=_THREAD_PREFIX)
        return _pool


def run_parallel(fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    """``[fn(item) for item in items]`` with the items on the pool's threads, each in the caller's grad and
    inference mode (those are per thread; a worker starts with gradients on). Exceptions reach the caller."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def call(item: Any) -> T:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(item)

    return list(_get_pool(len(items)).map(call, items))


class _ChunkedRoIAlign(torch.autograd.Function):
    """RoIAlign over ``chunks`` of the RoIs on the pool's threads, forward and backward."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                sampling_ratio: int, aligned: bool, chunks: int) -> Tensor:
        features = features.contiguous()  # the kernel makes NCHW of channels-last maps: once, not per chunk
        pooled = run_parallel(
            lambda r: torch.ops.torchvision.roi_align(features, r, spatial_scale, output_size[0], output_size[1],
                                                      sampling_ratio, aligned),
            rois.tensor_split(chunks),
        )
        ctx.save_for_backward(rois)
        ctx.settings = (output_size, spatial_scale, sampling_ratio, aligned, chunks, tuple(features.shape))
        return torch.cat(pooled)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        (rois,) = ctx.saved_tensors
        (ph, pw), scale, sampling_ratio, aligned, chunks, (b, c, h, w) = ctx.settings
        pairs = list(zip(grad.contiguous().tensor_split(chunks), rois.tensor_split(chunks)))
        grads = run_parallel(
            lambda gr: torch.ops.torchvision._roi_align_backward(gr[0], gr[1], scale, ph, pw, b, c, h, w, sampling_ratio, aligned),
            pairs,
        )
        total = grads[0]  # a fresh tensor of the kernel's: summed into in place
        for g in grads[1:]:
            total.add_(g)
        return total, None, None, None, None, None, None


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    """``torchvision.ops.roi_align(features, rois, ...)`` with ``rois`` ``[M, 5]`` spread over the CPU's threads.

    ``features``: ``[B, C, H, W]`` (any memory format); returns ``[M, C, S_h, S_w]`` equal to torchvision's
    (module docstring). Threads only for float32 features and RoIs: the caller (RoI heads) pools in fp32 even
    under autocast, and autocast, which is per thread, would not reach the workers.
    """
    chunks = min(thread_count(features.device), rois.shape[0] // MIN_ROIS_PER_THREAD, MAX_CHUNKS)
    if chunks < 2 or features.dtype != torch.float32 or rois.dtype != torch.float32:
        return ops.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return _ChunkedRoIAlign.apply(features, rois, tuple(output_size), float(spatial_scale), int(sampling_ratio),
                                  bool(aligned), chunks)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms``: NMS within each group, survivors' indices sorted by decreasing score.

    Args:
        boxes: ``[N, 4]`` XYXY; scores: ``[N]``; groups: ``[N]`` integer group of each box.

    Returns:
        ``[K]`` long indices into the boxes, sorted by score (ties in an order of their own).
    """
    if _torchvision_only(boxes.device) or boxes.shape[0] == 0:
        return ops.batched_nms(boxes, scores, groups, iou_threshold)
    threads = thread_count(boxes.device)
    # Host sync: which groups exist, and how many boxes each holds.
    _, sizes = torch.unique(groups, return_counts=True)
    members = torch.argsort(groups, stable=True).split(sizes.tolist())  # per group: indices into the boxes
    workers = min(threads, len(members)) if boxes.shape[0] >= MIN_NMS_BOXES else 1
    work: list[list[Tensor]] = [[] for _ in range(workers)]
    load = [0] * workers
    for g in sorted(range(len(members)), key=lambda i: -members[i].numel()):  # largest first, to the least loaded
        k = load.index(min(load))
        work[k].append(members[g])
        load[k] += members[g].numel() ** 2

    def nms_groups(mine: list[Tensor]) -> Tensor:
        kept = [index[ops.nms(boxes[index], scores[index], iou_threshold)] for index in mine]
        return torch.cat(kept) if kept else groups.new_zeros(0, dtype=torch.long)

    keep = torch.cat(run_parallel(nms_groups, work))
    return keep[scores[keep].argsort(descending=True)]
