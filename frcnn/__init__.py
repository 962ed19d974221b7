"""frcnn: Faster R-CNN."""
