"""A residual MLP for low-dimensional (toy) data: the noise embedding is injected into every layer."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Network, init_rng, zero_
from .embedding import FourierEmbedding, LabelEmbedding, noise_input

__all__ = ["MLP", "mlp"]


class MLP(Network):
    r"""``z`` ``[B, *shape]`` with ∏shape = ``dim`` → ``[B, *shape]``.

    e = Fourier(c_noise) (+ label embedding); h_0 = W_in z; h_{i+1} = h_i + W_i SiLU(h_i + U_i e);
    out = W_out SiLU(h_depth) with W_out = 0 at initialisation.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, fourier_features: int = 64,
                 fourier_scale: float = 1.0, num_classes: int = 0):
        super().__init__()
        if min(dim, hidden, depth, fourier_features) < 1 or num_classes < 0:
            raise ValueError("dim, hidden, depth and fourier_features must be positive, num_classes ≥ 0")
        self.dim, self.num_classes = dim, num_classes
        self.null_label = num_classes if num_classes else None
        self.fourier = FourierEmbedding(fourier_features, fourier_scale)
        self.label = LabelEmbedding(num_classes, fourier_features) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.cond = nn.ModuleList(nn.Linear(fourier_features, hidden) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = zero_(nn.Linear(hidden, dim))

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        logsnr = self._check(z, logsnr, labels)
        if math.prod(z.shape[1:]) != self.dim:
            raise ValueError(f"expected {self.dim} dimensions per example, got shape {list(z.shape[1:])}")
        e = self.fourier(noise_input(logsnr)).to(z.dtype)  # [B, F]
        if self.label is not None:
            e = e + self.label(labels, z.shape[0])
        h = self.inp(z.flatten(1))  # [B, H]
        for layer, cond in zip(self.layers, self.cond, strict=True):
            h = h + layer(F.silu(h + cond(e)))
        return self.out(F.silu(h)).reshape(z.shape)


def mlp(dim: int = 2, hidden: int = 256, depth: int = 4, fourier_features: int = 64, fourier_scale: float = 1.0,
        num_classes: int = 0, seed: int | None = 0) -> MLP:
    """:class:`MLP` with weights drawn from ``seed`` (``None``: from the global RNG)."""
    with init_rng(seed):
        return MLP(dim, hidden, depth, fourier_features, fourier_scale, num_classes)
