"""Training augmentation with albumentations: horizontal flip and mild photometric jitter.

Resizing (including multi-scale training) is done by the model's preprocessor on the device, so the
data pipeline stays cheap; the resize settings live in ``conf/data/*.yaml`` with the rest.
"""

from __future__ import annotations

import albumentations as A
import numpy as np


class Augment:
    """``(image HxWx3 uint8, boxes [G,4] xyxy, labels [G]) -> same``, boxes kept consistent.

    Args:
        hflip: probability of a horizontal flip.
        brightness / contrast / saturation: ColorJitter ranges (``0`` disables).
        hue: ColorJitter hue range.
        jitter_prob: probability of applying the colour jitter.
        seed: seed of the pipeline's random draws (``None``: unseeded). In training the data set
            reseeds it through :meth:`set_seed` before every sample, with a seed derived from the run's
            seed, the epoch and the sample index, so augmentation is reproducible and resumable.
    """

    def __init__(
        self,
        *,
        hflip: float = 0.5,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.02,
        jitter_prob: float = 0.5,
        seed: int | None = None,
    ) -> None:
        ops = []
        if hflip > 0:
            ops.append(A.HorizontalFlip(p=hflip))
        if jitter_prob > 0:
            ops.append(
                A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=jitter_prob)
            )
        # albumentations' "pascal_voc" format is frcnn's own: XYXY in absolute pixels (continuous coordinates).
        self.pipeline = A.Compose(
            ops, bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]), strict=True, seed=seed
        )

    def set_seed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
        out = self.pipeline(image=image, bboxes=boxes, labels=labels)
        xyxy = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        return out["image"], xyxy, np.asarray(out["labels"], dtype=np.int64)
