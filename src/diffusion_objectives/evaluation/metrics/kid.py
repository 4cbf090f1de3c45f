r"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² with a cubic polynomial kernel.

.. math::  k(x, y) = \Big(\frac{x^\top y}{d} + 1\Big)^3,\qquad
           \widehat{\mathrm{MMD}}^2_u = \frac{\sum_{i \ne j} k(x_i, x_j)}{m(m-1)}
             + \frac{\sum_{i \ne j} k(y_i, y_j)}{m(m-1)} - \frac{2}{m^2} \sum_{i, j} k(x_i, y_j)

is an unbiased estimator of MMD²(P, Q) (Gretton et al. 2012, Lemma 6), so it can be negative when P = Q.
KID averages it over ``n_subsets`` random subsets of ``subset_size`` rows from each set and reports the
mean and the standard deviation over subsets (the clean-fid / torch-fidelity convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .frechet import as_float64

__all__ = ["KIDResult", "kid", "mmd2_unbiased", "polynomial_kernel"]


@dataclass(frozen=True)
class KIDResult:
    """Mean and standard deviation of the unbiased MMD² over subsets, with the settings that produced them."""

    mean: float
    std: float
    subset_size: int
    n_subsets: int
    seed: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (xᵀy / d + 1)³ for all pairs: ``[m, d] × [n, d] → [m, n]``."""
    k = x @ y.T
    k /= x.shape[1]
    k += 1.0
    return k * k * k  # in place and multiplications: ~3x faster than ** 3 on these sizes


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """The unbiased MMD² (formula above) from the three kernel matrices ``[m, m]``, ``[n, n]``, ``[m, n]``."""
    m, n = k_xy.shape
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD² needs at least 2 samples per set, got {m} and {n}")
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


def kid(features1, features2, *, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0) -> KIDResult:
    """KID between ``features1`` ``[N1, D]`` and ``features2`` ``[N2, D]`` (NumPy arrays or tensors).

    Each subset draws ``min(subset_size, N1, N2)`` rows from each set without replacement, independently
    across subsets, from ``numpy.random.default_rng(seed)``.
    """
    x, y = as_float64(features1), as_float64(features2)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be [N1, D] and [N2, D], got shapes {x.shape} and {y.shape}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    m = min(int(subset_size), x.shape[0], y.shape[0])
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for s in range(n_subsets):
        xs = x[rng.choice(x.shape[0], m, replace=False)]
        ys = y[rng.choice(y.shape[0], m, replace=False)]
        k = polynomial_kernel
        values[s] = mmd2_unbiased(k(xs, xs), k(ys, ys), k(xs, ys))
    return KIDResult(float(values.mean()), float(values.std()), m, int(n_subsets), int(seed))
