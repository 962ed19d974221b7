"""Aspect-ratio grouped batching that composes with ``DistributedSampler``.

Images of one batch share an orientation (landscape or portrait), so padding to the batch's largest
image wastes little (detectron2 and torchvision do the same).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices drawn from ``sampler`` whose ``group_ids`` agree.

    Order follows ``sampler`` (random, or a rank's shard under DDP). Leftovers of each group at the end
    of an epoch are dropped when ``drop_last`` (training: every rank then takes the same number of steps
    only if the length is taken from :meth:`__len__`, which counts full batches per group).

    Args:
        sampler: yields dataset indices (e.g. ``RandomSampler`` or ``DistributedSampler``).
        group_ids: group of each dataset index.
        batch_size: images per batch.
        drop_last: drop incomplete batches.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int, drop_last: bool = True) -> None:
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for idx in self.sampler:
            bucket = buckets.setdefault(self.group_ids[idx], [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[self.group_ids[idx]] = []
        if not self.drop_last:
            for bucket in buckets.values():
                if bucket:
                    yield bucket

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        counts: dict[int, int] = {}
        for idx in self.sampler:
            counts[self.group_ids[idx]] = counts.get(self.group_ids[idx], 0) + 1
        full = sum(n // self.batch_size for n in counts.values())
        partial = sum(1 for n in counts.values() if n % self.batch_size) if not self.drop_last else 0
        return full + partial
