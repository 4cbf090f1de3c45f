r"""KG23's main theorem as numbers: the weighted loss as an integral of ELBOs (KG23 §4; docs/theory.md, "The theorem").

With L(λ) the negative ELBO of data perturbed to level λ (plus a model-independent constant),
dL/dλ = ½ ℓ(λ), where ℓ(λ) = E_ε‖ε̂(z_λ; λ) − ε‖² is the per-level loss curve (VDM21). Integrating
L_w = ½ ∫ w ℓ dλ by parts gives

    L_w = −∫_{λ_min}^{λ_max} w'(λ) L(λ) dλ + w(λ_max) L(λ_max) − w(λ_min) L(λ_min).        (KG23 Eq. 10–11)

For a non-increasing w normalised to w(λ_min) = 1, the weights −w'(λ) on (λ_min, λ_max) and the point mass
w(λ_max) at λ_max form a probability distribution p_w over noise levels: the *augmentation density*, and
L_w is the expected negative ELBO of data augmented with Gaussian noise of level λ ~ p_w.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import OptionError
from .weightings import Weighting

__all__ = ["AugmentationDensity", "augmentation_density", "IntegrationByParts", "integration_by_parts",
           "weighting_derivative"]


def weighting_derivative(weighting: Weighting, logsnr: Tensor) -> Tensor:
    """w'(λ) by autograd (float64), same shape as ``logsnr``."""
    lam = logsnr.detach().to(torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(weighting(lam).sum(), lam)
    return grad


@dataclass(frozen=True)
class AugmentationDensity:
    """``density`` p_w(λ) = −w'(λ)/w(λ_min) on the given grid, and the ``point_mass`` w(λ_max)/w(λ_min)
    at λ_max. ∫ density dλ + point_mass = 1."""

    logsnr: Tensor
    density: Tensor
    point_mass: float


def augmentation_density(weighting: Weighting, logsnr: Tensor, logsnr_min: float,
                         logsnr_max: float) -> AugmentationDensity:
    """The noise-augmentation distribution implied by a monotone weighting (KG23 §4; docs/theory.md, "The theorem").

    Raises :class:`~diffusion_objectives.errors.OptionError` if ``weighting`` is not non-increasing on
    [logsnr_min, logsnr_max]: its p_w would take negative values (a signed combination of ELBOs)."""
    if not weighting.is_monotonic(logsnr_min, logsnr_max):
        raise OptionError(
            f"{weighting!r} is not monotone (non-increasing) on [{logsnr_min}, {logsnr_max}]: it has no "
            "augmentation density, its loss is a signed combination of ELBOs (KG23 §4)"
        )
    ends = torch.tensor([logsnr_min, logsnr_max], dtype=torch.float64)
    w_min, w_max = (float(v) for v in weighting(ends))
    lam = logsnr.to(torch.float64)
    inside = (lam >= logsnr_min) & (lam <= logsnr_max)
    dens = torch.where(inside, -weighting_derivative(weighting, lam) / w_min, torch.zeros_like(lam))
    return AugmentationDensity(logsnr=logsnr, density=dens.clamp_min(0.0).to(logsnr.dtype),
                               point_mass=w_max / w_min)


@dataclass(frozen=True)
class IntegrationByParts:
    """Both sides of KG23 Eq. 10–11 by trapezoidal quadrature on the given grid."""

    weighted_loss: float  # ½ ∫ w ℓ dλ
    integral_of_elbos: float  # −∫ w' L dλ + w(λ_max) L(λ_max) − w(λ_min) L(λ_min)


def integration_by_parts(weighting: Weighting, logsnr: Tensor, loss_curve: Tensor,
                         prior: float = 0.0) -> IntegrationByParts:
    """Evaluate the weighted loss and the weighted integral of ELBOs for a per-level loss curve.

    ``logsnr`` is an increasing grid ``[N]`` from λ_min to λ_max, ``loss_curve`` ℓ(λ) = E‖ε̂ − ε‖² on it,
    ``prior`` is L(λ_min) (any constant: it cancels). L(λ) = prior + ½ ∫_{λ_min}^{λ} ℓ."""
    lam = logsnr.to(torch.float64)
    ell = loss_curve.to(torch.float64)
    if lam.ndim != 1 or lam.shape != ell.shape or not bool((lam[1:] > lam[:-1]).all()):
        raise ValueError("logsnr must be an increasing 1-D grid and loss_curve the same shape")
    w = weighting(lam).to(torch.float64)
    dw = weighting_derivative(weighting, lam)
    L = prior + torch.cat([lam.new_zeros(1), torch.cumulative_trapezoid(0.5 * ell, lam)])
    lhs = 0.5 * torch.trapezoid(w * ell, lam)
    rhs = -torch.trapezoid(dw * L, lam) + w[-1] * L[-1] - w[0] * L[0]
    return IntegrationByParts(weighted_loss=float(lhs), integral_of_elbos=float(rhs))
