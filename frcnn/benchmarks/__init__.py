"""Comparisons with a trusted peer: torchvision's Faster R-CNN built like ours (``peers``) and the
accuracy race between the two (``race``). ``scripts/benchmark.py`` and ``scripts/race.py`` drive them."""
