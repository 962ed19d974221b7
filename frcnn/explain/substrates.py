"""What removed pixels become: the reference image of deletion / insertion, IG's baseline, D-RISE's and
KernelSHAP's fill.

* **black**: zeros. A black patch draws edges a detector may respond to by itself.
* **grey**: a flat image of the training data's per-channel mean, the colour ROAR fills removed pixels
  with (:mod:`frcnn.explain.roar`, Hooker et al. 2019): no new colour for the detector. The mean comes
  from the checkpoint's training images (:func:`training_mean`); where they are not on this machine, the
  fallback is ImageNet's mean (the backbones' normalization), said so where it is used.
* **blur**: a Gaussian blur with σ = 1/16 of the longer side: objects become unrecognizable, colours stay.
* **noise**: uniform in ``[0, 1]``, seeded.

Shape shorthand: ``H x W`` the image.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from frcnn.data.images import ImageReadError, read_rgb
from frcnn.modeling.preprocess import IMAGENET_MEAN  # RGB in [0, 1]: the grey substrate's fallback

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class GreyMean:
    """The grey substrate's colour and where it came from.

    Attributes:
        rgb: per-channel mean, RGB in ``[0, 1]``.
        source: what it is the mean of (``"training data: 800 images of data/synthetic/train"``), or
            ``"ImageNet's mean (fallback: <why>)"``; printed and written beside the numbers it affects.
    """

    rgb: tuple[float, float, float]
    source: str

    @property
    def fallback(self) -> bool:
        return self.source.startswith("ImageNet")

    def tensor(self) -> Tensor:
        """``[3]`` float."""
        return torch.tensor(self.rgb, dtype=torch.float32)

    def record(self) -> dict[str, Any]:
        """JSON-ready ``{"rgb": [...], "source": ...}``."""
        return {"rgb": [round(v, 4) for v in self.rgb], "source": self.source}


def imagenet_mean(why: str) -> GreyMean:
    """The fallback grey, with the reason the data set's mean was unavailable."""
    return GreyMean(IMAGENET_MEAN, f"ImageNet's mean (fallback: {why})")


def pixel_mean(paths: list[Path]) -> tuple[np.ndarray, int]:
    """Per-channel mean (0-255) over every pixel of the readable images of ``paths``, and how many were read.

    Unreadable images are skipped (a mean colour does not need every one).
    """
    total, count, read = np.zeros(3), 0, 0
    for path in paths:
        try:
            pixels = read_rgb(path).reshape(-1, 3)
        except ImageReadError:
            continue
        total += pixels.sum(axis=0)
        count += len(pixels)
        read += 1
    return (total / max(count, 1)), read


def channel_mean(images_dir: Path, annotations: Path) -> list[float]:
    """Per-channel mean (0-255) over a COCO-format split's images: ROAR's fill."""
    data = json.loads(Path(annotations).read_text())
    mean, _ = pixel_mean([Path(images_dir) / info["file_name"] for info in data["images"]])
    return mean.tolist()


def training_images(data: Any) -> list[Path]:
    """The training split's image files from a composed ``data`` config: a COCO split's ``file_name``
    entries, else (VOC, YOLO, LabelMe) every image file in ``data.train.images``."""
    folder = Path(data.train.images)
    annotations = data.train.get("annotations")
    if data.get("format", "coco") == "coco" and annotations and Path(annotations).is_file():
        return [folder / info["file_name"] for info in json.loads(Path(annotations).read_text())["images"]]
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def training_mean(cfg: Any, *, max_images: int | None = 1000) -> GreyMean:
    """The grey substrate of a checkpoint: the per-channel mean of its training images, as ROAR fills with.

    Args:
        cfg: the checkpoint's training config (the third value of :func:`frcnn.tasks.load.load_model`).
        max_images: read at most this many images, evenly spaced over the split (None: all); a mean
            colour settles long before a large data set is read through (ROAR's synthetic splits, up to
            1000 images, are read whole).

    Returns:
        the mean, or ImageNet's with the reason when the config names no training images or they are not
        on this machine (a checkpoint trained elsewhere).
    """
    data = cfg.get("data") if cfg is not None else None
    if data is None or data.get("train") is None or not data.train.get("images"):
        return imagenet_mean("the checkpoint's config names no data.train.images")
    folder = Path(data.train.images)
    if not folder.is_dir():
        return imagenet_mean(f"the training images {folder} (data.train.images) are not on this machine")
    paths = training_images(data)
    total = len(paths)
    if max_images is not None and total > max_images:
        paths = [paths[i] for i in np.linspace(0, total - 1, max_images).round().astype(int)]
    mean, read = pixel_mean(paths)
    if not read:
        return imagenet_mean(f"no readable training image in {folder}")
    rgb = tuple(float(v) / 255 for v in mean)
    return GreyMean(rgb, f"training data: {read} of the {total} images in {folder}")


def blur(image: Tensor) -> Tensor:
    """``image`` (``[..., 3, H, W]``) blurred with σ = max(H, W) / 16, for any size.

    The kernel spans ±2σ, truncated on a side shorter than that (an elongated image) to ±(side − 1)
    pixels, the most reflect padding allows: that side is blurred to nearly its mean, as the long one.
    """
    height, width = image.shape[-2:]
    sigma = max(height, width) / 16
    size = 2 * math.ceil(2 * sigma) + 1
    kernel = [min(size, 2 * width - 1), min(size, 2 * height - 1)]  # (x, y), odd, pad < side
    batched = image if image.dim() == 4 else image[None]
    out = gaussian_blur(batched, kernel, [sigma, sigma])
    return out if image.dim() == 4 else out[0]


def baseline_image(image: Tensor, kind: str, *, seed: int = 0, mean: Tensor | None = None) -> Tensor:
    """A reference image of ``image``'s shape (``[3, H, W]``): ``"black"``, ``"grey"``, ``"blur"`` or ``"noise"``.

    Grey is ``mean`` (``[3]`` RGB in ``[0, 1]``, e.g. :func:`training_mean`'s), ImageNet's mean when None.
    """
    if kind == "black":
        return torch.zeros_like(image)
    if kind == "grey":
        colour = mean if mean is not None else torch.tensor(IMAGENET_MEAN)
        return colour.to(image).view(-1, 1, 1).expand_as(image).clone()
    if kind == "blur":
        return blur(image)
    if kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(image.shape, generator=generator).to(image)
    raise ValueError(f"unknown baseline/substrate {kind!r}: black, grey, blur or noise")
