"""Import torchvision's COCO detector weights as an frcnn checkpoint.

``python scripts/import_weights.py torchvision=fasterrcnn_resnet50_fpn weights=<state dict .pth> out=<checkpoint .pt>``

The builders: ``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2``,
``fasterrcnn_mobilenet_v3_large_fpn``, ``fasterrcnn_mobilenet_v3_large_320_fpn``. The work is
:func:`frcnn.zoo.import_torchvision`.
"""

from omegaconf import DictConfig

from frcnn.cli import hydra_app


@hydra_app("import_weights")
def main(cfg: DictConfig) -> None:
    # Imported once Hydra has composed the config: a mistaken override ends in a second, before torch loads.
    from frcnn.zoo import ZOO, import_torchvision

    ckpt = import_torchvision(str(cfg.torchvision), str(cfg.weights), str(cfg.out), overrides=list(cfg.overrides))
    entry = ZOO[str(cfg.torchvision)]
    num = len(ckpt["categories"]["names"])
    print(f"wrote {cfg.out}: {entry.builder} ({sum(v.numel() for v in ckpt['model'].values()) / 1e6:.1f} M values, "
          f"{num} labels; torchvision reports COCO box AP {entry.coco_box_ap} for its own weights). "
          f"Use it as checkpoint={cfg.out} with infer.py, evaluate.py, explain.py, export.py.")


if __name__ == "__main__":
    main()
