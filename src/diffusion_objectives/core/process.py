r"""The variance-preserving forward process in log-SNR coordinates (KG23 §2; docs/theory.md, "Notation").

:math:`\lambda = \log(\alpha^2/\sigma^2)`, :math:`\alpha^2 = \mathrm{sigmoid}(\lambda)`,
:math:`\sigma^2 = \mathrm{sigmoid}(-\lambda)`, :math:`z = \alpha x + \sigma \epsilon`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["expand_like", "alpha_sigma", "sigma_ve", "add_noise", "logsnr_from_sigma_ve"]


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example ``[B]`` tensor to ``[B, 1, ..., 1]`` so it broadcasts against ``x`` ``[B, ...]``."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    r"""(α, σ) = (√sigmoid(λ), √sigmoid(−λ)), stable for any λ."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def sigma_ve(logsnr: Tensor) -> Tensor:
    r"""EDM's variance-exploding noise level :math:`\sigma_{VE} = \sigma/\alpha = e^{-\lambda/2}`."""
    return torch.exp(-0.5 * logsnr)


def logsnr_from_sigma_ve(sigma: Tensor) -> Tensor:
    r""":math:`\lambda = -2 \log \sigma_{VE}` (the boundary conversion from EDM's σ)."""
    return -2.0 * torch.log(sigma)


def add_noise(x: Tensor, eps: Tensor, logsnr: Tensor) -> Tensor:
    r""":math:`z = \alpha_\lambda x + \sigma_\lambda \epsilon`; ``x``, ``eps`` ``[B, ...]``, ``logsnr`` ``[B]``."""
    alpha, sigma = alpha_sigma(logsnr)
    return expand_like(alpha, x) * x + expand_like(sigma, x) * eps
