"""Comparisons with a trusted peer: torchvision's Faster R-CNN built like ours (``peers``), their speed and
memory (``speed``) and the accuracy race between the two (``race``). ``scripts/benchmark.py`` and
``scripts/race.py`` are their command lines."""
