"""Detect objects in one image or a folder: ``python scripts/infer.py checkpoint=... image=...``.

For each image writes ``<name>.png`` (boxes, class names and scores drawn) and ``<name>.json``
(detections in the original image's pixels) into the output folder, and prints the latency. The work
is :func:`frcnn.tasks.infer.infer`.
"""

from omegaconf import DictConfig

from frcnn.cli import hydra_app


@hydra_app("infer")
def main(cfg: DictConfig) -> None:
    # Imported once Hydra has composed the config: a mistaken override ends in a second, before torch loads.
    from frcnn.tasks.infer import infer

    infer(cfg)


if __name__ == "__main__":
    main()
