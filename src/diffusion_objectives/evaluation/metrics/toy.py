r"""Metrics for toy data with a known density p (a :class:`~diffusion_objectives.core.mixtures.GaussianMixture`).

* Reverse KL divergence :math:`\mathrm{KL}(q \,\|\, p) = -H(q) - \mathbb E_{x \sim q} \log p(x)` of the
  model q (known only through samples) from p, in nats: the cross-entropy below minus the entropy H(q),
  which is estimated from the samples by the Kozachenko–Leonenko k-nearest-neighbour estimator
  (:func:`knn_entropy`). KL ≥ 0 with equality only for q = p, so unlike the cross-entropy it penalises a
  model that is too sharp as well as one that is too broad; it is the primary metric of toy studies. The
  estimate is slightly biased (the kNN entropy is biased low at finite N, which biases the KL up):
  :func:`toy_metrics` also reports it for fresh data from p, whose true KL is 0.
* Cross-entropy :math:`H(q, p) = -\mathbb E_{x \sim q} \log p(x)` of samples x ~ q under the true density,
  in nats per sample. For q = p it is the entropy H(p) (:func:`toy_metrics` estimates it on fresh data),
  but it is not a divergence: samples collapsed onto the modes score *below* H(p). Read it together with
  a two-sample distance.
* Sliced Wasserstein-2:
  :math:`SW_2(q, p)^2 = \mathbb E_{\theta \sim U(S^{D-1})} W_2^2(\theta_\# q, \theta_\# p)`,
  each 1-D W₂ exact between the empirical distributions (quantile functions).
* MMD² with a ladder of RBF kernels :math:`k(x, y) = \sum_k \exp(-\lVert x - y \rVert^2 / 2h_k^2)`,
  :math:`h_k = h_{max} 2^{-k}`, unbiased (the estimator of :mod:`.kid`), over all pairs in blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma, gammaln

from .frechet import as_float64
from .results import MetricResult

__all__ = ["cross_entropy", "knn_entropy", "reverse_kl", "sliced_wasserstein", "mmd_rbf", "ToyMetrics",
           "toy_metrics"]

KNN_K = 3  # neighbours for the entropy estimate (Kraskov et al. 2004 use k = 2…4; bias grows with k)


def cross_entropy(samples, density) -> float:
    """−mean log p(x) over ``samples`` ``[N, D]`` (nats); ``density`` has ``log_prob([N, D]) → [N]``."""
    x = torch.as_tensor(samples).to(torch.float64)
    return float(-density.log_prob(x).mean())


def knn_entropy(samples, k: int = KNN_K) -> float:
    r"""Kozachenko–Leonenko estimate of the differential entropy H(q) = −E_q log q(x), in nats, from
    ``samples`` ``[N, D]`` of q (Kozachenko & Leonenko 1987; Kraskov, Stögbauer & Grassberger 2004, Eq. (20)):

    .. math:: \hat H = \psi(N) - \psi(k) + \log V_D + \frac{D}{N} \sum_{i=1}^N \log \varepsilon_i,

    with ε_i the Euclidean distance from x_i to its k-th nearest neighbour among the other N − 1 samples,
    V_D = π^{D/2} / Γ(D/2 + 1) the volume of the unit D-ball and ψ the digamma function. (Kraskov et al.'s
    ε is twice this radius and their c_d the volume of the ball of unit diameter, V_D / 2^D: the same sum.)

    Derivation: the probability mass P_i = q(B(x_i, ε_i)) of the ball that reaches the k-th of N − 1 other
    independent points is the k-th order statistic of N − 1 uniforms, Beta(k, N − k), so
    E log P_i = ψ(k) − ψ(N). Where q is nearly constant on the ball, P_i ≈ q(x_i) V_D ε_i^D, so
    log q(x_i) ≈ ψ(k) − ψ(N) − log V_D − D log ε_i; averaging −log q(x_i) gives Ĥ. Coincident samples
    (ε_i = 0: a point mass) give −∞."""
    x = as_float64(samples)
    if x.ndim != 2 or x.shape[0] <= k or k < 1:
        raise ValueError(f"need [N, D] samples with N > k >= 1, got shape {x.shape} and k = {k}")
    n, d = x.shape
    eps = cKDTree(x).query(x, k=k + 1)[0][:, k]  # column 0 is the point itself (distance 0)
    log_unit_ball = 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1)
    with np.errstate(divide="ignore"):
        return float(digamma(n) - digamma(k) + log_unit_ball + d * np.log(eps).mean())


def reverse_kl(samples, density, k: int = KNN_K) -> float:
    """KL(q‖p) = −H(q) − E_q log p(x) in nats, from ``samples`` ``[N, D]`` of q and the density p
    (``density.log_prob([N, D]) → [N]``): :func:`cross_entropy` minus :func:`knn_entropy`."""
    return cross_entropy(samples, density) - knn_entropy(samples, k)


def _w2_squared_1d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact W₂² between empirical 1-D distributions, columnwise: ``[n, P] × [m, P] → [P]``.

    The quantile functions are step functions with jumps at i/n and j/m; on each interval of the merged
    breakpoints both are constant, so ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du is a finite sum.
    """
    a, b = np.sort(a, axis=0), np.sort(b, axis=0)
    n, m = a.shape[0], b.shape[0]
    u = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)  # right ends of the intervals
    du = np.diff(u, prepend=0.0)
    mid = u - du / 2  # a point inside each interval
    ia = np.minimum((mid * n).astype(np.int64), n - 1)
    ib = np.minimum((mid * m).astype(np.int64), m - 1)
    return (du[:, None] * (a[ia] - b[ib]) ** 2).sum(0)


