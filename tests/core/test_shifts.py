"""Resolution shifts: SD3's and Flux's time shifts as the library's λ translation, against their formulas."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from diffusion_objectives import schedules, weightings
from diffusion_objectives.core.shifts import flux_mu, flux_shift, sd3_shift


def _rf_time_shift(t, alpha):
    # SD3 (Esser et al. 2024, §5.3.2) and diffusers FlowMatchEulerDiscreteScheduler (shift=α):
    # σ' = α σ / (1 + (α − 1) σ), with σ = t_RF
    return alpha * t / (1 + (alpha - 1) * t)


def _diffusers_calculate_shift(seq_len, base_seq_len=256, max_seq_len=4096, base_shift=0.5, max_shift=1.15):
    # diffusers pipelines/flux/pipeline_flux.py `calculate_shift`: μ = m·seq_len + b through the two points
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return seq_len * m + b


def _diffusers_exponential_time_shift(mu, t):
    # diffusers FlowMatchEulerDiscreteScheduler.time_shift (exponential, exponent 1): e^μ / (e^μ + (1/t − 1))
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def _logsnr_rf(t):
    return 2 * np.log((1 - t) / t)  # t_RF = sigmoid(−λ/2)


@given(m=st.floats(1.0, 1e7), n=st.floats(1.0, 1e7))
def test_sd3_shift_is_the_rectified_flow_time_shift(m, n):
    alpha = math.sqrt(m / n)
    t = np.linspace(0.01, 0.99, 99)
    expected = _logsnr_rf(_rf_time_shift(t, alpha))
    # the flow schedule (uniform t_RF), untruncated, translated by the shift
    ours = schedules.FlowUniformT(-math.inf, math.inf, shift=sd3_shift(m, n)).logsnr(torch.tensor(t)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)


def test_sd3_shift_sign_matches_shifted_cosine():
    # 1024² from 256² is α = 4: λ' = λ − 2 ln 4; simple diffusion's shifted cosine uses 2 ln(256/1024) too
    assert sd3_shift(1024**2, 256**2) == pytest.approx(-2 * math.log(4))
    a = schedules.get("shifted-cosine", resolution=1024.0, reference=256.0)
    b = schedules.get("cosine", shift=sd3_shift(1024**2, 256**2))
    lam = torch.linspace(-14, 14, 29, dtype=torch.float64)
    torch.testing.assert_close(a.density(lam), b.density(lam))


@pytest.mark.parametrize("tokens", [256, 1024, 4096, 6000])
def test_flux_shift_matches_diffusers(tokens):
    mu = _diffusers_calculate_shift(tokens)
    assert flux_mu(tokens) == pytest.approx(mu, rel=1e-12)
    t = np.linspace(0.01, 0.99, 99)
    expected = _logsnr_rf(np.array([_diffusers_exponential_time_shift(mu, v) for v in t]))
    ours = schedules.FlowUniformT(-math.inf, math.inf, shift=flux_shift(tokens)).logsnr(torch.tensor(t)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-9)
    assert flux_shift(tokens) == pytest.approx(-2 * mu)


def test_shift_moves_logit_normal_draws_like_sd3():
    # SD3 at 1024² (shift 3.0 in its configs: α = 3) on logit-normal(0, 1) t: λ' = λ − 2 ln 3
    rng = np.random.default_rng(2)
    t = 1 / (1 + np.exp(-rng.normal(0.0, 1.0, 300_000)))
    lam = _logsnr_rf(_rf_time_shift(t, 3.0))
    lam = lam[(lam > -15) & (lam < 15)]
    s = schedules.get("logit-normal", shift=sd3_shift(9.0, 1.0))
    ours = s.sample(200_000, torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    assert stats.ks_2samp(lam, ours).pvalue > 1e-3


def test_shift_applies_to_weightings():
    s = flux_shift(1024)
    lam = torch.linspace(-12, 12, 25, dtype=torch.float64)
    torch.testing.assert_close(weightings.get("sd3", shift=s)(lam), weightings.get("sd3")(lam - s))


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        sd3_shift(0, 1)
    with pytest.raises(ValueError, match="max_tokens"):
        flux_shift(100, base_tokens=10, max_tokens=10)
