"""The adaptive schedule: a proper density, unbiased loss, lower variance, state round trip."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from diffusion_objectives import AdaptiveSchedule, WeightedLoss, elbo, parameterizations, schedules, weightings
from diffusion_objectives.core.mixtures import GaussianMixture


def _state(seed=0, bins=40):
    s = AdaptiveSchedule(-10, 12, bins=bins, decay=0.5, floor=0.1)
    g = torch.Generator().manual_seed(seed)
    lam = torch.empty(500, dtype=torch.float64).uniform_(-10, 12, generator=g)
    s.update(lam, torch.exp(-0.1 * (lam - 1) ** 2) + 0.01)  # a bump-shaped target
    return s


def test_density_is_normalised_and_inverse_pairs_hold():
    s = _state()
    total, _ = integrate.quad(lambda v: float(s.density(torch.tensor(v, dtype=torch.float64))), -10, 12,
                              limit=400, points=np.linspace(-10, 12, 41)[1:-1])
    assert total == pytest.approx(1.0, abs=1e-9)
    lam = torch.linspace(-9.9, 11.9, 301, dtype=torch.float64)
    torch.testing.assert_close(s.logsnr(s.t(lam)), lam, atol=1e-9, rtol=0)
    assert s.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == pytest.approx([12, -10])


def test_density_follows_the_target_and_respects_floor():
    s = _state()
    q = s.bin_probabilities()
    assert float(q.sum()) == pytest.approx(1.0)
    assert float(q.min()) >= 0.1 / 40 - 1e-15
    centres = -10 + (torch.arange(40, dtype=torch.float64) + 0.5) * (22 / 40)
    assert int(q.argmax()) == int(torch.argmin((centres - 1).abs()))  # peak of the bump at λ = 1


def test_sample_histogram_matches_bins():
    s = _state()
    lam = s.sample(200_000, torch.Generator().manual_seed(1), dtype=torch.float64)
    counts = torch.bincount(s._bin_index(lam), minlength=40).double() / 200_000
    torch.testing.assert_close(counts, s.bin_probabilities(), atol=4e-3, rtol=0)


def test_unseen_bins_and_initial_state_are_uniform():
    s = AdaptiveSchedule(-5, 5, bins=10)
    torch.testing.assert_close(s.bin_probabilities(), torch.full((10,), 0.1, dtype=torch.float64))
    s.update(torch.tensor([0.1]), torch.tensor([2.0]))
    q = s.bin_probabilities()
    assert torch.allclose(q, q[0])  # one bin seen: unseen bins take the mean of seen ones


def test_state_round_trip():
    s = _state()
    t = AdaptiveSchedule(-10, 12, bins=40, decay=0.5, floor=0.1)
    t.load_state_dict(s.state_dict())
    a = s.sample(100, torch.Generator().manual_seed(3))
    b = t.sample(100, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="shape"):
        AdaptiveSchedule(-10, 12, bins=7).load_state_dict(s.state_dict())


def test_bias_corrected_ema():
    s = AdaptiveSchedule(0, 1, bins=1, decay=0.9)
    s.update(torch.tensor([0.5]), torch.tensor([3.0]))
    assert float(s.ema / s.ema_weight) == pytest.approx(3.0)  # not 0.3: bias-corrected
    s.update(torch.tensor([0.5]), torch.tensor([1.0]))
    assert float(s.ema / s.ema_weight) == pytest.approx((0.9 * 0.1 * 3 + 0.1 * 1) / (0.9 * 0.1 + 0.1))


def test_unbiased_and_lower_variance_than_cosine_for_sigmoid():
    mix = GaussianMixture.isotropic([0.5, 0.5], [[-0.5, 0.5], [0.5, -0.2]], 0.3)
    w, eps = weightings.get("sigmoid"), parameterizations.get("eps")
    model = mix.denoiser(eps)
    adaptive = AdaptiveSchedule(-15, 15, bins=100, decay=0.99)
    gen = torch.Generator().manual_seed(0)
    learn = WeightedLoss(w, adaptive, eps)
    for _ in range(200):
        out = learn(model, mix.sample(512, gen), gen)
        adaptive.update(out.logsnr, out.weighted_eps_mse)
    n = 100_000
    x = mix.sample(n, gen)
    a = WeightedLoss(w, adaptive, eps)(model, x, gen).loss
    c = WeightedLoss(w, schedules.get("cosine"), eps)(model, x, gen).loss
    se = math.hypot(float(a.std()), float(c.std())) / math.sqrt(n)
    assert abs(float(a.mean()) - float(c.mean())) < 4 * se  # same objective
    assert float(a.var()) < 0.5 * float(c.var())  # much lower variance


def test_bad_parameters():
    for kwargs, match in [({"bins": 0}, "bins"), ({"decay": 1.0}, "decay"), ({"floor": 0.0}, "floor"),
                          ({"logsnr_min": 3, "logsnr_max": 1}, "logsnr_min")]:
        with pytest.raises(ValueError, match=match):
            AdaptiveSchedule(**kwargs)
    with pytest.raises(ValueError, match="non-finite"):
        AdaptiveSchedule().update(torch.tensor([0.0]), torch.tensor([float("nan")]))


def test_adaptive_schedule_is_a_schedule_like_without_truncation():
    adaptive = AdaptiveSchedule(-5.0, 5.0, bins=10)
    assert isinstance(adaptive, schedules.ScheduleLike) and not isinstance(adaptive, schedules.Schedule)
    assert not hasattr(adaptive, "with_endpoints")
    with pytest.raises(ValueError, match="cannot be truncated"):
        elbo(lambda z, logsnr: torch.zeros_like(z), parameterizations.Eps(), torch.zeros(2, 2),
             schedule=adaptive, logsnr_min=-4.0)
