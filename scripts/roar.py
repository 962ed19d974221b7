"""RemOve And Retrain on the synthetic data (docs/explanations.md): ΔAP per method and removed fraction.

    python scripts/roar.py --out outputs/roar --steps 300 --methods gradcam gradient

Trains the FPN demo model (``--experiment demo_fpn``; ``demo`` for the C4 one) on unmodified synthetic images (AP_orig), computes each method's map of every
training and validation image with that model (plus random and ground-truth-oracle rankings), and for
each fraction k retrains the same model from scratch on images with their top-k pixels replaced by the
training set's mean colour. The schedule is the experiment's, shortened to ``--steps`` (stated in the table).
The work is in :mod:`frcnn.explain.roar`.

Re-running with the same ``--out`` and settings resumes: trainings already recorded in ``roar.json`` are kept
(a training stopped by a signal is never recorded), and only the missing ones run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from frcnn.cli import friendly_errors


@friendly_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/roar")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--experiment", default="demo_fpn", help="the model and recipe of every training (conf/experiment)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each model (the experiment's settings otherwise)")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradient"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from frcnn.cli import compose_train
    from frcnn.data.synthetic import generate
    from frcnn.tasks.train import train
    from frcnn.explain.roar import REFERENCES, saliency_maps, write_removed
    from frcnn.explain.substrates import channel_mean
    from frcnn.inference import load_model

    out = Path(args.out)
    start = time.time()

    def fit(root: Path, name: str) -> float:
        cfg = compose_train([
            # data.generate=null: these folders are not the generator's (it would regenerate a folder without its READY file)
            f"experiment={args.experiment}", f"data.root={root}", "data.generate=null", f"data.num_train_images={args.train_images}",
            f"run_dir={out / 'runs' / name}", "data.num_workers=0",
            f"trainer.max_iters={args.steps}", "trainer.max_time=null", f"trainer.eval_period={args.steps}",
            f"trainer.checkpoint_period={args.steps}", "trainer.progress=false", "trainer.tensorboard=false",
            f"schedule.warmup_iters={min(50, args.steps // 4)}", f"seed={args.seed}",
        ])
        torch.manual_seed(args.seed)
        result = train(cfg)
        if result["stopped_by_signal"] is not None:  # an unfinished model's AP is not a result: keep it out of roar.json
            raise SystemExit(f"stopped by signal during {name}; run the same command again to resume")
        ap = float(result["best_ap"])
        print(f"[{time.time() - start:6.0f} s] {name}: AP {ap:.4f}", flush=True)
        return ap

    setup = {k: v for k, v in vars(args).items() if k != "methods"}  # what the recorded APs depend on
    results: dict = {"setup": vars(args) | {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}, "ap": {}}
    if (out / "roar.json").is_file():
        earlier = json.loads((out / "roar.json").read_text())
        if {k: earlier["setup"].get(k) for k in setup} == setup:
            results["ap"] = {k: v for k, v in earlier["ap"].items() if v >= 0}  # resume: keep finished trainings
            print(f"resuming: {len(results['ap'])} trainings already in {out / 'roar.json'}", flush=True)
    root = out / "data" / "original"
    if "original" not in results["ap"]:
        generate(root, num_train=args.train_images, num_val=args.val_images, seed=args.seed)
        results["ap"]["original"] = fit(root, "original")
    model, _, _ = load_model(out / "runs" / "original" / "last.pt", torch.device("cpu"))
    fill = channel_mean(root / "train", root / "annotations" / "train.json")
    for method in [*args.methods, *REFERENCES]:
        names = {k: f"{method}_{int(k * 100)}" for k in args.fractions}
        if all(n in results["ap"] for n in names.values()):
            continue
        maps = {split: saliency_maps(method, model, root, split, seed=args.seed) for split in ("train", "val")}
        print(f"[{time.time() - start:6.0f} s] {method}: maps of every image", flush=True)
        for k, name in names.items():
            if name in results["ap"]:
                continue
            removed = write_removed(root, out / "data" / name, maps, k, fill)
            results["ap"][name] = fit(removed, name)
            (out / "roar.json").write_text(json.dumps(results, indent=1))
    results["wall_s"] = round(time.time() - start)  # of this invocation (a resumed run's earlier part not counted)
    (out / "roar.json").write_text(json.dumps(results, indent=1))
    base = results["ap"]["original"]
    print("\n| method | " + " | ".join(f"AP (ΔAP) at k={int(k * 100)} %" for k in args.fractions) + " |")
    print("|---|" + "---|" * len(args.fractions))
    for method in [*args.methods, *REFERENCES]:
        cells = [f"{results['ap'][f'{method}_{int(k * 100)}']:.3f} ({base - results['ap'][f'{method}_{int(k * 100)}']:+.3f})"
                 for k in args.fractions]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(f"\nAP_orig {base:.4f}; {args.steps} steps per model; wall time {results['wall_s']} s -> {out / 'roar.json'}")


if __name__ == "__main__":
    main()
