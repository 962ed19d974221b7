"""Comparisons with a trusted peer: torchvision's Faster R-CNN built like ours (``peers``), their speed and
memory (``speed``) and the accuracy race between the two (``race``); pycocotools against faster-coco-eval
(``eval_backends``). ``scripts/benchmark.py``, ``scripts/race.py`` and ``scripts/eval_backends.py`` are
their command lines."""
