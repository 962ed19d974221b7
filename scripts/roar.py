"""RemOve And Retrain on the synthetic data (docs/explanations.md): ΔAP per method and removed fraction.

    python scripts/roar.py --out outputs/roar --steps 300 --methods gradcam gradient

Trains the FPN demo model (``--experiment demo_fpn``; ``demo`` for the C4 one) on unmodified synthetic images
(AP_orig), computes each method's map of every training and validation image with that model (plus random and
ground-truth-oracle rankings), and for each fraction k retrains the same model from scratch on images with their
top-k pixels replaced by the training set's mean colour. The schedule is the experiment's, shortened to
``--steps`` (stated in the table). The experiment is :func:`frcnn.tasks.roar.run_roar`.

Re-running with the same ``--out`` and settings resumes: trainings already recorded in ``roar.json`` are kept
(a training stopped by a signal is never recorded), and only the missing ones run.
"""

from __future__ import annotations

import argparse

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

    from frcnn.tasks.roar import RoarSettings, run_roar

    run_roar(RoarSettings(**vars(args)))


if __name__ == "__main__":
    main()
