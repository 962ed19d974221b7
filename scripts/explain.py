"""Explain a trained detector's detections: ``python scripts/explain.py checkpoint=... image=... methods=[...]``.

Writes one panel PNG per detection, ``explanations.npz`` and ``explanations.json`` into the output
folder (``conf/explain.yaml``). The work is :func:`frcnn.tasks.explain.run_explain`.
"""

from omegaconf import DictConfig

from frcnn.cli import hydra_app


@hydra_app("explain")
def main(cfg: DictConfig) -> None:
    # Imported once Hydra has composed the config: a mistaken override ends in a second, before torch loads.
    from frcnn.tasks.explain import run_explain

    run_explain(cfg)


if __name__ == "__main__":
    main()
