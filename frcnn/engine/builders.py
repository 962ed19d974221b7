"""Turn a composed Hydra config into data sets, loaders, a model, an optimizer and a schedule."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from frcnn.data.coco import CategoryMap, CocoDetection, collate
from frcnn.data.formats import split_annotations
from frcnn.data.samplers import GroupedBatchSampler
from frcnn.data.synthetic import generate
from frcnn.engine.distributed import DistInfo, barrier
from frcnn.errors import ConfigError


def ensure_synthetic(cfg: DictConfig, dist_info: DistInfo) -> None:
    """Generate the built-in synthetic data set if the config asks for it and it is missing."""
    ensure_synthetic_at(cfg.data.root, cfg.data.get("generate"), dist_info, key="data")


def ensure_synthetic_at(root: str | Path, settings: Mapping[str, Any] | None, dist_info: DistInfo, *, key: str) -> None:
    """The synthetic detection set at ``root`` (``<key>.root``), generated with ``settings`` if missing."""
    ensure_generated(root, settings, dist_info, generate, "the synthetic data set", key=key, foreign=_has_annotations)


def _has_annotations(root: Path) -> bool:
    return (root / "annotations").is_dir() and any((root / "annotations").iterdir())


def ensure_generated(
    root: str | Path,
    settings: Mapping[str, Any] | None,
    dist_info: DistInfo,
    generator: Callable[..., Any],
    what: str,
    *,
    key: str,
    foreign: Callable[[Path], bool] | None = None,
) -> None:
    """Write a generated data set into ``root`` with ``generator(root, **settings)`` unless its ``READY`` file is
    there (a line says which settings differ from those it records); rank 0 writes, every rank waits. ``settings`` None: nothing is generated. ``foreign(root)`` True
    means ``root`` holds data the generator did not write, which is never written over: :class:`ConfigError`
    naming ``<key>.root`` and ``<key>.generate``."""
    if settings is None:
        return
    root = Path(root)
    if dist_info.is_main and (root / "READY").exists():
        _check_generated_with(root, settings, key)
    if dist_info.is_main and not (root / "READY").exists():
        if foreign is not None and foreign(root):
            raise ConfigError(
                f"{key}.root={root} holds a data set the generator did not write (no READY file); generating would "
                f"overwrite it: pass {key}.generate=null to train on it as it is"
            )
        print(f"generating {what} in {root} ...", flush=True)
        generator(root, **settings)
    barrier()


def _check_generated_with(root: Path, settings: Mapping[str, Any], key: str) -> None:
    """Say so when ``root``'s ``READY`` file records other values than ``settings`` asks for (compared on the keys
    both have, nested ones included): the folder is used as it is, never regenerated over, but a changed
    ``<key>.generate`` (e.g. a randomization setting) should not go unnoticed."""
    try:
        recorded = json.loads((root / "READY").read_text() or "{}")
    except json.JSONDecodeError:
        return  # an early READY without settings: nothing to compare
    if not isinstance(recorded, dict):
        return
    wanted = OmegaConf.to_container(settings, resolve=True) if isinstance(settings, DictConfig) else dict(settings)
    changed = [f"{name}={there} (not {asked})" for name, there, asked in _differences(recorded, wanted)]
    if changed:
        print(f"{key}.root={root} was generated with {key}.generate.{', '.join(changed[:3])}"
              f"{' and more' if len(changed) > 3 else ''}; using it as it is: delete the folder to generate it with "
              f"the settings asked for, or set {key}.root to another folder", flush=True)


def _differences(recorded: Any, wanted: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, recorded, wanted)`` for each value both mappings hold and that differs (numbers by value)."""
    for name in sorted(set(recorded) & set(wanted)):
        there, asked = recorded[name], wanted[name]
        if isinstance(there, dict) and isinstance(asked, dict):
            yield from _differences(there, asked, f"{prefix}{name}.")
        elif (list(there) if isinstance(there, (list, tuple)) else there) != (list(asked) if isinstance(asked, (list, tuple)) else asked):
            yield f"{prefix}{name}", there, asked


def build_dataset(cfg: DictConfig, split: str, *, train: bool, categories: CategoryMap | None = None) -> CocoDetection:
    """The ``split`` of ``cfg.data`` (any ``data.format``). Unreadable images: the training split replaces
    them (counted against ``data.max_bad_image_fraction``); the validation split used during training
    skips them, and periodic evaluation reports how many (``val/unreadable_images``) and scores the rest."""
    split_cfg = cfg.data[split]
    return CocoDetection(
        split_cfg.images,
        split_annotations(cfg, split, categories),
        transforms=instantiate(cfg.data.augment) if train and cfg.data.get("augment") else None,
        drop_empty=bool(cfg.data.drop_empty) if train else False,
        category_map=categories,
        min_box_size=float(cfg.data.min_box_size),
        max_pixels=cfg.data.get("max_pixels"),
        strict=bool(cfg.data.get("strict", False)),
        on_unreadable="replace" if train else "skip",
        preflight=bool(cfg.data.get("preflight", False)) and train,
        max_bad_image_fraction=float(cfg.data.get("max_bad_image_fraction", 0.01)),
    )


