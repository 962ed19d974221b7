"""COCO-style evaluation (pycocotools' COCOeval is the reference)."""
