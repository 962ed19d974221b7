"""Is a saliency map faithful to the detector? Deletion / insertion, the pointing game, a sanity check.

* **Deletion / insertion** (Petsiuk et al. 2018): remove the pixels in order of saliency (replace them
  with a substrate) and follow the detection's score — a faithful map makes it fall fast (low deletion
  AUC); insert them into the substrate and the score should rise fast (high insertion AUC). The
  substrate matters: a black fill draws edges a detector may respond to by itself, so the curves are
  available on black, grey (the training data's mean colour), blur and noise
  (:mod:`frcnn.explain.substrates`), and the benchmark reports how much the choice reorders the methods.
* **Pointing game** (Zhang et al. 2016): does the map's maximum fall within 15 px of the detection's
  matched ground-truth box (the paper's tolerance)? The benchmark also reports the strict 0 px game.
* **Sanity check** (Adebayo et al. 2018, cascading model-parameter randomization): re-initialize the
  detector's layers from the predictor down to the stem, one stage more each time, and compare each
  map with the trained model's by Spearman rank correlation. A method whose map stays nearly the same
  without the weights it is meant to explain is flagged.

Shape shorthand: ``H x W`` the image, ``S`` curve steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from frcnn.explain.substrates import baseline_image


@dataclass
class Curves:
    """Deletion and insertion curves of one detection under one map.

    Attributes:
        fractions: ``[S+1]`` share of pixels removed (inserted), ``0 .. 1``.
        deletion / insertion: ``[S+1]`` the target score at each step.
        deletion_auc / insertion_auc: area under each curve (trapezoid over ``fractions``).
        substrate: what removed pixels were replaced with.
    """

    fractions: Tensor
    deletion: Tensor
    insertion: Tensor
    deletion_auc: float
    insertion_auc: float
    substrate: str


def saliency_ranks(saliency: Tensor) -> Tensor:
    """``[H, W]`` → ``[H, W]`` long: 0 for the most salient pixel. Ties keep raster order (stable sort)."""
    order = saliency.flatten().argsort(descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel(), device=order.device)
    return ranks.view_as(saliency)


@torch.no_grad()
def deletion_insertion(
    score: Callable[[Tensor], Tensor],
    image: Tensor,
    saliency: Tensor,
    *,
    substrate: str = "blur",
    steps: int = 32,
    batch_size: int = 16,
    seed: int = 0,
    mean: Tensor | None = None,
) -> Curves:
    """Deletion and insertion curves for one detection.

    Args:
        score: ``[N, 3, H, W] → [N]`` the detection's target score (e.g. one column of a
            :class:`frcnn.explain.target.DetectionScore`).
        image: ``[3, H, W]`` float in ``[0, 1]``.
        saliency: ``[H, W]``; higher = removed / inserted first.
        substrate: ``"black"``, ``"grey"``, ``"blur"`` or ``"noise"`` (see :func:`baseline_image`).
        steps: ``S``; step ``i`` removes the ``i / S`` most salient share of the pixels.
        mean: ``[3]`` the grey substrate's colour (:func:`frcnn.explain.substrates.training_mean`); None:
            ImageNet's mean.
    """
    fill = baseline_image(image, substrate, seed=seed, mean=mean)
    ranks = saliency_ranks(saliency.to(image.device))
    total = ranks.numel()
    thresholds = [round(i * total / steps) for i in range(steps + 1)]
    deletion, insertion = [], []
    for start in range(0, steps + 1, batch_size):
        chosen = torch.stack([ranks < t for t in thresholds[start : start + batch_size]])[:, None].to(image.dtype)  # [n, 1, H, W]
        deleted = image[None] * (1 - chosen) + fill[None] * chosen
        inserted = fill[None] * (1 - chosen) + image[None] * chosen
        values = score(torch.cat([deleted, inserted])).float().cpu()
        deletion.append(values[: len(chosen)])
        insertion.append(values[len(chosen) :])
    fractions = torch.tensor(thresholds, dtype=torch.float32) / total
    deletion_curve, insertion_curve = torch.cat(deletion), torch.cat(insertion)
    return Curves(
        fractions=fractions,
        deletion=deletion_curve,
        insertion=insertion_curve,
        deletion_auc=float(torch.trapezoid(deletion_curve, fractions)),
        insertion_auc=float(torch.trapezoid(insertion_curve, fractions)),
        substrate=substrate,
    )


POINTING_TOLERANCE = 15.0  # px: Zhang et al. (2016) count a maximum within 15 px of the object as a hit


def pointing_game(saliency: Tensor, box: Tensor, *, tolerance: float = POINTING_TOLERANCE) -> bool:
    """Hit if the map's maximum (pixel centre) lies within ``tolerance`` px of ``box`` (XYXY).

    The distance is Euclidean, to the nearest point of the box (0 inside it): Zhang et al.'s game, whose
    15 px default absorbs the annotation's imprecision; ``tolerance=0`` is the strict game. A constant
    map has no maximum to point with: a miss.
    """
    if saliency.max() <= saliency.min():
        return False
    flat = int(saliency.flatten().argmax())
    y, x = divmod(flat, saliency.shape[-1])
    x1, y1, x2, y2 = box.tolist()
    dx = max(x1 - (x + 0.5), 0.0, (x + 0.5) - x2)
    dy = max(y1 - (y + 0.5), 0.0, (y + 0.5) - y2)
    return dx * dx + dy * dy <= tolerance * tolerance


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks ``0..n-1`` of a 1-d tensor, ties sharing their mean rank (as Spearman's ρ needs)."""
    sorted_values, order = values.sort()
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    first = counts.cumsum(0) - counts
    mean_rank = first.double() + (counts.double() - 1) / 2
    ranks = torch.empty(values.numel(), dtype=torch.float64, device=values.device)
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps of any equal shape (NaN when either is constant)."""
    ra, rb = _average_ranks(a.flatten().double()), _average_ranks(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = ra.norm() * rb.norm()
    return float("nan") if denominator == 0 else float((ra @ rb) / denominator)


def cascade_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """A :class:`FasterRCNN`'s stages from the output down: predictor, box head, RPN head, (the pyramid,) the
    trunk's stages top-down (each child module with parameters: ResNet's stem and res stages, VGG's convs,
    MobileNetV3's blocks)."""
    stages = [("roi_heads.predictor", model.roi_heads.predictor), ("roi_heads.box_head", model.roi_heads.box_head)]
    stages.append(("rpn.head", model.rpn.head))
    backbone = model.backbone
    if hasattr(backbone, "fpn"):  # a pyramid: its top-down layers, then the bottom-up network's stages top-down
        stages.append(("backbone.fpn", backbone.fpn))
        trunk, prefix = backbone.body, "backbone.body"
    else:
        trunk, prefix = backbone.trunk, "backbone.trunk"
    children = [(name, child) for name, child in trunk.named_children() if any(p.numel() for p in child.parameters())]
    stages += [(f"{prefix}.{name}", child) for name, child in reversed(children)]
    return stages


