r"""What a network is told about the noise level and the class.

The network's noise input is :math:`c_{noise} = -\lambda/8`, which equals EDM's
:math:`c_{noise} = \tfrac14 \ln \sigma_{VE}` (σ_VE = e^{−λ/2}, docs/theory.md, "Notation"): a moderate range
(±1.9 on the default λ ∈ [−15, 15]) whatever the schedule, and the same input EDM's networks get.
It is embedded with sinusoids: deterministic geometric frequencies (:class:`PositionalEmbedding`, ADM/EDM
U-Nets) or random Gaussian frequencies (:class:`FourierEmbedding`, Tancik et al. 2020; the MLP).

Class conditioning has ``num_classes + 1`` embeddings; the last one, index ``null_label = num_classes``,
is the unconditional "null" class used by classifier-free guidance (Ho & Salimans 2022; docs/theory.md, "Samplers").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["noise_input", "PositionalEmbedding", "FourierEmbedding", "LabelEmbedding", "drop_labels"]


def noise_input(logsnr: Tensor) -> Tensor:
    r""":math:`c_{noise} = -\lambda/8 = \tfrac14 \ln \sigma_{VE}` (EDM22 Table 1), ``[B]``."""
    return -logsnr / 8


class PositionalEmbedding(nn.Module):
    """``[B]`` → ``[B, num_channels]``: cos and sin of ``x · f_i`` with f_i = max_positions^(−i/half)."""

    def __init__(self, num_channels: int, max_positions: float = 10_000.0):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"num_channels must be even, got {num_channels}")
        half = num_channels // 2
        freqs = torch.exp(-math.log(max_positions) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        arg = x.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """``[B]`` → ``[B, num_channels]``: cos and sin of ``2π x f_i`` with fixed f_i ~ N(0, scale²) drawn
    at construction (a buffer, saved with the weights)."""

    def __init__(self, num_channels: int, scale: float = 1.0):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"num_channels must be even, got {num_channels}")
        self.register_buffer("freqs", 2 * math.pi * scale * torch.randn(num_channels // 2))

    def forward(self, x: Tensor) -> Tensor:
        arg = x.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class LabelEmbedding(nn.Module):
    """``labels`` ``[B]`` in [0, num_classes] → ``[B, dim]``; ``None`` means the null label for all."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.null_label = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor | None, batch: int) -> Tensor:
        if labels is None:
            labels = torch.full((batch,), self.null_label, dtype=torch.int64,
                                device=self.embedding.weight.device)
        return self.embedding(labels)


def drop_labels(labels: Tensor, null_label: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p`` (classifier-free guidance training),
    drawing one uniform per example from ``generator``."""
    device = generator.device if generator is not None else labels.device
    drop = torch.rand(labels.shape[0], generator=generator, device=device).to(labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_label), labels)
