"""Samplers with the exact mixture denoiser: moments and mode weights, determinism, per-seed batch
independence, EDM's Algorithm 2 re-implemented independently, convergence order against an ODE oracle.

The independent oracle for ODE tests is EDM's variance-exploding form: x̃ = x + σ n, with the posterior
mean of a Gaussian mixture written here from scratch, D(x̃; σ) = Σ_k r_k(x̃) (μ_k + Σ_k(Σ_k + σ²I)⁻¹(x̃ − μ_k)),
r_k ∝ π_k N(x̃; μ_k, Σ_k + σ²I), and dx̃/dσ = (x̃ − D)/σ (EDM22 Eq. 1 and 3 with σ(t) = t).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from diffusion_objectives import parameterizations, samplers, schedules
from diffusion_objectives.core import mixtures
from diffusion_objectives.errors import OptionError

MIX = mixtures.GaussianMixture(
    [0.2, 0.3, 0.5],
    [[-1.0, 0.0], [1.0, 0.6], [0.2, -1.0]],
    [[[0.04, 0.01], [0.01, 0.02]], [[0.02, 0.0], [0.0, 0.05]], [[0.03, -0.01], [-0.01, 0.03]]],
)
N_SAMPLES = 2000
Z = 4.0  # tolerance in standard errors of the sample statistics

# Documented numbers of grid points (network evaluations: N for ancestral / DDIM / DPM-Solver++(2M),
# 2N − 1 for Heun) at which each sampler's discretisation error on MIX is below the sampling error of
# 2000 samples (measured against a 400-step DPM-Solver++ reference with common noise: mean error
# < 0.003, covariance error < 0.015, < 0.5% of samples change mode). See docs/likelihood-and-sampling.md.
STEPS = {
    "ancestral": (100, "cosine-t"),
    "ddim": (100, "cosine-t"),
    "heun": (32, "edm"),
    "heun-churn": (32, "edm"),
    "dpmpp-2m": (30, "edm"),
}


def _grid(kind, steps):
    if kind == "edm":
        return samplers.grid_edm(steps)
    return samplers.grid_uniform_t(schedules.Cosine(), steps)


def _run(name, noise, grid, seeds, model=None, p=None, **kw):
    p = p or parameterizations.Eps()
    model = model or MIX.denoiser(p)
    if name == "heun-churn":
        name, kw = "heun", {"s_churn": 10.0, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.003, **kw}
    if name in ("ancestral", "heun"):
        kw.setdefault("generators", samplers.seeded_generators([s + 7_000_000 for s in seeds]))
    return samplers.get(name)(model, p, noise, grid, **kw)


# -- grids ----------------------------------------------------------------------------------------------------

def test_edm_grid_is_eq5_of_edm22():
    steps, smin, smax, rho = 18, 0.002, 80.0, 7.0
    i = np.arange(steps)
    sigma = (smax ** (1 / rho) + i / (steps - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(samplers.grid_edm(steps).numpy(), -2 * np.log(sigma), rtol=1e-12)


@given(steps=st.integers(2, 200), lo=st.floats(-20, 0), width=st.floats(1, 35))
def test_grids_are_increasing_with_the_requested_endpoints(steps, lo, width):
    hi = lo + width
    for grid in (samplers.grid_uniform_logsnr(steps, lo, hi),
                 samplers.grid_uniform_t(schedules.Cosine(lo, hi), steps),
                 samplers.grid_uniform_t(schedules.get("edm", logsnr_min=lo, logsnr_max=hi), steps)):
        assert grid.shape == (steps,) and grid.dtype == torch.float64
        assert bool((grid[1:] > grid[:-1]).all())
        assert float(grid[0]) == pytest.approx(lo, abs=1e-9) and float(grid[-1]) == pytest.approx(hi, abs=1e-9)
    s = schedules.Cosine(lo, hi)
    t = s.t(samplers.grid_uniform_t(s, steps))
    torch.testing.assert_close(t, torch.linspace(1, 0, steps, dtype=torch.float64), atol=1e-7, rtol=0)


# -- moments and modes ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oracle():
    """Exact mean/covariance; SEs of the sample mean/covariance and the expected fraction of samples
    that the argmax-posterior rule assigns to each component, from 200k exact draws."""
    x = MIX.sample(200_000, torch.Generator().manual_seed(0))
    m, c = MIX.mean(), MIX.covariance()
    centred = x - m
    prods = centred[:, :, None] * centred[:, None, :]
    return {"mean": m, "cov": c, "mean_se": (c.diagonal() / N_SAMPLES).sqrt(),
            "cov_se": (prods.var(0) / N_SAMPLES).sqrt(), "modes": _mode_fractions(x)}


def _mode_fractions(x):
    comp = MIX._component_log_probs(x, MIX.means[None], MIX.covariances[None]).argmax(1)
    return torch.bincount(comp, minlength=3).double() / len(x)


@pytest.mark.parametrize("name", list(STEPS))
def test_samples_match_mixture_moments_and_mode_weights(name, oracle):
    seeds = list(range(N_SAMPLES))
    noise = samplers.seeded_noise(seeds, (2,), dtype=torch.float64)
    steps, kind = STEPS[name]
    x = _run(name, noise, _grid(kind, steps), seeds)
    assert x.shape == (N_SAMPLES, 2) and bool(torch.isfinite(x).all())
    mean_z = (x.mean(0) - oracle["mean"]) / oracle["mean_se"]
    cov_z = (torch.cov(x.T, correction=0) - oracle["cov"]) / oracle["cov_se"]
    f = oracle["modes"]
    mode_z = (_mode_fractions(x) - f) / (f * (1 - f) / N_SAMPLES).sqrt()
    assert bool((mean_z.abs() < Z).all()), mean_z
    assert bool((cov_z.abs() < Z).all()), cov_z
    assert bool((mode_z.abs() < Z).all()), mode_z


# -- determinism and per-seed reproducibility ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ddim", "heun", "dpmpp-2m"])
def test_deterministic_samplers_ignore_generators(name):
    noise = samplers.seeded_noise([1, 2, 3], (2,), dtype=torch.float64)
    grid = samplers.grid_edm(12)
    p = parameterizations.Eps()
    fn = samplers.get(name)
    a = fn(MIX.denoiser(p), p, noise, grid)
    torch.rand(7)  # advancing the global generator must not matter either
    b = fn(MIX.denoiser(p), p, noise, grid)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["ancestral", "heun-churn", "ddim", "dpmpp-2m"])
def test_sample_for_a_seed_does_not_depend_on_the_batch(name):
    grid = _grid("edm", 10)
    big, small = [5, 11, 2, 40, 7], [40, 5]
    xb = _run(name, samplers.seeded_noise(big, (2,), dtype=torch.float64), grid, big)
    xs = _run(name, samplers.seeded_noise(small, (2,), dtype=torch.float64), grid, small)
    torch.testing.assert_close(xs, xb[[3, 0]], rtol=1e-12, atol=1e-12)
    other = _run(name, samplers.seeded_noise(small, (2,), dtype=torch.float64), grid, [1, 2])
    if name in ("ancestral", "heun-churn"):  # other stochastic seeds, other samples
        assert not torch.allclose(other, xs)


def test_seeded_noise_advances_given_generators():
    gens = samplers.seeded_generators([3, 4])
    first = samplers.seeded_noise(gens, (5,))
    second = samplers.seeded_noise(gens, (5,))
    torch.testing.assert_close(first, samplers.seeded_noise([3, 4], (5,)))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(first[1], torch.randn(5, generator=torch.Generator().manual_seed(4)))


# -- EDM Algorithm 2, re-implemented from the paper in VE coordinates ---------------------------------------------

def _ve_denoiser(x, sigma):
    eye = torch.eye(2, dtype=torch.float64)
    covs = MIX.covariances + sigma**2 * eye  # [K, 2, 2]
    diff = x[:, None, :] - MIX.means[None]  # [n, K, 2]
    sol = torch.linalg.solve(covs[None], diff[..., None])[..., 0]
    logr = torch.log(MIX.weights) - 0.5 * (diff * sol).sum(-1) - 0.5 * torch.logdet(covs)
    r = torch.softmax(logr, 1)
    post = MIX.means[None] + (MIX.covariances[None] @ sol[..., None])[..., 0]  # μ_k + Σ_k(Σ_k+σ²)⁻¹(x − μ_k)
    return (r[..., None] * post).sum(1)


def _edm_algorithm_2(noise, sigmas, gens, s_churn, s_min, s_max, s_noise):
    n = len(sigmas)
    t = list(sigmas) + [0.0]
    x = t[0] * noise
    for i in range(n):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_min <= t[i] <= s_max else 0.0
        t_hat = t[i] + gamma * t[i]
        if gamma > 0:
            eps = torch.stack([torch.randn(2, generator=g, dtype=torch.float64) for g in gens]) * s_noise
            x = x + math.sqrt(t_hat**2 - t[i] ** 2) * eps
        d = (x - _ve_denoiser(x, t_hat)) / t_hat
        x_next = x + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d2 = (x_next - _ve_denoiser(x_next, t[i + 1])) / t[i + 1]
            x_next = x + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


@pytest.mark.parametrize("churn", [0.0, 30.0])
@pytest.mark.parametrize("param", ["eps", "x", "edm"])
def test_heun_is_edm_algorithm_2(churn, param):
    seeds = [0, 1, 2, 3]
    noise = samplers.seeded_noise(seeds, (2,), dtype=torch.float64)
    steps = 12
    grid = samplers.grid_edm(steps)
    sigmas = [(80 ** (1 / 7) + i / (steps - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(steps)]
    kw = {"s_churn": churn, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.003}
    expected = _edm_algorithm_2(noise, sigmas, samplers.seeded_generators([9, 8, 7, 6]), **kw)
    p = parameterizations.get(param)
    got = samplers.heun(MIX.denoiser(p), p, noise, grid, generators=samplers.seeded_generators([9, 8, 7, 6]), **kw)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("churn", [0.0, 30.0])
def test_heun_core_runs_any_denoiser_callable_as_edm_algorithm_2(churn):
    """The core takes any ``denoiser(z, logsnr) -> x_hat``, here the VE oracle in VP coordinates:
    x̂(z, λ) = D(z/α; σ = e^{−λ/2}) (EDM22 Eq. 7 posterior mean, z = α(x + σ n))."""
    seeds, steps = [0, 1, 2, 3], 10
    noise = samplers.seeded_noise(seeds, (2,), dtype=torch.float64)
    sigmas = [(80 ** (1 / 7) + i / (steps - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(steps)]
    kw = {"s_churn": churn, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.003}
    expected = _edm_algorithm_2(noise, sigmas, samplers.seeded_generators([5, 4, 3, 2]), **kw)

    def denoiser(z, logsnr):
        return _ve_denoiser(z * math.sqrt(1 + math.exp(-logsnr)), math.exp(-0.5 * logsnr))

    got = samplers.sample_heun(denoiser, noise, samplers.grid_edm(steps),
                               generators=samplers.seeded_generators([5, 4, 3, 2]), **kw)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_denoiser_validates_guidance_and_knows_where_it_guides():
    p = parameterizations.get("eps")
    with pytest.raises(ValueError, match="null_label"):
        samplers.Denoiser(MIX.denoiser(p), p, guidance=1.0)
    with pytest.raises(ValueError, match="guidance_interval"):
        samplers.Denoiser(MIX.denoiser(p), p, guidance_interval=(2.0, 1.0))
    d = samplers.Denoiser(MIX.denoiser(p), p, labels=torch.zeros(3, dtype=torch.long), guidance=1.0,
                          null_label=3, guidance_interval=(-1.0, 2.0))
    assert [d.guided_at(v) for v in (-1.5, -1.0, 0.5, 2.0, 2.5)] == [False, True, True, True, False]
    assert not samplers.Denoiser(MIX.denoiser(p), p).guided_at(0.0)


def test_edm_stochastic_is_edms_imagenet64_setting():
    """The named setting holds EDM's published ImageNet-64 sampler numbers (FID 1.36): 256 steps = 511
    network evaluations, S_churn 40, S_min 0.05, S_max 50, S_noise 1.003."""
    e = samplers.EDM_STOCHASTIC
    assert (e.steps, e.nfe, e.s_churn, e.s_min, e.s_max, e.s_noise) == (256, 511, 40.0, 0.05, 50.0, 1.003)
    assert samplers.get("edm-stochastic") is samplers.edm_stochastic
    assert "edm-stochastic" in samplers.names() and samplers.REGISTRY.get("edm-stochastic").stochastic


@pytest.mark.parametrize("param", ["eps", "edm"])
def test_edm_stochastic_is_edm_algorithm_2_with_churn(param):
    """At EDM's N = 256 the named sampler equals the from-the-paper Algorithm 2 with S_churn 40, S_min 0.05,
    S_max 50, S_noise 1.003 (γ = min(40/256, √2 − 1) = 0.156 inside [S_min, S_max]) and makes 511 evaluations."""
    steps = 256
    noise = samplers.seeded_noise([0, 1, 2], (2,), dtype=torch.float64)
    sigmas = [(80 ** (1 / 7) + i / (steps - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7 for i in range(steps)]
    expected = _edm_algorithm_2(noise, sigmas, samplers.seeded_generators([5, 6, 7]), s_churn=40.0, s_min=0.05,
                                s_max=50.0, s_noise=1.003)
    p = parameterizations.get(param)
    denoiser, calls = MIX.denoiser(p), []

    def model(z, logsnr, labels=None):
        calls.append(1)
        return denoiser(z, logsnr)

    got = samplers.get("edm-stochastic")(model, p, noise, samplers.grid_edm(steps),
                                         generators=samplers.seeded_generators([5, 6, 7]))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert len(calls) == samplers.EDM_STOCHASTIC.nfe
    deterministic = samplers.heun(MIX.denoiser(p), p, noise, samplers.grid_edm(steps))
    assert (got - deterministic).abs().max() > 1e-3  # the churn acts


# -- convergence order against the ODE oracle -------------------------------------------------------------------

def _ode_reference(noise, lam_first, lam_last):
    """Solve dx̃/dσ = (x̃ − D)/σ from σ_0 to σ_N (scipy, tight tolerances), return D there."""
    s0, s1 = math.exp(-lam_first / 2), math.exp(-lam_last / 2)
    shape = noise.shape

    def f(sigma, y):
        x = torch.from_numpy(y).reshape(shape)
        return ((x - _ve_denoiser(x, sigma)) / sigma).reshape(-1).numpy()

    sol = integrate.solve_ivp(f, (s0, s1), (s0 * noise).reshape(-1).numpy(), method="DOP853", rtol=1e-11, atol=1e-11)
    return _ve_denoiser(torch.from_numpy(sol.y[:, -1]).reshape(shape), s1)


def test_ddim_is_first_order_and_dpmpp_2m_second_order():
    noise = samplers.seeded_noise(range(32), (2,), dtype=torch.float64)
    lo, hi = -6.0, 6.0
    ref = _ode_reference(noise, lo, hi)
    p = parameterizations.Eps()
    errors = {}
    for name in ("ddim", "dpmpp-2m"):
        errors[name] = [float((samplers.get(name)(MIX.denoiser(p), p, noise, samplers.grid_uniform_logsnr(n, lo, hi))
                               - ref).abs().mean()) for n in (17, 33, 65)]
    order = {k: math.log2(v[1] / v[2]) for k, v in errors.items()}
    assert 0.8 < order["ddim"] < 1.3, errors
    assert 1.7 < order["dpmpp-2m"] < 2.5, errors
    assert errors["dpmpp-2m"][2] < errors["ddim"][2] / 10


# -- guidance, parameterizations, callback, registry --------------------------------------------------------------

def _conditional_model(p):
    """Label c ∈ {0, 1, 2}: the denoiser of component c alone; label 3 (null): of the whole mixture."""
    parts = [mixtures.GaussianMixture([1.0], MIX.means[k:k + 1], MIX.covariances[k:k + 1]) for k in range(3)]

    def model(z, logsnr, labels):
        out = p.output(MIX.eps_hat(z, logsnr), z, logsnr)
        for k in range(3):
            mask = labels == k
            if bool(mask.any()):
                out[mask] = p.output(parts[k].eps_hat(z[mask], logsnr[mask]), z[mask], logsnr[mask])
        return out

    return model


@given(g=st.floats(0.0, 4.0), param=st.sampled_from(["eps", "x", "v", "flow", "edm"]),
       name=st.sampled_from(["ddim", "dpmpp-2m", "heun"]))
@settings(max_examples=12)
def test_guidance_is_the_guided_epsilon(g, param, name):
    """Guided sampling equals sampling the model (1 + g)·out(z, c) − g·out(z, ∅): each output space is affine
    in ε̂ at fixed (z, λ), so guiding in ε̂ is guiding in the output."""
    p = parameterizations.get(param)
    cond = _conditional_model(p)
    labels = torch.tensor([0, 1, 2, 2])
    null = torch.full_like(labels, 3)

    def guided(z, logsnr):
        return (1 + g) * cond(z, logsnr, labels) - g * cond(z, logsnr, null)

    noise = samplers.seeded_noise(range(4), (2,), dtype=torch.float64)
    grid = samplers.grid_edm(8)
    fn = samplers.get(name)
    a = fn(cond, p, noise, grid, labels=labels, guidance=g, null_label=3)
    b = fn(guided, p, noise, grid)
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


def test_conditional_sampling_without_guidance_draws_the_labelled_component():
    p = parameterizations.Eps()
    labels = torch.tensor([0, 1, 2] * 100)
    x = samplers.dpmpp_2m(_conditional_model(p), p, samplers.seeded_noise(range(300), (2,), dtype=torch.float64),
                          samplers.grid_edm(24), labels=labels)
    comp = MIX._component_log_probs(x, MIX.means[None], MIX.covariances[None]).argmax(1)
    assert float((comp == labels).double().mean()) > 0.99


@pytest.mark.parametrize("name", ["ancestral", "ddim", "heun", "dpmpp-2m"])
def test_samplers_agree_across_parameterizations(name):
    noise = samplers.seeded_noise(range(8), (2,), dtype=torch.float64)
    grid = samplers.grid_edm(10)
    outs = [_run(name, noise, grid, list(range(8)), p=parameterizations.get(k)) for k in ("eps", "x", "v", "edm")]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", ["ancestral", "ddim", "heun", "dpmpp-2m"])
def test_callback_sees_every_grid_point(name):
    seen = []
    grid = samplers.grid_uniform_logsnr(6, -10, 10)
    noise = samplers.seeded_noise([0, 1], (2,), dtype=torch.float64)
    x = _run(name, noise, grid, [0, 1], callback=seen.append)
    assert [s.index for s in seen] == list(range(6)) and all(s.total == 6 for s in seen)
    np.testing.assert_allclose([s.logsnr for s in seen], grid.numpy())
    torch.testing.assert_close(seen[0].z, math.sqrt(torch.sigmoid(torch.tensor(10.0)).item()) * noise)
    torch.testing.assert_close(seen[-1].x_hat, x)  # the output is the prediction at the last grid point


def test_single_point_grid_is_one_denoising_step():
    noise = samplers.seeded_noise([0, 1], (2,), dtype=torch.float64)
    lam = torch.tensor([-1.0], dtype=torch.float64)
    a, s = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    z = s * noise
    expected = (z - s * MIX.eps_hat(z, lam.expand(2))) / a
    for name in ("ancestral", "ddim", "heun", "dpmpp-2m"):
        torch.testing.assert_close(_run(name, noise, lam, [0, 1]), expected)


def test_registry_and_bad_inputs():
    assert samplers.names() == ["ancestral", "ddim", "heun", "dpmpp-2m", "edm-stochastic"]
    assert samplers.get("dpmpp-2m") is samplers.dpmpp_2m
    with pytest.raises(OptionError, match="unknown sampler 'euler'; choose from: ancestral, ddim, heun, dpmpp-2m, "
                                          "edm-stochastic"):
        samplers.get("euler")
    with pytest.raises(OptionError, match="unknown sampling grid 'karras'; choose from: edm, cosine, uniform-logsnr"):
        samplers.grid("karras", 8)
    with pytest.raises(OptionError, match="steps 1: a grid needs at least 2 points"):
        samplers.grid("edm", 1)
    p = parameterizations.Eps()
    noise = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="increasing"):
        samplers.ddim(MIX.denoiser(p), p, noise, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="one generator per sample"):
        samplers.ancestral(MIX.denoiser(p), p, noise, samplers.grid_edm(4),
                           generators=samplers.seeded_generators([1]))
    with pytest.raises(ValueError, match="null_label"):
        samplers.ddim(MIX.denoiser(p), p, noise, samplers.grid_edm(4), labels=torch.tensor([0, 1]), guidance=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        samplers.grid_edm(1)


def test_images_in_float32_with_labels():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 3, generator=g) * 0.1

    def model(z, logsnr, labels):  # an arbitrary smooth conditional ε-model on [B, 3, 4, 4]
        return torch.tanh(torch.einsum("ij,bjhw->bihw", w, z)) + 0.01 * labels.reshape(-1, 1, 1, 1)

    p = parameterizations.Eps()
    noise = samplers.seeded_noise([0, 1], (3, 4, 4))
    labels = torch.tensor([1, 2])
    for name in samplers.names():
        kw = {"generators": samplers.seeded_generators([5, 6])} if name in ("ancestral", "heun") else {}
        x = samplers.get(name)(model, p, noise, samplers.grid_edm(5), labels=labels, guidance=1.5, null_label=0, **kw)
        assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())


# -- autoguidance and the guidance interval (issue 13) ----------------------------------------------------------

GOOD = mixtures.GaussianMixture.isotropic([0.3, 0.7], [[-1.0, 0.5], [0.8, -0.2]], 0.2)
BAD = mixtures.GaussianMixture.isotropic([0.3, 0.7], [[-1.0, 0.5], [0.8, -0.2]], 0.6)  # a wider, "worse" model


def _posterior_mean(z, logsnr, weights, means, std):
    """E[x | z_λ = z] of an isotropic Gaussian mixture, from scratch: z | k ~ N(αμ_k, (α²s² + σ²)I),
    E[x | z, k] = μ_k + (α s²/v)(z − αμ_k), responsibilities r_k ∝ π_k N(z; αμ_k, v I)."""
    alpha, sigma = math.sqrt(1 / (1 + math.exp(-logsnr))), math.sqrt(1 / (1 + math.exp(logsnr)))
    v = alpha**2 * std**2 + sigma**2
    means = np.asarray(means)
    d2 = ((z[:, None, :] - alpha * means[None]) ** 2).sum(-1)
    log_r = np.log(weights)[None] - d2 / (2 * v)
    r = np.exp(log_r - log_r.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    cond = means[None] + (alpha * std**2 / v) * (z[:, None, :] - alpha * means[None])
    return (r[..., None] * cond).sum(1)


def _x_good(z, lam):
    return _posterior_mean(z, lam, [0.3, 0.7], [[-1.0, 0.5], [0.8, -0.2]], 0.2)


def _x_bad(z, lam):
    return _posterior_mean(z, lam, [0.3, 0.7], [[-1.0, 0.5], [0.8, -0.2]], 0.6)


def _guided_run(name, g, interval=None, seen=None, guide_param="x", p="eps"):
    p = parameterizations.get(p)
    pb = parameterizations.get(guide_param)
    guide = samplers.Guide(BAD.denoiser(pb), pb)
    noise = samplers.seeded_noise(range(6), (2,), dtype=torch.float64)
    kw = {"generators": samplers.seeded_generators(range(100, 106))} if name == "ancestral" else {}
    return samplers.get(name)(GOOD.denoiser(p), p, noise, samplers.grid_edm(12), guidance=g, guide=guide,
                              guidance_interval=interval, callback=None if seen is None else seen.append, **kw)


@pytest.mark.parametrize("name", ["ancestral", "ddim", "heun", "dpmpp-2m"])
@pytest.mark.parametrize("g,p", [(1.0, "eps"), (2.5, "v")])
def test_autoguidance_is_the_closed_form_guided_denoiser(name, g, p):
    """x̂ = x̂_bad + w(x̂_good − x̂_bad), w = 1 + g, at every grid point, with both exact mixture denoisers
    written independently (the guide in its own x-parameterization)."""
    seen = []
    _guided_run(name, g, seen=seen, p=p)
    assert len(seen) == 12
    for step in seen:
        z = step.z.numpy()
        xb, xg = _x_bad(z, step.logsnr), _x_good(z, step.logsnr)
        np.testing.assert_allclose(step.x_hat.numpy(), xb + (1 + g) * (xg - xb), rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("name", ["ancestral", "ddim", "heun", "dpmpp-2m"])
def test_guidance_interval_applies_guidance_exactly_inside(name):
    lo, hi = -2.0, 4.0
    seen, guide_logsnrs = [], []
    pb = parameterizations.X()
    bad = BAD.denoiser(pb)

    def counting_bad(z, logsnr):
        guide_logsnrs.extend(float(v) for v in logsnr.unique())
        return bad(z, logsnr)

    p = parameterizations.Eps()
    noise = samplers.seeded_noise(range(6), (2,), dtype=torch.float64)
    kw = {"generators": samplers.seeded_generators(range(100, 106))} if name == "ancestral" else {}
    samplers.get(name)(GOOD.denoiser(p), p, noise, samplers.grid_edm(12), guidance=2.0,
                       guide=samplers.Guide(counting_bad, pb), guidance_interval=(lo, hi), callback=seen.append, **kw)
    inside = {s.index for s in seen if lo <= s.logsnr <= hi}
    assert 0 < len(inside) < len(seen)
    for step in seen:
        z = step.z.numpy()
        xg = _x_good(z, step.logsnr)
        expected = _x_bad(z, step.logsnr) + 3.0 * (xg - _x_bad(z, step.logsnr)) if step.index in inside else xg
        np.testing.assert_allclose(step.x_hat.numpy(), expected, rtol=1e-8, atol=1e-9)
    assert guide_logsnrs and all(lo <= v <= hi for v in guide_logsnrs)


@pytest.mark.parametrize("name", ["ancestral", "ddim", "heun", "dpmpp-2m"])
def test_empty_guidance_interval_is_unguided_bit_for_bit(name):
    unguided = _guided_run(name, 0.0)
    assert torch.equal(_guided_run(name, 2.0, interval=(20.0, 30.0)), unguided)  # the EDM grid ends at λ ≈ 12.4
    assert not torch.equal(_guided_run(name, 2.0), unguided)
    assert torch.equal(_guided_run(name, 2.0, interval=(-math.inf, math.inf)), _guided_run(name, 2.0))
    # classifier-free guidance too
    p = parameterizations.Eps()
    cond, labels = _conditional_model(p), torch.tensor([0, 1, 2, 2])
    noise = samplers.seeded_noise(range(4), (2,), dtype=torch.float64)
    kw = {"generators": samplers.seeded_generators(range(4))} if name == "ancestral" else {}
    plain = samplers.get(name)(cond, p, noise, samplers.grid_edm(8), labels=labels, **kw)
    kw = {"generators": samplers.seeded_generators(range(4))} if name == "ancestral" else {}
    empty = samplers.get(name)(cond, p, noise, samplers.grid_edm(8), labels=labels, guidance=1.5, null_label=3,
                               guidance_interval=(-40.0, -30.0), **kw)
    assert torch.equal(plain, empty)


def test_guidance_interval_errors():
    p = parameterizations.Eps()
    noise = torch.zeros(2, 2, dtype=torch.float64)
    guide = samplers.Guide(BAD.denoiser(p), p)
    with pytest.raises(ValueError, match="lo <= hi"):
        samplers.ddim(GOOD.denoiser(p), p, noise, samplers.grid_edm(4), guidance=1.0, guide=guide,
                      guidance_interval=(3.0, 1.0))


def test_sampler_objects_run_their_core_and_only_the_stochastic_ones_draw():
    """A registry Sampler on a Denoiser equals its documented (model, parameterization) function bit for bit;
    exactly the samplers named stochastic use their generators (their output changes with the seeds of the
    generators at fixed initial noise), and the grid registry gives the grid functions' points."""
    p = parameterizations.Eps()
    noise = samplers.seeded_noise([1, 2, 3], (2,), dtype=torch.float64)
    grid = samplers.grid("edm", 6)
    torch.testing.assert_close(grid, samplers.grid_edm(6), rtol=0, atol=0)
    torch.testing.assert_close(samplers.grid("uniform-logsnr", 5), torch.linspace(-15, 15, 5, dtype=torch.float64))
    for name in samplers.names():
        sampler = samplers.REGISTRY.get(name)
        assert sampler.name == name and sampler.function is samplers.get(name)
        gens = samplers.seeded_generators([4, 5, 6])
        via_core = sampler(samplers.Denoiser(MIX.denoiser(p), p), noise, grid, generators=gens)
        kw = {"generators": samplers.seeded_generators([4, 5, 6])} if sampler.stochastic else {}
        torch.testing.assert_close(via_core, sampler.function(MIX.denoiser(p), p, noise, grid, **kw), rtol=0, atol=0)
        other = sampler(samplers.Denoiser(MIX.denoiser(p), p), noise, grid,
                        generators=samplers.seeded_generators([7, 8, 9]))
        assert (not torch.equal(via_core, other)) == sampler.stochastic, name