@torch.no_grad()
def _reinitialize(module: nn.Module, seed: int) -> None:
    """Re-initialize ``module``'s layers as at construction, seeded, leaving the caller's RNG as it was.

    ``reset_parameters`` draws from the global generators (it takes no generator of its own), so those it
    uses are forked for the duration and seeded inside: the CPU's and those of the CUDA devices the module
    lives on. The re-initialization is a function of ``seed`` only, and the caller's random stream is
    untouched.
    """
    cuda = sorted({p.device.index for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it would reseed every CUDA device
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
            elif isinstance(sub, FrozenBatchNorm2d):  # fixed statistics: back to an identity
                sub.weight.fill_(1)
                sub.bias.zero_()
                sub.running_mean.zero_()
                sub.running_var.fill_(1)


def randomized_cascade(model: nn.Module, *, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Copies of ``model`` with its stages re-initialized cumulatively from the top (one copy, mutated)."""
    randomized = copy.deepcopy(model).eval()
    lookup = dict(randomized.named_modules())
    for i, (name, _) in enumerate(cascade_stages(model)):
        _reinitialize(lookup[name], seed + i)
        yield name, randomized


@dataclass
class SanityCheck:
    """Spearman correlation of a method's map with the trained model's, per cascade stage.

    Attributes:
        stages: the stage names, top first (each row randomizes that stage and all above it).
        correlations: one Spearman ρ per stage (NaN where the map became constant).
        flagged: the map of the fully randomized model still correlates above ``threshold``.
    """

    stages: list[str]
    correlations: list[float]
    flagged: bool
    threshold: float


def sanity_check(
    saliency_of: Callable[[nn.Module], Tensor],
    model: nn.Module,
    *,
    seed: int = 0,
    threshold: float = 0.5,
    absolute: bool = True,
) -> SanityCheck:
    """Cascading model-parameter randomization for one method and one detection.

    Args:
        saliency_of: ``model → [H, W]`` map of the detection under that model (the same detection
            and target, only the weights change).
        model: the trained detector (left untouched).
        threshold: flag the method when ρ with every stage randomized stays above this.
        absolute: compare magnitudes (``|map|``), as Adebayo et al. report for signed maps.
    """
    reference = saliency_of(model)
    if absolute:
        reference = reference.abs()
    stages, correlations = [], []
    for name, randomized in randomized_cascade(model, seed=seed):
        current = saliency_of(randomized)
        correlations.append(spearman(reference, current.abs() if absolute else current))
        stages.append(name)
    last = correlations[-1]
    return SanityCheck(stages=stages, correlations=correlations, flagged=bool(last == last and last > threshold), threshold=threshold)
