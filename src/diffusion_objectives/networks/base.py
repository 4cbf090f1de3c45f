"""The interface every network implements: ``net(z, logsnr, labels=None)`` → a tensor of z's shape.

A network never sees a schedule, a weighting or a parameterization: what its output means (ε̂, x̂, v̂, F,
...) is decided by the parameterization that wraps it (docs/networks.md: the network never sees a schedule).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["Network", "init_rng", "zero_"]


class Network(nn.Module):
    """Base class. ``num_classes`` (0: unconditional) and ``null_label`` (= num_classes when conditional,
    else None) describe class conditioning."""

    num_classes: int = 0
    null_label: int | None = None

    def _check(self, z: Tensor, logsnr: Tensor, labels: Tensor | None) -> Tensor:
        """Validate the inputs and return ``logsnr`` as ``[B]`` (a scalar is broadcast)."""
        if logsnr.ndim == 0:
            logsnr = logsnr.expand(z.shape[0])
        if logsnr.shape != z.shape[:1]:
            raise ValueError(f"logsnr must be [B] = [{z.shape[0]}], got {list(logsnr.shape)}")
        if labels is not None:
            if self.num_classes == 0:
                raise ValueError("labels given to an unconditional network (num_classes = 0)")
            if labels.shape != z.shape[:1]:
                raise ValueError(f"labels must be [B] = [{z.shape[0]}], got {list(labels.shape)}")
        return logsnr

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@contextlib.contextmanager
def init_rng(seed: int | None) -> Iterator[None]:
    """Draw initial weights from a CPU generator seeded with ``seed`` without touching the caller's global
    RNG state (``None``: use the global RNG as it is)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def zero_(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` (final layers: the initial output is exactly 0, as in ADM/EDM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
