"""Fréchet distance: closed forms derived independently of scipy.linalg.sqrtm."""

import numpy as np
import pytest
import torch

from diffusion_objectives.evaluation.metrics import feature_statistics, frechet_distance


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_one_dimensional_closed_form():
    # W2² between N(m1, s1²) and N(m2, s2²) is (m1 − m2)² + (s1 − s2)²
    m1, s1, m2, s2 = 0.3, 2.0, -1.1, 0.5
    expected = (m1 - m2) ** 2 + (s1 - s2) ** 2
    assert frechet_distance([m1], [[s1**2]], [m2], [[s2**2]]) == pytest.approx(expected, rel=1e-12)


def test_diagonal_covariances():
    # commuting covariances: tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) = Σ_i (√a_i − √b_i)²
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_two_by_two_non_commuting(seed):
    # for 2×2 PSD M, tr √M = √(tr M + 2 √det M); the eigenvalues of Σ1Σ2 are those of a PSD matrix, so
    # tr (Σ1Σ2)^½ = √(tr(Σ1Σ2) + 2 √(det Σ1 det Σ2))
    rng = np.random.default_rng(seed)
    s1, s2 = random_spd(rng, 2), random_spd(rng, 2)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = rng.standard_normal(2), rng.standard_normal(2)
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_high_dimensional_against_symmetric_eigendecomposition():
    # tr (Σ1Σ2)^½ = Σ √eig(Σ1^½ Σ2 Σ1^½), Σ1^½ from eigh (symmetric, no sqrtm)
    rng = np.random.default_rng(1)
    s1, s2 = random_spd(rng, 32), random_spd(rng, 32)
    w, v = np.linalg.eigh(s1)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    mu = rng.standard_normal(32)
    expected = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(frechet_distance(mu, s2, mu, s1), rel=1e-8)


def test_identical_features_give_zero():
    features = np.random.default_rng(2).standard_normal((500, 64))
    mu, sigma = feature_statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


@pytest.mark.filterwarnings("error")
def test_singular_statistics():
    # fewer samples than dimensions: Σ is singular, the product too; handled without warnings
    features = np.random.default_rng(3).standard_normal((40, 64))
    mu, sigma = feature_statistics(features)
    value = frechet_distance(mu, sigma, mu, sigma)
    assert np.isfinite(value) and abs(value) < 1e-5  # sqrtm rounding; cond((Σ + εI)²) ~ 1/ε²
    # a dead feature (constant zero, as a ReLU unit can be): the FD of the other features is unchanged
    rng = np.random.default_rng(4)
    s1, s2 = random_spd(rng, 3), random_spd(rng, 3)
    m1, m2 = rng.standard_normal(3), rng.standard_normal(3)
    pad = np.zeros((4, 4))
    p1, p2 = pad.copy(), pad.copy()
    p1[:3, :3], p2[:3, :3] = s1, s2
    full = frechet_distance(np.append(m1, 0), p1, np.append(m2, 0), p2)
    assert full == pytest.approx(frechet_distance(m1, s1, m2, s2), abs=1e-5)


def test_tensors_and_arrays_agree():
    rng = np.random.default_rng(4)
    s1, s2 = random_spd(rng, 5), random_spd(rng, 5)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    t = [torch.as_tensor(a, dtype=torch.float32) for a in (mu1, s1, mu2, s2)]
    assert frechet_distance(*t) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-5)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    f = np.random.default_rng(5).standard_normal((30, 3))
    mu, sigma = feature_statistics(torch.as_tensor(f))
    centred = f - f.mean(0)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma, centred.T @ centred / 29)


def test_shape_errors():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        feature_statistics(np.zeros((1, 3)))
