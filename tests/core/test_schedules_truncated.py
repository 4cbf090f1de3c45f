"""The frozen truncation/shift wrapper ``schedules.Truncated``: normalisation, inverse CDF, translation by the
shift, ``dataclasses.replace`` reproducing a fresh construction bit for bit. Expected values come from scipy
quadrature and closed forms derived here, never from the code under test."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from diffusion_objectives import schedules
from diffusion_objectives.training.build import build_objective
from diffusion_objectives.training.config import Component, LossConfig

# base maps with closed-form (non-bisection) g, so that quadrature stays cheap
BASES = ["cosine", "linear-logsnr", "edm", "flow", "ddpm-linear", "laplace", "cauchy", "log-logistic",
         "split-log-normal"]


@st.composite
def truncations(draw):
    lo = draw(st.floats(-14.0, 12.0))
    hi = draw(st.floats(lo + 0.5, 14.0))
    shift = draw(st.floats(-3.0, 3.0))
    return draw(st.sampled_from(BASES)), lo, hi, shift


def _truncated(name, lo, hi, shift):
    return dataclasses.replace(schedules.get(name).truncated(), logsnr_min=lo, logsnr_max=hi, shift=shift)


def _p(s, lam: float) -> float:
    return float(s.density(torch.tensor([lam], dtype=torch.float64))[0])


@settings(max_examples=40, deadline=None)
@given(truncations())
def test_truncated_density_integrates_to_one(case):
    name, lo, hi, shift = case
    s = _truncated(name, lo, hi, shift)
    assert isinstance(s, schedules.Truncated) and (s.logsnr_min, s.logsnr_max, s.shift) == (lo, hi, shift)
    mass, _ = integrate.quad(lambda v: _p(s, v), lo, hi, limit=200, epsabs=1e-12, epsrel=1e-10)
    assert mass == pytest.approx(1.0, rel=1e-7)
    assert _p(s, lo - 0.1) == 0.0 and _p(s, hi + 0.1) == 0.0


@settings(max_examples=40, deadline=None)
@given(truncations(), st.floats(0.0, 1.0))
def test_truncated_t_is_the_upper_tail_mass_and_inverts_logsnr(case, u):
    name, lo, hi, shift = case
    s = _truncated(name, lo, hi, shift)
    lam = float(s.logsnr(torch.tensor([u], dtype=torch.float64))[0])
    assert lo <= lam <= hi
    # t(λ) = ∫_λ^{λ_max} p (t = 0 at the data end), by quadrature
    upper_mass, _ = integrate.quad(lambda v: _p(s, v), lam, hi, limit=200, epsabs=1e-12, epsrel=1e-10)
    assert upper_mass == pytest.approx(u, abs=1e-7)
    assert float(s.t(torch.tensor([lam], dtype=torch.float64))[0]) == pytest.approx(u, abs=1e-9)


@given(st.floats(-8.0, 8.0), st.floats(-4.0, 4.0))
def test_shift_translates_the_untruncated_cosine_density(lam, shift):
    # cosine on ℝ: g = arctan e^{−λ/2} runs over (0, π/2), so p(λ) = ¼ sech(λ/2) / (π/2) = sech(λ/2)/(2π);
    # shifted by s, p_s(λ) = p(λ − s)
    s = schedules.Truncated(schedules.Cosine(), -math.inf, math.inf, shift)
    assert _p(s, lam) == pytest.approx(1.0 / (2 * math.pi * math.cosh(0.5 * (lam - shift))), rel=1e-12)


@given(st.floats(8.0, 1024.0), st.floats(-8.0, 8.0))
def test_resolution_shift_moves_the_density_by_twice_the_log_ratio(resolution, lam):
    # simple diffusion: a d×d image at reference resolution 64 shifts λ by s = 2 log(64/d)
    s = schedules.get("shifted-cosine", resolution=resolution, logsnr_min=-math.inf, logsnr_max=math.inf)
    moved = lam + 2.0 * math.log(64.0 / resolution)
    assert _p(s, moved) == pytest.approx(1.0 / (2 * math.pi * math.cosh(0.5 * lam)), rel=1e-10)


@settings(max_examples=30, deadline=None)
@given(truncations(), st.floats(-5.0, 5.0), st.floats(-4.0, 4.0))
def test_shift_by_s_translates_endpoints_density_and_draws(case, offset, lam_frac):
    name, lo, hi, _ = case
    base = _truncated(name, lo, hi, 0.0)
    moved = dataclasses.replace(base, logsnr_min=lo + offset, logsnr_max=hi + offset, shift=offset)
    lam = lo + (hi - lo) * (lam_frac + 4.0) / 8.0
    assert _p(moved, lam + offset) == pytest.approx(_p(base, lam), rel=1e-6, abs=1e-12)
    u = torch.linspace(0.0, 1.0, 33, dtype=torch.float64)
    torch.testing.assert_close(moved.logsnr(u), base.logsnr(u) + offset, rtol=0, atol=1e-7)


def test_replace_reproduces_a_fresh_construction_bit_for_bit():
    lam = torch.linspace(-16.0, 16.0, 801, dtype=torch.float64)
    u = torch.linspace(0.0, 1.0, 257, dtype=torch.float64)
    pairs = [(schedules.Cosine(), schedules.Cosine(-9.0, 7.0, 1.25)),
             (schedules.NormalLogSNR(2.4, 2.4), schedules.NormalLogSNR(2.4, 2.4, -9.0, 7.0, 1.25)),
             (schedules.Laplace(0.3, 0.7), schedules.Laplace(0.3, 0.7, -9.0, 7.0, 1.25))]
    for base, fresh in pairs:
        wrapped = dataclasses.replace(base.truncated(), logsnr_min=-9.0, logsnr_max=7.0, shift=1.25)
        assert wrapped.base is base and wrapped.name == base.name and wrapped.params() == fresh.params()
        assert repr(wrapped) == repr(fresh)
        for f, x in ((lambda s, v: s.density(v), lam), (lambda s, v: s.t(v), lam), (lambda s, v: s.logsnr(v), u)):
            assert torch.equal(f(wrapped, x), f(fresh, x))
        draws = [s.sample(100, torch.Generator().manual_seed(5)) for s in (wrapped, fresh)]
        assert torch.equal(*draws)


def test_truncated_is_frozen_and_does_not_nest():
    s = schedules.get("edm").with_endpoints(-6.0, 6.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.logsnr_min = -1.0
    again = schedules.Truncated(s, -5.0, 5.0)
    assert isinstance(again.base, schedules.NormalLogSNR) and again.truncated() is again
    with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
        dataclasses.replace(s, logsnr_min=7.0)
    with pytest.raises(ValueError, match="shift must be finite"):
        dataclasses.replace(s, shift=math.inf)


def test_training_override_wraps_the_presets_base_map_without_copying():
    obj = build_objective(LossConfig(objective="edm", schedule=Component(None, {"logsnr_min": -8.0, "shift": 0.5})))
    s = obj.schedule
    assert isinstance(s, schedules.Truncated) and type(s.base) is schedules.NormalLogSNR
    u = torch.linspace(0.0, 1.0, 129, dtype=torch.float64)
    assert (s.logsnr_min, s.logsnr_max, s.shift) == (-8.0, 15.0, 0.5)
    wrapped = dataclasses.replace(schedules.get("edm").truncated(), logsnr_min=-8.0, shift=0.5)
    assert torch.equal(s.logsnr(u), wrapped.logsnr(u))
    # a fresh construction may pick the other tail of the normal for precision: equal to rounding
    torch.testing.assert_close(s.logsnr(u), schedules.get("edm", logsnr_min=-8.0, shift=0.5).logsnr(u),
                               rtol=0, atol=1e-12)
