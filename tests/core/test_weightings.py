"""Weightings: closed forms written out independently here, monotonicity, shifts, the envelope."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import optimize, stats

from diffusion_objectives import weightings
from diffusion_objectives.core.theory import augmentation_density
from diffusion_objectives.errors import OptionError

LAM = np.linspace(-15, 15, 301)


def _sech(x):
    return 1 / np.cosh(x)


def _ddpm_closed_form(lam):
    # λ(t) = −log expm1(0.1 t + 9.95 t²) for t ∈ [0, 1]; p = 1/|dλ/dt| at t(λ), w = 2p (zero below λ(1)).
    out = np.zeros_like(lam)
    for i, v in enumerate(lam):
        f = lambda t, v=v: -math.log(math.expm1(0.1 * t + 9.95 * t * t)) - v  # noqa: E731
        if f(1.0) > 0:  # λ below λ(1): outside DDPM's range
            continue
        t = optimize.brentq(f, 1e-15, 1.0, xtol=1e-15)
        s = 0.1 * t + 9.95 * t * t
        dlam_dt = -(0.1 + 19.9 * t) * math.exp(s) / math.expm1(s)
        out[i] = 2 / abs(dlam_dt)
    return out


CLOSED_FORMS = {
    "elbo": lambda l: np.ones_like(l),
    "sigmoid": lambda l: 1 / (1 + np.exp(l - 2.0)),
    "edm": lambda l: 8 * stats.norm.pdf(l, 2.4, 2.4) * (np.exp(-l) + 0.25),
    "eps-cosine": lambda l: _sech(l / 2) / math.pi,
    "v-cosine": lambda l: 2 / math.pi * np.exp(-l / 2),
    "flow": lambda l: np.exp(-l / 2),
    "sd3": lambda l: 2 * stats.norm.pdf(l, 0.0, 2.0) * (1 + np.exp(-l / 2)) ** 2,
    "min-snr": lambda l: _sech(l / 2) * np.minimum(1, 5 * np.exp(-l)) / math.pi,
    "p2": lambda l: _sech(l / 2) / (1 + np.exp(l)) / math.pi,
    "indi": lambda l: 0.25 * np.exp(-l) * _sech(l / 4) ** 2,
    "ddpm": _ddpm_closed_form,
    # v form of Min-SNR (Hang et al. 2023): 2 p_cos · min(SNR, 5)/(SNR + 1) · k_v, k_v = 1 + e^{−λ}
    "min-snr-v": lambda l: _sech(l / 2) / math.pi * np.minimum(np.exp(l), 5) / (np.exp(l) + 1) * (1 + np.exp(-l)),
    # debiased estimation (Yu et al. 2024), ε form: 2 p_cos · SNR^{−1/2}
    "debiased": lambda l: _sech(l / 2) / math.pi * np.exp(-l / 2),
    # k-diffusion soft-min-snr: c = (σσ_d)²/(σ² + σ_d²)² on F, k_F = (σ² + σ_d²)/σ_d², σ = e^{−λ/2}, σ_d = 0.5
    "soft-min-snr": lambda l: (np.exp(-l) * 0.25) / (np.exp(-l) + 0.25) ** 2 * (np.exp(-l) + 0.25) / 0.25,
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_default_weighting_closed_form(name):
    w = weightings.get(name)
    np.testing.assert_allclose(w(torch.tensor(LAM)).numpy(), CLOSED_FORMS[name](LAM), rtol=1e-7, atol=1e-300)


def test_parameterised_weightings():
    lam = torch.tensor(LAM)
    np.testing.assert_allclose(weightings.get("sigmoid", bias=-3.0)(lam).numpy(), 1 / (1 + np.exp(LAM + 3)),
                               rtol=1e-12)
    edm2 = weightings.get("edm", p_mean=-0.4, p_std=1.0, sigma_data=0.5)(lam).numpy()
    np.testing.assert_allclose(edm2, 2 * stats.norm.pdf(LAM, 0.8, 2.0) * (np.exp(-LAM) + 0.25) / 0.25, rtol=1e-9)
    sd3 = weightings.get("sd3", m=0.5, s=0.7)(lam).numpy()
    np.testing.assert_allclose(sd3, 2 * stats.norm.pdf(LAM, -1.0, 1.4) * (1 + np.exp(-LAM / 2)) ** 2, rtol=1e-9)
    debiased_v = weightings.get("debiased", target="v")(lam).numpy()  # c = 1/(SNR + 1) on v, k_v = 1 + e^{−λ}
    np.testing.assert_allclose(debiased_v, _sech(LAM / 2) / math.pi / (np.exp(LAM) + 1) * (1 + np.exp(-LAM)),
                               rtol=1e-9)
    sd = 1.3
    soft = weightings.get("soft-min-snr", sigma_data=sd)(lam).numpy()
    sig2 = np.exp(-LAM)
    np.testing.assert_allclose(soft, sig2 * sd**2 / (sig2 + sd**2) ** 2 * (sig2 + sd**2) / sd**2, rtol=1e-9)
    min_snr_v = weightings.get("min-snr-v", gamma=2.0)(lam).numpy()
    np.testing.assert_allclose(min_snr_v, _sech(LAM / 2) / math.pi * np.minimum(1, 2 * np.exp(-LAM)), rtol=1e-9)
    p2 = weightings.get("p2", gamma=0.5, k=2.0)(lam).numpy()
    np.testing.assert_allclose(p2, _sech(LAM / 2) * (2 + np.exp(LAM)) ** -0.5 / math.pi, rtol=1e-9)


MONOTONE = ["elbo", "sigmoid", "v-cosine", "flow", "indi", "edm-monotonic", "debiased", "soft-min-snr"]
NON_MONOTONE = ["eps-cosine", "edm", "sd3", "min-snr", "p2", "ddpm", "min-snr-v"]


@pytest.mark.parametrize("name", MONOTONE)
def test_monotone(name):
    assert weightings.get(name).is_monotonic(-15, 15)


@pytest.mark.parametrize("name", NON_MONOTONE)
def test_not_monotone(name):
    assert not weightings.get(name).is_monotonic(-15, 15)


def test_every_weighting_is_classified():
    assert sorted(MONOTONE + NON_MONOTONE) == sorted(weightings.names())


def test_edm_monotonic_is_envelope_with_derived_peak():
    # λ* solves d/dλ [log N(λ; 2.4, 2.4²) + log(e^{−λ} + 0.25)] = 0
    lam_star = optimize.brentq(lambda l: -(l - 2.4) / 2.4**2 - math.exp(-l) / (math.exp(-l) + 0.25), -10, 0)
    assert lam_star == pytest.approx(-3.3078, abs=1e-4)
    edm = CLOSED_FORMS["edm"]
    peak = edm(np.array([lam_star]))[0]
    w = weightings.get("edm-monotonic")(torch.tensor(LAM)).numpy()
    expected = np.where(LAM >= lam_star, edm(LAM), peak)
    np.testing.assert_allclose(w, expected, rtol=1e-9)


def test_monotone_envelope_is_running_max():
    base = weightings.get("p2")
    env = weightings.monotone_envelope(base)
    lam = np.linspace(-15, 15, 3001)
    b = base(torch.tensor(lam)).numpy()
    running = np.maximum.accumulate(b[::-1])[::-1]  # max over λ' ≥ λ on this grid
    e = env(torch.tensor(lam)).numpy()
    assert np.all(e >= running * (1 - 1e-12))
    assert np.all(e <= running * (1 + 1e-4))  # the grid can only miss a peak between its points
    assert env.is_monotonic(-15, 15)


@given(shift=st.floats(-4, 4), name=st.sampled_from(sorted(CLOSED_FORMS)))
def test_shift_translates(shift, name):
    params = {"shift": shift}
    w = weightings.get(name, **params)
    lam = torch.linspace(-12, 12, 49, dtype=torch.float64)
    torch.testing.assert_close(w(lam), weightings.get(name)(lam - shift), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(weightings.names()))
def test_finite_values_and_gradients(name, dtype):
    lam = torch.linspace(-15, 15, 121, dtype=dtype).requires_grad_(True)
    w = weightings.get(name)(lam)
    (g,) = torch.autograd.grad(w.sum(), lam)
    assert w.dtype == dtype
    assert torch.isfinite(w).all() and torch.isfinite(g).all() and (w >= 0).all()


def test_errors_name_the_option():
    with pytest.raises(OptionError, match="unknown weighting 'sigmiod'; choose from: .*sigmoid"):
        weightings.get("sigmiod")
    with pytest.raises(OptionError, match="biass.*allowed: bias, shift"):
        weightings.get("sigmoid", biass=1.0)
    with pytest.raises(OptionError, match="gamma"):
        weightings.get("min-snr", gamma=-1.0)
    with pytest.raises(OptionError, match="target must be one of eps, v"):
        weightings.get("debiased", target="x")
    with pytest.raises(OptionError, match="sigma_data"):
        weightings.get("soft-min-snr", sigma_data=0.0)


# ---- issue 13: the identities of the new weightings -------------------------------------------------------

@given(sigma_data=st.floats(0.05, 5.0))
def test_soft_min_snr_is_sigmoid_with_bias_minus_two_log_sigma_data(sigma_data):
    """k-diffusion's soft-min-snr weight on F times k_F equals sigmoid(−2 ln σ_d − λ), factor exactly 1."""
    lam = torch.linspace(-15, 15, 61, dtype=torch.float64)
    soft = weightings.get("soft-min-snr", sigma_data=sigma_data)(lam)
    sig = weightings.get("sigmoid", bias=-2 * math.log(sigma_data))(lam)
    torch.testing.assert_close(soft, sig, rtol=1e-12, atol=0)
    # the same from the D-loss weight 1/(σ² + σ_d²) (k-diffusion) and k_x = e^{−λ} = σ²
    sigma2 = np.exp(-lam.numpy())
    np.testing.assert_allclose(soft.numpy(), sigma2 / (sigma2 + sigma_data**2), rtol=1e-12)


