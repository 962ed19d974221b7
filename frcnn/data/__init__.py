"""COCO-format data: the dataset, its validation, VOC/YOLO/LabelMe sets converted to it, augmentation, batching,
and the synthetic set."""
