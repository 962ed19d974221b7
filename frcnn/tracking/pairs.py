"""Training pairs for SiamRPN: (template crop, search crop, target box in the search crop).

Two sources, mixed in one data set:

* **sequences** (:mod:`frcnn.tracking.sequences`): the template from frame ``t``, the search crop from a
  frame within ``max_gap`` of it, so the pair shows real motion, deformation and lighting change;
* **still images** of any COCO-format set (the detector's synthetic set by default): template and search
  cut around the same object of one image; the search crop's shift and scale jitter stand in for motion.

The search crop is centred on the target shifted by up to ``shift`` crop pixels (the response map reaches
±64 pixels from the centre at stride 8) and scaled by up to ``exp(±scale_jitter)``. With probability
``negative_fraction`` the search crop comes from another sequence or image (never the same one, where the
target could be in view), centred on an object of the same class where there is one (DaSiamRPN's semantic
negatives): the target is absent (its box is all zeros) and every anchor is background, which teaches the
head to tell the target from look-alikes. With probability ``distractor_fraction`` a sequence pair's search
crop is centred on a look-alike of the search frame instead (DaSiamRPN's hard negatives; the sequence's
``distractors.json``, which the generator writes): the box is the target's where its centre is inside that
crop, else all zeros, so the head learns to score the look-alike as background. Unreadable frames are replaced by the next item and reported by
id (sequence frames ``0 .. F-1`` in order, then one id per still image), as the detector's data set does.

Photometric augmentation of the pair (off by default; SiamRPN++'s training adds colour, blur and grey
augmentation the same way): each crop on its own gets a brightness gain, a contrast and a per-channel colour
gain of up to ``exp(±color_jitter)`` (``exp(±color_jitter / 2)`` per channel), so the template and the
search crop never share the lighting exactly; with probability ``gray_fraction`` both crops lose their
colour (the head must match by shape and texture); with probability ``blur_fraction`` the search crop is
blurred (a Gaussian of sigma 0.5-2.5 px: motion and focus blur). The random draws come after the pair's own,
so with all three at 0 the pairs are those of a run without them.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from frcnn.data.coco import CocoDetection
from frcnn.data.images import ImageReadError, read_rgb, to_chw
from frcnn.tracking.crops import (
    SEARCH_SIZE,
    TEMPLATE_SIZE,
    context_side,
    crop,
    to_crop,
    xywh_to_xyxy,
)
from frcnn.tracking.sequences import Sequence


class PairBatch(NamedTuple):
    """A collated batch: ``templates [B, 3, 127, 127]`` and ``searches [B, 3, 255, 255]`` uint8, ``boxes [B, 4]``
    XYXY in search-crop pixels (all zeros: a negative pair), ``skipped``: ids of unreadable frames replaced."""

    templates: torch.Tensor
    searches: torch.Tensor
    boxes: torch.Tensor
    skipped: torch.Tensor


def collate_pairs(items: list[tuple]) -> PairBatch:
    templates, searches, boxes, skipped = zip(*items)
    return PairBatch(torch.stack(templates), torch.stack(searches), torch.stack(boxes), torch.cat(skipped))


class TrackingPairs(Dataset):
    """Pairs from ``sequences`` and from the objects of ``still`` (a :class:`CocoDetection`), keyed by
    ``(index, seed)`` like the detector's data set: the pair drawn is a pure function of the key.

    Args:
        sequences: annotated sequences (may be empty).
        still: a COCO-format detection set whose every box (at least ``min_size`` pixels a side) is a
            target, or None.
        max_gap: largest frame distance between template and search in a sequence.
        shift: largest search-centre shift in search-crop pixels.
        scale_jitter: search crop side scaled by ``exp(u)``, ``u`` uniform in ``±scale_jitter``.
        negative_fraction: share of negative pairs.
        distractor_fraction: share of sequence pairs whose search crop is centred on a look-alike (where the
            search frame has one).
        context: the crops' context amount (see :func:`~frcnn.tracking.crops.context_side`).
        color_jitter, gray_fraction, blur_fraction: the photometric augmentation (the module's docstring); 0: none.
    """

    def __init__(
        self,
        sequences: list[Sequence],
        still: CocoDetection | None = None,
        *,
        max_gap: int = 50,
        shift: float = 48.0,
        scale_jitter: float = 0.15,
        negative_fraction: float = 0.0,
        distractor_fraction: float = 0.0,
        min_size: float = 8.0,
        context: float = 0.5,
        color_jitter: float = 0.0,
        gray_fraction: float = 0.0,
        blur_fraction: float = 0.0,
    ) -> None:
        self.sequences = sequences
        self.color_jitter, self.gray_fraction, self.blur_fraction = color_jitter, gray_fraction, blur_fraction
        self.max_gap, self.shift, self.scale_jitter = max_gap, shift, scale_jitter
        self.negative_fraction, self.distractor_fraction, self.context = negative_fraction, distractor_fraction, context
        # One item per annotated frame of a sequence, then one per large-enough object of a still image.
        self.frames = [(s, t) for s, seq in enumerate(sequences) for t in range(len(seq)) if seq.boxes[t, 2] > 1 and seq.boxes[t, 3] > 1]
        self._frame_items = {key: i for i, key in enumerate(self.frames)}
        self.still = still
        self.objects: list[tuple[int, int]] = []
        if still is not None:
            for r, rec in enumerate(still.records):
                boxes = np.asarray(rec["boxes"], dtype=np.float64).reshape(-1, 4)
                for b, box in enumerate(boxes):
                    if min(box[2] - box[0], box[3] - box[1]) >= min_size:
                        self.objects.append((r, b))
        self._objects_by_class: dict[int, list[int]] = {}
        for i, (r, b) in enumerate(self.objects):
            self._objects_by_class.setdefault(int(still.records[r]["labels"][b]), []).append(i)
        if not self.frames and not self.objects:
            raise ValueError("TrackingPairs needs at least one annotated sequence frame or one object in a still image")

    def __len__(self) -> int:
        return len(self.frames) + len(self.objects)

    def aspect_ratio_group(self, index: int) -> int:
        """All pairs have the same shape: one group (the detector's batch sampler asks)."""
        return 0

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, index_seed(key))
        rng = np.random.default_rng(seed)
        skipped: list[int] = []
        for attempt in range(len(self)):
            item = (index + attempt) % len(self)
            try:
                template, search, box = self._pair(item, rng)
                break
            except _Unreadable as err:  # replaced by the next item; the frame's own id is reported
                if err.frame_id not in skipped:
                    skipped.append(err.frame_id)
                warnings.warn(f"skipping unreadable frame {err.frame_id}: {err.cause}", stacklevel=2)
        else:
            raise ImageReadError("no training pair could be read: every frame and image is unreadable")

        return to_chw(template), to_chw(search), torch.as_tensor(box, dtype=torch.float32), torch.tensor(skipped, dtype=torch.long)

    # -- one pair -------------------------------------------------------------------------------------------

    def _pair(self, item: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image, box = self._view(item)
        fill = image.reshape(-1, 3).mean(axis=0)
        side = context_side(box[2] - box[0], box[3] - box[1], self.context)
        template = crop(image, _centre(box), side, TEMPLATE_SIZE, fill)
        negative = self._negative_item(item, rng) if rng.random() < self.negative_fraction else None
        lookalike = None  # XYXY of a look-alike in the search frame to centre on (a hard negative)
        if negative is not None:
            search_image, search_box = self._view(negative)
        elif item < len(self.frames):
            nearby = self._nearby_frame(item, rng)
            search_image, search_box = self._view(nearby)
            if self.distractor_fraction and rng.random() < self.distractor_fraction:
                lookalike = self._lookalike(nearby, rng)
        else:
            search_image, search_box = image, box  # a still image: the same view, shifted and scaled below
        search_side = context_side(search_box[2] - search_box[0], search_box[3] - search_box[1], self.context)
        search_side *= SEARCH_SIZE / TEMPLATE_SIZE * np.exp(rng.uniform(-self.scale_jitter, self.scale_jitter))
        shift = self.shift / 4 if lookalike is not None else self.shift  # the look-alike stays near the centre
        offset = rng.uniform(-shift, shift, size=2) * search_side / SEARCH_SIZE  # frame pixels
        anchor = _centre(lookalike if lookalike is not None else search_box)
        centre = (anchor[0] + offset[0], anchor[1] + offset[1])
        search = crop(search_image, centre, search_side, SEARCH_SIZE, search_image.reshape(-1, 3).mean(axis=0))
        crop_box = np.zeros(4) if negative is not None else to_crop(search_box, centre, search_side, SEARCH_SIZE)
        if lookalike is not None and not (0 <= (crop_box[0] + crop_box[2]) / 2 < SEARCH_SIZE and 0 <= (crop_box[1] + crop_box[3]) / 2 < SEARCH_SIZE):
            crop_box = np.zeros(4)  # the target is out of this crop: only the look-alike is in view
        template, search = self._photometric(template, search, rng)
        return template, search, crop_box

    def _photometric(self, template: np.ndarray, search: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The pair's photometric augmentation (uint8 ``[h, w, 3]`` crops in, the same out); draws nothing when off."""
        if self.color_jitter > 0:
            template, search = (_jitter(c, self.color_jitter, rng) for c in (template, search))
        if self.gray_fraction > 0 and rng.random() < self.gray_fraction:
            template, search = (_gray(c) for c in (template, search))
        if self.blur_fraction > 0 and rng.random() < self.blur_fraction:
            search = np.asarray(Image.fromarray(search).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5)))))
        return template, search

    def _lookalike(self, item: int, rng: np.random.Generator) -> np.ndarray | None:
        """XYXY box of a random look-alike in sequence item ``item``'s frame, or None where it has none."""
        s, t = self.frames[item]
        distractors = self.sequences[s].distractors
        if not distractors or len(distractors[t]) == 0:
            return None
        return xywh_to_xyxy(distractors[t][int(rng.integers(len(distractors[t])))])

    def _view(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and XYXY target box of item ``item``; an unreadable file raises :class:`_Unreadable`."""
        if item < len(self.frames):
            s, t = self.frames[item]
            seq = self.sequences[s]
            return self._read(seq.frames[t], item), xywh_to_xyxy(seq.boxes[t])
        r, b = self.objects[item - len(self.frames)]
        rec = self.still.records[r]
        # Ids of still images follow the sequence frames' (one id per image, not per object).
        image = self._read(rec["path"], len(self.frames) + r)
        return image, np.asarray(rec["boxes"], dtype=np.float64).reshape(-1, 4)[b]

    @staticmethod
    def _read(path, frame_id: int) -> np.ndarray:
        try:
            return read_rgb(path, max_pixels=None)
        except ImageReadError as err:
            raise _Unreadable(frame_id, err) from err

    def _nearby_frame(self, item: int, rng: np.random.Generator) -> int:
        """The item of a frame of the same sequence within ``max_gap`` of ``item``'s, the target present."""
        s, t = self.frames[item]
        seq = self.sequences[s]
        lo, hi = max(0, t - self.max_gap), min(len(seq) - 1, t + self.max_gap)
        other = int(rng.integers(lo, hi + 1))
        return self._frame_items.get((s, other), item)  # frames without the target are not items: then the same frame

    def _negative_item(self, item: int, rng: np.random.Generator) -> int | None:
        """An item showing a different object, never from the same sequence or image (the target could be in
        view): a still object of the same class where there is one, else any object of another sequence or
        image. None when there is no such item (the pair stays positive)."""
        if item >= len(self.frames):
            r, b = self.objects[item - len(self.frames)]
            category = int(self.still.records[r]["labels"][b])
            same = self._objects_by_class.get(category, [])
            for _ in range(8):  # a few tries: the same image is rarely drawn twice
                if same:
                    pick = same[int(rng.integers(len(same)))]
                    if self.objects[pick][0] != r:
                        return len(self.frames) + pick
        own = self.frames[item][0] if item < len(self.frames) else -1
        own_image = self.objects[item - len(self.frames)][0] if item >= len(self.frames) else -1
        for _ in range(8):
            pick = int(rng.integers(len(self)))
            if pick < len(self.frames) and self.frames[pick][0] != own:
                return pick
            if pick >= len(self.frames) and self.objects[pick - len(self.frames)][0] != own_image:
                return pick
        return None


class _Unreadable(Exception):
    def __init__(self, frame_id: int, cause: ImageReadError) -> None:
        super().__init__(str(cause))
        self.frame_id, self.cause = frame_id, cause


def _jitter(image: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Contrast about the crop's mean, then brightness and per-channel gains, each ``exp(U(±amount))`` (channels
    ``±amount / 2``)."""
    contrast, brightness = np.exp(rng.uniform(-amount, amount, size=2))
    channels = np.exp(rng.uniform(-amount / 2, amount / 2, size=3))
    x = image.astype(np.float32)
    mean = x.mean()
    x = ((x - mean) * contrast + mean) * brightness * channels
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _gray(image: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma in all three channels."""
    luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _centre(box: np.ndarray) -> tuple[float, float]:
    return float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2


def index_seed(index: int) -> int:
    """The seed of an item read by index alone (evaluation, notebooks): fixed per index."""
    return int(np.random.SeedSequence([index]).generate_state(1)[0])