class InfiniteBatches(torch.utils.data.Sampler):
    """An endless, deterministic stream of aspect-grouped batches for one rank, epoch after epoch.

    Each batch is a list of ``(index, augmentation_seed)`` keys: the seed is a pure function of
    ``(seed, epoch, index)`` (:func:`sample_seed`), so how a sample is augmented does not depend on
    the worker that loads it or on where the run was resumed. The stream depends only on
    ``(seed, rank, world_size)``, so a resumed run skips the batches it already consumed (``start``)
    and continues with the very batch it would have seen next. Under DDP every rank draws from its
    own ``DistributedSampler`` shard, and training is counted in iterations, so ranks always take the
    same number of steps.
    """

    def __init__(self, dataset: CocoDetection, batch_size: int, seed: int, dist_info: DistInfo, start: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.dist_info = dist_info
        self.start = start
        groups = [dataset.aspect_ratio_group(i) for i in range(len(dataset))]
        # One process is a world of one: the whole set, a permutation per epoch seeded by seed + epoch.
        shard = DistributedSampler(dataset, dist_info.world_size, dist_info.rank, shuffle=True, seed=seed, drop_last=True)
        self.batches = GroupedBatchSampler(shard, groups, batch_size, drop_last=True)
        if len(self.batches) == 0:  # no full batch in any orientation: the stream would never yield one
            counts = [groups.count(0), groups.count(1)]
            raise ConfigError(
                f"the {len(dataset)} training images ({counts[0]} landscape, {counts[1]} portrait, batched by "
                f"orientation{f' over {dist_info.world_size} processes' if dist_info.world_size > 1 else ''}) "
                f"make no full batch of data.batch_size={batch_size}: lower data.batch_size"
            )

    def _stream(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in itertools.count():
            self.batches.set_epoch(epoch)
            for batch in self.batches:
                yield [(index, sample_seed(self.seed, epoch, index)) for index in batch]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return itertools.islice(self._stream(), self.start, None)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded ``seed`` (32 bits)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def train_loader(cfg: DictConfig, dataset: CocoDetection, dist_info: DistInfo, start_batch: int, collate_fn=collate) -> DataLoader:
    batches = InfiniteBatches(dataset, int(cfg.data.batch_size), int(cfg.seed), dist_info, start=start_batch)
    workers = num_workers(cfg.data.num_workers)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=_pin(cfg),
        collate_fn=collate_fn,
        persistent_workers=workers > 0,
        # Its own generator: starting an iterator draws a base seed, which must not come from (and
        # shift) the global RNG that a resumed run restores.
        generator=torch.Generator().manual_seed(int(cfg.seed) + dist_info.rank),
    )


def eval_loader(cfg: DictConfig, dataset: CocoDetection, dist_info: DistInfo) -> DataLoader:
    """Sequential batches of this rank's shard (``rank::world_size``) of the evaluation split."""
    indices = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    subset = torch.utils.data.Subset(dataset, indices)
    return DataLoader(
        subset,
        sampler=SequentialSampler(subset),
        batch_size=int(cfg.data.get("eval_batch_size", cfg.data.batch_size)),
        num_workers=num_workers(cfg.data.num_workers),
        pin_memory=_pin(cfg),
        collate_fn=collate,
    )


def num_workers(setting: int | str) -> int:
    """``data.num_workers``: a count, or ``"auto"``: the CPU cores this process may use, at most 4, less one
    for the training process itself (0 on a one-core machine: the images are read in the main process).
    On a 2-core machine: 1 (torch warns when a loader asks for more workers than there are cores)."""
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


def _pin(cfg: DictConfig) -> bool:
    pin = cfg.data.get("pin_memory", "auto")
    return torch.cuda.is_available() if pin == "auto" else bool(pin)


def build_model(cfg: DictConfig, categories: CategoryMap) -> torch.nn.Module:
    """The detector ``cfg.model`` describes, after checking that ``data.num_classes`` matches the data."""
    if int(cfg.data.num_classes) != categories.num_classes:
        raise ConfigError(
            f"data.num_classes={cfg.data.num_classes} but {cfg.data.train.annotations} has "
            f"{categories.num_classes} categories; set data.num_classes={categories.num_classes}"
        )
    return instantiate(cfg.model)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, world_size: int = 1) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optim`` names (a ``_partial_`` config), over :func:`param_groups` of ``model``.

    Linear scaling rule (Goyal et al., 2017): the learning rate is ``optim.lr`` × total batch
    (``data.batch_size`` × ``world_size``) / ``trainer.reference_batch_size``.
    """
    total_batch = int(cfg.data.batch_size) * world_size
    lr = float(cfg.optim.lr) * total_batch / int(cfg.trainer.reference_batch_size)
    # _convert_="all": plain lists (AdamW's betas), not ListConfig, in the optimizer's state, which
    # checkpoints hold and load with weights_only=True.
    make = instantiate(cfg.optim, lr=lr, _convert_="all")
    return make(param_groups(model, float(cfg.optim.weight_decay)))


def param_groups(model: torch.nn.Module, weight_decay: float, norm_weight_decay: float = 0.0) -> list[dict]:
    """Weight decay on conv/linear weights only; none on biases and normalization parameters."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(module, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm))
            (no_decay if name == "bias" or is_norm else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": norm_weight_decay})
    return groups
