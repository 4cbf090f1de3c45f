"""Objectives: each preset's w equals 2·p·c·k of its published loss; EDM's own loss; schedule invariance."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffusion_objectives import AdaptiveSchedule, WeightedLoss, objectives, parameterizations, schedules, weightings
from diffusion_objectives.core.mixtures import GaussianMixture

LAM = np.linspace(-14.5, 14.5, 233)


def _ddpm_density(lam):
    # uniform t on [0, 1] with λ(t) = −log expm1(0.1 t + 9.95 t²): p = 1/|dλ/dt| (zero below λ(1))
    s = np.log1p(np.exp(-lam))
    t = (-0.1 + np.sqrt(0.01 + 39.8 * s)) / 19.9
    dlam_dt = -(0.1 + 19.9 * t) / (-np.expm1(-(0.1 * t + 9.95 * t * t)))
    return np.where(t <= 1, 1 / np.abs(dlam_dt), 0.0)


# (published sampling density p_π(λ), per-sample loss weight c(λ), k(λ) of the target): closed forms,
# written from the papers' definitions, independently of the package.
PUBLISHED = {
    "ddpm": (_ddpm_density, lambda l: 1.0, lambda l: 1.0),
    "iddpm": (lambda l: 1 / np.cosh(l / 2) / (2 * math.pi), lambda l: 1.0, lambda l: 1.0),
    "v-cosine": (lambda l: 1 / np.cosh(l / 2) / (2 * math.pi), lambda l: 1.0, lambda l: 1 + np.exp(-l)),
    # EDM: ln σ ~ N(−1.2, 1.2²), weight λ(σ) = (σ²+σ_d²)/(σσ_d)² on ‖D − x‖² (x target, k = e^{−λ})
    "edm": (lambda l: stats.norm.pdf(l, 2.4, 2.4),
            lambda l: (np.exp(-l) + 0.25) / (np.exp(-l) * 0.25), lambda l: np.exp(-l)),
    "flow-matching": (lambda l: 1 / 8 / np.cosh(l / 4) ** 2, lambda l: 1.0, lambda l: (1 + np.exp(-l / 2)) ** 2),
    "sd3": (lambda l: stats.norm.pdf(l, 0.0, 2.0), lambda l: 1.0, lambda l: (1 + np.exp(-l / 2)) ** 2),
    "min-snr": (lambda l: 1 / np.cosh(l / 2) / (2 * math.pi), lambda l: np.minimum(np.exp(l), 5) / np.exp(l),
                lambda l: 1.0),
    "p2": (lambda l: 1 / np.cosh(l / 2) / (2 * math.pi), lambda l: 1 / (1 + np.exp(l)), lambda l: 1.0),
    "indi": (lambda l: 1 / 8 / np.cosh(l / 4) ** 2, lambda l: 1.0, lambda l: np.exp(-l)),
    # VDM: ½ E_t[−λ'(t)‖ε̂ − ε‖²] with uniform λ on [−15, 15]: p = 1/30, c = 15
    "elbo": (lambda l: np.full_like(l, 1 / 30), lambda l: 15.0, lambda l: 1.0),
    # EDM2: ln σ ~ N(−0.4, 1), weight (σ² + σ_d²)/(σσ_d)² on ‖D − x‖² (x target, k = e^{−λ})
    "edm2": (lambda l: stats.norm.pdf(l, 0.8, 2.0),
             lambda l: (np.exp(-l) + 0.25) / (np.exp(-l) * 0.25), lambda l: np.exp(-l)),
    # Hang et al. 2024: unweighted ε-loss, λ ~ Laplace(0, 0.5) / Cauchy(0, 1)
    "laplace": (lambda l: np.exp(-np.abs(l) / 0.5) / (2 * 0.5), lambda l: 1.0, lambda l: 1.0),
    "cauchy": (lambda l: 1 / (math.pi * (1 + l**2)), lambda l: 1.0, lambda l: 1.0),
    # k-diffusion soft-min-snr: c = (σσ_d)²/(σ² + σ_d²)² on F (k_F = 1 + σ²/σ_d²), λ uniform on [−15, 15]
    "soft-min-snr": (lambda l: np.full_like(l, 1 / 30),
                     lambda l: np.exp(-l) * 0.25 / (np.exp(-l) + 0.25) ** 2, lambda l: 1 + np.exp(-l) / 0.25),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_weighting_equals_published_derivation(name):
    p, c, k = PUBLISHED[name]
    expected = 2 * p(LAM) * c(LAM) * k(LAM)
    obj = objectives.get(name)
    np.testing.assert_allclose(obj.weighting(torch.tensor(LAM)).numpy(), expected, rtol=1e-7, atol=1e-300)
    # and the package's own conversion of its recorded published form agrees
    np.testing.assert_allclose(obj.published.weighting()(torch.tensor(LAM)).numpy(), expected, rtol=1e-7,
                               atol=1e-300)


def test_from_published_converts_a_new_objective():
    # x-prediction, uniform λ on [−10, 10], c = e^{λ}  ⇒  w = 2 · (1/20) · e^{λ} · e^{−λ} = 0.1
    obj = objectives.from_published(schedules.get("linear-logsnr", logsnr_min=-10, logsnr_max=10),
                                    lambda l: torch.exp(l), parameterizations.get("x"))
    lam = torch.linspace(-9, 9, 19, dtype=torch.float64)
    torch.testing.assert_close(obj.weighting(lam), torch.full_like(lam, 0.1))
    assert obj.is_monotonic()


def test_edm_f_target_and_x_target_forms_agree():
    # EDM22 Eq. 8 on F with c ≡ 1 equals λ(σ)‖D − x‖²: both conversions give the same w.
    by_f = objectives.get("edm").published.weighting()
    lam = torch.tensor(LAM)
    p, c, k = PUBLISHED["edm"]
    np.testing.assert_allclose(by_f(lam).numpy(), 2 * p(LAM) * c(LAM) * k(LAM), rtol=1e-7)


def test_soft_min_snr_preset_is_sigmoid_times_derived_constant():
    """Identity (a): k-diffusion's soft-min-snr loss with λ uniform on [−15, 15] is KG23's sigmoid weighting
    with b = −2 ln σ_d = 2 ln 2, times 2 p = 2/30."""
    lam = torch.tensor(LAM)
    w = objectives.get("soft-min-snr").weighting(lam)
    torch.testing.assert_close(w, weightings.get("sigmoid", bias=2 * math.log(2))(lam) / 15, rtol=1e-12, atol=0)
    torch.testing.assert_close(w, weightings.get("soft-min-snr", sigma_data=0.5)(lam) / 15, rtol=1e-12, atol=0)


def test_edm2_preset_is_edm_weighting_with_edm2_constants():
    lam = torch.tensor(LAM)
    torch.testing.assert_close(objectives.get("edm2").weighting(lam),
                               weightings.get("edm", p_mean=-0.4, p_std=1.0, sigma_data=0.5)(lam))
    sched = objectives.get("edm2").schedule
    np.testing.assert_allclose(sched.density(lam).numpy(),
                               stats.truncnorm((-15 - 0.8) / 2, (15 - 0.8) / 2, loc=0.8, scale=2.0).pdf(LAM), rtol=1e-9)


MONO = {"elbo": True, "ddpm": False, "iddpm": False, "v-cosine": True, "edm": False, "flow-matching": True,
        "sd3": False, "min-snr": False, "p2": False, "indi": True, "sigmoid": True, "edm-monotonic": True,
        "edm2": False, "laplace": False, "cauchy": False, "soft-min-snr": True}


@pytest.mark.parametrize("name", sorted(MONO))
def test_preset_monotonicity(name):
    assert objectives.get(name).is_monotonic() is MONO[name]


def test_every_preset_listed():
    assert sorted(objectives.names()) == sorted(MONO)


# ---- Monte-Carlo equivalences with an analytic denoiser -------------------------------------------

DATA_STD = 0.5
DIM = 3


def _gaussian_loss_curve(lam):
    """ℓ(λ) = E‖ε̂* − ε‖² for x ~ N(0, s² I_D) with the exact denoiser: D · s² e^λ / (s² e^λ + 1)."""
    r = DATA_STD**2 * np.exp(lam)
    return DIM * r / (r + 1)


def _gaussian():
    return GaussianMixture.isotropic([1.0], [[0.0] * DIM], DATA_STD)


def _mc(loss, n, seed, batch=20_000):
    mix = _gaussian()
    model = mix.denoiser(loss.parameterization)
    gen = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n // batch):
        x = mix.sample(batch, gen)
        vals.append(loss(model, x, gen).loss)
    v = torch.cat(vals)
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def test_edm_own_loss_matches_logsnr_form():
    """EDM's loss (σ ~ log-normal, weight λ(σ), F target through c_skip/c_out) vs the λ-form estimate."""
    mix = _gaussian()
    gen = torch.Generator().manual_seed(0)
    n, sd = 200_000, 0.5
    x = mix.sample(n, gen)
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(n, generator=gen, dtype=torch.float64))
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    x_tilde = x + sigma[:, None] * noise  # EDM's y + n
    # exact denoiser D(x̃; σ) for Gaussian data: E[x | x̃] = s²/(s² + σ²) x̃
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / torch.sqrt(sigma**2 + sd**2)
    denoised = (DATA_STD**2 / (DATA_STD**2 + sigma**2))[:, None] * x_tilde
    f_hat = (denoised - c_skip[:, None] * x_tilde) / c_out[:, None]  # the network's F
    f_target = (x - c_skip[:, None] * x_tilde) / c_out[:, None]
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    edm_loss = weight * ((c_out[:, None] * (f_hat - f_target)) ** 2).sum(1)  # = λ(σ)‖D − y‖²
    edm_mean, edm_se = float(edm_loss.mean()), float(edm_loss.std() / math.sqrt(n))
    ours_mean, ours_se = _mc(objectives.get("edm").loss(), 200_000, seed=1)
    assert abs(edm_mean - ours_mean) < 4 * math.hypot(edm_se, ours_se)


