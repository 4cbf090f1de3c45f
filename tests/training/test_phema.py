"""EDM2's post-hoc EMA (docs/ema.md): γ ↔ σ_rel against a numerical solve of the profile's standard deviation,
the closed-form profile inner products against quadrature, the tracker against the explicit weighted sum,
and reconstruction of tracked and untracked widths from snapshot files."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize

from diffusion_objectives import parameterizations, phema, schedules, weightings
from diffusion_objectives.core import mixtures
from diffusion_objectives.core.loss import WeightedLoss
from diffusion_objectives.networks.embedding import noise_input


def _sigma_rel_by_quadrature(gamma):
    """Std of τ under the density (γ+1) τ^γ on [0, 1] (t = 1), by numerical integration after τ = e^{−v}
    (the density becomes (γ+1) e^{−(γ+1)v} dv, smooth on [0, ∞))."""
    def expect(f):
        end = 80 / (gamma + 1)  # the density's tail beyond v = end is e^{−80}
        return integrate.quad(lambda v: f(math.exp(-v)) * (gamma + 1) * math.exp(-(gamma + 1) * v), 0, end,
                              epsabs=0, epsrel=1e-11, limit=200)[0]

    mean = expect(lambda tau: tau)
    return math.sqrt(expect(lambda tau: (tau - mean) ** 2))


def test_sigma_rel_max_is_the_peak_of_the_profile_width():
    res = optimize.minimize_scalar(lambda g: -_sigma_rel_by_quadrature(g), bounds=(-0.9, 2.0), method="bounded",
                                   options={"xatol": 1e-10})
    assert phema.SIGMA_REL_MAX == pytest.approx(-res.fun, rel=1e-8)
    assert phema.GAMMA_PEAK == pytest.approx(res.x, abs=1e-4)


@pytest.mark.parametrize("sigma_rel", [0.005, 0.01, 0.05, 0.075, 0.10, 0.15, 0.2, 0.25, 0.2887, 0.3, 0.30028])
def test_sigma_rel_to_gamma_solves_the_defining_relation(sigma_rel):
    """The γ on the falling branch (γ > γ_peak) whose profile has std σ_rel, by brentq on quadrature. Near the
    peak σ_rel(γ) is flat, so γ is compared with the tolerance that a 1e-10 error of the quadrature in σ_rel
    allows (1e-10/|dσ_rel/dγ|, the slope by central differences); the residual in σ_rel is checked directly."""
    gamma = phema.sigma_rel_to_gamma(sigma_rel)
    assert gamma > phema.GAMMA_PEAK
    assert _sigma_rel_by_quadrature(gamma) == pytest.approx(sigma_rel, rel=1e-10)
    expected = optimize.brentq(lambda g: _sigma_rel_by_quadrature(g) - sigma_rel, phema.GAMMA_PEAK + 1e-9, 1e7,
                               xtol=1e-13, rtol=1e-13)
    h = 1e-4 * max(1.0, expected)
    slope = abs(_sigma_rel_by_quadrature(expected + h) - _sigma_rel_by_quadrature(expected - h)) / (2 * h)
    assert gamma == pytest.approx(expected, rel=1e-9, abs=1e-10 / slope)


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-4, phema.SIGMA_REL_MAX * (1 - 1e-6)))
def test_gamma_and_sigma_rel_are_inverse(sigma_rel):
    gamma = phema.sigma_rel_to_gamma(sigma_rel)
    assert gamma > phema.GAMMA_PEAK
    assert phema.gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-9)


@pytest.mark.parametrize("bad", [0.0, -0.05, float("nan"), float("inf"), 0.31, phema.SIGMA_REL_MAX])
def test_sigma_rel_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="sigma_rel must be finite and in"):
        phema.sigma_rel_to_gamma(bad)
    with pytest.raises(ValueError, match="sigma_rel"):
        phema.PowerEMA({"w": torch.zeros(1)}, [0.05, bad])


def _profile(t, gamma):
    """p_{t,γ}(τ) = (γ+1) τ^γ / t^{γ+1} on (0, t], written as (γ+1)/t · (τ/t)^γ to avoid overflow."""
    return lambda tau: (gamma + 1) / t * (tau / t) ** gamma if 0 < tau <= t else 0.0


@settings(max_examples=40, deadline=None)
@given(t_a=st.floats(1, 1e4), t_b=st.floats(1, 1e4), s_a=st.floats(0.01, 0.29), s_b=st.floats(0.01, 0.29))
def test_profile_inner_products_match_quadrature(t_a, t_b, s_a, s_b):
    g_a, g_b = phema.sigma_rel_to_gamma(s_a), phema.sigma_rel_to_gamma(s_b)
    p_a, p_b = _profile(t_a, g_a), _profile(t_b, g_b)
    end = min(t_a, t_b)  # substitute τ = end·e^{−v}: the integrand becomes a smooth decaying exponential in v
    integrand = lambda v: p_a(end * math.exp(-v)) * p_b(end * math.exp(-v)) * end * math.exp(-v)  # noqa: E731
    expected = integrate.quad(integrand, 0, math.inf, limit=200, epsabs=0, epsrel=1e-11)[0]
    got = phema.profile_inner(t_a, g_a, t_b, g_b)
    assert float(got) == pytest.approx(expected, rel=1e-8)


def _trajectory(steps, size, seed):
    """θ_0 … θ_T: a drifting random walk with per-step noise, float64 ``[T + 1, size]``."""
    g = torch.Generator().manual_seed(seed)
    walk = torch.randn(steps + 1, size, generator=g, dtype=torch.float64).cumsum(0) / 30
    return walk + 0.3 * torch.randn(steps + 1, size, generator=g, dtype=torch.float64)


def _direct_ema(theta, t, sigma_rel):
    """Σ_{τ=1}^{t} (τ^{γ+1} − (τ−1)^{γ+1}) / t^{γ+1} · θ_τ: the profile integrated over each step."""
    gamma = phema.sigma_rel_to_gamma(sigma_rel)
    tau = torch.arange(1, t + 1, dtype=torch.float64)
    weights = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / t ** (gamma + 1)
    return weights @ theta[1:t + 1]


def _track(theta, sigma_rels, every, directory):
    tracker = phema.PowerEMA({"w": theta[0].clone(), "count": torch.tensor(0)}, sigma_rels)
    for t in range(1, theta.shape[0]):
        tracker.update({"w": theta[t], "count": torch.tensor(t)}, t)
        if t % every == 0:
            phema.save_snapshots(tracker, directory, run="run-a", extra={"note": "test"})
    return tracker


def test_tracker_equals_the_explicit_weighted_sum(tmp_path):
    theta = _trajectory(300, 5, 0)
    tracker = _track(theta, [0.05, 0.10], 100, tmp_path)
    for sigma_rel, average in zip(tracker.sigma_rels, tracker.averages, strict=True):
        torch.testing.assert_close(average["w"], _direct_ema(theta, 300, sigma_rel), rtol=1e-12, atol=1e-12)
        assert int(average["count"]) == 300
    # updating every other step treats θ as constant over the gap: the profile of the step function
    gappy = phema.PowerEMA({"w": theta[0]}, [0.10])
    for t in range(2, 301, 2):
        gappy.update({"w": theta[t]}, t)
    held = theta.clone()
    held[1:300:2] = theta[2:301:2]
    torch.testing.assert_close(gappy.averages[0]["w"], _direct_ema(held, 300, 0.10), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="step must increase"):
        gappy.update({"w": theta[0]}, 300)


def test_tracker_state_round_trip_is_bit_exact():
    theta = _trajectory(50, 4, 1).float()
    a = phema.PowerEMA({"w": theta[0]}, [0.05, 0.10])
    for t in range(1, 26):
        a.update({"w": theta[t]}, t)
    b = phema.PowerEMA({"w": torch.zeros(4)}, [0.05, 0.10])
    b.load_state_dict(a.state_dict())
    for t in range(26, 51):  # resumed and uninterrupted runs stay identical
        a.update({"w": theta[t]}, t)
        b.update({"w": theta[t]}, t)
    assert a.step == b.step == 50
    for x, y in zip(a.averages, b.averages, strict=True):
        assert torch.equal(x["w"], y["w"])
    with pytest.raises(ValueError, match="sigma_rels"):
        phema.PowerEMA({"w": torch.zeros(4)}, [0.05]).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="other tensors"):
        phema.PowerEMA({"v": torch.zeros(4)}, [0.05, 0.10]).load_state_dict(a.state_dict())


def test_snapshot_files_carry_step_gamma_and_metadata(tmp_path):
    theta = _trajectory(200, 3, 2)
    _track(theta, [0.05, 0.10], 50, tmp_path)
    snaps = phema.read_snapshots(tmp_path)
    assert [(s.step, s.sigma_rel) for s in snaps] == [(t, s) for t in (50, 100, 150, 200) for s in (0.05, 0.10)]
    for s in snaps:
        assert s.gamma == phema.sigma_rel_to_gamma(s.sigma_rel) and s.run == "run-a" and s.extra == {"note": "test"}
        torch.testing.assert_close(s.load()["w"], _direct_ema(theta, s.step, s.sigma_rel), rtol=1e-12, atol=1e-12)


def _rel_error(got, want, reference):
    return float((got - want).abs().max() / (want - reference).abs().max())


@pytest.mark.parametrize("sigma_rel", [0.05, 0.10])
def test_reconstructing_a_tracked_width_gives_the_tracked_weights(tmp_path, sigma_rel):
    """The target profile is one of the snapshots' (the last one of that width), so the least-squares weights
    are a unit vector and the reconstruction is exact up to the conditioning of the Gram matrix."""
    theta = _trajectory(2000, 20, 3)
    tracker = _track(theta, [0.05, 0.10], 100, tmp_path)
    snaps = phema.read_snapshots(tmp_path)
    got = phema.reconstruct(snaps, sigma_rel)["w"]
    want = tracker.averages[tracker.sigma_rels.index(sigma_rel)]["w"]
    assert _rel_error(got, want, theta[-1]) < 1e-6
    # at an earlier snapshot step, from the snapshots taken up to it
    earlier = phema.reconstruct(snaps, sigma_rel, step=1000)["w"]
    assert _rel_error(earlier, _direct_ema(theta, 1000, sigma_rel), theta[1000]) < 1e-6


def _step_coefficients(steps, gammas, weights, t, gamma):
    """c_τ = Σ_i x_i ∫_{τ−1}^{τ} p_i − ∫_{τ−1}^{τ} p_{t,γ}, τ = 1 … t: the reconstruction error is Σ_τ c_τ θ_τ."""
    tau = torch.arange(1, t + 1, dtype=torch.float64)

    def per_step(t_i, g_i):
        hi, lo = tau.clamp(max=t_i), (tau - 1).clamp(max=t_i)
        return (hi ** (g_i + 1) - lo ** (g_i + 1)) / t_i ** (g_i + 1)

    mix = sum(x * per_step(t_i, g_i) for x, t_i, g_i in zip(weights.tolist(), steps, gammas, strict=True))
    return mix - per_step(t, gamma)


def _error_bound(c, theta):
    """Σ_τ |c_τ| · max_τ |θ_τ − θ_T| per parameter, for ``theta`` ``[T, P]`` = θ_1 … θ_T."""
    return float(c.abs().sum()) * (theta - theta[-1]).abs().max(0).values


@pytest.mark.parametrize("target", [0.06, 0.075, 0.09])
def test_reconstructing_a_width_between_matches_its_tracked_oracle(tmp_path, target):
    """Snapshots of σ_rel 0.05 and 0.10 every 100 of 2000 steps; σ_rel = ``target`` is tracked only as the
    oracle. The error is Σ_τ c_τ θ_τ (c from the profiles, written out above) and Σ_τ c_τ = Σ x_i − 1 = 0, so
    it is bounded by Σ|c_τ| · max_τ |θ_τ − θ_T|; the profile fit is within 1% in L² and the error within 1e-3
    of the distance of the oracle from θ_T."""
    theta = _trajectory(2000, 20, 4)
    tracker = _track(theta, [0.05, 0.10, target], 100, tmp_path)
    snaps = [s for s in phema.read_snapshots(tmp_path) if s.sigma_rel != target]
    got = phema.reconstruct(snaps, target)["w"]
    oracle = tracker.averages[2]["w"]
    steps, gammas = [s.step for s in snaps], [s.gamma for s in snaps]
    gamma = phema.sigma_rel_to_gamma(target)
    x = phema.solve_weights(steps, gammas, 2000, gamma)
    assert float(x.sum()) == pytest.approx(1.0, abs=1e-12)
    c = _step_coefficients(steps, gammas, x, 2000, gamma)
    assert float(c.sum()) == pytest.approx(0.0, abs=1e-12)
    assert bool(((got - oracle).abs() <= _error_bound(c, theta[1:]) + 1e-12).all())
    assert phema.profile_error(steps, gammas, x, 2000, gamma) < 1e-2
    assert _rel_error(got, oracle, theta[-1]) < 1e-3


def test_reconstruction_of_a_tiny_model_trained_on_toy_data(tmp_path):
    """A two-layer network fitted by Adam to the ring mixture's ε-loss for 600 steps, snapshots every 25 steps
    at σ_rel 0.05 and 0.10, the oracle at 0.075: the error is within the bound Σ|c_τ| max|θ_τ − θ_T| for every
    parameter, and within 1e-3 of the largest difference between the oracle and the tracked σ_rel = 0.05."""
    torch.manual_seed(0)  # nn.Linear's initialisation
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2)).double()
    model = lambda z, logsnr: net(torch.cat([z, noise_input(logsnr)[:, None]], 1))  # noqa: E731
    flat = lambda state: torch.cat([state[k].flatten() for k in sorted(state)])  # noqa: E731
    loss = WeightedLoss(weightings.get("sigmoid"), schedules.get("cosine"), parameterizations.get("eps"))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    tracker = phema.PowerEMA(net.state_dict(), [0.05, 0.10, 0.075])
    data, g, path = mixtures.ring(), torch.Generator().manual_seed(1), []
    for step in range(1, 601):
        opt.zero_grad()
        loss(model, data.sample(64, g), g).loss.mean().backward()
        opt.step()
        tracker.update(net.state_dict(), step)
        path.append(flat(net.state_dict()))
        if step % 25 == 0:
            phema.save_snapshots(tracker, tmp_path)
    snaps = [s for s in phema.read_snapshots(tmp_path) if s.sigma_rel != 0.075]
    err = (flat(phema.reconstruct(snaps, 0.075)) - flat(tracker.averages[2])).abs()
    steps, gammas = [s.step for s in snaps], [s.gamma for s in snaps]
    gamma = phema.sigma_rel_to_gamma(0.075)
    c = _step_coefficients(steps, gammas, phema.solve_weights(steps, gammas, 600, gamma), 600, gamma)
    assert bool((err <= _error_bound(c, torch.stack(path)) + 1e-12).all())
    assert float(err.max()) < 1e-3 * float((flat(tracker.averages[2]) - flat(tracker.averages[0])).abs().max())


def test_reconstruct_needs_snapshots():
    with pytest.raises(phema.SnapshotError, match="no snapshots"):
        phema.reconstruct([], 0.1)


def test_reconstruct_refuses_steps_outside_the_snapshots(tmp_path):
    _track(_trajectory(100, 2, 5), [0.05, 0.10], 50, tmp_path)
    snaps = phema.read_snapshots(tmp_path)
    for step in (49, 101):
        with pytest.raises(phema.SnapshotError, match="outside the snapshots' steps 50…100"):
            phema.reconstruct(snaps, 0.1, step=step)
