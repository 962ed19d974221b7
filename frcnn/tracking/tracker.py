"""Tracking with a trained :class:`~frcnn.tracking.model.SiamRPN`: the template branch once, then per frame
a search crop, the RPN's proposals and the paper's proposal selection (Li et al., 2018, sec. 4.3).

Per frame, for every anchor's proposal (score ``s``, box ``(w', h')`` in search-crop pixels):

* scale and aspect-ratio change penalty ``penalty = exp(-(r_c * s_c - 1) * penalty_k)``, with
  ``s_c = max(q, 1/q)`` for ``q = sz(w', h') / sz(w, h)``, ``sz(w, h) = sqrt((w + p)(h + p))``,
  ``p = context * (w + h)`` (``(w + h) / 2``), and ``r_c = max(q', 1/q')`` for ``q' = (w / h) / (w' / h')`` — ``(w, h)`` being the
  previous frame's size at the crop's scale: large jumps in size or shape are unlikely;
* a cosine (Hanning) window over the response map favours small displacements:
  ``pscore = (1 - window_influence) * penalty * s + window_influence * window``;
* the best ``pscore`` gives the new centre; the size moves towards its box with rate
  ``lr * penalty * s`` (size smoothing), so an unsure proposal changes the size little.

Distractor-aware selection (DaSiamRPN, Zhu et al., ECCV 2018, eq. 5), on with ``distractor_weight > 0``: the
proposals that score high but are not the chosen one are distractors; their template kernels are kept
(at most ``max_distractors``, each weight ``alpha_i`` multiplied by ``1 - distractor_decay`` per frame) and each
later frame's score becomes ``s - distractor_weight * sum_i alpha_i s_i / sum_i alpha_i``, ``s_i`` being the
distractor ``i``'s response at the same anchor: what looks like a distractor seen before loses to the target.

Template update, on with ``template_rate > 0``: the paper keeps the first frame's template for the whole
sequence. Where the target's look drifts (light, blur, a turn) that template matches less each frame; a
linear update (as in SiamFC's follow-ups and UpdateNet's baseline, Zhang et al., ICCV 2019) moves the kernels
towards those of a template cropped at the new box, ``k <- (1 - template_rate) k + template_rate k_new``, after
a frame whose chosen proposal scores at least ``template_thresh`` (a sure frame: an unsure one may be a
distractor or the background, and averaging it in is how a template drifts away). Each update costs one
template-branch pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou, nms

from frcnn.data.images import to_chw
from frcnn.modeling.fold import fold_batchnorm
from frcnn.tracking.crops import (
    SEARCH_SIZE,
    TEMPLATE_SIZE,
    context_side,
    crop,
    from_crop,
)
from frcnn.tracking.model import SiamRPN, TemplateKernels


@dataclass
class TrackerSettings:
    """The proposal selection's hyper-parameters; defaults as DaSiamRPN's release for SiamRPN (VOT)."""

    penalty_k: float = 0.055  # how fast the score falls with scale/ratio change
    window_influence: float = 0.42  # weight of the cosine window against the penalized score
    lr: float = 0.295  # size smoothing rate, scaled by the chosen proposal's penalized score
    context: float = 0.5  # p = context * (w + h) around the target (crops.context_side)
    min_size: float = 4.0  # frame pixels: the box never shrinks below this
    distractor_weight: float = 0.0  # DaSiamRPN's alpha-hat; 0: plain SiamRPN selection
    distractor_thresh: float = 0.5  # a proposal scoring above this, away from the target, is a distractor
    max_distractors: int = 4  # distractor templates kept (the newest)
    distractor_decay: float = 0.2  # each frame a kept distractor's weight is multiplied by (1 - this)
    template_rate: float = 0.0  # linear template update's rate; 0: the first frame's template only (the paper)
    template_thresh: float = 0.95  # ... after frames whose chosen proposal scores at least this


def distractor_aware(scores: np.ndarray, distractor_scores: np.ndarray, weights: np.ndarray, weight: float) -> np.ndarray:
    """DaSiamRPN's score (eq. 5): ``scores [N]`` minus ``weight`` times the ``weights [D]``-weighted mean of the
    distractors' scores ``[D, N]`` at the same anchors; ``scores`` unchanged when ``D = 0``."""
    if len(weights) == 0:
        return scores
    return scores - weight * (weights[:, None] * distractor_scores).sum(0) / weights.sum()


def _change(ratio: np.ndarray) -> np.ndarray:
    return np.maximum(ratio, 1.0 / ratio)


def _padded_side(w: np.ndarray, h: np.ndarray, context: float) -> np.ndarray:
    pad = context * (w + h)
    return np.sqrt((w + pad) * (h + pad))


