"""Schedules: inverse pairs, p = −dt/dλ, normalisation, sampling, closed forms derived here."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, stats

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
    s = schedules.Flow(-math.inf, math.inf)
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
    for name in ("cosine", "edm", "flow"):
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