def _quadrature(weighting, lo=-15.0, hi=15.0):
    f = lambda l: float(weighting(torch.tensor(l, dtype=torch.float64))) * _gaussian_loss_curve(l)  # noqa: E731
    return 0.5 * integrate.quad(f, lo, hi, limit=400, points=[-5, 0, 5])[0]


def _trained_adaptive(weighting):
    sched = AdaptiveSchedule(-15, 15, bins=50, decay=0.9)
    mix = _gaussian()
    gen = torch.Generator().manual_seed(5)
    loss = WeightedLoss(weighting, sched, parameterizations.get("eps"))
    for _ in range(30):
        out = loss(mix.denoiser(loss.parameterization), mix.sample(2000, gen), gen)
        sched.update(out.logsnr, out.weighted_eps_mse)
    return sched


@pytest.mark.parametrize("weighting_name", ["sigmoid", "edm"])
def test_schedule_invariance_equals_quadrature(weighting_name):
    w = weightings.get(weighting_name)
    expected = _quadrature(w)
    scheds = {
        "cosine": schedules.get("cosine"),
        "linear-logsnr": schedules.get("linear-logsnr"),
        "edm": schedules.get("edm"),
        "adaptive": _trained_adaptive(w),
    }
    for i, (name, sched) in enumerate(scheds.items()):
        mean, se = _mc(WeightedLoss(w, sched, parameterizations.get("eps")), 100_000, seed=10 + i)
        assert abs(mean - expected) < 4 * se + 1e-9, (name, mean, expected, se)