class SiamRPNTracker:
    """Single-object tracker: :meth:`init` on the first frame's box, then :meth:`update` on each frame.

    Boxes are ``(x, y, w, h)`` in frame pixels (the tracking benchmarks' format); frames ``[H, W, 3]`` uint8 RGB.
    ``fold_bn``: track with a copy of the model whose BatchNorms are folded into the convolutions (same
    outputs, fewer passes; :func:`fold_batchnorm`) for the search branch, which runs every frame. The
    template branch runs once per target, on an unfolded copy. Each branch has its own BatchNorm statistics
    (:class:`~frcnn.tracking.model.SiameseBatchNorm2d`), as in training. ``channels_last``: run the convolutions on NHWC
    tensors (on the 2-core CPU the half-width AlexNet's search branch took 21-27 ms instead of 30-33 ms).
    """

    def __init__(
        self, model: SiamRPN, settings: TrackerSettings | None = None, device: torch.device | str = "cpu", *,
        fold_bn: bool = True, channels_last: bool = True,
    ) -> None:
        # Copies: folding and the memory format never change the caller's model.
        if isinstance(model, SiamRPN):  # each branch with its own BatchNorm statistics (SiameseBatchNorm2d)
            template_model, model = model.for_branch("template"), model.for_branch("search")
        elif isinstance(model, nn.Module):
            template_model, model = copy.deepcopy(model), copy.deepcopy(model)
        else:  # a stand-in with the same methods (tests)
            template_model = model
        if isinstance(model, nn.Module) and fold_bn:
            model = fold_batchnorm(model)
        self.template_model, self.model = template_model.eval(), model.eval()
        self.memory_format = torch.channels_last if channels_last and isinstance(model, nn.Module) else torch.contiguous_format
        if isinstance(self.model, nn.Module):
            self.model = self.model.to(memory_format=self.memory_format)
        self.settings = settings or TrackerSettings()
        self.device = torch.device(device)
        r, k = model.response_size, model.num_anchors
        hanning = np.hanning(r + 2)[1:-1]  # strictly positive at the border, as the paper's window
        window = np.outer(hanning, hanning)
        self.window = np.repeat(window.reshape(-1, 1), k, axis=1).reshape(-1)  # [N] in (y, x, a) order
        self.kernels: TemplateKernels | None = None
        self.distractors: list[tuple[TemplateKernels, float]] = []  # (kernels, weight alpha_i), DaSiamRPN
        self.centre = np.zeros(2)
        self.size = np.ones(2)

    @torch.inference_mode()
    def init(self, frame: np.ndarray, box_xywh) -> None:
        x, y, w, h = (float(v) for v in box_xywh)
        self.centre = np.array([x + w / 2, y + h / 2])
        self.size = np.array([max(w, self.settings.min_size), max(h, self.settings.min_size)])
        self.fill = frame.reshape(-1, 3).mean(axis=0)
        self.kernels = self._template(frame, self.centre)
        self.distractors = []

    @torch.inference_mode()
    def update(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        """The target's box ``(x, y, w, h)`` in ``frame`` and the chosen proposal's score."""
        if self.kernels is None:
            raise RuntimeError("SiamRPNTracker.update called before init")
        s = self.settings
        scores, boxes, scale, distractor_scores = self._proposals(frame, with_distractors=True)
        aware = distractor_aware(scores, distractor_scores, np.asarray([a for _, a in self.distractors]), s.distractor_weight)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # crop pixels
        w, h = np.maximum(w, 1e-3), np.maximum(h, 1e-3)
        prev_w, prev_h = self.size * scale
        size_change = _change(_padded_side(w, h, s.context) / _padded_side(prev_w, prev_h, s.context))
        ratio_change = _change((prev_w / prev_h) / (w / h))
        penalty = np.exp(-(ratio_change * size_change - 1) * s.penalty_k)
        pscore = (1 - s.window_influence) * penalty * aware + s.window_influence * self.window
        best = int(np.argmax(pscore))
        rate = penalty[best] * max(float(aware[best]), 0.0) * s.lr
        box_centre = np.array([(boxes[best, 0] + boxes[best, 2]) / 2, (boxes[best, 1] + boxes[best, 3]) / 2])
        crop_centre = self.centre  # the search crop's centre in the frame: the proposals are relative to it
        centre = crop_centre + (box_centre - SEARCH_SIZE / 2) / scale
        size = self.size * (1 - rate) + np.array([w[best], h[best]]) / scale * rate
        height, width = frame.shape[:2]
        self.centre = np.clip(centre, 0, [width, height])
        self.size = np.clip(size, s.min_size, [width, height])
        if s.distractor_weight > 0:
            self._remember_distractors(frame, scores, boxes, best, crop_centre, scale, distractor_scores)
        if s.template_rate > 0 and scores[best] >= s.template_thresh:
            self._update_template(frame)
        x, y = self.centre - self.size / 2
        return np.array([x, y, *self.size]), float(scores[best])

    def _update_template(self, frame: np.ndarray) -> None:
        """Move the kernels ``template_rate`` of the way towards those of a template cropped at the current box."""
        new = self._template(frame, self.centre)
        rate = self.settings.template_rate
        self.kernels = TemplateKernels(*(torch.lerp(old, fresh.to(old.dtype), rate) for old, fresh in zip(self.kernels, new)))

    def _remember_distractors(
        self, frame: np.ndarray, scores: np.ndarray, boxes: np.ndarray, best: int, crop_centre: np.ndarray, scale: float,
        seen: np.ndarray,
    ) -> None:
        """Age the kept distractors and add this frame's: proposals above ``distractor_thresh`` that overlap the
        chosen box by IoU < 0.2 and that no kept distractor already scores above it (``seen [D, N]``: their
        responses), after NMS (0.3), the two best (DaSiamRPN keeps the top proposals after NMS). Each new one
        costs a template-branch pass, so a look-alike already remembered is not cropped again."""
        s = self.settings
        boxes_t, scores_t = torch.from_numpy(boxes), torch.from_numpy(scores)
        new = (box_iou(boxes_t, boxes_t[best : best + 1])[:, 0] < 0.2) & (scores_t > s.distractor_thresh)
        if len(seen):
            new &= torch.from_numpy(seen.max(0) <= s.distractor_thresh)
        self.distractors = [(k, a * (1 - s.distractor_decay)) for k, a in self.distractors if a * (1 - s.distractor_decay) > 0.05]
        candidates = torch.nonzero(new)[:, 0]
        keep = candidates[nms(boxes_t[candidates], scores_t[candidates], 0.3)][:2] if len(candidates) else candidates
        for i in keep.tolist():
            centre = crop_centre + ((boxes[i, :2] + boxes[i, 2:]) / 2 - SEARCH_SIZE / 2) / scale
            self.distractors.append((self._template(frame, centre), 1.0))
        self.distractors = self.distractors[-s.max_distractors :]

    def _template(self, frame: np.ndarray, centre: np.ndarray) -> TemplateKernels:
        """The template branch's kernels of a crop of ``frame`` around ``centre`` at the current size's context."""
        side = context_side(*self.size, self.settings.context)
        template = crop(frame, tuple(centre), side, TEMPLATE_SIZE, self.fill)
        return self.template_model.template(self._tensor(template).contiguous())

    @torch.inference_mode()
    def proposals(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every anchor's proposal for the current state (centre and size), before the selection:
        ``(scores [N], boxes [N, 4] xywh in frame pixels)``. The state does not change."""
        if self.kernels is None:
            raise RuntimeError("SiamRPNTracker.proposals called before init")
        scores, boxes, scale, _ = self._proposals(frame)
        boxes = from_crop(boxes, tuple(self.centre), SEARCH_SIZE / scale, SEARCH_SIZE)  # XYXY, frame pixels
        return scores, np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)

    def _proposals(self, frame: np.ndarray, with_distractors: bool = False) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """``(scores [N], boxes [N, 4] XYXY in search-crop pixels, crop pixels per frame pixel, distractor scores
        [D, N])``: the search crop around the current centre, at the scale of the current size; the kept
        distractors' responses to it come from the same backbone pass (``with_distractors``)."""
        template_side = context_side(*self.size, self.settings.context)
        scale = TEMPLATE_SIZE / template_side  # crop pixels per frame pixel
        search = crop(frame, tuple(self.centre), template_side * SEARCH_SIZE / TEMPLATE_SIZE, SEARCH_SIZE, self.fill)
        kernels = self.kernels
        if with_distractors and self.distractors:  # [1 + D] kernels against one search crop
            kernels = TemplateKernels(*(torch.cat([k, *(d[i] for d, _ in self.distractors)]) for i, k in enumerate(kernels)))
        logits, deltas = self.model.respond(kernels, self._tensor(search))
        scores, boxes = self.model.decode(logits, deltas)
        scores = scores.cpu().numpy().astype(np.float64)
        return scores[0], boxes[0].cpu().numpy().astype(np.float64), scale, scores[1:]

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        tensor = to_chw(image)[None].to(self.device)
        return tensor.contiguous(memory_format=self.memory_format)
