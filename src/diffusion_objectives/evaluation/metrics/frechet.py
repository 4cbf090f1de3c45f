r"""The Fréchet distance between two Gaussians fitted to feature sets (FID when the features are Inception's).

.. math::  d^2\big(\mathcal N(\mu_1, \Sigma_1), \mathcal N(\mu_2, \Sigma_2)\big)
           = \lVert \mu_1 - \mu_2 \rVert^2
             + \operatorname{tr}\big(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\big)

(Dowson & Landau 1982; Heusel et al. 2017). :math:`\Sigma_1\Sigma_2` is similar to the PSD matrix
:math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}`, so its principal square root has a real trace; numerically
``scipy.linalg.sqrtm`` may return tiny imaginary parts or fail on singular products, which the standard
fix handles: the real part, and an ε·I offset on both covariances when the product is singular (here the
offset also enters the trace terms, so the value is the exact FD of the two widened Gaussians and identical
statistics still give 0).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

__all__ = ["frechet_distance", "feature_statistics", "as_float64"]


def as_float64(x) -> np.ndarray:
    """``x`` (NumPy array, tensor on any device, or nested list) as a float64 NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``features`` ``[N, D]``, N ≥ 2."""
    f = as_float64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N, D] with N >= 2, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrtm_or_none(a: np.ndarray) -> np.ndarray | None:
    """scipy's principal square root, or None where it is not finite or scipy finds ``a`` singular."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            root = scipy.linalg.sqrtm(a)
        except scipy.linalg.LinAlgWarning:
            return None
    return root if np.isfinite(root).all() else None


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2) (formula above).

    ``mu`` ``[D]``, ``sigma`` ``[D, D]``; NumPy arrays or tensors. ``eps`` is the diagonal offset used only
    when the product is singular or its square root not finite.
    """
    mu1, mu2, sigma1, sigma2 = (np.atleast_1d(as_float64(a)) for a in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0]
    sigma1, sigma2 = sigma1.reshape(-1, d), sigma2.reshape(-1, d)
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"need mu [D] and sigma [D, D] for both; "
            f"got {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    covmean = _sqrtm_or_none(sigma1 @ sigma2)
    if covmean is None:  # singular product (e.g. dead ReLU features): the FD of both Gaussians widened by ε·I
        sigma1, sigma2 = sigma1 + eps * np.eye(d), sigma2 + eps * np.eye(d)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if np.iscomplexobj(covmean):
        # the exact trace is real; a large imaginary diagonal means the inputs are not covariances
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, np.abs(covmean).max())):
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has imaginary part {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
