"""Attribution methods for a detection target: white-box (gradients) and black-box (perturbations).

Each method takes a :class:`frcnn.explain.target.DetectionScore` (``M`` detections; any module mapping
``[N, 3, H, W] → [N, M]`` with a ``num_targets`` attribute works for the model-agnostic ones) and one image
``[3, H, W]`` float in ``[0, 1]``, and returns a :class:`MethodResult`: one saliency map per detection
in the image's own pixels (higher = more important for the detection), plus the per-channel attribution
where the method has one. captum runs the algorithms it has (gradient, guided backpropagation,
Grad-CAM's layer attribution, Integrated Gradients, SmoothGrad / VarGrad via its noise tunnel,
KernelSHAP); frcnn adds what captum lacks for detectors: Grad-CAM maps put back through the
resize-and-pad preprocessing (captum's interpolation would stretch the padding over the image),
Grad-CAM on the RoI box head (maps in RoI coordinates, pasted at their RoIs), and D-RISE.

How the map is read from a per-channel attribution ``[3, H, W]``: gradient methods (gradient, guided
backpropagation, SmoothGrad, guided Grad-CAM) take the largest magnitude over the channels (Simonyan
et al. 2014); additive ones (Integrated Gradients, KernelSHAP) the signed sum (mean for KernelSHAP,
whose coefficient is repeated in each channel), so positive means evidence for the detection; VarGrad
sums its per-channel variances.

Shape shorthand: ``M`` detections, ``H x W`` the image, ``Hf x Wf`` the trunk's feature map.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frcnn.errors import ConfigError
from frcnn.explain.substrates import baseline_image
from frcnn.explain.target import DetectionOutput, DetectionScore
from frcnn.modeling.poolers import roi_levels


@dataclass
class MethodResult:
    """What a method returns for ``M`` detections of one image.

    Attributes:
        maps: ``[M, H, W]`` float saliency in the image's pixels.
        attributions: ``[M, 3, H, W]`` per-channel attribution, or None (Grad-CAM, D-RISE).
        info: one dict per detection with method-specific facts (e.g. IG's completeness error).
    """

    maps: Tensor
    attributions: Tensor | None = None
    info: list[dict[str, Any]] = field(default_factory=list)


def _captum():
    try:
        import captum.attr as attr
    except ImportError as err:  # pragma: no cover - the extra is installed by make test
        raise ImportError(
            "frcnn.explain's white-box methods and KernelSHAP use captum: pip install 'frcnn[explain]'"
        ) from err
    return attr


@contextlib.contextmanager
def relus_not_inplace(model: nn.Module) -> Iterator[None]:
    """Turn off ``inplace`` on every ``nn.ReLU`` for the duration (backward hooks cannot see in-place outputs)."""
    changed = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


def _input(image: Tensor) -> Tensor:
    return image.detach().float()[None].clone().requires_grad_(True)


def _per_detection(score: nn.Module, fn: Callable[[int], Tensor]) -> Tensor:
    return torch.cat([fn(m) for m in range(score.num_targets)])


def gradient(score: DetectionScore, image: Tensor) -> MethodResult:
    """Vanilla gradient ``|∂s/∂x|`` (Simonyan et al. 2014), via captum's ``Saliency``."""
    saliency = _captum().Saliency(score)
    attr = _per_detection(score, lambda m: saliency.attribute(_input(image), target=m, abs=False).detach())
    return MethodResult(maps=attr.abs().amax(dim=1), attributions=attr)


def guided_backprop(score: DetectionScore, image: Tensor) -> MethodResult:
    """Guided backpropagation (Springenberg et al. 2015) via captum's ``GuidedBackprop``.

    Through every ReLU module the backward pass keeps a gradient only where both the forward activation
    and the incoming gradient are positive. ReLUs applied as functions are not modified; frcnn's own
    (RPN head, backbones) are modules.
    """
    with relus_not_inplace(score):
        guided = _captum().GuidedBackprop(score)
        attr = _per_detection(score, lambda m: guided.attribute(_input(image), target=m).detach())
    return MethodResult(maps=attr.abs().amax(dim=1), attributions=attr)


def _feature_map_to_image(cam: Tensor, model: nn.Module, height: int, width: int) -> Tensor:
    """``[M, Hf, Wf]`` maps on the padded network input → ``[M, H, W]`` on the original image.

    The preprocessor resizes the image to ``(nh, nw)`` and pads it at the bottom/right, so the feature
    map covers more than the image: upsample to the padded size, crop the image's part, resize back.
    """
    (nh, nw), padded = model.preprocessor.test_size(height, width)
    cam = F.interpolate(cam[:, None], size=padded, mode="bilinear", align_corners=False)[:, :, :nh, :nw]
    return F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def cam_level(model: nn.Module, box: Tensor | None, height: int, width: int) -> int:
    """The feature level Grad-CAM reads for a detection: the level its RoI is pooled from.

    One map (C4, VGG16): that map. A pyramid: the FPN paper's assignment of the detection's RoI (the
    proposal that produced it, in network-input pixels) among the RoI stage's pooled levels — a small object's explanation reads P2
    or P3, a large one's P5 — the level whose features the box head saw.

    Args:
        box: ``[4]`` XYXY in the original image's pixels (the producing RoI; a proposal's own box);
            ``height`` / ``width``: that image's size. None
            (a target that sums several objects, as ROAR's): the level of a canonical 224 px RoI (P4).
    """
    heads, strides = model.roi_heads, model.backbone.strides
    levels = list(heads.pooled_levels) if heads.pooled_levels is not None else list(range(len(strides)))
    if len(levels) == 1:
        return levels[0]
    (nh, nw), _ = model.preprocessor.test_size(height, width)
    if box is None:
        size = heads.canonical_size
        network_box = torch.tensor([[0.0, 0.0, size, size]])
    else:
        network_box = (box.float().cpu() * torch.tensor([nw / width, nh / height, nw / width, nh / height]))[None]
    index = roi_levels(
        network_box, strides, levels,
        canonical_size=heads.canonical_size, canonical_level=heads.canonical_level,
    )
    return levels[int(index)]


def gradcam(score: DetectionScore, image: Tensor) -> MethodResult:
    """Grad-CAM (Selvaraju et al. 2017) on the feature map the RoI stage pooled the detection from.

    ``ReLU(Σ_c α_c A_c)`` with ``α_c`` the spatial mean of ``∂s/∂A_c``: captum's ``LayerGradCam`` on
    the backbone's ``cam_layer`` — the stride-16 trunk for C4 / VGG16; for an FPN model, the output conv
    of the pyramid level the detection's box is assigned to (:func:`cam_level`; proposals: the same rule
    on the proposal's box). The ``[Hf, Wf]`` map is put back through the preprocessing.
    """
    def grad_cam(target: nn.Module, layer: nn.Module, inp: Tensor, m: int) -> Tensor:
        return _captum().LayerGradCam(target, layer).attribute(inp, target=m, relu_attributions=True)[:, 0]

    return MethodResult(maps=_layer_maps(score, score, image, grad_cam))


def _layer_maps(score: DetectionScore, target: nn.Module, image: Tensor, attribute: Callable[..., Tensor]) -> Tensor:
    """``[M, H, W]``: for each detection, ``attribute(target, layer, input, m)`` → ``[1, Hf, Wf]`` on the feature map
    its RoI is pooled from (:func:`cam_level`), put back through the preprocessing onto the image."""
    model = score.model
    height, width = image.shape[-2:]
    # the producing RoIs (what the box head pooled), else the detections' boxes; None: a summed target (ROAR)
    boxes = getattr(score, "rois", getattr(score, "boxes", None))

    def one(m: int) -> Tensor:
        layer = model.backbone.cam_layer(cam_level(model, None if boxes is None else boxes[m], height, width))
        return _feature_map_to_image(attribute(target, layer, _input(image), m).detach(), model, height, width)

    return torch.cat([one(m) for m in range(score.num_targets)])


def odam(score: DetectionScore, image: Tensor, *, attribute: str = "logit") -> MethodResult:
    """ODAM (Zhao and Chan, ICLR 2023): ``ReLU(Σ_c ∂y/∂A_c ⊙ A_c)``, the gradient times the feature map element by
    element, summed over channels: Grad-CAM without its spatial average of the gradient, so the map stays on
    the one instance instead of spreading over every object of its class. captum's ``LayerGradientXActivation``
    on the map the detection's RoI is pooled from (:func:`cam_level`: the trunk for C4 / VGG16, the assigned
    pyramid level for FPN). The other levels of a pyramid get no gradient at all: proposals are fixed inputs
    to the box head, so the paper's sum over levels is this one map.

    Args:
        attribute: what ``y`` is, of the RoI the detection follows (:class:`~frcnn.explain.target.DetectionOutput`):
            ``"logit"``, its class logit (the paper's class score before the softmax, whose gradient vanishes for
            a confident detection), or one coordinate of its predicted box, ``"x1"``, ``"y1"``, ``"x2"``, ``"y2"``;
            ``"score"``: the run's target (the similarity) as the other methods explain it.
    """
    target = score if attribute == "score" else DetectionOutput(score, attribute)

    def gradient_x_activation(target: nn.Module, layer: nn.Module, inp: Tensor, m: int) -> Tensor:
        return F.relu(_captum().LayerGradientXActivation(target, layer).attribute(inp, target=m).sum(dim=1))

    return MethodResult(maps=_layer_maps(score, target, image, gradient_x_activation),
                        info=[{"attribute": attribute}] * score.num_targets)


def guided_gradcam(score: DetectionScore, image: Tensor) -> MethodResult:
    """Guided Grad-CAM: guided backpropagation × the (aligned) Grad-CAM map, per pixel and channel."""
    guided = guided_backprop(score, image).attributions
    cam = gradcam(score, image).maps
    attr = guided * cam[:, None]
    return MethodResult(maps=attr.abs().amax(dim=1), attributions=attr)


class _RoICapture:
    """Records the RoI boxes passed to ``roi_heads.predict`` and the pooled features the box head reads."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.boxes: Tensor | None = None
        self.pooled: Tensor | None = None

    def __enter__(self) -> _RoICapture:
        heads = self.model.roi_heads
        original = heads.predict

        def predict(features: Tensor, boxes: Tensor):
            self.boxes = boxes.detach()
            return original(features, boxes)

        def keep_pooled(_module, args):
            self.pooled = args[0]

        heads.predict = predict
        self._handle = heads.box_head.register_forward_pre_hook(keep_pooled)
        return self

    def __exit__(self, *exc) -> None:
        del self.model.roi_heads.predict  # back to the class's method
        self._handle.remove()


def gradcam_head(score: DetectionScore, image: Tensor) -> MethodResult:
    """Grad-CAM on the box head's input: the RoI-pooled features (``[R, C, S, S]`` per image).

    Each RoI gets its own ``S x S`` map (weights from its own gradients), pasted into the image at
    the RoI's box and summed. With the similarity target only the best-matching RoI gets a gradient,
    so the map shows what the head looked at inside the RoI that explains the detection.

    Detections only: a proposal's target stops at the RPN, and the box head never sees it.
    """
    if getattr(score, "kind", "detection") == "proposal":
        raise ConfigError("gradcam_head explains the box head's evidence, and proposals never reach the box head: "
                          "explain proposals with gradcam, gradient or another method")
    model = score.model
    height, width = image.shape[-2:]
    (nh, nw), _ = model.preprocessor.test_size(height, width)
    factor = torch.tensor([nw / width, nh / height, nw / width, nh / height], device=image.device)
    maps = []
    for m in range(score.num_targets):
        with _RoICapture(model) as capture:
            x = _input(image)
            value = score(x)[0, m]
            (grad,) = torch.autograd.grad(value, capture.pooled)
        pooled = capture.pooled.detach()
        cams = F.relu((grad.mean(dim=(2, 3), keepdim=True) * pooled).sum(dim=1))  # [R, S, S]
        boxes = capture.boxes.reshape(-1, 4) / factor  # original pixels
        canvas = image.new_zeros(height, width)
        for r in cams.flatten(1).amax(dim=1).nonzero().flatten().tolist():  # host loop: the few RoIs with a gradient
            x1, y1, x2, y2 = boxes[r].tolist()
            c1, r1 = max(0, math.floor(x1)), max(0, math.floor(y1))
            c2, r2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
            if c2 > c1 and r2 > r1:
                patch = F.interpolate(cams[r][None, None], size=(r2 - r1, c2 - c1), mode="bilinear", align_corners=False)
                canvas[r1:r2, c1:c2] += patch[0, 0]
        maps.append(canvas)
    return MethodResult(maps=torch.stack(maps))


IG_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")


def integrated_gradients(
    score: DetectionScore,
    image: Tensor,
    *,
    steps: int = 32,
    baseline: str = "black",
    rule: str = "gausslegendre",
    batch_size: int = 8,
    seed: int = 0,
    mean: Tensor | None = None,
) -> MethodResult:
    """Integrated Gradients (Sundararajan et al. 2017) via captum, with its completeness check.

    The path integral ``(x − x') · ∫ ∂s/∂x(x' + α(x − x')) dα`` is taken by ``rule`` over ``steps``
    points: Gauss-Legendre by default (captum's default; exact for an integrand polynomial in ``α`` of
    degree below ``2 · steps``), or a Riemann sum (``riemann_trapezoid``, ``_middle``, ``_left``, ``_right``).
    Completeness, ``Σ attributions = s(x) − s(x')``, holds up to that rule's error: ``info`` reports
    the rule, ``score_gap`` ``s(x) − s(x')``, ``completeness_error`` ``|Σ attributions − score_gap|``
    and ``completeness_relative`` (the error over ``|score_gap|``). ``mean``: the grey baseline's colour.
    """
    if rule not in IG_RULES:
        raise ConfigError(f"integrated_gradients rule={rule!r}: one of {', '.join(IG_RULES)}")
    ig = _captum().IntegratedGradients(score)
    reference = baseline_image(image, baseline, seed=seed, mean=mean)[None]
    attrs, info = [], []
    for m in range(score.num_targets):
        attr = ig.attribute(
            _input(image), baselines=reference, target=m, n_steps=steps, method=rule, internal_batch_size=batch_size,
        ).detach()
        with torch.no_grad():
            gap = float(score(torch.cat([image[None], reference]))[:, m].diff().neg())
        error = abs(float(attr.double().sum()) - gap)
        attrs.append(attr)
        info.append({
            "baseline": baseline, "steps": steps, "rule": rule, "score_gap": gap,
            "completeness_error": error, "completeness_relative": error / max(abs(gap), 1e-12),
        })
    attr = torch.cat(attrs)
    return MethodResult(maps=attr.sum(dim=1), attributions=attr, info=info)


def _noise_tunnel(score: DetectionScore, image: Tensor, nt_type: str, samples: int, stdev: float, batch_size: int, seed: int) -> Tensor:
    attr = _captum()
    tunnel = attr.NoiseTunnel(attr.Saliency(score))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _per_detection(score, lambda m: tunnel.attribute(
            _input(image), nt_type=nt_type, nt_samples=samples, nt_samples_batch_size=batch_size,
            stdevs=stdev, target=m, abs=False,
        ).detach())


def smoothgrad(
    score: DetectionScore, image: Tensor, *, samples: int = 32, stdev: float = 0.15, batch_size: int = 8, seed: int = 0
) -> MethodResult:
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over noisy copies (σ = 15 % of the [0, 1] range)."""
    attr = _noise_tunnel(score, image, "smoothgrad", samples, stdev, batch_size, seed)
    return MethodResult(maps=attr.abs().amax(dim=1), attributions=attr)


def vargrad(
    score: DetectionScore, image: Tensor, *, samples: int = 32, stdev: float = 0.15, batch_size: int = 8, seed: int = 0
) -> MethodResult:
    """VarGrad (Adebayo et al. 2018): the variance of the gradient over noisy copies."""
    attr = _noise_tunnel(score, image, "vargrad", samples, stdev, batch_size, seed)
    return MethodResult(maps=attr.sum(dim=1), attributions=attr)


def random_masks(
    count: int, height: int, width: int, *, grid: int = 16, keep: float = 0.5, generator: torch.Generator
) -> Tensor:
    """RISE masks ``[count, 1, H, W]`` in ``[0, 1]``: a ``grid x grid`` Bernoulli(``keep``) pattern,
    bilinearly upsampled to cells of ``ceil(H / grid) x ceil(W / grid)`` pixels, shifted by a random
    offset under one cell (so the cell borders fall anywhere) and cropped to the image."""
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    low = (torch.rand(count, 1, grid, grid, generator=generator) < keep).float()
    up = F.interpolate(low, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear", align_corners=False).clamp_(0, 1)
    dy = torch.randint(0, cell_h, (count,), generator=generator).tolist()
    dx = torch.randint(0, cell_w, (count,), generator=generator).tolist()
    return torch.stack([up[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(zip(dy, dx))])


@torch.no_grad()
def drise(
    score: DetectionScore,
    image: Tensor,
    *,
    masks: int = 1000,
    grid: int = 16,
    keep: float = 0.5,
    batch_size: int = 16,
    fill: str = "black",
    seed: int = 0,
    mean: Tensor | None = None,
) -> MethodResult:
    """D-RISE (Petsiuk et al. 2021): ``saliency(d) = 1/N Σ_i s(d; masked_i) · M_i``, all detections at once.

    Each masked image ``x ⊙ M_i + fill ⊙ (1 − M_i)`` is scored for every detection in one batched
    forward pass, and the masks are summed weighted by those scores (divided by the number of masks,
    so a map's value is the expected score given the pixel is kept, times ``keep``). Seeded. ``mean``:
    the grey fill's colour (:func:`frcnn.explain.substrates.baseline_image`).
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = image.shape[-2:]
    substrate = baseline_image(image, fill, seed=seed, mean=mean)
    total = image.new_zeros(score.num_targets, height, width)
    for start in range(0, masks, batch_size):
        batch = random_masks(min(batch_size, masks - start), height, width, grid=grid, keep=keep, generator=generator).to(image)
        scores = score(image[None] * batch + substrate[None] * (1 - batch))  # [n, M]
        total += torch.einsum("nm,nhw->mhw", scores, batch[:, 0])
    return MethodResult(maps=total / masks, info=[{"masks": masks, "grid": grid, "keep": keep, "fill": fill}] * score.num_targets)


def patch_grid(height: int, width: int, patch: int) -> Tensor:
    """``[1, 1, H, W]`` long feature ids of a grid of ``patch x patch`` squares (KernelSHAP's players)."""
    rows = torch.arange(height) // patch
    cols = torch.arange(width) // patch
    return (rows[:, None] * math.ceil(width / patch) + cols[None, :])[None, None]


def kernel_shap(
    score: DetectionScore,
    image: Tensor,
    *,
    patch: int = 32,
    feature_mask: Tensor | None = None,
    samples: int = 200,
    batch_size: int = 16,
    fill: str = "blur",
    seed: int = 0,
    mean: Tensor | None = None,
) -> MethodResult:
    """KernelSHAP (Lundberg & Lee 2017) over a patch grid (or a given ``feature_mask``, e.g. superpixels), via captum.

    An absent player's pixels take the ``fill`` substrate (blurred by default: a black square is itself
    a strong feature for a detector; ``mean``: the grey fill's colour). ``samples`` coalitions per detection.
    """
    height, width = image.shape[-2:]
    mask = feature_mask if feature_mask is not None else patch_grid(height, width, patch)
    shap = _captum().KernelShap(score)
    reference = baseline_image(image, fill, seed=seed, mean=mean)[None]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attr = _per_detection(score, lambda m: shap.attribute(
            _input(image).detach(), baselines=reference, target=m, feature_mask=mask.to(image.device),
            n_samples=samples, perturbations_per_eval=batch_size,
        ).detach())
    return MethodResult(maps=attr.mean(dim=1), attributions=attr, info=[{"samples": samples, "fill": fill}] * score.num_targets)


METHODS: dict[str, Callable[..., MethodResult]] = {
    "gradient": gradient,
    "guided_backprop": guided_backprop,
    "gradcam": gradcam,
    "gradcam_head": gradcam_head,
    "odam": odam,
    "guided_gradcam": guided_gradcam,
    "integrated_gradients": integrated_gradients,
    "smoothgrad": smoothgrad,
    "vargrad": vargrad,
    "drise": drise,
    "kernel_shap": kernel_shap,
}


# The methods that evaluate their samples in batches (their cost is counted at a batched pass's price).
BATCHED = frozenset({"integrated_gradients", "smoothgrad", "vargrad", "drise", "kernel_shap"})


def expected_passes(name: str, options: dict[str, Any], num_detections: int) -> float:
    """About how much work ``name`` is for ``num_detections`` detections of one image, in forward passes of the
    model (a backward pass counts as two). ``scripts/explain.py`` turns it into seconds in its first line.

    Per detection: 3 for the single-gradient methods (gradient, guided backprop, Grad-CAM on the trunk or
    the head, ODAM), 6 for guided Grad-CAM, 3 x ``steps`` for Integrated Gradients, 3 x ``samples`` for SmoothGrad
    and VarGrad, ``samples`` for KernelSHAP. D-RISE: ``masks`` per image, shared by all its detections.
    """
    def option(key: str) -> float:
        return float(options.get(key, inspect.signature(METHODS[name]).parameters[key].default))

    if name == "drise":
        return option("masks")
    if name == "integrated_gradients":
        per_detection = 3 * option("steps")
    elif name in ("smoothgrad", "vargrad"):
        per_detection = 3 * option("samples")
    elif name == "kernel_shap":
        per_detection = option("samples")
    elif name == "guided_gradcam":
        per_detection = 6.0
    else:
        per_detection = 3.0
    return per_detection * num_detections


ALIASES = {"ig": "integrated_gradients", "shap": "kernel_shap", "kernelshap": "kernel_shap", "saliency": "gradient"}
