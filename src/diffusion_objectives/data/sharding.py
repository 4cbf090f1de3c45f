"""Deterministic batches for any number of processes.

The examples are visited in an endless stream: epoch e is the permutation ``randperm(N)`` drawn from a
generator seeded by (seed, e), and global batch ``step`` is positions [step·B, (step+1)·B) of the stream
(so a batch may straddle two epochs). Rank r of W takes the r-th contiguous slice of B/W of that batch.
The global batch is therefore a function of (seed, step) alone: 1-process and W-process runs train on
the same examples, and every epoch visits every example exactly once.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from ..errors import OptionError
from .toy import derive_seed

__all__ = ["epoch_permutation", "batch_indices"]


@lru_cache(maxsize=4)
def epoch_permutation(n_items: int, seed: int, epoch: int) -> Tensor:
    """The visiting order of epoch ``epoch``: a permutation of ``n_items`` (int64, do not modify)."""
    return torch.randperm(n_items, generator=torch.Generator().manual_seed(derive_seed("epoch", seed, epoch)))


def batch_indices(n_items: int, batch_size: int, seed: int, step: int, rank: int = 0,
                  world_size: int = 1) -> Tensor:
    """Indices ``[batch_size // world_size]`` (int64) of rank ``rank``'s part of global batch ``step``."""
    if n_items < 1 or batch_size < 1 or step < 0:
        raise OptionError(f"need n_items ≥ 1, batch_size ≥ 1, step ≥ 0; got {n_items}, {batch_size}, {step}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise OptionError(f"rank {rank} is not in [0, world_size = {world_size})")
    if batch_size % world_size:
        raise OptionError(f"batch_size {batch_size} is not divisible by world_size {world_size}")
    local = batch_size // world_size
    start = step * batch_size + rank * local
    epoch, offset = divmod(start, n_items)
    if offset + local <= n_items:  # within one epoch (the common case): a slice of its permutation
        return epoch_permutation(n_items, seed, epoch)[offset:offset + local].clone()
    positions = torch.arange(start, start + local)  # positions in the endless stream
    epochs, offsets = positions // n_items, positions % n_items
    out = torch.empty(local, dtype=torch.int64)
    for e in epochs.unique().tolist():
        mask = epochs == e
        out[mask] = epoch_permutation(n_items, seed, e)[offsets[mask]]
    return out
