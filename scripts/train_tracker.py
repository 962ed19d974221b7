"""Train SiamRPN: ``python scripts/train_tracker.py [hydra overrides]`` (``conf/siamrpn.yaml``).

The CPU demo: ``python scripts/train_tracker.py experiment=siamrpn_demo``. Multi-GPU: ``torchrun
--nproc_per_node=N scripts/train_tracker.py ...``, as for the detector.
"""

import sys

from omegaconf import DictConfig

from frcnn.cli import hydra_app


@hydra_app("siamrpn")
def main(cfg: DictConfig) -> None:
    from frcnn.tasks.train_tracker import train_tracker

    metrics = train_tracker(cfg)
    if metrics["stopped_by_signal"] is not None:
        sys.exit(128 + int(metrics["stopped_by_signal"]))
    print(f"finished at iteration {metrics['iteration']}; checkpoint {cfg.run_dir}/last.pt")


if __name__ == "__main__":
    main()
