"""RemOve And Retrain on the synthetic data (docs/explanations.md): ΔAP per method and removed fraction.

    python scripts/roar.py --out outputs/roar --steps 120 --methods gradcam gradient

Trains the demo model on unmodified synthetic images (AP_orig), computes each method's map of every
training and validation image with that model (plus random and ground-truth-oracle rankings), and for
each fraction k retrains the same model from scratch on images with their top-k pixels replaced by the
training set's mean colour. The schedule is the demo's, shortened to ``--steps`` (stated in the table).
The work is in :mod:`frcnn.explain.roar`.
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
    parser.add_argument("--steps", type=int, default=120, help="training steps of each model (demo settings otherwise)")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradient"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from frcnn.cli import compose_train
    from frcnn.data.synthetic import generate
    from frcnn.engine.trainer import train
    from frcnn.explain.roar import REFERENCES, saliency_maps, write_removed
    from frcnn.explain.substrates import channel_mean
    from frcnn.inference import load_model

    out = Path(args.out)
    start = time.time()

    def fit(root: Path, name: str) -> float:
        cfg = compose_train([
            # data.generate=null: these folders are not the generator's (it would regenerate a folder without its READY file)
            "experiment=demo", f"data.root={root}", "data.generate=null", f"data.num_train_images={args.train_images}",
            f"run_dir={out / 'runs' / name}", "data.num_workers=0",
            f"trainer.max_iters={args.steps}", "trainer.max_time=null", f"trainer.eval_period={args.steps}",
            f"trainer.checkpoint_period={args.steps}", "trainer.progress=false", "trainer.tensorboard=false",
            f"schedule.warmup_iters={min(50, args.steps // 4)}", f"seed={args.seed}",
        ])
        torch.manual_seed(args.seed)
        ap = float(train(cfg)["best_ap"])
        print(f"[{time.time() - start:6.0f} s] {name}: AP {ap:.4f}", flush=True)
        return ap

    root = generate(out / "data" / "original", num_train=args.train_images, num_val=args.val_images, seed=args.seed)
    results: dict = {"setup": vars(args) | {"torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}, "ap": {}}
    results["ap"]["original"] = fit(root, "original")
    model, _, _ = load_model(out / "runs" / "original" / "last.pt", torch.device("cpu"))
    fill = channel_mean(root / "train", root / "annotations" / "train.json")
    for method in [*args.methods, *REFERENCES]:
        maps = {split: saliency_maps(method, model, root, split, seed=args.seed) for split in ("train", "val")}
        print(f"[{time.time() - start:6.0f} s] {method}: maps of every image", flush=True)
        for k in args.fractions:
            name = f"{method}_{int(k * 100)}"
            removed = write_removed(root, out / "data" / name, maps, k, fill)
            results["ap"][name] = fit(removed, name)
            (out / "roar.json").write_text(json.dumps(results, indent=1))
    results["wall_s"] = round(time.time() - start)
    (out / "roar.json").write_text(json.dumps(results, indent=1))
    base = results["ap"]["original"]
    print("\n| method | " + " | ".join(f"ΔAP at k={int(k * 100)} %" for k in args.fractions) + " |")
    print("|---|" + "---|" * len(args.fractions))
    for method in [*args.methods, *REFERENCES]:
        cells = [f"{base - results['ap'][f'{method}_{int(k * 100)}']:+.3f}" for k in args.fractions]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print(f"\nAP_orig {base:.4f}; {args.steps} steps per model; wall time {results['wall_s']} s -> {out / 'roar.json'}")


if __name__ == "__main__":
    main()
