"""RemOve And Retrain (Hooker et al., 2019) on the synthetic data: the experiment behind ``scripts/roar.py``
(docs/explanations.md). The pieces (maps of every image, pixels removed) are :mod:`frcnn.explain.roar`.

:func:`run_roar` trains the model of ``settings.experiment`` on unmodified synthetic images (AP_orig), computes
each method's map of every training and validation image with it (plus random and ground-truth-oracle
rankings), and for each fraction k retrains the same model from scratch on images whose top-k pixels are
replaced by the training set's mean colour. Re-running with the same output folder and settings resumes:
trainings already recorded in ``roar.json`` are kept (a training stopped by a signal is never recorded).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from frcnn.cli import compose_train
from frcnn.data.synthetic import generate
from frcnn.explain.roar import REFERENCES, saliency_maps, write_removed
from frcnn.explain.substrates import channel_mean
from frcnn.tasks.load import load_model
from frcnn.tasks.train import train


@dataclass(frozen=True)
class RoarSettings:
    """What a ROAR run depends on (the recorded APs depend on all but ``methods``)."""

    out: str = "outputs/roar"
    train_images: int = 200
    val_images: int = 50
    experiment: str = "demo_fpn"  # the model and recipe of every training (conf/experiment)
    steps: int = 300  # training steps of each model (the experiment's settings otherwise)
    methods: list[str] = field(default_factory=lambda: ["gradcam", "gradient"])
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    seed: int = 0


def run_roar(s: RoarSettings) -> dict[str, Any]:
    """Every training the table needs (resuming from ``<out>/roar.json``); returns and writes the results:
    ``setup``, ``ap`` (``original`` and ``<method>_<k %>``) and ``wall_s``; prints the table."""
    out, start = Path(s.out), time.time()
    results = _resumed(s, out / "roar.json")
    root = out / "data" / "original"
    if "original" not in results["ap"]:
        generate(root, num_train=s.train_images, num_val=s.val_images, seed=s.seed)
        results["ap"]["original"] = _fit(s, root, "original", start)
    model, _, _ = load_model(out / "runs" / "original" / "last.pt", torch.device("cpu"))
    fill = channel_mean(root / "train", root / "annotations" / "train.json")
    for method in [*s.methods, *REFERENCES]:
        names = {k: f"{method}_{int(k * 100)}" for k in s.fractions}
        if all(n in results["ap"] for n in names.values()):
            continue
        maps = {split: saliency_maps(method, model, root, split, seed=s.seed) for split in ("train", "val")}
        print(f"[{time.time() - start:6.0f} s] {method}: maps of every image", flush=True)
        for k, name in names.items():
            if name in results["ap"]:
                continue
            removed = write_removed(root, out / "data" / name, maps, k, fill)
            results["ap"][name] = _fit(s, removed, name, start)
            (out / "roar.json").write_text(json.dumps(results, indent=1))
    results["wall_s"] = round(time.time() - start)  # of this invocation (a resumed run's earlier part not counted)
    (out / "roar.json").write_text(json.dumps(results, indent=1))
    print(table(results, s))
    return results


def table(results: dict[str, Any], s: RoarSettings) -> str:
    """The docs table: AP (ΔAP) per method and fraction, and a line with AP_orig, the steps and the wall time."""
    base = results["ap"]["original"]
    lines = ["", "| method | " + " | ".join(f"AP (ΔAP) at k={int(k * 100)} %" for k in s.fractions) + " |",
             "|---|" + "---|" * len(s.fractions)]
    for method in [*s.methods, *REFERENCES]:
        cells = [f"{results['ap'][f'{method}_{int(k * 100)}']:.3f} ({base - results['ap'][f'{method}_{int(k * 100)}']:+.3f})"
                 for k in s.fractions]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append(f"\nAP_orig {base:.4f}; {s.steps} steps per model; wall time {results['wall_s']} s -> {Path(s.out) / 'roar.json'}")
    return "\n".join(lines)


def _resumed(s: RoarSettings, path: Path) -> dict[str, Any]:
    """A new results dict holding the finished trainings of ``path`` when it was written with the same settings."""
    settings = asdict(s)
    setup = {k: v for k, v in settings.items() if k != "methods"}  # what the recorded APs depend on
    results: dict[str, Any] = {"setup": settings | {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}, "ap": {}}
    if path.is_file():
        earlier = json.loads(path.read_text())
        if {k: earlier["setup"].get(k) for k in setup} == setup:
            results["ap"] = {k: v for k, v in earlier["ap"].items() if v >= 0}  # resume: keep finished trainings
            print(f"resuming: {len(results['ap'])} trainings already in {path}", flush=True)
    return results


def _fit(s: RoarSettings, root: Path, name: str, start: float) -> float:
    """Train ``s.experiment`` for ``s.steps`` steps on the synthetic-layout set at ``root``; its best validation AP."""
    cfg = compose_train([
        # data.generate=null: these folders are not the generator's (it would regenerate a folder without its READY file)
        f"experiment={s.experiment}", f"data.root={root}", "data.generate=null", f"data.num_train_images={s.train_images}",
        f"run_dir={Path(s.out) / 'runs' / name}", "data.num_workers=0",
        f"trainer.max_iters={s.steps}", "trainer.max_time=null", f"trainer.eval_period={s.steps}",
        f"trainer.checkpoint_period={s.steps}", "trainer.progress=false", "trainer.tensorboard=false",
        f"schedule.warmup_iters={min(50, s.steps // 4)}", f"seed={s.seed}",
    ])
    torch.manual_seed(s.seed)
    result = train(cfg)
    if result["stopped_by_signal"] is not None:  # an unfinished model's AP is not a result: keep it out of roar.json
        raise SystemExit(f"stopped by signal during {name}; run the same command again to resume")
    ap = float(result["best_ap"])
    print(f"[{time.time() - start:6.0f} s] {name}: AP {ap:.4f}", flush=True)
    return ap
