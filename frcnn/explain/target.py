"""What an explanation explains: a detection (or proposal), and its score on any input image.

Explaining "detection ``d``" has to keep meaning the same object when the input is perturbed (noise,
masks, points on an interpolation path): NMS may then keep a different RoI, or none above the
threshold. So the score of ``d`` on an image ``x`` is not read off the final detections but from every
RoI before NMS (:func:`frcnn.explain.outputs.roi_outputs`), with D-RISE's similarity
(Petsiuk et al. 2021), maximised over the RoIs::

    s(d; x) = max_r  IoU(box_d, box_r[c_d]) · cos(e_{c_d}, p_r) [· objectness_r]

where ``box_r[c_d]`` is RoI ``r`` decoded with the deltas of ``d``'s class, ``p_r`` its softmax class
vector over the ``K+1`` classes (index 0 background) and ``e_c`` the one-hot vector of ``d``'s class
over the same ``K+1`` entries (as ROAR's ground-truth targets, :mod:`frcnn.explain.roar`), so the class
term is ``p_r[c] / ||p_r||``. Why one-hot rather than the cosine with the detection's own class vector
``p_d``: once the object is removed, the RoIs around it turn background-like, and a cosine with ``p_d``
(which carries background mass of its own) stays high: ``cos((0.25, 0.75, 0), (0.55, 0.40, 0.05)) = 0.81``
for an RoI that now calls the region background. A cosine over the object classes only would be worse:
it ignores the background mass altogether (0.99 there), a cosine being blind to scale. The one-hot
term falls with the class's share (0.59 there, 0 for pure background). On the image ``d`` came from,
its RoI scores ``p_d[c] / ||p_d||`` (IoU 1): near 1 for a confident detection (0.95 at score 0.75). The
score is differentiable almost everywhere (through the class vector and the box deltas; the proposal
coordinates are fixed inputs to the box head), so one target serves gradient and black-box methods.

Two alternatives: ``"roi_score"`` holds the producing RoI's box fixed and scores the softmax
probability of ``d``'s class there (the plain "class score" target), and a proposal (``kind="proposal"``)
is scored by the same similarity over the RPN's anchors, with the anchor's objectness in place of the
class cosine: ``s(q; x) = max_a IoU(box_q, box_a) · σ(o_a)``.

Shape shorthand: ``N`` images (perturbed copies of one image), ``M`` detections explained at once,
``P`` RoIs per image, ``A`` anchors, ``K`` object classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from frcnn.explain.outputs import RoIOutputs, anchor_outputs, roi_outputs
from frcnn.modeling.box_ops import elementwise_iou
from frcnn.modeling.model import FasterRCNN
from frcnn.modeling.preprocess import box_scale

TargetKind = Literal["similarity", "roi_score"]


@dataclass
class Detection:
    """One detection (or proposal) to explain, with what identifies it on a perturbed input.

    Attributes:
        box: ``[4]`` XYXY in the original image's pixels.
        label: class in ``1..K`` (0 for a proposal).
        score: the detector's score for it (class probability, or objectness for a proposal).
        probs: ``[K+1]`` the class vector of the RoI that produced it (empty for a proposal); the
            similarity target itself uses the one-hot vector of ``label``.
        roi: ``[4]`` the producing RoI (proposal box) in original pixels, for the ``roi_score`` target.
        kind: ``"detection"`` or ``"proposal"``.
        index: its rank among the image's detections (or proposals), for naming outputs.
    """

    box: Tensor
    label: int
    score: float
    probs: Tensor = field(default_factory=lambda: torch.zeros(0))
    roi: Tensor | None = None
    kind: Literal["detection", "proposal"] = "detection"
    index: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}{self.index}"


def similarity(
    det_boxes: Tensor,
    det_labels: Tensor,
    roi_boxes: Tensor,
    roi_probs: Tensor,
    roi_valid: Tensor,
    roi_objectness: Tensor | None = None,
    *,
    per_roi: bool = False,
) -> Tensor:
    """D-RISE's similarity of each detection to its best-matching RoI, per image, with a one-hot class vector.

    Args:
        det_boxes: ``[M, 4]``; det_labels: ``[M]`` in ``1..K``.
        roi_boxes: ``[N, P, K, 4]`` class-specific boxes; roi_probs: ``[N, P, K+1]`` (index 0 background).
        roi_valid: ``[N, P]`` (every RoI serves every detection) or ``[N, P, M]`` (each detection its own RoIs).
        roi_objectness: optional ``[N, P]`` factor.

    Returns:
        ``[N, M]``: ``max_r IoU(det_m, roi_r[c_m]) · p_r[c_m] / ||p_r|| [· o_r]`` (the cosine of ``p_r`` with the
        one-hot vector of ``c_m`` over all ``K+1`` classes, so background mass lowers it); 0 where no RoI is valid.
        ``per_roi``: ``[N, P, M]``, before the maximum over RoIs.
    """
    boxes = roi_boxes[:, :, det_labels - 1]  # [N, P, M, 4]: each RoI decoded with each detection's class
    iou = elementwise_iou(boxes, det_boxes[None, None])  # [N, P, M]
    cos = roi_probs[:, :, det_labels] / roi_probs.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # [N, P, M]
    score = iou * cos
    if roi_objectness is not None:
        score = score * roi_objectness[..., None]
    valid = roi_valid if roi_valid.dim() == 3 else roi_valid[..., None]
    score = score.masked_fill(~valid, 0.0)
    return score if per_roi else score.amax(dim=1)


class DetectionScore(nn.Module):
    """``images [N, 3, H, W] → scores [N, M]``: the target score of ``M`` detections on each image.

    The forward function every method explains (captum's ``forward_func``). Images are float RGB in
    ``[0, 1]`` of the original size; the model's own preprocessing resizes and normalizes them.

    Args:
        model: a :class:`FasterRCNN` in eval mode.
        detections: the ``M`` detections, all of one kind (detections or proposals).
        target: ``"similarity"`` (default) or ``"roi_score"`` for detections; proposals always use the
            anchor similarity.
        objectness: multiply the similarity by the RoI's objectness (D-RISE's full vector).
        max_rois: follow each detection through only the ``max_rois`` proposals per image that overlap
            it most (None: all), ``M * max_rois`` RoIs in all; a detection's score does not depend on
            which others are explained with it. The box head runs once per RoI and dominates a forward
            pass, and the maximum is won by an RoI around the detection, so a cut to the nearest RoIs
            leaves the scores nearly unchanged (docs/explanations.md measures how much for D-RISE's maps).
    """

    def __init__(
        self,
        model: FasterRCNN,
        detections: Sequence[Detection],
        *,
        target: TargetKind = "similarity",
        objectness: bool = False,
        max_rois: int | None = None,
    ) -> None:
        super().__init__()
        if not detections:
            raise ValueError("DetectionScore needs at least one detection")
        kinds = {d.kind for d in detections}
        if len(kinds) != 1:
            raise ValueError(f"explain detections and proposals in separate calls, got {sorted(kinds)}")
        if target not in ("similarity", "roi_score"):
            raise ValueError(f"target must be 'similarity' or 'roi_score', got {target!r}")
        self.model = model
        self.kind = kinds.pop()
        self.target = target
        self.objectness = objectness
        self.max_rois = max_rois
        self.register_buffer("boxes", torch.stack([d.box.float() for d in detections]), persistent=False)
        self.register_buffer("labels", torch.tensor([d.label for d in detections]), persistent=False)
        if self.kind == "detection" and target == "roi_score" and any(d.roi is None for d in detections):
            raise ValueError("the roi_score target needs each detection's producing RoI (Detection.roi)")
        if all(d.roi is not None for d in detections):  # the roi_score target's, and Grad-CAM's level on a pyramid
            self.register_buffer("rois", torch.stack([d.roi.float() for d in detections]), persistent=False)

    @property
    def num_targets(self) -> int:
        """``M``."""
        return len(self.boxes)

    def forward(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` float in ``[0, 1]`` → ``[N, M]``."""
        device = self.boxes.device
        images = images.to(device)
        if self.kind == "proposal":
            out = anchor_outputs(self.model, list(images))
            iou = box_iou(self.boxes, out.boxes.flatten(0, 1)).view(len(self.boxes), len(images), -1)  # [M, N, A]
            score = (iou * out.objectness[None]).masked_fill(~out.valid[None], 0.0)
            return score.amax(dim=2).T
        if self.target == "roi_score":
            return self._roi_score(images)
        return self.roi_similarity(images)[0].amax(dim=1)

    def roi_similarity(self, images: Tensor) -> tuple[Tensor, RoIOutputs]:
        """``([N, P, M] similarity of every RoI to every detection, the RoI outputs)``: the ``similarity`` target
        before its maximum over RoIs (0 for RoIs a detection does not follow)."""
        out = roi_outputs(self.model, list(images.to(self.boxes.device)), near=self.boxes, max_rois=self.max_rois)
        valid = out.valid
        if out.owner is not None:  # cut to each detection's nearest RoIs: [N, P, M], a detection sees its own
            valid = valid[..., None] & (out.owner[..., None] == torch.arange(self.num_targets, device=self.boxes.device))
        objectness = out.objectness if self.objectness else None
        return similarity(self.boxes, self.labels, out.boxes, out.probs, valid, objectness, per_roi=True), out

    def _roi_score(self, images: Tensor) -> Tensor:
        """Class probability of each detection's label at its producing RoI, held fixed."""
        batch, _ = self.model.preprocess(list(images))
        features = self.model.features(batch)
        rois = self.rois[None] * box_scale(batch)  # [N, M, 4] in network-input pixels
        logits, _ = self.model.predict_rois(features, rois)  # [N, M, K+1]
        probs = F.softmax(logits, dim=-1)
        return probs.gather(2, self.labels[None, :, None].expand(len(images), -1, 1)).squeeze(2)


ATTRIBUTES = ("logit", "x1", "y1", "x2", "y2")


class DetectionOutput(nn.Module):
    """``images [N, 3, H, W] → [N, M]``: one raw output of the RoI each detection follows on each image.

    The RoI is the one that matches the detection best (the ``similarity`` target's maximum; which RoI wins
    is not differentiated). ``"logit"``: its class logit for the detection's class; ``"x1"`` ... ``"y2"``:
    one coordinate of its class-specific box, in original-image pixels. ODAM explains each with this: a
    confident detection's probability (and so the similarity) is saturated at the input, its gradient ≈ 0,
    where the logit's is not.

    Args:
        score: the :class:`DetectionScore` of the detections (its RoI cut and options are kept).
        attribute: one of ``ATTRIBUTES``.
    """

    def __init__(self, score: DetectionScore, attribute: str) -> None:
        super().__init__()
        if attribute not in ATTRIBUTES:
            raise ValueError(f"attribute must be one of {', '.join(ATTRIBUTES)}, got {attribute!r}")
        if score.kind != "detection" or score.target != "similarity":
            raise ValueError(f"attribute={attribute!r} is explained for detections with the similarity target")
        self.score, self.attribute = score, attribute
        self.model = score.model

    def forward(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` → ``[N, M]``; 0 where a detection has no RoI to follow (every similarity 0)."""
        per_roi, out = self.score.roi_similarity(images)
        best = per_roi.argmax(dim=1)  # [N, M]: the RoI each detection follows on each image
        found = per_roi.amax(dim=1) > 0
        labels = self.score.labels
        if self.attribute == "logit":
            value = out.logits[:, :, labels].gather(1, best[:, None, :])[:, 0]  # [N, M]
        else:
            boxes = out.boxes[:, :, labels - 1]  # [N, P, M, 4]: each RoI decoded with each detection's class
            picked = boxes.gather(1, best[:, None, :, None].expand(-1, 1, -1, 4))[:, 0]  # [N, M, 4]
            value = picked[..., ATTRIBUTES.index(self.attribute) - 1]
        return value.masked_fill(~found, 0.0)


@torch.no_grad()
def find_detections(
    model: FasterRCNN,
    image: Tensor,
    *,
    top: int | None = 3,
    score_thresh: float = 0.5,
    kind: Literal["detection", "proposal"] = "detection",
) -> list[Detection]:
    """The detections (or proposals) of ``image`` to explain, best first.

    Each detection is traced back to the RoI that produced it: the RoI whose class-specific box and
    class probability reproduce the detection's (IoU 1, equal score); its box (``roi``) is what the
    ``roi_score`` target holds fixed.

    Args:
        model: a :class:`FasterRCNN` in eval mode.
        image: ``[3, H, W]`` float in ``[0, 1]``.
        top: keep at most this many (None: all above ``score_thresh``).
        score_thresh: minimum class score (objectness for proposals).
        kind: explain final detections or the RPN's proposals.
    """
    if kind == "proposal":
        out = roi_outputs(model, [image])
        keep = out.valid[0] & (out.objectness[0] >= score_thresh)
        boxes, scores = out.proposals[0][keep], out.objectness[0][keep]
        if top is not None:
            boxes, scores = boxes[:top], scores[:top]
        return [
            Detection(box=box, label=0, score=float(score), roi=box, kind="proposal", index=i)
            for i, (box, score) in enumerate(zip(boxes, scores))
        ]
    found = model([image]).detections[0]
    keep = found["scores"] >= score_thresh
    boxes, scores, labels = found["boxes"][keep], found["scores"][keep], found["labels"][keep]
    if top is not None:
        boxes, scores, labels = boxes[:top], scores[:top], labels[:top]
    if not len(boxes):
        return []
    out = roi_outputs(model, [image])
    detections = []
    for i, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        class_boxes = out.boxes[0, :, label - 1]  # [P, 4]
        class_scores = out.probs[0, :, label]  # [P]
        agreement = elementwise_iou(class_boxes, box[None]) - (class_scores - score).abs()
        r = int(agreement.masked_fill(~out.valid[0], -float("inf")).argmax())
        detections.append(
            Detection(box=box, label=int(label), score=float(score), probs=out.probs[0, r], roi=out.proposals[0, r], index=i)
        )
    return detections
