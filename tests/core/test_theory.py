"""KG23 §4: augmentation densities and the integration-by-parts identity, by quadrature."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffusion_objectives import augmentation_density, integration_by_parts, weightings
from diffusion_objectives.errors import OptionError


@pytest.mark.parametrize("bias", [-2.0, 0.0, 2.0, 4.0])
def test_sigmoid_gives_logistic_augmentation(bias):
    lo, hi = -15.0, 15.0
    lam = torch.linspace(lo, hi, 601, dtype=torch.float64)
    aug = augmentation_density(weightings.get("sigmoid", bias=bias), lam, lo, hi)
    w_min = 1 / (1 + math.exp(lo - bias))
    np.testing.assert_allclose(aug.density.numpy(), stats.logistic.pdf(lam.numpy(), loc=bias) / w_min,
                               rtol=1e-9, atol=1e-15)
    assert aug.point_mass == pytest.approx((1 / (1 + math.exp(hi - bias))) / w_min)
    total = float(torch.trapezoid(aug.density, lam)) + aug.point_mass
    assert total == pytest.approx(1.0, abs=1e-4)


def test_flow_gives_truncated_exponential():
    # w = e^{−λ/2}: −w'/w(λ_min) = ½ e^{−(λ − λ_min)/2}, point mass e^{−(λ_max − λ_min)/2}
    lo, hi = -6.0, 4.0
    lam = torch.linspace(lo, hi, 101, dtype=torch.float64)
    aug = augmentation_density(weightings.get("flow"), lam, lo, hi)
    np.testing.assert_allclose(aug.density.numpy(), 0.5 * np.exp(-(lam.numpy() - lo) / 2), rtol=1e-10)
    assert aug.point_mass == pytest.approx(math.exp(-(hi - lo) / 2))


def test_elbo_is_all_point_mass():
    lam = torch.linspace(-15, 15, 11, dtype=torch.float64)
    aug = augmentation_density(weightings.get("elbo"), lam, -15, 15)
    assert aug.point_mass == 1.0 and float(aug.density.abs().max()) == 0.0


@pytest.mark.parametrize("name", ["edm", "eps-cosine", "sd3", "min-snr", "p2"])
def test_non_monotone_has_no_augmentation_density(name):
    with pytest.raises(OptionError, match="not monotone"):
        augmentation_density(weightings.get(name), torch.linspace(-15, 15, 11), -15, 15)


def _loss_curve(lam, s2=0.25, dim=4):
    # Gaussian data N(0, s² I) with the exact denoiser: ℓ(λ) = D s² e^λ / (s² e^λ + 1)
    r = s2 * np.exp(lam)
    return dim * r / (r + 1)


@pytest.mark.parametrize("name", ["elbo", "sigmoid", "edm", "eps-cosine", "v-cosine", "edm-monotonic", "p2"])
def test_integration_by_parts_identity(name):
    w = weightings.get(name)
    lam = np.linspace(-15, 15, 60001)
    res = integration_by_parts(w, torch.tensor(lam), torch.tensor(_loss_curve(lam)), prior=0.37)
    independent = 0.5 * integrate.quad(
        lambda l: float(w(torch.tensor(l, dtype=torch.float64))) * _loss_curve(l), -15, 15, limit=400,
        points=[-3.3078, 0.0])[0]
    # trapezoid rule with h = 5e-4: O(h²) error, amplified by w up to e^{7.5} at λ_min for v-cosine
    assert res.weighted_loss == pytest.approx(independent, rel=1e-5)
    assert res.integral_of_elbos == pytest.approx(independent, rel=1e-5)


def test_integration_by_parts_rejects_bad_grid():
    with pytest.raises(ValueError, match="increasing"):
        integration_by_parts(weightings.get("elbo"), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
