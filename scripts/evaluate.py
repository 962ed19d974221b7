"""COCO mAP of a checkpoint on a COCO-format split, or of a results JSON: ``python scripts/evaluate.py ...``.

Writes into the output folder: ``detections.json`` (COCO results, checkpoint mode), ``metrics.json``
(the 12 stats and per-class AP), ``per_class_ap.md`` and ``pr_curves.png``. The work is
:func:`frcnn.tasks.evaluate.evaluate`.
"""

from omegaconf import DictConfig

from frcnn.cli import hydra_app


@hydra_app("evaluate")
def main(cfg: DictConfig) -> None:
    # Imported once Hydra has composed the config: a mistaken override ends in a second, before torch loads.
    from frcnn.tasks.evaluate import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
