"""Probability-flow ODE likelihood against closed forms, with exact (closed-form) denoisers.

Oracles, derived here:
- Gaussian data N(μ, diag s²): the flow keeps w = (z − α μ)/√v, v = α²s² + σ², constant along λ
  (dw/dλ = ½σ²(z − αμ)v^{−3/2}(v − 1 − α²(s² − 1)) = 0 because α² + σ² = 1), so the model density at
  finite endpoints is exactly log N(z_min; 0, I) + Σ_d ½ log(v_min/v_max) + D log α_max with
  z_min = α_min μ + √(v_min/v_max)(α_max x − α_max μ).
- Mixtures: the exact log-density; the endpoint errors are O(e^{λ_min/2}) (the prior N(0, I) replaces
  q_{λ_min}, whose mean is α_min E[x]) and O(e^{−λ_max}), both < 1e-4 at ±20.
- Dequantisation: the bound E_u log p(x + Δ(u − ½)) + D log Δ by Gauss–Legendre quadrature over the bin,
  and log P(bin) from normal CDFs.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from diffusion_objectives import parameterizations
from diffusion_objectives.core import mixtures
from diffusion_objectives.errors import OptionError
from diffusion_objectives.likelihoods.ode import likelihood

Z = 5.0  # tolerance in Hutchinson standard errors


def _gaussian_flow_log_density(x, mu, s2, lo, hi):
    a2_min, a2_max = special.expit(lo), special.expit(hi)
    v_min, v_max = a2_min * s2 + special.expit(-lo), a2_max * s2 + special.expit(-hi)
    z_min = math.sqrt(a2_min) * mu + np.sqrt(v_min / v_max) * math.sqrt(a2_max) * (x - mu)
    d = x.shape[-1]
    return (stats.multivariate_normal(np.zeros(d), np.eye(d)).logpdf(z_min)
            + 0.5 * np.sum(np.log(v_min / v_max)) + 0.5 * d * math.log(a2_max))


@given(lo=st.floats(-15.0, -1.0), hi=st.floats(1.0, 15.0), param=st.sampled_from(["eps", "v", "x", "edm"]))
@settings(max_examples=8)
def test_gaussian_flow_matches_its_closed_form_at_any_endpoints(lo, hi, param):
    mu, s2 = np.array([0.3, -0.5, 0.1]), np.array([0.04, 0.25, 1.5])
    gm = mixtures.GaussianMixture([1.0], [mu.tolist()], [np.diag(s2).tolist()])
    p = parameterizations.get(param)
    x = torch.tensor([[0.2, -0.1, 0.4], [1.0, 0.5, -2.0]], dtype=torch.float64)
    r = likelihood(gm.denoiser(p), p, x, logsnr_min=lo, logsnr_max=hi, rtol=1e-8, atol=1e-8)
    expected = _gaussian_flow_log_density(x.numpy(), mu, s2, lo, hi)
    np.testing.assert_allclose(r.log_likelihood.numpy(), expected, atol=1e-6)
    assert r.dims == 3 and r.levels is None and bool((r.log_likelihood_se == 0).all())
    torch.testing.assert_close(r.log_likelihood, r.prior + r.divergence_integral)


@pytest.mark.parametrize("method,steps", [("adaptive", 0), ("fixed", 60)])
def test_mixture_likelihood_with_exact_divergence_is_the_log_density(method, steps):
    gm = mixtures.anisotropic_pair()
    x = gm.sample(6, torch.Generator().manual_seed(0))
    p = parameterizations.V()
    kw = {"steps": steps} if method == "fixed" else {"rtol": 1e-6, "atol": 1e-6}
    r = likelihood(gm.denoiser(p), p, x, logsnr_min=-20.0, logsnr_max=20.0, method=method, **kw)
    np.testing.assert_allclose(r.log_likelihood.numpy(), gm.log_prob(x).numpy(), atol=2e-4)
    if method == "fixed":
        assert r.nfe == 4 * steps  # RK4: four evaluations per step


def test_default_endpoints_error_is_order_exp_half_logsnr_min():
    """At the default λ_min = −15 the prior mismatch is ≈ α_min E[x]·z_min (first order in α_min)."""
    gm = mixtures.anisotropic_pair()
    x = gm.sample(4, torch.Generator().manual_seed(1))
    p = parameterizations.Eps()
    r = likelihood(gm.denoiser(p), p, x, rtol=1e-7, atol=1e-7)
    err = (r.log_likelihood - gm.log_prob(x)).abs()
    bound = 3 * math.exp(-7.5) * float(gm.mean().norm()) * 4.0 + 1e-4  # |z_min| ≤ 4 for these points
    assert bool((err < bound).all()), (err, bound)


def test_hutchinson_is_within_its_standard_error_and_seeded():
    gm = mixtures.anisotropic_pair()
    x = gm.sample(6, torch.Generator().manual_seed(2))
    p = parameterizations.Eps()

    def run(seed):
        return likelihood(gm.denoiser(p), p, x, logsnr_min=-20.0, logsnr_max=20.0, divergence="hutchinson",
                          probes=24, generator=torch.Generator().manual_seed(seed))

    r = run(3)
    exact = gm.log_prob(x)
    assert bool((r.log_likelihood_se > 0).all())
    zscore = (r.log_likelihood - exact) / r.log_likelihood_se
    assert bool((zscore.abs() <= Z).all()), zscore
    torch.testing.assert_close(run(3).log_likelihood, r.log_likelihood, rtol=0, atol=0)


def test_gaussian_hutchinson_is_unbiased_over_seeds():
    """Full covariance (off-diagonal Jacobian): the mean over independent probe sets converges to the exact."""
    cov = np.array([[0.2, 0.15], [0.15, 0.3]])
    gm = mixtures.GaussianMixture([1.0], [[0.0, 0.0]], [cov.tolist()])
    p = parameterizations.Eps()
    x = torch.tensor([[0.3, -0.4]], dtype=torch.float64).repeat(64, 1)
    r = likelihood(gm.denoiser(p), p, x, divergence="hutchinson", probes=2, method="fixed", steps=40,
                   generator=torch.Generator().manual_seed(4))
    exact = likelihood(gm.denoiser(p), p, x[:1], method="fixed", steps=40).log_likelihood
    mean, se = r.log_likelihood.mean(), r.log_likelihood.std() / math.sqrt(64)
    assert float(se) > 0.0 and abs(float(mean - exact)) <= Z * float(se)


def _bin_quadrature(gm, centre, width, n=24):
    """E_u log p(centre + width(u − ½)) over the 2-D bin by Gauss–Legendre (n² nodes)."""
    nodes, w = np.polynomial.legendre.leggauss(n)
    u = 0.5 * width * nodes
    pts = np.stack(np.meshgrid(centre[0] + u, centre[1] + u, indexing="ij"), -1).reshape(-1, 2)
    ww = np.outer(w, w).ravel() / 4.0
    return float(ww @ gm.log_prob(torch.tensor(pts)).numpy())


def _log_bin_probability(weights, means, std, centre, width):
    lo, hi = centre - width / 2, centre + width / 2
    per = stats.norm.cdf((hi - means) / std) - stats.norm.cdf((lo - means) / std)  # [K, D]
    return float(np.log(np.sum(weights * np.prod(per, 1))))


def test_dequantised_likelihood_is_a_lower_bound_on_the_bin_probability():
    levels, width = 9, 0.25
    weights, means, std = np.array([0.4, 0.6]), np.array([[-0.4, 0.2], [0.5, -0.3]]), 0.3
    gm = mixtures.GaussianMixture.isotropic(weights.tolist(), means.tolist(), std)
    centres = np.array([[-0.5, 0.25], [0.5, -0.25], [0.0, 0.0]])
    reps = 24
    x = torch.tensor(np.repeat(centres, reps, 0), dtype=torch.float64)
    p = parameterizations.Eps()
    r = likelihood(gm.denoiser(p), p, x, logsnr_min=-20.0, logsnr_max=20.0, levels=levels,
                   generator=torch.Generator().manual_seed(5))
    assert r.levels == levels
    torch.testing.assert_close(r.bits_per_dim, -r.log_likelihood / (2 * math.log(2)))
    ll = r.log_likelihood.reshape(len(centres), reps)
    for c, row in zip(centres, ll, strict=True):
        bound = _bin_quadrature(gm, c, width) + 2 * math.log(width)
        log_p = _log_bin_probability(weights, means, std, c, width)
        assert bound <= log_p  # Jensen
        assert abs(float(row.mean()) - bound) <= Z * float(row.std()) / math.sqrt(reps) + 2e-4
        assert log_p - bound < 0.02  # the bound is tight for bins narrower than the components


def test_options_are_validated():
    gm = mixtures.anisotropic_pair()
    p = parameterizations.Eps()
    x = gm.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(OptionError, match="fixed, adaptive"):
        likelihood(gm.denoiser(p), p, x, method="euler")
    with pytest.raises(OptionError, match="exact, hutchinson"):
        likelihood(gm.denoiser(p), p, x, divergence="skilling")
    with pytest.raises(ValueError, match="bin centres"):
        likelihood(gm.denoiser(p), p, x, levels=5)
    r = likelihood(gm.denoiser(p), p, x, divergence="hutchinson", probes=1, method="fixed", steps=4,
                   generator=torch.Generator().manual_seed(0))
    assert bool(r.log_likelihood_se.isnan().all())  # one probe: no spread to estimate the error from


def test_images_with_a_network_in_float32():
    layer = torch.nn.Linear(12, 12)
    with torch.no_grad():  # deterministic weights without touching the global generator
        layer.weight.copy_(0.3 * torch.randn(12, 12, generator=torch.Generator().manual_seed(0)))

    def model(z, logsnr):
        return torch.tanh(layer(z.flatten(1))).reshape(z.shape) * torch.sigmoid(logsnr).reshape(-1, 1, 1, 1)

    x = torch.randint(0, 256, (2, 3, 2, 2), generator=torch.Generator().manual_seed(1)).float() / 127.5 - 1.0
    p = parameterizations.Eps()
    r = likelihood(model, p, x, method="fixed", steps=8, divergence="hutchinson", probes=3, levels=256,
                   generator=torch.Generator().manual_seed(2))
    exact = likelihood(model, p, x, method="fixed", steps=8, levels=256, generator=torch.Generator().manual_seed(2))
    assert r.nfe == 32 and r.dims == 12 and r.log_likelihood.dtype == torch.float32
    assert bool(torch.isfinite(r.bits_per_dim).all()) and bool((r.log_likelihood_se > 0).all())
    # same dequantisation draw, exact divergence: within Hutchinson's error
    assert bool(((r.log_likelihood - exact.log_likelihood).abs() <= Z * r.log_likelihood_se + 1e-4).all())
