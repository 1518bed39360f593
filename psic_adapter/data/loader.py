"""Batches of items: :func:`collate` and a seeded :func:`make_loader`."""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError


def collate(batch: Sequence[Dict[str, object]]) -> Dict[str, object]:
    """Stack ``image`` (all one size) into ``Bx3xHxW``; ``label`` into a LongTensor;
    keep ``text`` and ``path`` (and any other non-tensor field) as lists."""
    if not batch:
        raise DataError("empty batch")
    out: Dict[str, object] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key == "image" or isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise DataError(
                    f"cannot batch {key!r} of different sizes {sorted(shapes)}: give a crop size "
                    "(or use batch size 1)"
                )
            out[key] = torch.stack(values)
        elif key == "label":
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = list(values)
    return out


def _seed_worker(worker_id: int) -> None:
    """Give numpy and random in each worker a seed derived from the loader's."""
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    sampler=None,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader that batches items with :func:`collate`.

    The shuffle order and the workers' seeds come from a generator seeded with
    ``seed``, so a run is repeatable. Workers persist across epochs when
    ``num_workers > 0``. With a ``sampler`` (e.g. a DistributedSampler) the
    sampler orders the data and ``shuffle`` is ignored.
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be at least 1, not {batch_size!r}")
    if int(num_workers) < 0:
        raise ConfigError(f"num_workers must be >= 0, not {num_workers!r}")
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=bool(shuffle) if sampler is None else False,
        sampler=sampler,
        num_workers=int(num_workers),
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
    )