def sliced_wasserstein(x, y, n_projections: int = 256, seed: int = 0) -> float:
    """SW₂(x, y) (formula above) between ``x`` ``[N, D]`` and ``y`` ``[M, D]``, over ``n_projections``
    random directions drawn from ``numpy.random.default_rng(seed)``."""
    x, y = as_float64(x), as_float64(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need [N, D] and [M, D], got {x.shape} and {y.shape}")
    theta = np.random.default_rng(seed).standard_normal((x.shape[1], n_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    return float(np.sqrt(_w2_squared_1d(x @ theta, y @ theta).mean()))


def _rbf_sum(x: np.ndarray, y: np.ndarray, h_max: float, n_bandwidths: int, *, exclude_diagonal: bool,
             block: int = 1024) -> float:
    """Σ_{i, j} k(x_i, y_j) in row blocks (``exclude_diagonal``: skip i = j, for x is y)."""
    total = 0.0
    y2 = (y**2).sum(1)
    for s in range(0, x.shape[0], block):
        xb = x[s:s + block]
        d2 = np.maximum((xb**2).sum(1)[:, None] + y2[None] - 2 * xb @ y.T, 0.0)
        if exclude_diagonal:
            d2[np.arange(xb.shape[0]), s + np.arange(xb.shape[0])] = np.inf
        total += sum(float(np.exp(-d2 / (2 * (h_max / 2**k) ** 2)).sum()) for k in range(n_bandwidths))
    return total


def mmd_rbf(x, y, h_max: float = 1.0, n_bandwidths: int = 6) -> float:
    """Unbiased MMD² between ``x`` ``[N, D]`` and ``y`` ``[M, D]`` (may be < 0) with the kernel
    k(x, y) = Σ_k exp(−‖x − y‖² / 2h_k²), h_k = h_max · 2⁻ᵏ, k < ``n_bandwidths`` (by default h = 1 … 1/32,
    spanning the toy sets' component stds 0.05–0.3 and their extent ~2)."""
    x, y = as_float64(x), as_float64(y)
    n, m = x.shape[0], y.shape[0]
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or n < 2 or m < 2:
        raise ValueError(f"need [N, D] and [M, D] with N, M >= 2, got {x.shape} and {y.shape}")
    xx = _rbf_sum(x, x, h_max, n_bandwidths, exclude_diagonal=True) / (n * (n - 1))
    yy = _rbf_sum(y, y, h_max, n_bandwidths, exclude_diagonal=True) / (m * (m - 1))
    return xx + yy - 2 * _rbf_sum(x, y, h_max, n_bandwidths, exclude_diagonal=False) / (n * m)


@dataclass(frozen=True)
class ToyMetrics(MetricResult):
    """All toy metrics of one sample set (nats where they are information quantities): ``reverse_kl``
    KL(q‖p), ``model_entropy`` its kNN estimate of H(q), ``cross_entropy`` −E_q log p; on the fresh reference
    data from p: ``entropy`` H(p) (Monte Carlo) and ``reference_kl`` the KL estimate, 0 but for its bias."""

    reverse_kl: float
    model_entropy: float
    cross_entropy: float
    entropy: float
    reference_kl: float
    sliced_wasserstein: float
    mmd: float
    n_samples: int
    n_reference: int
    seed: int


def toy_metrics(samples, mixture, *, n_reference: int | None = None, seed: int = 0) -> ToyMetrics:
    """Reverse KL and cross-entropy under ``mixture``; SW₂ and MMD² to ``n_reference`` (default: as many as
    samples) fresh draws from ``mixture`` with ``torch.Generator().manual_seed(seed)``, on which also H(p)
    and the KL estimate's value for q = p are computed."""
    x = as_float64(samples)
    n_ref = x.shape[0] if n_reference is None else int(n_reference)
    ref = mixture.sample(n_ref, torch.Generator().manual_seed(seed)).numpy()
    model_entropy = knn_entropy(x)
    ce = cross_entropy(x, mixture)
    return ToyMetrics(
        reverse_kl=ce - model_entropy,
        model_entropy=model_entropy,
        cross_entropy=ce,
        entropy=cross_entropy(ref, mixture),
        reference_kl=reverse_kl(ref, mixture),
        sliced_wasserstein=sliced_wasserstein(x, ref, seed=seed),
        mmd=mmd_rbf(x, ref),
        n_samples=x.shape[0],
        n_reference=n_ref,
        seed=seed,
    )
