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
torchvision's is changed to favour frcnn. Repetitions alternate between the two so drift on a noisy
machine hits both; medians are reported. Peak memory is measured in a fresh child process per framework
(CUDA max allocated, or peak RSS on CPU). ``--channels-last`` converts both models and inputs.
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
from pathlib import Path

import torch
import torchvision
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from frcnn.cli import compose_train, friendly_errors  # noqa: E402
from frcnn.config import resolve_device, validate_train_config  # noqa: E402
from frcnn.benchmarks.peers import PeerAdapter, torchvision_peer  # noqa: E402


def build_pair(a) -> dict[str, torch.nn.Module]:
    """``{"frcnn": ours, "torchvision": peer}`` from the composed config, same initial weights."""
    experiment = [] if a.experiment == "none" else [f"experiment={a.experiment}"]
    cfg = compose_train(experiment + ["run_dir=outputs/benchmark"] + a.overrides)
    validate_train_config(cfg)
    torch.manual_seed(0)
    ours = instantiate(cfg.model)
    return {"frcnn": ours, "torchvision": PeerAdapter(torchvision_peer(ours))}


def make_batch(a, n: int, num_classes: int, device, seed: int = 0):
    """``n`` random images of ``a.image_hw`` with 4 random boxes each (16 px and up)."""
    g = torch.Generator().manual_seed(seed)
    h, w = a.image_hw
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g).to(device))
        k = 4
        xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device), "labels": torch.randint(1, num_classes + 1, (k,), generator=g).to(device)})
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


def padded_hw(prep, image_hw) -> tuple[int, int]:
    """The padded input size frcnn's preprocessor gives an image of ``image_hw`` at test size."""
    h, w = prep.target_size(*image_hw, prep.min_size_test)
    d = prep.size_divisibility
    return -(-h // d) * d, -(-w // d) * d


def step_fns(a, model: torch.nn.Module, ours: torch.nn.Module, device, batch: int, amp):
    """Closures for one training step, inference at a batch size, and the backbone-only baseline.

    ``ours`` is the frcnn model of the pair: its settings give the shapes of the backbone-only baseline.
    """
    model = model.to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images, targets = make_batch(a, batch, ours.num_classes, device)
    infer_images, _ = make_batch(a, 8, ours.num_classes, device, seed=1)
    if a.channels_last:
        images = [im.contiguous(memory_format=torch.channels_last) for im in images]
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else (lambda: torch.autocast(device.type, enabled=False))

    def train_step():
        model.train()
        with ctx():
            loss = sum(model(images, targets).losses.values())
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

    # Backbone only: the trunk on the padded batch and the box head on R RoIs per image, forward and
    # backward, nothing else. The modules are the model's own (trainable parts train, frozen ones don't).
    if isinstance(model, PeerAdapter):
        trunk, head = model.peer.backbone.body, model.peer.roi_heads.box_head
    else:
        trunk, head = model.backbone.trunk, model.roi_heads.box_head
    heads = ours.roi_heads
    s = heads.pooler_resolution
    pooled = torch.randn(batch * heads.batch_size_per_image, ours.backbone.out_channels, s, s, device=device)
    x = torch.randn(batch, 3, *padded_hw(ours.preprocessor, a.image_hw), device=device)
    if a.channels_last:
        pooled = pooled.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    pooled.requires_grad_(True)  # the real step's box head also backpropagates into RoIAlign

    def backbone_only():
        model.train()
        with ctx():
            loss = trunk(x).float().mean() + head(pooled).float().mean()
        loss.backward()

    return train_step, infer, backbone_only


def bench_speed(a, pair, device, batch, amp) -> dict:
    fns = {n: step_fns(a, m, pair["frcnn"], device, batch, amp) for n, m in pair.items()}
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
            "backbone_only_s": med["backbone"],
            "overhead_ratio": med["train"] / med["backbone"],
        }
    out["ratio"] = {k: out["frcnn"][k] / out["torchvision"][k] for k in out["frcnn"]}
    return out


def profile_pair(a, pair, device, batch, amp, out_dir: Path) -> None:
    """torch.profiler over one training step and one batch-8 inference of each detector (after a
    warm-up): prints the ops by self time and writes Chrome traces into ``out_dir``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, model in pair.items():
        train_step, infer, _ = step_fns(a, model, pair["frcnn"], device, batch, amp)
        for what, fn in (("train", train_step), ("infer8", infer(8))):
            fn()
            _sync(device)
            with profile(activities=activities) as prof:
                fn()
                _sync(device)
            print(f"== {name} {what} (batch {batch if what == 'train' else 8}, amp {amp})")
            print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=60))
            prof.export_chrome_trace(str(out_dir / f"{name}_{what}_b{batch}.json"))


def bench_memory_child(a, device, batch, amp, name) -> float:
    pair = build_pair(a)
    train_step, _, _ = step_fns(a, pair[name], pair["frcnn"], device, batch, amp)
    for _ in range(3):
        train_step()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@friendly_errors
def main() -> None:
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
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--profile", type=Path, default=None, help="instead of timing: profile each detector, traces into this folder")
    p.add_argument("--_memory_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (after --)")
    a = p.parse_args()
    a.image_hw = tuple(a.image_hw)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device, "--device")
    amps = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    if a._memory_child:
        name, batch, amp = a._memory_child.split(",")
        print(json.dumps(bench_memory_child(a, device, int(batch), amps[amp], name)))
        return

    pair = build_pair(a)
    ours = pair["frcnn"]
    env = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "settings": {k: v for k, v in vars(a).items() if not k.startswith("_") and k != "json"},
        "model": {
            "backbone": f"{type(ours.backbone).__name__}-{getattr(ours.backbone, 'depth', '')} norm={getattr(ours.backbone, 'norm', '')}",
            "anchors": ours.rpn.anchor_generator.sizes,
            "rpn_min_size": ours.rpn.min_size,
            "rois_per_image": ours.roi_heads.batch_size_per_image,
            "positive_fraction": ours.roi_heads.positive_fraction,
            "pool": ours.roi_heads.pooler_resolution,
            "sampling_ratio": ours.roi_heads.sampling_ratio,
            "padded_input": padded_hw(ours.preprocessor, a.image_hw),
        },
    }
    print(json.dumps(env, default=str), flush=True)
    if a.profile:
        for amp in a.amp:
            profile_pair(a, pair, device, a.batch[0], amps[amp], a.profile)
        return
    results = []
    for amp in a.amp:
        for batch in a.batch:
            speed = bench_speed(a, pair, device, batch, amps[amp])
            mem = {}
            for name in ("frcnn", "torchvision"):
                cmd = [sys.executable, __file__, "--_memory_child", f"{name},{batch},{amp}", *sys.argv[1:]]  # before any "--"
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    raise RuntimeError(f"memory measurement for {name} failed:\n{res.stderr[-3000:]}")
                mem[name] = json.loads(res.stdout.strip().splitlines()[-1])
            speed["frcnn"]["peak_memory_mib"] = mem["frcnn"]
            speed["torchvision"]["peak_memory_mib"] = mem["torchvision"]
            speed["ratio"]["peak_memory_mib"] = mem["frcnn"] / mem["torchvision"]
            row = {"batch": batch, "amp": amp, **speed}
            results.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"env": env, "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