def test_debiased_eps_is_scaled_sigmoid_and_min_snr_v_equals_min_snr():
    lam = torch.linspace(-15, 15, 121, dtype=torch.float64)
    torch.testing.assert_close(weightings.get("debiased")(lam), 2 / math.pi * weightings.get("sigmoid", bias=0.0)(lam))
    torch.testing.assert_close(weightings.get("min-snr-v", gamma=3.0)(lam), weightings.get("min-snr", gamma=3.0)(lam))
    assert repr(weightings.get("debiased", target="v")) == "Debiased(target=v, shift=0)"


@pytest.mark.parametrize("name,params,minus_dw", [
    # −d/dλ sigmoid(b − λ) = logistic density at λ with location b, scale 1
    ("soft-min-snr", {"sigma_data": 0.5}, lambda l: stats.logistic.pdf(l, loc=2 * math.log(2))),
    ("debiased", {}, lambda l: 2 / math.pi * stats.logistic.pdf(l)),
    # w = (2/π) e^{−λ/2}/(1 + e^{λ}): −w' = (2/π) e^{−λ/2} (½/(1 + e^{λ}) + e^{λ}/(1 + e^{λ})²)
    ("debiased", {"target": "v"},
     lambda l: 2 / math.pi * np.exp(-l / 2) * (0.5 / (1 + np.exp(l)) + np.exp(l) / (1 + np.exp(l)) ** 2)),
])
def test_augmentation_density_of_new_monotone_weightings(name, params, minus_dw):
    """KG23 §4: p_w = −w'/w(λ_min) plus the point mass w(λ_max)/w(λ_min), total mass 1."""
    w = weightings.get(name, **params)
    lam = torch.linspace(-15, 15, 3001, dtype=torch.float64)
    aug = augmentation_density(w, lam, -15.0, 15.0)
    w_min = float(w(torch.tensor(-15.0, dtype=torch.float64)))
    np.testing.assert_allclose(aug.density.numpy(), minus_dw(lam.numpy()) / w_min, rtol=1e-8, atol=1e-300)
    mass = float(torch.trapezoid(aug.density, lam)) + aug.point_mass
    assert mass == pytest.approx(1.0, abs=1e-5)
