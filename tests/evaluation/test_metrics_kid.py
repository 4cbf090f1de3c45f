"""KID: the unbiased MMD² with the cubic polynomial kernel, checked against a closed-form population value."""

import itertools

import numpy as np
import pytest

from diffusion_objectives.evaluation.metrics import kid


def brute_force_mmd2(x, y):
    """The unbiased estimator written as explicit double sums."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def expected_kernel(mu_a, cov_a, mu_b, cov_b):
    """E k(X, Y) for independent X ~ N(μa, Σa), Y ~ N(μb, Σb), k = (xᵀy/d + 1)³.

    (1 + s)³ = 1 + 3s + 3s² + s³ with s = XᵀY/d; E[XᵀY] = μaᵀμb, E[(XᵀY)²] = tr(Ma Mb) with second moments
    M = Σ + μμᵀ, E[(XᵀY)³] = ⟨Ta, Tb⟩ with third moments T_ijk = μiμjμk + μiΣjk + μjΣik + μkΣij.
    """
    d = len(mu_a)

    def third(mu, cov):
        return (np.einsum("i,j,k->ijk", mu, mu, mu) + np.einsum("i,jk->ijk", mu, cov)
                + np.einsum("j,ik->ijk", mu, cov) + np.einsum("k,ij->ijk", mu, cov))

    m_a, m_b = cov_a + np.outer(mu_a, mu_a), cov_b + np.outer(mu_b, mu_b)
    s1 = mu_a @ mu_b / d
    s2 = np.trace(m_a @ m_b) / d**2
    s3 = (third(mu_a, cov_a) * third(mu_b, cov_b)).sum() / d**3
    return 1 + 3 * s1 + 3 * s2 + s3


def test_matches_explicit_double_sum():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((9, 3)) + 0.5
    result = kid(x, y, subset_size=100, n_subsets=1)  # capped to all 7 rows of each
    assert result.subset_size == 7
    rng_check = np.random.default_rng(0)  # the same draws as kid's
    xs, ys = x[rng_check.choice(7, 7, replace=False)], y[rng_check.choice(9, 7, replace=False)]
    assert result.mean == pytest.approx(brute_force_mmd2(xs, ys), rel=1e-12)
    assert result.std == 0


def test_unbiased_against_population_value():
    d, m, trials = 3, 10, 4000
    rng = np.random.default_rng(1)
    mu_p, mu_q = np.zeros(d), np.array([0.5, -0.3, 0.2])
    cov_p = np.eye(d)
    cov_q = np.array([[1.5, 0.3, 0.0], [0.3, 0.8, 0.1], [0.0, 0.1, 1.2]])
    population = (expected_kernel(mu_p, cov_p, mu_p, cov_p) + expected_kernel(mu_q, cov_q, mu_q, cov_q)
                  - 2 * expected_kernel(mu_p, cov_p, mu_q, cov_q))
    chol_q = np.linalg.cholesky(cov_q)
    estimates, biased = np.empty(trials), np.empty(trials)
    for t in range(trials):
        x = rng.standard_normal((m, d)) + mu_p
        y = rng.standard_normal((m, d)) @ chol_q.T + mu_q
        estimates[t] = kid(x, y, subset_size=m, n_subsets=1, seed=t).mean
        k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
        biased[t] = k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()  # V-statistic (keeps i = j)
    se = estimates.std() / np.sqrt(trials)
    assert abs(estimates.mean() - population) < 4 * se
    # the test has the power to see a bias: the V-statistic, biased by O(1/m), fails it
    assert abs(biased.mean() - population) > 10 * se


def test_identical_distributions_average_zero_and_go_negative():
    rng = np.random.default_rng(2)
    values = np.array([kid(rng.standard_normal((20, 4)), rng.standard_normal((20, 4)), n_subsets=1).mean
                       for _ in range(1000)])
    assert abs(values.mean()) < 4 * values.std() / np.sqrt(len(values))
    assert (values < 0).any()


def test_subsets_seed_and_fields():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((300, 8)), rng.standard_normal((200, 8)) + 0.2
    a = kid(x, y, subset_size=100, n_subsets=20, seed=5)
    assert a == kid(x, y, subset_size=100, n_subsets=20, seed=5)
    assert (a.subset_size, a.n_subsets, a.seed) == (100, 20, 5)
    assert a.std > 0 and a.mean > 0
    assert kid(x, y, subset_size=1000).subset_size == 200


def test_bad_shapes():
    with pytest.raises(ValueError):
        kid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        kid(np.zeros((1, 3)), np.zeros((5, 3)))
