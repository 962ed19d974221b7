"""Normalize, resize, pad and batch images; map detections back to the original pixels.

Shape shorthand: ``B`` images, ``H_i x W_i`` original sizes, ``H x W`` the padded batch size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.errors import ConfigError, InputError
from frcnn.modeling.box_ops import clip_boxes
from frcnn.modeling.structures import Detections, ImageBatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessor(nn.Module):
    """Turns a list of RGB images into an :class:`ImageBatch`, rescaling boxes to match.

    Each image is resized so its shorter side is ``min_size`` unless the longer side would then exceed
    ``max_size``, in which case the longer side is ``max_size`` (Ren et al.: 600 / 1000; detectron2
    and torchvision: 800 / 1333). In training, ``min_size`` may be a sequence: each image draws one at
    random (multi-scale training). Images are then zero-padded at the bottom/right to a common size
    that is a multiple of ``size_divisibility`` (32), after normalization, so padding is mean colour.

    Args:
        min_size: shorter side, or a sequence of choices for training.
        max_size: cap on the longer side.
        min_size_test: shorter side at test time (default: the largest of ``min_size``).
        size_divisibility: pad height and width to a multiple of this.
        mean / std: per-channel normalization of ``[0, 1]`` RGB (ImageNet statistics).
        resize_rounding: how the resized side ``side * scale`` becomes whole pixels: ``"round"`` (nearest)
            or ``"floor"`` (torchvision's ``interpolate(scale_factor=..., recompute_scale_factor=True)``:
            a 480x640 image at 800 / 1333 is 800x1066, not 800x1067).
    """

    def __init__(
        self,
        *,
        min_size: int | Sequence[int] = 600,
        max_size: int = 1000,
        min_size_test: int | None = None,
        size_divisibility: int = 32,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        resize_rounding: str = "round",
    ) -> None:
        super().__init__()
        if resize_rounding not in ("round", "floor"):
            raise ConfigError(f"model.preprocessor.resize_rounding must be round or floor, got {resize_rounding!r}")
        self.resize_rounding = resize_rounding
        self.min_sizes = (min_size,) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
        self.max_size = max_size
        self.min_size_test = min_size_test if min_size_test is not None else max(self.min_sizes)
        self.size_divisibility = size_divisibility
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[:, None, None], persistent=False)

    def target_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        """``(new_height, new_width)`` for an image, by the shorter-side / longer-side rule."""
        scale = min(short / min(height, width), self.max_size / max(height, width))
        whole = math.floor if self.resize_rounding == "floor" else round
        return max(1, whole(height * scale)), max(1, whole(width * scale))

    def padded(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` rounded up to the multiples of ``size_divisibility`` a batch is padded to."""
        d = self.size_divisibility
        return -(-height // d) * d, -(-width // d) * d

    def test_size(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((new_height, new_width), (padded_height, padded_width))`` of an image at test time."""
        nh, nw = self.target_size(height, width, self.min_size_test)
        return (nh, nw), self.padded(nh, nw)

    def forward(
        self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> tuple[ImageBatch, list[dict[str, Tensor]] | None]:
        """Preprocess a batch.

        Args:
            images: ``B`` tensors ``[3, H_i, W_i]``, float in ``[0, 1]`` or uint8 in ``[0, 255]``.
            targets: optional per-image dicts with ``"boxes"`` ``[G_i, 4]`` in original pixels.

        Returns:
            ``(batch, targets)``, the targets' boxes rescaled to network-input pixels.
        """
        device = self.mean.device
        resized, sizes, scales, originals = [], [], [], []
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise InputError(f"expected an image tensor [3, H, W], got shape {tuple(img.shape)}")
            img = img.to(device)
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            h, w = img.shape[-2:]
            short = random.choice(self.min_sizes) if self.training else self.min_size_test
            nh, nw = self.target_size(h, w, short)
            x = (img - self.mean) / self.std
            if (nh, nw) != (h, w):
                x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            resized.append(x)
            sizes.append((nh, nw))
            scales.append((nh / h, nw / w))
            originals.append((h, w))
        max_h, max_w = self.padded(max(s[0] for s in sizes), max(s[1] for s in sizes))
        tensor = torch.zeros(len(resized), 3, max_h, max_w, device=device)
        for i, x in enumerate(resized):
            tensor[i, :, : x.shape[1], : x.shape[2]] = x
        batch = ImageBatch(
            tensor=tensor,
            image_sizes=torch.tensor(sizes, dtype=torch.long, device=device),
            scales=torch.tensor(scales, dtype=torch.float32, device=device),
            original_sizes=torch.tensor(originals, dtype=torch.long, device=device),
        )
        if targets is None:
            return batch, None
        scaled = []
        for target, (sy, sx) in zip(targets, scales):
            factor = torch.tensor([sx, sy, sx, sy], dtype=torch.float32, device=device)
            scaled.append({**target, "boxes": target["boxes"].to(device).float() * factor})
        return batch, scaled


    def batch_tensor(self, images: Tensor) -> ImageBatch:
        """Test-time preprocessing of one ``[B, 3, H, W]`` batch of same-size images, in tensor operations.

        The same result as :meth:`forward` in eval mode (tests/export/test_export.py checks), written so that the
        image size stays a graph value under tracing (ONNX export with dynamic height and width): the new
        size is ``round(side * scale)`` (or its floor, ``resize_rounding``) computed in float64, the image normalized, resized (bilinear,
        ``align_corners=False``), then zero-padded at the bottom and right.

        Args:
            images: ``[B, 3, H, W]`` uint8, or float in ``[0, 1]``.
        """
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = (x - self.mean) / self.std
        hw = torch._shape_as_tensor(images)[2:].to(torch.float64)  # a graph value under tracing
        scale = torch.minimum(self.min_size_test / hw.min(), self.max_size / hw.max())
        whole = torch.floor if self.resize_rounding == "floor" else torch.round
        new_hw = whole(hw * scale).clamp(min=1).to(torch.int64)  # [2]
        tracing = torch.jit.is_tracing()
        size = [new_hw[0], new_hw[1]] if tracing else [int(v) for v in new_hw.tolist()]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        d = self.size_divisibility
        pad = (d - new_hw % d) % d  # [2]
        x = F.pad(x, [0, pad[1], 0, pad[0]] if tracing else [0, int(pad[1]), 0, int(pad[0])])
        batch = images.shape[0]
        return ImageBatch(
            tensor=x,
            image_sizes=new_hw[None].expand(batch, 2),
            scales=(new_hw.to(torch.float64) / hw).to(torch.float32)[None].expand(batch, 2),
            original_sizes=hw.to(torch.int64)[None].expand(batch, 2),
        )


def box_scale(images: ImageBatch) -> Tensor:
    """``[B, 1, 4]`` ``(sx, sy, sx, sy)``: original-image XYXY pixels × this = network-input pixels."""
    sy, sx = images.scales[:, 0], images.scales[:, 1]
    return torch.stack([sx, sy, sx, sy], dim=-1)[:, None, :]


def boxes_to_original(boxes: Tensor, images: ImageBatch) -> Tensor:
    """``[B, N, 4]`` boxes from network-input pixels to each original image's pixels, clipped to it."""
    return clip_boxes(boxes / box_scale(images), images.original_sizes)


def to_original_pixels(detections: Detections, images: ImageBatch) -> Detections:
    """Map detections from network-input pixels back to each original image, clipped to it."""
    boxes = boxes_to_original(detections.boxes, images)
    return Detections(boxes=boxes, scores=detections.scores, labels=detections.labels, valid=detections.valid)
