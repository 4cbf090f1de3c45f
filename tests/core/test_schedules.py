"""Schedules: inverse pairs, p = −dt/dλ, normalisation, sampling, closed forms derived here."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

from diffusion_objectives import schedules
from diffusion_objectives.errors import OptionError

ALL = [
    ("cosine", {}),
    ("shifted-cosine", {"resolution": 256.0}),
    ("shifted-cosine", {"resolution": 16.0}),
    ("linear-logsnr", {}),
    ("edm", {}),
    ("edm", {"p_mean": -0.4, "p_std": 1.0}),
    ("flow", {}),
    ("logit-normal", {"m": 0.5, "s": 0.8}),
    ("ddpm-linear", {}),
    ("laplace", {}),
    ("laplace", {"mu": 1.0, "b": 2.0}),
    ("cauchy", {}),
    ("cauchy", {"mu": -1.0, "gamma": 0.5}),
    ("sd3-mode", {}),
    ("sd3-mode", {"scale": -0.5}),
    ("interpolated-cosine", {}),
    ("interpolated-cosine", {"shift_lo": 1.0, "shift_hi": -2.0}),
    ("log-logistic", {"loc": 0.5, "scale": 0.7}),
    ("log-uniform", {}),
    ("split-log-normal", {"loc": -0.5, "scale_1": 0.6, "scale_2": 1.3}),
]
IDS = [f"{n}-{p}" for n, p in ALL]


def _interior(s, n=401):
    return torch.linspace(s.logsnr_min, s.logsnr_max, n, dtype=torch.float64)[1:-1]


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_inverse_pairs_and_endpoints(name, params):
    s = schedules.get(name, **params)
    lam = _interior(s)
    # t is a float64 in [0, 1]: it resolves λ only to ~1e-16 / p(λ), which is coarse in Gaussian tails.
    tol = 1e-7 + 1e-14 / s.density(lam)
    assert bool(((s.logsnr(s.t(lam)) - lam).abs() <= tol).all())
    t = torch.linspace(0, 1, 501, dtype=torch.float64)
    torch.testing.assert_close(s.t(s.logsnr(t)), t, atol=1e-9, rtol=0)
    ends = s.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends.tolist() == pytest.approx([s.logsnr_max, s.logsnr_min], abs=1e-6)
    assert bool((s.logsnr(t)[1:] < s.logsnr(t)[:-1]).all()), "λ(t) must be strictly decreasing"


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_density_is_minus_dt_dlogsnr(name, params):
    s = schedules.get(name, **params)
    lam = _interior(s).requires_grad_(True)
    (dt,) = torch.autograd.grad(s.t(lam).sum(), lam)
    torch.testing.assert_close(s.density(lam.detach()), -dt, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_density_integrates_to_one(name, params):
    s = schedules.get(name, **params)
    total, _ = integrate.quad(lambda v: float(s.density(torch.tensor(v, dtype=torch.float64))),
                              s.logsnr_min, s.logsnr_max, limit=200, points=[-3.0, 0.0, 3.0])
    assert total == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_sample_histogram_matches_density(name, params):
    s = schedules.get(name, **params)
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    lam = s.sample(n, gen, dtype=torch.float64).numpy()
    edges = np.linspace(s.logsnr_min, s.logsnr_max, 31)
    expected = np.array([
        integrate.quad(lambda v: float(s.density(torch.tensor(v, dtype=torch.float64))), a, b)[0]
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]) * n
    observed = np.histogram(lam, edges)[0]
    keep = expected > 5  # chi-square validity
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4


def test_cosine_closed_form():
    lo, hi = -12.0, 9.0
    s = schedules.get("cosine", logsnr_min=lo, logsnr_max=hi)
    a_min, a_max = math.atan(math.exp(-hi / 2)), math.atan(math.exp(-lo / 2))
    t = np.linspace(0, 1, 101)
    expected = -2 * np.log(np.tan(a_min + t * (a_max - a_min)))
    np.testing.assert_allclose(s.logsnr(torch.tensor(t)).numpy(), expected, rtol=1e-12, atol=1e-10)
    lam = np.linspace(lo, hi, 101)
    np.testing.assert_allclose(s.density(torch.tensor(lam)).numpy(),
                               1 / np.cosh(lam / 2) / (4 * (a_max - a_min)), rtol=1e-10)


def test_untruncated_cosine_density():
    s = schedules.Cosine(-math.inf, math.inf)
    lam = np.linspace(-20, 20, 81)
    np.testing.assert_allclose(s.density(torch.tensor(lam)).numpy(), 1 / np.cosh(lam / 2) / (2 * math.pi),
                               rtol=1e-10)


def test_shifted_cosine_translates_density():
    shift = 2 * math.log(64 / 256)
    s = schedules.get("shifted-cosine", resolution=256.0)
    base = schedules.Cosine(-15 - shift, 15 - shift)
    lam = torch.linspace(-14, 14, 57, dtype=torch.float64)
    torch.testing.assert_close(s.density(lam), base.density(lam - shift))
    t = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(s.logsnr(t), base.logsnr(t) + shift)


def test_linear_logsnr_closed_form():
    s = schedules.get("linear-logsnr", logsnr_min=-10, logsnr_max=6)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(s.logsnr(t), 6 - 16 * t)
    assert torch.allclose(s.density(torch.tensor([0.0, 5.0], dtype=torch.float64)),
                          torch.tensor(1 / 16, dtype=torch.float64))


def test_edm_is_truncated_normal_of_logsnr():
    # ln σ ~ N(P_mean, P_std²) and λ = −2 ln σ  ⇒  λ ~ N(−2 P_mean, (2 P_std)²).
    s = schedules.get("edm", p_mean=-1.2, p_std=1.2, logsnr_min=-8, logsnr_max=10)
    ref = stats.truncnorm((-8 - 2.4) / 2.4, (10 - 2.4) / 2.4, loc=2.4, scale=2.4)
    lam = np.linspace(-8, 10, 73)
    np.testing.assert_allclose(s.density(torch.tensor(lam)).numpy(), ref.pdf(lam), rtol=1e-9)
    # and the change of variables from EDM's own σ draws
    gen = np.random.default_rng(0)
    sigma = np.exp(gen.normal(-1.2, 1.2, 400_000))
    lam_edm = -2 * np.log(sigma)
    lam_edm = lam_edm[(lam_edm > -8) & (lam_edm < 10)]
    ours = s.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert stats.ks_2samp(lam_edm, ours).pvalue > 1e-3


def test_logit_normal_matches_sd3_definition():
    m, sd = 0.5, 0.8
    s = schedules.get("logit-normal", m=m, s=sd)
    rng = np.random.default_rng(3)
    t_rf = 1 / (1 + np.exp(-rng.normal(m, sd, 300_000)))  # SD3: logit t ~ N(m, s²)
    lam = 2 * np.log((1 - t_rf) / t_rf)  # t_RF = σ/(α+σ) = sigmoid(−λ/2)
    ours = s.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert stats.ks_2samp(lam, ours).pvalue > 1e-3


def test_flow_density_closed_form():
    s = schedules.FlowUniformT(-math.inf, math.inf)
    lam = np.linspace(-20, 20, 81)
    np.testing.assert_allclose(s.density(torch.tensor(lam)).numpy(), 1 / 8 / np.cosh(lam / 4) ** 2, rtol=1e-10)


def test_ddpm_linear_matches_discrete_chain():
    betas = np.linspace(1e-4, 0.02, 1000)
    minus_log_alpha_bar = -np.cumsum(np.log1p(-betas))  # discrete chain, step i ↔ t = i/T
    s = schedules.DDPMLinear(schedules.DDPMLinear.natural_logsnr_min(), math.inf)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    lam = s.logsnr(t).numpy()
    minus_log_alpha_bar_cont = np.log1p(np.exp(-lam))  # −log sigmoid(λ)
    # Σ −log(1 − β_j) vs ∫β: a Riemann sum of a linear function (off by at most β_i) plus the
    # −log(1 − β) − β ≤ β² terms: the gap is below Σ β_j² + β_i.
    bound = np.cumsum(betas**2) + betas
    assert (np.abs(minus_log_alpha_bar_cont - minus_log_alpha_bar) <= bound).all()
    assert s.logsnr_min == pytest.approx(-math.log(math.expm1(10.05)))


@given(lo=st.floats(-20, 0), width=st.floats(1.0, 30.0), shift=st.floats(-3, 3))
def test_random_endpoints_keep_inverse_and_normalisation(lo, width, shift):
    hi = lo + width
    for name in ("cosine", "edm", "flow", "laplace", "cauchy", "sd3-mode", "interpolated-cosine", "split-log-normal"):
        s = schedules.get(name, logsnr_min=lo, logsnr_max=hi, shift=shift)
        t = torch.linspace(0, 1, 65, dtype=torch.float64)
        lam = s.logsnr(t)
        assert lam[0] == pytest.approx(hi, abs=1e-6) and lam[-1] == pytest.approx(lo, abs=1e-6)
        torch.testing.assert_close(s.t(lam), t, atol=1e-8, rtol=0)
        grid = torch.linspace(lo, hi, 4001, dtype=torch.float64)
        assert float(torch.trapezoid(s.density(grid), grid)) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_finite_values_and_gradients_on_closed_interval(name, params, dtype):
    s = schedules.get(name, **params)
    lam = torch.linspace(s.logsnr_min, s.logsnr_max, 101, dtype=dtype).requires_grad_(True)
    out = s.t(lam) + s.density(lam)
    (g,) = torch.autograd.grad(out.sum(), lam)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()
    t = torch.linspace(0, 1, 101, dtype=dtype).requires_grad_(True)
    lam_t = s.logsnr(t)
    (g,) = torch.autograd.grad(lam_t.sum(), t)
    assert torch.isfinite(lam_t).all() and lam_t.dtype == dtype
    assert torch.isfinite(g[1:-1]).all()


def test_stratified_draws_cover_every_stratum():
    s = schedules.get("cosine")
    lam = s.sample(64, torch.Generator().manual_seed(0), stratified=True, dtype=torch.float64)
    t = s.t(lam)
    strata = torch.sort((t * 64).floor().long().clamp(max=63)).values
    assert strata.tolist() == list(range(64))


def test_bad_parameters_are_errors():
    with pytest.raises(OptionError, match="logsnr_min"):
        schedules.get("cosine", logsnr_min=5, logsnr_max=-5)
    with pytest.raises(OptionError, match="unknown schedule 'cosin'.*cosine"):
        schedules.get("cosin")
    with pytest.raises(OptionError, match="p_meen.*allowed: p_mean"):
        schedules.get("edm", p_meen=1.0)
    with pytest.raises(OptionError, match="normalised"):
        schedules.get("linear-logsnr", logsnr_min=-math.inf)


# ---- the schedules of issue 13: closed forms and the samplers they come from -------------------------------

def _truncated(dist, lo, hi):
    """Density and λ(t) of a scipy distribution truncated to [lo, hi] (t = 0 at hi), written independently."""
    z = dist.cdf(hi) - dist.cdf(lo)
    return (lambda lam: dist.pdf(lam) / z), (lambda t: dist.ppf(dist.cdf(hi) - t * z))


@pytest.mark.parametrize("name,params,dist", [
    ("laplace", {"mu": 0.7, "b": 1.5}, stats.laplace(loc=0.7, scale=1.5)),
    ("cauchy", {"mu": -1.0, "gamma": 0.5}, stats.cauchy(loc=-1.0, scale=0.5)),
    # k-diffusion rand_log_logistic: ln σ ~ Logistic(loc, scale), λ = −2 ln σ ~ Logistic(−2 loc, 2 scale)
    ("log-logistic", {"loc": 0.5, "scale": 0.7}, stats.logistic(loc=-1.0, scale=1.4)),
], ids=["laplace", "cauchy", "log-logistic"])
def test_location_scale_schedules_match_scipy(name, params, dist):
    lo, hi = -9.0, 11.0
    s = schedules.get(name, logsnr_min=lo, logsnr_max=hi, **params)
    pdf, lam_of_t = _truncated(dist, lo, hi)
    lam = np.linspace(lo, hi, 97)
    np.testing.assert_allclose(s.density(torch.tensor(lam)).numpy(), pdf(lam), rtol=1e-10)
    t = np.linspace(0.01, 0.99, 99)
    np.testing.assert_allclose(s.logsnr(torch.tensor(t)).numpy(), lam_of_t(t), rtol=1e-8, atol=1e-8)


def test_laplace_and_cauchy_untruncated_formulas():
    lam = np.linspace(-30, 30, 121)
    mu, b, gamma = 0.3, 0.5, 1.0
    lap = schedules.Laplace(mu, b, -math.inf, math.inf).density(torch.tensor(lam)).numpy()
    np.testing.assert_allclose(lap, np.exp(-np.abs(lam - mu) / b) / (2 * b), rtol=1e-12, atol=1e-300)
    cau = schedules.Cauchy(mu, gamma, -math.inf, math.inf).density(torch.tensor(lam)).numpy()
    np.testing.assert_allclose(cau, gamma / (math.pi * (gamma**2 + (lam - mu) ** 2)), rtol=1e-12)


def _sd3_mode_draws(scale, n, seed):
    """SD3's mode sampler, transcribed from Esser et al. 2024, §3.1 (diffusers
    ``compute_density_for_timestep_sampling``, weighting_scheme="mode"): t = 1 − u − s(cos²(πu/2) − 1 + u)."""
    u = np.random.default_rng(seed).uniform(size=n)
    t = 1 - u - scale * (np.cos(math.pi * u / 2) ** 2 - 1 + u)
    return 2 * np.log((1 - t) / t)  # rectified flow: t_RF = sigmoid(−λ/2)


def _sd3_mode_density(lam, scale):
    """p(λ) = p_u · |du/dt| · |dt/dλ| with u(t) by a scipy root solve, independent of the package."""
    out = []
    for v in lam:
        t = 1 / (1 + math.exp(v / 2))
        f = lambda u, t=t: 1 - u - scale * (math.cos(math.pi * u / 2) ** 2 - 1 + u) - t  # noqa: E731
        u = optimize.brentq(f, 0.0, 1.0, xtol=1e-15)
        dt_du = -1 - scale + scale * math.pi / 2 * math.sin(math.pi * u)
        out.append(0.5 * t * (1 - t) / abs(dt_du))
    return np.array(out)


@pytest.mark.parametrize("scale", [1.29, 0.0, -0.8, 1.7])
def test_sd3_mode_density_closed_form_and_sampler(scale):
    s = schedules.SD3Mode(scale, -math.inf, math.inf)
    lam = np.linspace(-20, 20, 81)
    np.testing.assert_allclose(s.density(torch.tensor(lam)).numpy(), _sd3_mode_density(lam, scale), rtol=1e-9)
    total, _ = integrate.quad(lambda v: float(s.density(torch.tensor(v, dtype=torch.float64))), -math.inf, math.inf)
    assert total == pytest.approx(1.0, abs=1e-8)
    # the histogram of SD3's own draws against ∫p over each bin (chi-square)
    n = 200_000
    draws = _sd3_mode_draws(scale, n, seed=4)
    edges = np.concatenate([[-np.inf], np.linspace(-10, 10, 41), [np.inf]])
    expected = np.array([integrate.quad(lambda v: float(s.density(torch.tensor(v, dtype=torch.float64))), a, b)[0]
                         for a, b in zip(edges[:-1], edges[1:], strict=True)]) * n
    observed = np.histogram(draws, edges)[0]
    keep = expected > 5
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4
    ours = s.sample(100_000, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert stats.ks_2samp(draws, ours).pvalue > 1e-3


def test_sd3_mode_monotonicity_bound_is_tight():
    # f'(u) = −(1 + s) + (sπ/2) sin(πu): zero at u = ½ for s = 2/(π − 2), at u = 0 for s = −1.
    bound = 2 / (math.pi - 2)
    assert schedules.SD3Mode.MAX_SCALE == pytest.approx(bound)
    assert -(1 + bound) + bound * math.pi / 2 == pytest.approx(0.0, abs=1e-12)
    for bad in (bound + 1e-6, -1.0, 3.0):
        with pytest.raises(OptionError, match="scale"):
            schedules.get("sd3-mode", scale=bad)


def test_sd3_mode_scale_zero_is_uniform_flow():
    lam = torch.linspace(-14, 14, 57, dtype=torch.float64)
    torch.testing.assert_close(schedules.get("sd3-mode", scale=0.0).density(lam), schedules.get("flow").density(lam))


def test_interpolated_cosine_closed_form():
    s_lo, s_hi = 2 * math.log(32 / 512), 2 * math.log(256 / 512)
    s = schedules.InterpolatedCosine(s_lo, s_hi, -math.inf, math.inf)
    tau = np.linspace(0.001, 0.999, 999)
    lam_cos = -2 * np.log(np.tan(math.pi * tau / 2))
    expected = tau * (lam_cos + s_lo) + (1 - tau) * (lam_cos + s_hi)  # Hoogeboom et al. 2023, §3.1
    np.testing.assert_allclose(s.logsnr(torch.tensor(tau)).numpy(), expected, rtol=1e-12, atol=1e-12)
    # p(λ) = 1/|dλ/dτ| at τ(λ), τ by scipy's root solve
    lam = np.linspace(-18, 14, 65)
    dens = []
    for v in lam:
        t = optimize.brentq(lambda x, v=v: -2 * math.log(math.tan(math.pi * x / 2)) + s_hi + x * (s_lo - s_hi) - v,
                            1e-16, 1 - 1e-16, xtol=1e-15)
        dens.append(1 / abs(-math.pi / (math.sin(math.pi * t / 2) * math.cos(math.pi * t / 2)) + s_lo - s_hi))
    np.testing.assert_allclose(s.density(torch.tensor(lam)).numpy(), dens, rtol=1e-9)


def test_interpolated_cosine_equal_shifts_is_shifted_cosine():
    s = schedules.get("interpolated-cosine", shift_lo=-1.5, shift_hi=-1.5)
    ref = schedules.get("cosine", shift=-1.5)
    lam = torch.linspace(-14, 14, 57, dtype=torch.float64)
    torch.testing.assert_close(s.density(lam), ref.density(lam), rtol=1e-10, atol=0)
    with pytest.raises(OptionError, match="2 pi"):
        schedules.get("interpolated-cosine", shift_lo=7.0, shift_hi=0.0)


def _kdiffusion_log_uniform(sigma_min, sigma_max, n, rng):
    # k-diffusion rand_log_uniform: ln σ uniform on [ln σ_min, ln σ_max]
    return np.exp(rng.uniform(math.log(sigma_min), math.log(sigma_max), n))


def _kdiffusion_split_log_normal(loc, scale_1, scale_2, n, rng):
    # k-diffusion rand_split_log_normal: |n| to the left of loc with scale_1 (probability
    # scale_1/(scale_1 + scale_2)), to the right with scale_2
    mag = np.abs(rng.standard_normal(n))
    left = rng.uniform(size=n) < scale_1 / (scale_1 + scale_2)
    return np.exp(np.where(left, loc - scale_1 * mag, loc + scale_2 * mag))


def _kdiffusion_log_logistic(loc, scale, n, rng):
    # k-diffusion rand_log_logistic (no truncation): ln σ = loc + scale·logit(u)
    u = rng.uniform(size=n)
    return np.exp(loc + scale * np.log(u / (1 - u)))


@pytest.mark.parametrize("name,params,draw", [
    ("log-uniform", {"sigma_min": 0.01, "sigma_max": 50.0},
     lambda rng, n: _kdiffusion_log_uniform(0.01, 50.0, n, rng)),
    ("split-log-normal", {"loc": -0.5, "scale_1": 0.6, "scale_2": 1.3},
     lambda rng, n: _kdiffusion_split_log_normal(-0.5, 0.6, 1.3, n, rng)),
    ("log-logistic", {"loc": 0.5, "scale": 0.7}, lambda rng, n: _kdiffusion_log_logistic(0.5, 0.7, n, rng)),
], ids=["log-uniform", "split-log-normal", "log-logistic"])
def test_kdiffusion_densities_match_their_samplers(name, params, draw):
    s = schedules.get(name, **params)
    lam = -2 * np.log(draw(np.random.default_rng(7), 400_000))
    lam = lam[(lam > s.logsnr_min) & (lam < s.logsnr_max)]
    ours = s.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert stats.ks_2samp(lam, ours).pvalue > 1e-3


def test_split_log_normal_density_closed_form():
    loc, s1, s2 = -0.5, 0.6, 1.3
    s = schedules.SplitLogNormal(loc, s1, s2, -math.inf, math.inf)
    # ln σ = x has density 2/(s1+s2) φ((x − loc)/s_i); λ = −2x halves it: p(λ) = 1/(s1+s2) φ((−λ/2 − loc)/s_i),
    # with s1 for x < loc (λ > −2 loc) and s2 for x > loc.
    lam = np.linspace(-15, 15, 121)
    x = -lam / 2
    expected = np.where(x < loc, stats.norm.pdf((x - loc) / s1), stats.norm.pdf((x - loc) / s2)) / (s1 + s2)
    np.testing.assert_allclose(s.density(torch.tensor(lam)).numpy(), expected, rtol=1e-12)


def test_log_uniform_is_uniform_in_logsnr_and_shifts_its_support():
    s = schedules.get("log-uniform", sigma_min=0.002, sigma_max=80.0, shift=-1.0)
    assert (s.logsnr_min, s.logsnr_max) == pytest.approx((-2 * math.log(80) - 1, -2 * math.log(0.002) - 1))
    lam = torch.linspace(s.logsnr_min, s.logsnr_max, 11, dtype=torch.float64)
    torch.testing.assert_close(s.density(lam), torch.full_like(lam, 1 / (s.logsnr_max - s.logsnr_min)))


def _sd3_cosmap_draws(u):
    """SD3's cosmap sampler (Esser et al. 2024, §3.1): t = 1 − 1/(tan(πu/2) + 1)."""
    return 1 - 1 / (np.tan(math.pi * u / 2) + 1)


