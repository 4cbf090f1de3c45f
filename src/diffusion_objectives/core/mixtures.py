r"""Gaussian mixtures: data with closed-form density, noisy marginals and optimal denoiser.

For x ~ Σ_k π_k N(μ_k, Σ_k) and z = α x + σ ε, the noisy marginal is
Σ_k π_k N(z; α μ_k, α² Σ_k + σ² I), so the score ∇_z log p_λ(z) and the optimal noise prediction
ε̂*(z; λ) = E[ε | z] = −σ ∇_z log p_λ(z) are closed form (Tweedie). These are the analytic oracles of the
test-suite (closed-form expected values) and the 2-D toy datasets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .process import alpha_sigma

__all__ = ["GaussianMixture", "ring", "grid", "anisotropic_pair"]


class GaussianMixture:
    """Mixture with ``weights`` ``[K]``, ``means`` ``[K, D]`` and ``covariances`` ``[K, D, D]`` (float64)."""

    def __init__(self, weights: Tensor | Sequence[float], means: Tensor | Sequence, covariances: Tensor | Sequence):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covariances = torch.as_tensor(covariances, dtype=torch.float64)
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covariances.shape != (k, d, d):
            raise ValueError("weights [K], means [K, D] and covariances [K, D, D] do not agree")
        self.dim = d
        self._chol = torch.linalg.cholesky(self.covariances)

    @classmethod
    def isotropic(cls, weights, means, std: float | Sequence[float]) -> GaussianMixture:
        means = torch.as_tensor(means, dtype=torch.float64)
        k, d = means.shape
        std = torch.as_tensor(std, dtype=torch.float64).expand(k)
        return cls(weights, means, std[:, None, None] ** 2 * torch.eye(d, dtype=torch.float64).expand(k, d, d))

    # -- data ----------------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, *, return_components: bool = False):
        """``n`` samples ``[n, D]`` (float64), optionally with their component index ``[n]``."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[comp] + (self._chol[comp] @ noise[:, :, None])[:, :, 0]
        return (x, comp) if return_components else x

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) ``[n]`` for ``x`` ``[n, D]``."""
        return self._log_prob(x.to(torch.float64), self.means[None], self.covariances[None])

    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        m = self.mean()
        d = self.means - m
        return (self.weights[:, None, None] * (self.covariances + d[:, :, None] * d[:, None, :])).sum(0)

    # -- the noisy marginals -------------------------------------------------------------------------
    def _noisy(self, logsnr: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma = alpha_sigma(logsnr.to(torch.float64))
        means = alpha[:, None, None] * self.means[None]  # [n, K, D]
        eye = torch.eye(self.dim, dtype=torch.float64)
        covs = alpha[:, None, None, None] ** 2 * self.covariances[None] + sigma[:, None, None, None] ** 2 * eye
        return means, covs

    def _log_prob(self, z: Tensor, means: Tensor, covs: Tensor) -> Tensor:
        return torch.logsumexp(self._component_log_probs(z, means, covs), dim=1)

    def _component_log_probs(self, z: Tensor, means: Tensor, covs: Tensor) -> Tensor:
        chol = torch.linalg.cholesky(covs)  # [n or 1, K, D, D]
        diff = (z[:, None, :] - means)[..., None]  # [n, K, D, 1]
        sol = torch.linalg.solve_triangular(chol.expand(diff.shape[0], -1, -1, -1), diff, upper=False)
        maha = sol.square().sum((-2, -1))
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        return torch.log(self.weights) - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))

    def noisy_log_prob(self, z: Tensor, logsnr: Tensor) -> Tensor:
        """log p_λ(z) ``[n]`` of the noisy marginal at per-example λ ``[n]``."""
        means, covs = self._noisy(logsnr)
        return self._log_prob(z.to(torch.float64), means, covs)

    def score(self, z: Tensor, logsnr: Tensor) -> Tensor:
        """∇_z log p_λ(z) = Σ_k r_k(z) (α²Σ_k + σ²I)⁻¹ (α μ_k − z), ``[n, D]``."""
        z64 = z.to(torch.float64)
        means, covs = self._noisy(logsnr)
        resp = torch.softmax(self._component_log_probs(z64, means, covs), dim=1)  # [n, K]
        diff = (means - z64[:, None, :])[..., None]
        per_comp = torch.linalg.solve(covs.expand(z64.shape[0], -1, -1, -1), diff)[..., 0]
        return (resp[..., None] * per_comp).sum(1).to(z.dtype)

    def eps_hat(self, z: Tensor, logsnr: Tensor) -> Tensor:
        """The optimal (MMSE) noise prediction E[ε | z_λ = z] = −σ ∇ log p_λ(z), ``[n, D]``."""
        _, sigma = alpha_sigma(logsnr.to(torch.float64))
        return (-sigma[:, None] * self.score(z, logsnr).to(torch.float64)).to(z.dtype)

    def denoiser(self, parameterization):
        """A ``model(z, logsnr)`` returning the exact optimum in ``parameterization``'s output space."""

        def model(z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
            return parameterization.output(self.eps_hat(z, logsnr), z, logsnr)

        return model


def ring(components: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """``components`` equal-weight isotropic Gaussians on a circle (the '8 gaussians' toy)."""
    angle = 2 * math.pi * torch.arange(components, dtype=torch.float64) / components
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return GaussianMixture.isotropic(torch.ones(components), means, std)


def grid(side: int = 5, spacing: float = 0.5, std: float = 0.05) -> GaussianMixture:
    """A ``side × side`` grid of equal-weight Gaussians centred on the origin."""
    ticks = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    means = torch.cartesian_prod(ticks, ticks)
    return GaussianMixture.isotropic(torch.ones(side * side), means, std)


def anisotropic_pair() -> GaussianMixture:
    """Two unequal-weight Gaussians with correlated, anisotropic covariances."""
    means = [[-0.6, -0.2], [0.5, 0.4]]
    covs = [[[0.09, 0.06], [0.06, 0.08]], [[0.02, -0.01], [-0.01, 0.05]]]
    return GaussianMixture([0.3, 0.7], means, covs)
