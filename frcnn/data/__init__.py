"""COCO-format data: the dataset, its validation, augmentation, batching, and the synthetic set."""