def test_sd3_cosmap_is_the_cosine_logsnr_schedule():
    """Identity (b): t/(1 − t) = tan(πu/2) = e^{−λ/2}, so λ = −2 ln tan(πu/2), the cosine schedule at time u."""
    u = np.linspace(0.001, 0.999, 999)
    lam = 2 * np.log((1 - _sd3_cosmap_draws(u)) / _sd3_cosmap_draws(u))
    cosine = schedules.Cosine(-math.inf, math.inf)
    np.testing.assert_allclose(cosine.logsnr(torch.tensor(u)).numpy(), lam, rtol=1e-10, atol=1e-10)
    # SD3's density in t, π_cosmap(t) = 2/(π − 2πt + 2πt²) (Esser et al. 2024, §3.1), carried to λ by
    # |dt/dλ| = t(1 − t)/2, equals sech(λ/2)/(2π), the untruncated cosine density
    grid = np.linspace(-20, 20, 81)
    t = 1 / (1 + np.exp(grid / 2))
    p_cosmap = 2 / (math.pi - 2 * math.pi * t + 2 * math.pi * t**2) * t * (1 - t) / 2
    np.testing.assert_allclose(cosine.density(torch.tensor(grid)).numpy(), p_cosmap, rtol=1e-10)
    draws = 2 * np.log(1 / _sd3_cosmap_draws(np.random.default_rng(5).uniform(size=200_000)) - 1)
    draws = draws[(draws > -15) & (draws < 15)]
    ours = schedules.get("cosine").sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert stats.ks_2samp(draws, ours).pvalue > 1e-3


# ---- the class contract -------------------------------------------------------------------------------------------

def test_schedule_is_abstract_in_its_base_map():
    with pytest.raises(TypeError):
        schedules.Schedule()

    class NoInverse(schedules.Schedule):
        def _g(self, logsnr):
            return -logsnr

        def _dg(self, logsnr):
            return -torch.ones_like(logsnr)

    with pytest.raises(TypeError, match="_g_inv"):
        NoInverse(-1.0, 1.0)


@pytest.mark.parametrize("name", schedules.names())
def test_every_registered_schedule_satisfies_the_protocol(name):
    schedule = schedules.get(name)
    assert isinstance(schedule, schedules.Schedule) and isinstance(schedule, schedules.ScheduleLike)
