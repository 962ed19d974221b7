"""Speed and memory of frcnn vs torchvision's Faster R-CNN, configured alike, measured in one run.

    python scripts/benchmark.py                          # CPU: ResNet-18-C4 at the demo image size
    python scripts/benchmark.py --device cuda --backbone r50 --min-size 800 --max-size 1333 --batch 2 8 --amp none bf16

Both detectors share the trunk architecture (ResNet stem..res4, stride 16), the res5 box head, 9 anchors,
the RPN and RoI sampling numbers, RoIAlign and the image size. Where torchvision cannot be configured
to match (its proposals are not filtered at 16 px, its background IoU range starts at 0 instead of
0.1), it keeps its own behaviour; nothing of torchvision's is changed to favour frcnn. Repetitions
alternate between the two so drift on a noisy machine hits both; medians are reported.
Peak memory is measured in a fresh child process per framework (CUDA max allocated, or peak RSS on CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frcnn.anchors import AnchorGenerator  # noqa: E402
from frcnn.backbones import ResNetC4  # noqa: E402
from frcnn.model import FasterRCNN  # noqa: E402
from frcnn.preprocess import Preprocessor  # noqa: E402
from frcnn.roi_heads import BoxPredictor, RoIHeads  # noqa: E402
from frcnn.rpn import RPN, RPNHead  # noqa: E402

NUM_CLASSES = 5


def build_ours(a) -> FasterRCNN:
    bb = ResNetC4(depth=a.depth, norm="frozen_bn", freeze_at=2)
    return FasterRCNN(
        backbone=bb,
        rpn=RPN(head=RPNHead(in_channels=bb.out_channels), anchor_generator=AnchorGenerator(sizes=a.anchors), min_size=a.rpn_min_size),
        roi_heads=RoIHeads(predictor=BoxPredictor(in_channels=bb.head_channels, num_classes=NUM_CLASSES),
                           pooler_resolution=a.pool, batch_size_per_image=a.rois, sampling_ratio=a.sampling_ratio),
        preprocessor=Preprocessor(min_size=a.min_size, max_size=a.max_size),
        channels_last=a.channels_last,
    )


class _Trunk(nn.Module):
    def __init__(self, trunk: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = trunk
        self.out_channels = out_channels

    def forward(self, x):
        return OrderedDict([("0", self.body(x))])


def build_torchvision(a) -> nn.Module:
    from torchvision.models.detection import FasterRCNN as TV
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.rpn import AnchorGenerator as TVAnchors
    from torchvision.ops import MultiScaleRoIAlign

    bb = ResNetC4(depth=a.depth, norm="frozen_bn", freeze_at=2)
    return TV(
        _Trunk(bb.trunk, bb.out_channels),
        min_size=a.min_size, max_size=a.max_size,
        rpn_anchor_generator=TVAnchors(sizes=(tuple(a.anchors),), aspect_ratios=((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=6000, rpn_pre_nms_top_n_test=6000,
        rpn_post_nms_top_n_train=2000, rpn_post_nms_top_n_test=300,
        rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
        rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=a.pool, sampling_ratio=a.sampling_ratio),
        box_head=bb.box_head,
        box_predictor=FastRCNNPredictor(bb.head_channels, NUM_CLASSES + 1),
        box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
        box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5, box_batch_size_per_image=a.rois, box_positive_fraction=0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
    )


def make_batch(a, n: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h, w = a.image_hw
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        k = 4
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device), "labels": torch.randint(1, NUM_CLASSES + 1, (k,), generator=g).to(device)})
    return images, targets


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def step_fns(a, name: str, device, batch: int, amp):
    model = (build_ours if name == "frcnn" else build_torchvision)(a).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images, targets = make_batch(a, batch, device)
    infer_images, _ = make_batch(a, 8, device, seed=1)
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else (lambda: torch.autocast(device.type, enabled=False))

    def train_step():
        model.train()
        with ctx():
            out = model(images, targets)
            losses = out.losses if name == "frcnn" else out
            loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer(n):
        imgs = infer_images[:n]

        def run():
            model.eval()
            with torch.no_grad(), ctx():
                model(imgs)

        return run

    bb = model.backbone if name == "frcnn" else None
    trunk = bb.trunk if bb is not None else model.backbone.body
    head = bb.box_head if bb is not None else model.roi_heads.box_head
    pooled = torch.randn(batch * a.rois, trunk_channels(a), a.pool, a.pool, device=device)
    x = torch.randn(batch, 3, *padded_hw(a), device=device)

    def backbone_only():
        with ctx():
            loss = trunk(x).float().mean() + head(pooled).float().mean()
        loss.backward()

    return train_step, infer, backbone_only


def trunk_channels(a) -> int:
    return 256 if a.depth in (18, 34) else 1024


def padded_hw(a) -> tuple[int, int]:
    h, w = a.image_hw
    s = min(a.min_size / min(h, w), a.max_size / max(h, w))
    return tuple(-(-round(v * s) // 32) * 32 for v in (h, w))


def bench_speed(a, device, batch, amp) -> dict:
    fns = {n: step_fns(a, n, device, batch, amp) for n in ("frcnn", "torchvision")}
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer1": [], "infer8": [], "backbone": []} for n in fns}
    for rep in range(a.warmup + a.reps):
        for n, (train_step, infer, backbone_only) in fns.items():
            for key, fn in (("train", train_step), ("infer1", infer(1)), ("infer8", infer(8)), ("backbone", backbone_only)):
                dt = timed(fn, device)
                if rep >= a.warmup:
                    times[n][key].append(dt)
    out = {}
    for n, t in times.items():
        med = {k: statistics.median(v) for k, v in t.items()}
        out[n] = {
            "train_step_s": med["train"],
            "infer_per_image_b1_s": med["infer1"],
            "infer_per_image_b8_s": med["infer8"] / 8,
            "overhead_ratio": med["train"] / med["backbone"],
        }
    out["ratio"] = {k: out["frcnn"][k] / out["torchvision"][k] for k in out["frcnn"]}
    return out


def bench_memory_child(a, device, batch, amp, name) -> float:
    train_step, _, _ = step_fns(a, name, device, batch, amp)
    for _ in range(3):
        train_step()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backbone", default="r18", choices=["r18", "r50"])
    p.add_argument("--min-size", type=int, default=192)
    p.add_argument("--max-size", type=int, default=256)
    p.add_argument("--image-hw", type=int, nargs=2, default=[192, 256])
    p.add_argument("--batch", type=int, nargs="+", default=[4])
    p.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bf16", "fp16"])
    p.add_argument("--anchors", type=float, nargs=3, default=None, help="default: 32 64 128 below 400 px, else 128 256 512")
    p.add_argument("--rois", type=int, default=128)
    p.add_argument("--pool", type=int, default=14)
    p.add_argument("--sampling-ratio", type=int, default=0)
    p.add_argument("--rpn-min-size", type=float, default=16.0)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--_memory_child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.depth = 18 if a.backbone == "r18" else 50
    a.image_hw = tuple(a.image_hw)
    if a.anchors is None:
        a.anchors = [32, 64, 128] if a.min_size < 400 else [128, 256, 512]
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    amps = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    torch.manual_seed(0)

    if a._memory_child:
        name, batch, amp = a._memory_child.split(",")
        print(json.dumps(bench_memory_child(a, device, int(batch), amps[amp], name)))
        return

    env = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "settings": {k: v for k, v in vars(a).items() if not k.startswith("_") and k != "json"},
    }
    print(json.dumps(env, default=str))
    results = []
    for amp in a.amp:
        for batch in a.batch:
            speed = bench_speed(a, device, batch, amps[amp])
            mem = {}
            for name in ("frcnn", "torchvision"):
                cmd = [sys.executable, __file__, *sys.argv[1:], "--_memory_child", f"{name},{batch},{amp}"]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                mem[name] = json.loads(res.stdout.strip().splitlines()[-1])
            speed["frcnn"]["peak_memory_mib"] = mem["frcnn"]
            speed["torchvision"]["peak_memory_mib"] = mem["torchvision"]
            speed["ratio"]["peak_memory_mib"] = mem["frcnn"] / mem["torchvision"]
            row = {"batch": batch, "amp": amp, **speed}
            results.append(row)
            print(json.dumps(row))
    if a.json:
        a.json.write_text(json.dumps({"env": env, "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
