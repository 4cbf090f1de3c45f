"""Toy metrics: cross-entropy against Gaussian closed forms, sliced W2 and RBF-MMD against hand derivations."""

import math

import numpy as np
import pytest
import torch

from diffusion_objectives import data
from diffusion_objectives.metrics import cross_entropy, mmd_rbf, sliced_wasserstein, toy_metrics
from diffusion_objectives.metrics.toy import _rbf_sum
from diffusion_objectives.mixtures import GaussianMixture


def test_cross_entropy_of_gaussians_matches_closed_form():
    # H(q, p) = ½[log det(2πΣp) + tr(Σp⁻¹Σq) + (μq − μp)ᵀΣp⁻¹(μq − μp)] for Gaussians q, p
    cov_p = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
    p = GaussianMixture([1.0], torch.zeros(1, 2), cov_p[None])
    mu_q, cov_q = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.eye(2, dtype=torch.float64) * 0.2
    q = GaussianMixture([1.0], mu_q[None], cov_q[None])
    prec = torch.linalg.inv(cov_p)
    expected = 0.5 * (torch.logdet(2 * math.pi * cov_p) + torch.trace(prec @ cov_q) + mu_q @ prec @ mu_q)
    x = q.sample(200_000, torch.Generator().manual_seed(0))
    se = float(p.log_prob(x).std()) / math.sqrt(len(x))
    assert cross_entropy(x, p) == pytest.approx(float(expected), abs=4 * se)


def test_sliced_wasserstein_one_dimensional_exact():
    x = np.array([[0.0], [1.0]])
    y = np.array([[0.0], [0.5], [1.0]])
    # quantiles differ by 0.5 on (1/3, 2/3]: W2² = 0.25 · 1/3 = 1/12 (derived by hand)
    assert sliced_wasserstein(x, y, n_projections=3) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    # a shift by c in 1-D: W2 = |c| exactly, for any ordering
    z = np.random.default_rng(0).standard_normal((100, 1))
    assert sliced_wasserstein(z, z[::-1] + 0.7) == pytest.approx(0.7, rel=1e-12)
    assert sliced_wasserstein(z, z[::-1]) == pytest.approx(0.0, abs=1e-12)


def test_sliced_wasserstein_of_shifted_gaussians():
    # equal covariances, means apart by Δ: W2²(θ·) = (θ·Δ)², E_θ (θ·Δ)² = |Δ|²/D
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 2))
    delta = np.array([0.6, -0.8])
    y = rng.standard_normal((4000, 2)) + delta
    # tolerance: ±1.6 % from 500 random directions (Var cos²φ = 1/8), less from 4000 samples
    assert sliced_wasserstein(x, y, n_projections=500) == pytest.approx(math.sqrt(1 / 2), rel=0.05)


def test_mmd_rbf_matches_double_sum_across_blocks():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((23, 2)), rng.standard_normal((17, 2)) + 0.3
    hs = (1.0, 0.5, 0.25)  # h_max = 1, three bandwidths

    def k(a, b):
        return sum(math.exp(-((a - b) ** 2).sum() / (2 * h * h)) for h in hs)

    xx = sum(k(x[i], x[j]) for i in range(23) for j in range(23) if i != j) / (23 * 22)
    yy = sum(k(y[i], y[j]) for i in range(17) for j in range(17) if i != j) / (17 * 16)
    xy = sum(k(a, b) for a in x for b in y) / (23 * 17)
    assert mmd_rbf(x, y, h_max=1.0, n_bandwidths=3) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert _rbf_sum(x, x, 1.0, 3, exclude_diagonal=True, block=5) == pytest.approx(xx * 23 * 22, rel=1e-12)


def test_mmd_rbf_unbiased_for_identical_distributions():
    rng = np.random.default_rng(3)
    values = np.array([mmd_rbf(rng.standard_normal((15, 2)), rng.standard_normal((15, 2))) for _ in range(500)])
    assert abs(values.mean()) < 4 * values.std() / math.sqrt(len(values))
    assert (values < 0).any()


def test_toy_metrics_on_fresh_data_and_on_collapsed_samples():
    ring = data.get("ring", n=2000, seed=1)
    good = toy_metrics(ring.data, ring.mixture, seed=0)
    assert good.cross_entropy == pytest.approx(good.entropy, abs=0.15)
    # samples collapsed onto the 8 means: higher density (lower cross-entropy by D/2 = 1 nat for isotropic
    # components) yet far from p in SW and MMD
    collapsed = ring.mixture.means.repeat(250, 1)
    bad = toy_metrics(collapsed, ring.mixture, seed=0)
    assert bad.cross_entropy < good.entropy - 0.8
    assert bad.sliced_wasserstein > 2 * good.sliced_wasserstein
    assert bad.mmd > 10 * abs(good.mmd)
    assert good.as_dict()["n_samples"] == 2000 == good.n_reference
