"""Train Faster R-CNN: ``python scripts/train.py [hydra overrides]``.

Multi-GPU / multi-node: ``torchrun --nproc_per_node=N scripts/train.py ...``.
"""

import sys

from omegaconf import DictConfig

from frcnn.cli import hydra_app


@hydra_app("train")
def main(cfg: DictConfig) -> float:
    # Imported once Hydra has composed the config: a mistaken override ends in a second, before torch loads.
    from frcnn.tasks.train import train

    metrics = train(cfg)
    if metrics["stopped_by_signal"] is not None:
        # Preempted: last.pt is saved; a non-zero status tells the scheduler the run is unfinished.
        sys.exit(128 + int(metrics["stopped_by_signal"]))
    print(f"finished at iteration {metrics['iteration']}; best val AP {metrics['best_ap']:.4f}; run dir {cfg.run_dir}")
    return float(metrics["best_ap"])  # the objective for sweeps


if __name__ == "__main__":
    main()
