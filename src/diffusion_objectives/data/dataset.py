r"""The one dataset type, and the map between K grey levels and [−1, 1] (docs/theory.md, "Notation" and "The ELBO").

Grey level k ∈ {0, …, K−1} is stored as the bin centre :math:`x = -1 + 2k/(K-1)`, so the K levels
span [−1, 1] with spacing 2/(K−1): the discrete likelihood of VDM21 (docs/theory.md, "The ELBO") puts one bin on each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..core.mixtures import GaussianMixture

__all__ = ["Dataset", "quantize", "dequantize", "random_hflip"]


def dequantize(k: Tensor, levels: int) -> Tensor:
    r"""Grey levels ``k`` (integers in [0, K−1], any shape) → bin centres :math:`-1 + 2k/(K-1)`, float32."""
    return (-1.0 + 2.0 * k.to(torch.float64) / (levels - 1)).to(torch.float32)


def quantize(x: Tensor, levels: int) -> Tensor:
    r"""Values ``x`` in [−1, 1] (any shape) → the nearest grey level
    :math:`k = \mathrm{round}((x+1)(K-1)/2)`, clamped to [0, K−1], int64. Inverse of :func:`dequantize`;
    ``quantize(x, 256).to(torch.uint8)`` is an 8-bit image."""
    k = torch.round((x.to(torch.float64) + 1.0) * (levels - 1) / 2.0)
    return k.clamp(0, levels - 1).to(torch.int64)


def random_hflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image of ``x`` ``[B, ..., W]`` along its last axis with probability ½, drawn from
    ``generator`` (one uniform per example, so the result depends on the generator state only)."""
    device = generator.device if generator is not None else x.device
    flip = torch.rand(x.shape[0], generator=generator, device=device).to(x.device) < 0.5
    return torch.where(flip.reshape((-1,) + (1,) * (x.ndim - 1)), x.flip(-1), x)


@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory dataset.

    ``data`` float32 ``[N, ...]``: images ``[N, C, H, W]`` in [−1, 1] (see :func:`dequantize`), toy points
    ``[N, D]`` as drawn. ``labels`` int64 ``[N]`` in ``[0, num_classes)`` or None. ``levels`` is K for
    discrete data and None for continuous data. ``mixture`` is the generating
    :class:`~diffusion_objectives.core.mixtures.GaussianMixture` of toy data (closed-form density and optimal
    denoiser). ``hflip``: horizontal-flip augmentation is enabled (apply :func:`random_hflip` per batch).
    ``shape`` is the per-example shape ``data.shape[1:]``.
    """

    data: Tensor
    name: str
    levels: int | None = None
    labels: Tensor | None = None
    num_classes: int = 0
    mixture: GaussianMixture | None = None
    hflip: bool = False
    shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.data.dtype != torch.float32 or self.data.ndim < 2 or self.data.shape[0] == 0:
            raise ValueError(f"dataset {self.name!r}: data must be a non-empty float32 tensor [N, ...]")
        if self.levels is not None and self.levels < 2:
            raise ValueError(f"dataset {self.name!r}: levels must be at least 2, got {self.levels}")
        if (self.labels is None) != (self.num_classes == 0):
            raise ValueError(f"dataset {self.name!r}: labels are given iff num_classes > 0")
        if self.labels is not None:
            if self.labels.dtype != torch.int64 or self.labels.shape != self.data.shape[:1]:
                raise ValueError(f"dataset {self.name!r}: labels must be int64 [N]")
            if self.labels.min() < 0 or self.labels.max() >= self.num_classes:
                raise ValueError(f"dataset {self.name!r}: labels outside [0, {self.num_classes})")
        if self.hflip and self.data.ndim != 4:
            raise ValueError(f"dataset {self.name!r}: hflip needs images [N, C, H, W]")
        object.__setattr__(self, "shape", tuple(self.data.shape[1:]))

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def dim(self) -> int:
        """D, the number of data dimensions per example (the denominator of bits/dim)."""
        return self.data[0].numel()

    def info(self) -> dict[str, Any]:
        """A JSON-able summary (for the resolved config written next to checkpoints)."""
        return {"name": self.name, "size": len(self), "shape": list(self.shape), "levels": self.levels,
                "num_classes": self.num_classes, "hflip": self.hflip}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.info().items())
        return f"Dataset({inner})"
