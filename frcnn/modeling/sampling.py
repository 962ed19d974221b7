"""Balanced sampling of positive and negative examples, batched over images (no parameters).

Two forms, one per stage:

* :func:`sample_mask` (RPN): a boolean mask of up to ``num_samples`` boxes per image with at most
  ``num_samples * positive_fraction`` positives; too few negatives means a smaller sample
  (py-faster-rcnn: 256 anchors, ≤ 128 positive).
* :func:`sample_fixed` (RoI head): exactly ``num_samples`` indices per image with at most
  ``num_samples * positive_fraction`` foreground, the rest background, filling with repetition when
  there is too little background (py-faster-rcnn: 128 RoIs, ≤ 32 foreground). A fixed count keeps the
  box head's batch a static ``B * R`` RoIs, with no host synchronization; slots that cannot be filled
  without breaking the foreground cap are marked invalid and carry no loss.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_keys(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """``[B, N]`` uniform keys in [0, 1): sorting by them gives the random draw order of both samplers.

    The one source of randomness here, so a test can replace it with a fixed order.
    """
    return torch.rand(shape, device=device, generator=generator)


def _random_rank(mask: Tensor, generator: torch.Generator | None) -> Tensor:
    """Rank ``[B, N]`` of each True entry in a uniformly random order (False entries rank last)."""
    key = random_keys(mask.shape, mask.device, generator)
    key = torch.where(mask, key, 2.0)
    return key.argsort(dim=1).argsort(dim=1)


@torch.no_grad()
def sample_mask(
    positive: Tensor,
    negative: Tensor,
    *,
    num_samples: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample up to ``num_samples`` boxes per image, at most ``int(num_samples * positive_fraction)`` positive.

    Positives take their share first; negatives fill the rest of ``num_samples`` as far as there are
    negatives. Without replacement.

    Args:
        positive: ``[B, N]`` bool.
        negative: ``[B, N]`` bool, disjoint from ``positive``.

    Returns:
        ``(sampled_positive, sampled_negative)``, each ``[B, N]`` bool.
    """
    num_pos = positive.sum(dim=1).clamp(max=int(num_samples * positive_fraction))  # [B]
    num_neg = negative.sum(dim=1).clamp(max=num_samples - num_pos)  # [B] (elementwise bound)
    sampled_pos = positive & (_random_rank(positive, generator) < num_pos[:, None])
    sampled_neg = negative & (_random_rank(negative, generator) < num_neg[:, None])
    return sampled_pos, sampled_neg


@torch.no_grad()
def sample_fixed(
    foreground: Tensor,
    background: Tensor,
    fallback: Tensor,
    *,
    num_samples: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Exactly ``num_samples`` index slots per image: foreground first, then background with repetition.

    Slots ``0 .. n_fg-1`` hold ``n_fg = min(#foreground, int(num_samples * positive_fraction))``
    foreground boxes drawn without replacement. The remaining slots cycle through a random permutation
    of the background pool, so when the pool is smaller than the slots every background box is used
    as evenly as possible (sampling with repetition, as the method's notes ask). The pool is
    ``background``; if an image has no background at all it is ``fallback`` (e.g. proposals with IoU
    below the background range, which in an image without ground truth are all of them). If that is
    empty too, the remaining slots are **invalid**: foreground never exceeds its cap, so an image with
    only foreground candidates gives ``n_fg`` valid slots and ``num_samples - n_fg`` invalid ones.

    Worked example (``num_samples=8``, ``positive_fraction=0.25``, so at most 2 foreground): 5
    foreground and 3 background candidates give slots ``[f, f, b, b, b, b, b, b]`` (the 3 background
    boxes repeated to fill 6 slots), all valid; 5 foreground and nothing else give
    ``[f, f, ·, ·, ·, ·, ·, ·]`` with ``valid = [1, 1, 0, 0, 0, 0, 0, 0]``. Invalid slots still hold an
    in-range index (so the gather downstream stays static) but must carry no loss.

    Args:
        foreground, background, fallback: ``[B, N]`` bool, pairwise disjoint.

    Returns:
        ``(index, valid)``: ``[B, num_samples]`` long indices into ``N`` and bool validity.
    """
    batch, n = foreground.shape
    device = foreground.device
    max_fg = int(num_samples * positive_fraction)
    rand = random_keys((batch, n), device, generator)
    fg_order = torch.where(foreground, rand, -1.0).argsort(dim=1, descending=True)  # fg first
    # Background ranks above fallback, so the first n_bg entries are background when there is any.
    pool_key = torch.where(background, 2.0 + rand, torch.where(fallback, 1.0 + rand, -1.0))
    pool_order = pool_key.argsort(dim=1, descending=True)

    n_fg = foreground.sum(dim=1, keepdim=True).clamp(max=max_fg)  # [B, 1]
    n_bg = background.sum(dim=1, keepdim=True)
    n_pool = torch.where(n_bg > 0, n_bg, fallback.sum(dim=1, keepdim=True))  # [B, 1]

    slot = torch.arange(num_samples, device=device)[None, :]  # [1, R]
    rest = (slot - n_fg).clamp(min=0)  # position among the background slots
    pool_pick = pool_order.gather(1, (rest % n_pool.clamp(min=1)).clamp(max=n - 1))  # [B, R]
    fg_pick = fg_order.gather(1, slot.clamp(max=n - 1).expand(batch, -1))  # [B, R]
    is_fg_slot = slot < n_fg
    index = torch.where(is_fg_slot, fg_pick, pool_pick)
    valid = is_fg_slot | (n_pool > 0)
    return index, valid
