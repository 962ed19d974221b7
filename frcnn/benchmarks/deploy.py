"""Inference as users get it: frcnn's shipped paths against torchvision's eager detector, same weights.

``scripts/deploy_benchmark.py`` is the command; docs/benchmarks.md holds the recorded table. Each
variant runs the same trained weights on the same validation images (the demo's 192x256 synthetic
images), at batch 1 and batch 8:

* ``torchvision`` — :func:`frcnn.benchmarks.peers.torchvision_peer` of the model, under ``torch.no_grad``
  and under ``torch.inference_mode`` (the faster of the two is the reference);
* ``frcnn eager`` — the model as trained, under ``torch.no_grad`` (the same work as torchvision's);
* ``+ inference_mode``, ``+ BN folded`` (:func:`frcnn.modeling.fold.fold_batchnorm`), ``+ channels_last``:
  each step added to the one before, so each row says what that step bought;
* ``onnxruntime`` — the exported graph (:mod:`frcnn.export`), batch 8 as one ``[8, 3, H, W]`` call;
* ``onnxruntime int8`` (``--int8``) — the exported graph with int8 convolutions (:mod:`frcnn.export.quantize`,
  calibrated on training images): not the same detections, so its AP is the row to read;
* ``shipped, precision=bf16`` (``--bf16``) — the shipped path with bf16 weights and autocast
  (``infer.py precision=bf16``): close detections, not the same; its AP is the row to read;
* ``shipped, N proposals`` (``--proposals N ...``) — the shipped path with a test-time proposal budget
  (``infer.py proposals=N``): the box head runs once per proposal, so this is the lever on time, but it
  is a speed/accuracy trade (not the same detections), shown with its AP beside the exact rows.

Timing: each repetition runs every variant once, in a freshly shuffled order (seeded), so neither
drift on a noisy machine nor a position in the order favours one; medians over the repetitions.
COCO AP on the validation split is computed for each variant (batch 1, every image; torchvision's once).
onnxruntime's idle threads do not spin here (they would take the cores from torch's pool, which shares
the process).
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from torch import Tensor, nn

from frcnn.benchmarks.peers import PeerAdapter, torchvision_peer
from frcnn.data.coco import CategoryMap
from frcnn.data.images import read_rgb, to_chw
from frcnn.evaluation.coco_eval import coco_records, evaluate_results
from frcnn.inference import prepare_for_inference

Detect = Callable[[list[Tensor]], list[dict[str, Tensor]]]


def _torch_variant(model: nn.Module, mode: str) -> Detect:
    """Run ``model`` (frcnn's interface) on a list of ``[3, H, W]`` uint8 images under ``no_grad`` or ``inference_mode``."""
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad

    def run(images: list[Tensor]) -> list[dict[str, Tensor]]:
        with context():
            return model(images).detections

    return run


def _onnx_variant(path: Path, threads: int | None) -> Detect:
    from frcnn.export.runtime import OnnxDetector

    detector = OnnxDetector(path, threads=threads, spin=False)  # torch's pool shares the process

    return lambda images: detector.detect_batch(torch.stack(images).numpy())


def build_variants(
    model: nn.Module, onnx_path: Path | None, *, threads: int | None = None, proposals: tuple[int, ...] = (),
    int8_path: Path | None = None, peer: nn.Module | None = None, bf16: bool = False,
) -> dict[str, Detect]:
    """The variants of the module docstring, by name, in table order.

    ``peer``: torchvision's detector to compare with (an imported zoo model's own torchvision model);
    default: :func:`torchvision_peer` built from ``model``.
    """
    model = model.eval()
    peer = PeerAdapter(peer if peer is not None else torchvision_peer(model)).eval()
    folded = prepare_for_inference(model, fold_bn=True, channels_last=False)
    folded_cl = prepare_for_inference(model, fold_bn=True, channels_last=True)
    variants = {
        "torchvision, no_grad": _torch_variant(peer, "no_grad"),
        "torchvision, inference_mode": _torch_variant(peer, "inference_mode"),
        "frcnn eager, no_grad": _torch_variant(model, "no_grad"),
        "+ inference_mode": _torch_variant(model, "inference_mode"),
        "+ BN folded": _torch_variant(folded, "inference_mode"),
        "+ channels_last (shipped default)": _torch_variant(folded_cl, "inference_mode"),
    }
    if bf16:
        variants["shipped, precision=bf16 (not the same detections)"] = _torch_variant(
            prepare_for_inference(model, precision="bf16"), "inference_mode")
    if onnx_path is not None:
        variants["onnxruntime"] = _onnx_variant(onnx_path, threads)
    if int8_path is not None:
        variants["onnxruntime int8 (not the same detections)"] = _onnx_variant(int8_path, threads)
    for count in proposals:
        if int(count) < 1:
            raise ValueError(f"a proposal budget must be at least 1, not {count}")
        budget = prepare_for_inference(model, fold_bn=True, channels_last=True)
        budget.rpn.post_nms_topk_test = int(count)
        variants[f"shipped, {count} proposals (not the same detections)"] = _torch_variant(budget, "inference_mode")
    return variants


def load_split(root: Path, split: str = "val", max_images: int | None = None) -> tuple[COCO, list[int], list[Tensor]]:
    """The split's COCO ground truth, image ids and ``[3, H, W]`` uint8 images (in id order; the first ``max_images``)."""
    with contextlib.redirect_stdout(None):
        coco = COCO(str(root / "annotations" / f"{split}.json"))
    ids = sorted(coco.getImgIds())[:max_images]
    images = [to_chw(read_rgb(root / split / coco.imgs[i]["file_name"])).contiguous() for i in ids]
    return coco, ids, images


def time_variants(variants: dict[str, Detect], images: list[Tensor], batch: int, *, reps: int, warmup: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per image of each variant on batches of ``batch`` images, every repetition (after ``warmup``)."""
    rng = random.Random(seed)
    names = list(variants)
    per_image: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(warmup + reps):
        rng.shuffle(names)
        chunk = [images[(rep * batch + i) % len(images)] for i in range(batch)]
        for name in names:
            t = time.perf_counter()
            variants[name](chunk)
            dt = (time.perf_counter() - t) / batch
            if rep >= warmup:
                per_image[name].append(dt)
    return per_image


def coco_ap(detect: Detect, coco: COCO, ids: list[int], images: list[Tensor], categories: CategoryMap) -> float:
    """COCO AP@[.5:.95] of ``detect`` run one image at a time over the split."""
    results = []
    for image_id, image in zip(ids, images):
        results.extend(coco_records(detect([image])[0], image_id, categories))
    with contextlib.redirect_stdout(None):
        return float(evaluate_results(coco, results, ids)["stats"]["AP"])


def run_benchmark(
    model: nn.Module, categories: CategoryMap, root: Path, onnx_path: Path | None, *,
    batches: tuple[int, ...] = (1, 8), reps: int = 10, warmup: int = 2, threads: int | None = None, ap: bool = True,
    max_images: int | None = None, proposals: tuple[int, ...] = (), int8_path: Path | None = None,
    peer: nn.Module | None = None, bf16: bool = False,
) -> dict[str, Any]:
    """Per-image latency (median and range) of every variant at each batch size, and each frcnn variant's AP.

    Returns ``{"latency": {batch: {variant: {"median_s", "min_s", "max_s", "vs_torchvision"}}}, "ap": {variant: AP}}``,
    ``vs_torchvision`` being the median over the faster torchvision variant's median.
    """
    variants = build_variants(model, onnx_path, threads=threads, proposals=proposals, int8_path=int8_path, peer=peer,
                              bf16=bf16)
    coco, ids, images = load_split(root, max_images=max_images)
    # Timed on the images of the split's most common size, so a batch is one size (the ONNX graph's input).
    shapes = [tuple(im.shape) for im in images]
    common = max(set(shapes), key=shapes.count)
    timed_images = [im for im in images if tuple(im.shape) == common]
    out: dict[str, Any] = {"latency": {}, "ap": {}, "images": len(images), "timed_images": len(timed_images), "image_hw": list(common[1:])}
    for batch in batches:
        times = time_variants(variants, timed_images, batch, reps=reps, warmup=warmup)
        med = {n: statistics.median(t) for n, t in times.items()}
        reference = min(med["torchvision, no_grad"], med["torchvision, inference_mode"])
        out["latency"][batch] = {n: {"median_s": med[n], "min_s": min(t), "max_s": max(t), "vs_torchvision": med[n] / reference}
                                 for n, t in times.items()}
    if ap:
        for name, detect in variants.items():
            if name != "torchvision, inference_mode":  # the same model and work as the no_grad row
                out["ap"][name] = coco_ap(detect, coco, ids, images, categories)
    return out


def markdown(result: dict[str, Any]) -> str:
    """The table for docs/benchmarks.md."""
    batches = list(result["latency"])
    names = list(result["latency"][batches[0]])
    head = "| variant | " + " | ".join(f"ms / image, batch {b} | vs torchvision" for b in batches) + " | COCO AP (val) |"
    rows = [head, "|---|" + "---|---|" * len(batches) + "---|"]
    for n in names:
        cells = []
        for b in batches:
            r = result["latency"][b][n]
            cells.append(f"{r['median_s'] * 1000:.1f} ({r['min_s'] * 1000:.0f}-{r['max_s'] * 1000:.0f})")
            cells.append(f"{r['vs_torchvision']:.2f}")
        ap = result["ap"].get(n)
        rows.append(f"| {n} | " + " | ".join(cells) + f" | {ap:.4f} |" if ap is not None else f"| {n} | " + " | ".join(cells) + " | — |")
    return "\n".join(rows)