@pytest.mark.parametrize("param", ["eps", "x", "v", "flow", "edm", "score"])
def test_loss_value_independent_of_parameterization(param):
    """Same ε̂ (the exact one), same draws: the loss is identical whatever the network outputs (k cancels)."""
    mix = _gaussian()
    g = torch.Generator().manual_seed(3)
    x = mix.sample(256, g)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    lam = torch.empty(256, dtype=torch.float64).uniform_(-15, 15, generator=g)
    w, s = weightings.get("sigmoid"), schedules.get("cosine")
    ref = WeightedLoss(w, s, parameterizations.get("eps"))
    other = WeightedLoss(w, s, parameterizations.get(param))
    a = ref.loss_at(mix.denoiser(ref.parameterization), x, eps, lam).loss
    b = other.loss_at(mix.denoiser(other.parameterization), x, eps, lam).loss
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_with_schedule_keeps_objective():
    obj = objectives.get("sigmoid")
    adaptive = obj.with_schedule(AdaptiveSchedule())
    assert adaptive.weighting is obj.weighting and isinstance(adaptive.schedule, AdaptiveSchedule)


def test_v_prediction_with_shifted_cosine_monotone_iff_shift_below_threshold():
    # w ∝ sech((λ − s)/2)(1 + e^{−λ}), so d log w/dλ = −½ tanh((λ − s)/2) − 1/(1 + e^{λ}); w is monotone iff
    # the maximum of that over λ is ≤ 0, i.e. iff s ≤ s*, the root of that maximum as a function of s.
    from scipy import optimize

    def max_dlogw(s):
        return -optimize.minimize_scalar(lambda l: 0.5 * math.tanh((l - s) / 2) + 1 / (1 + math.exp(l)),
                                         bounds=(-30, 30), method="bounded", options={"xatol": 1e-12}).fun

    s_star = optimize.brentq(max_dlogw, 0.5, 5.0, xtol=1e-10)
    assert s_star == pytest.approx(2.197, abs=1e-3)  # derived by root finding (docs/objectives.md)
    for s, mono in ((s_star - 0.05, True), (s_star + 0.05, False)):
        obj = objectives.from_published(schedules.Cosine(-math.inf, math.inf, shift=s), None,
                                        parameterizations.get("v"))
        assert obj.weighting.is_monotonic(-30, 30) is mono
