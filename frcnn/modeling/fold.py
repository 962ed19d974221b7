"""BatchNorm folded into the convolution before it: the same outputs in eval mode, one pass less.

In eval mode a BatchNorm (trainable or frozen) is the per-channel affine map
``y = (x - mean) / sqrt(var + eps) * gamma + beta``. After a convolution ``x = W * z + b`` it folds
into that convolution: ``W' = W * s`` and ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``
(per output channel). A folded network reads its activations once per convolution instead of twice.

Which pairs fold: a plain ``nn.Conv2d`` immediately followed by a BatchNorm in a plain ``nn.Sequential``
(stems, downsampling branches, VGG/AlexNet stacks), in torchvision's ``Conv2dNormActivation`` (a
Sequential; MobileNetV3's blocks) and in its ``IntermediateLayerGetter`` (an FPN backbone's body, whose
``forward`` runs its children in order, like a Sequential), and the ``convN`` / ``bnN`` pairs of torchvision's
``BasicBlock`` and ``Bottleneck``, whose ``forward`` applies ``bnN`` right after ``convN``. Nothing is
inferred from names elsewhere (a module may well compute ``bn1(relu(conv1(x)))``), subclasses are left
alone (their ``forward`` may differ), and a BatchNorm that uses batch statistics in eval mode
(``track_running_stats=False``) is not an affine map and stays.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.misc import Conv2dNormActivation

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
_SEQUENTIAL = (nn.Sequential, Conv2dNormActivation, IntermediateLayerGetter)  # forward: children in order


def _foldable_norm(module: nn.Module) -> bool:
    return type(module) in _NORMS and getattr(module, "running_var", None) is not None


@torch.no_grad()
def fold_conv_norm(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A copy of ``conv`` computing ``norm(conv(x))`` (``norm`` in eval mode), with a bias.

    The arithmetic is torch's own (``torch.nn.utils.fusion.fuse_conv_bn_weights``, which takes a norm
    without affine parameters as gamma 1, beta 0); FrozenBatchNorm2d has the same buffers as BatchNorm2d.
    """
    folded = copy.deepcopy(conv)
    folded.weight, folded.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    return folded


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """``(conv_name, norm_name)`` for every foldable pair directly under ``module``."""
    children = dict(module.named_children())
    if type(module) in _SEQUENTIAL:
        names = list(children)
        return [(a, b) for a, b in zip(names, names[1:])
                if type(children[a]) is nn.Conv2d and _foldable_norm(children[b])]
    if type(module) in (BasicBlock, Bottleneck):  # forward: bnN(convN(x)) for N = 1, 2 (, 3)
        return [(f"conv{i}", f"bn{i}") for i in (1, 2, 3)
                if type(children.get(f"conv{i}")) is nn.Conv2d and _foldable_norm(children.get(f"bn{i}"))]
    return []


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode with every foldable BatchNorm folded into its convolution.

    The caller's module is left as it is. Outputs match the original's eval-mode outputs to float
    rounding (the tests hold them to 1e-4 relative). Folded modules are for inference only: the
    BatchNorms become ``nn.Identity``, so training statistics and gradients no longer apply.
    """
    folded = copy.deepcopy(module).eval()
    for parent in list(folded.modules()):
        for conv_name, norm_name in _pairs(parent):
            setattr(parent, conv_name, fold_conv_norm(getattr(parent, conv_name), getattr(parent, norm_name)))
            setattr(parent, norm_name, nn.Identity())
    return folded


def count_norms(module: nn.Module) -> int:
    """How many BatchNorm layers ``module`` still runs (0 after a complete fold)."""
    return sum(isinstance(m, _NORMS) for m in module.modules())
