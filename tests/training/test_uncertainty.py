"""EDM2's learned uncertainty weighting (docs/objectives.md, "Learned uncertainty weighting"):
ℓ_u = ℓ_w e^{−u} + D u is minimised at e^{u(λ)} = E[ℓ_w | λ]/D; checked by training the head on draws from a
known conditional law, by the expected gradient at the optimum, against an independent computation with the
exact Gaussian-mixture denoiser, and by a bit-exact state round trip."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save

from diffusion_objectives import parameterizations, schedules, weightings
from diffusion_objectives.core import mixtures
from diffusion_objectives.core.adaptive import AdaptiveSchedule
from diffusion_objectives.core.loss import LossOutput, WeightedLoss
from diffusion_objectives.training.uncertainty import LogVarianceHead, UncertaintyWeightedLoss, uncertainty_loss


def _log_c(lam):
    """An arbitrary smooth log E[ℓ_w/D | λ] for the synthetic tests."""
    return 0.5 * torch.sin(lam / 3) + 0.1 * lam


def _random_head(seed):
    head = LogVarianceHead(32, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        head.linear.weight.copy_(0.2 * torch.randn(head.linear.weight.shape, generator=g))
        head.linear.bias.fill_(0.3)
    return head


def test_head_starts_at_zero_and_uses_edm2_fourier_features():
    head = LogVarianceHead(16, bandwidth=2.0, generator=torch.Generator().manual_seed(0))
    lam = torch.linspace(-12, 12, 9)
    assert torch.equal(head(lam), torch.zeros(9))
    # √2 cos(f c_noise + φ) with c_noise = −λ/8 = ¼ ln σ_VE, σ_VE = e^{−λ/2} (EDM2's noise input)
    c_noise = 0.25 * torch.log(torch.exp(-lam.double() / 2))
    expected = math.sqrt(2) * torch.cos(c_noise[:, None] * head.freqs.double() + head.phases.double())
    torch.testing.assert_close(head.features(lam).double(), expected, rtol=1e-5, atol=1e-5)
    # f = 2π·bandwidth·N(0,1), φ = 2π·U(0,1): the same generator gives the same draws
    g = torch.Generator().manual_seed(0)
    assert torch.equal(head.freqs, 2 * math.pi * 2.0 * torch.randn(16, generator=g))
    assert torch.equal(head.phases, 2 * math.pi * torch.rand(16, generator=g))


def test_sgd_on_the_head_converges_to_log_conditional_mean():
    """ℓ_w | λ_k ~ c(λ_k) χ²_D on K = 8 noise levels, N draws each. The loss is convex in u, and u is linear in
    the head's parameters, so full-batch SGD reaches the empirical minimiser u_k = log(mean_k ℓ_w / D) (checked
    to 1e-4); that estimates log c(λ_k) with standard deviation √(2/(DN)) (χ²_D/D has variance 2/D; delta
    method for the log), so |u_k − log c(λ_k)| ≤ 5√(2/(DN))."""
    K, N, D = 8, 2000, 16
    g = torch.Generator().manual_seed(1)
    lam_k = torch.linspace(-10, 10, K, dtype=torch.float64)
    chi2 = torch.randn(K * N, D, generator=g, dtype=torch.float64).square().sum(1)
    weighted = torch.exp(_log_c(lam_k).repeat_interleave(N)) * chi2
    head = LogVarianceHead(128, generator=torch.Generator().manual_seed(2)).double()
    opt = torch.optim.SGD(head.parameters(), lr=2e-3, momentum=0.9)
    for _ in range(400):
        opt.zero_grad()  # the head is evaluated once per noise level: head(λ)[i] = head(λ_k) for i in block k
        (uncertainty_loss(weighted, head(lam_k).repeat_interleave(N), D).mean() / D).backward()
        opt.step()
    with torch.no_grad():
        u = head(lam_k)
    empirical = torch.log(weighted.reshape(K, N).mean(1) / D)
    torch.testing.assert_close(u, empirical, rtol=0, atol=1e-4)
    assert (u - _log_c(lam_k)).abs().max() <= 5 * math.sqrt(2 / (D * N))


@settings(max_examples=40, deadline=None)
@given(log_c=st.floats(-8, 8), dim=st.integers(1, 4096), offset=st.floats(-3, 3).filter(lambda v: abs(v) > 1e-3))
def test_expected_gradient_vanishes_at_log_conditional_mean(log_c, dim, offset):
    """ℓ_u is linear in ℓ_w, so E[∂ℓ_u/∂u | λ] is ∂ℓ_u/∂u at ℓ_w = E[ℓ_w | λ] = c·D: D − c·D·e^{−u}, zero at
    u* = log c and of the sign of u − u* elsewhere."""
    mean_weighted = torch.tensor([math.exp(log_c) * dim], dtype=torch.float64)
    for u0, expected in ((log_c, 0.0), (log_c + offset, dim * (1 - math.exp(-offset)))):
        u = torch.tensor([u0], dtype=torch.float64, requires_grad=True)
        uncertainty_loss(mean_weighted, u, dim).sum().backward()
        assert u.grad.item() == pytest.approx(expected, rel=1e-9, abs=1e-9 * dim)
    assert math.copysign(1, expected) == math.copysign(1, offset)


def test_expected_gradient_through_the_head_vanishes_at_the_optimum():
    """Monte-Carlo: draws ℓ_w ~ c χ²_D with the head's bias at log c; the mean gradient w.r.t. the bias is
    D − mean(ℓ_w)/c, within 5 standard errors (√(2D/n)) of 0."""
    D, n, log_c = 8, 20_000, 0.7
    head = LogVarianceHead(8).double()
    with torch.no_grad():
        head.linear.bias.fill_(log_c)
    lam = torch.zeros(n, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    weighted = math.exp(log_c) * torch.randn(n, D, generator=g, dtype=torch.float64).square().sum(1)
    uncertainty_loss(weighted, head(lam), D).mean().backward()
    assert abs(head.linear.bias.grad.item()) <= 5 * math.sqrt(2 * D / n)
    assert head.linear.bias.grad.item() == pytest.approx(D - weighted.mean().item() / math.exp(log_c), rel=1e-9)


def _objective():
    return (weightings.get("sigmoid", bias=2.0), schedules.get("linear-logsnr", logsnr_min=-10.0, logsnr_max=10.0),
            parameterizations.get("v"))


def test_loss_with_exact_mixture_denoiser_equals_independent_formula():
    weighting, schedule, param = _objective()
    base = WeightedLoss(weighting, schedule, param)
    head = _random_head(4).double()
    loss = UncertaintyWeightedLoss(base, head)
    mix = mixtures.ring()
    g = torch.Generator().manual_seed(5)
    x = mix.sample(64, g)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    lam = -10 + 20 * torch.rand(64, generator=g, dtype=torch.float64)
    out = loss.loss_at(mix.denoiser(param), x, eps, lam)
    assert isinstance(out, LossOutput)
    # independently: z = αx + σε, the optimal ε̂ from the mixture, w = sigmoid(2 − λ), p = 1/20, D = 2
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    z = alpha[:, None] * x + sigma[:, None] * eps
    eps_mse = (mix.eps_hat(z, lam) - eps).square().sum(1)
    weighted = 0.5 * torch.sigmoid(2 - lam) / (1 / 20) * eps_mse
    c_noise = -lam / 8
    features = math.sqrt(2) * torch.cos(c_noise[:, None] * head.freqs + head.phases)
    u = features @ head.linear.weight[0].detach() + head.linear.bias.detach()
    torch.testing.assert_close(out.u.detach(), u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.weighted.detach(), weighted, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.loss.detach(), weighted * torch.exp(-u) + 2 * u, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.eps_mse, eps_mse, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.weighted_eps_mse, torch.sigmoid(2 - lam) * eps_mse, rtol=1e-9, atol=1e-12)


def test_loss_fn_draws_what_the_base_draws_and_trains_the_head():
    weighting, schedule, param = _objective()
    base = WeightedLoss(weighting, schedule, param)
    head = LogVarianceHead(16, generator=torch.Generator().manual_seed(6))
    loss = UncertaintyWeightedLoss(base, head)
    mix = mixtures.ring()
    x = mix.sample(32, torch.Generator().manual_seed(7)).float()
    model = mix.denoiser(param)
    a = loss(model, x, torch.Generator().manual_seed(8))
    b = base(model, x, torch.Generator().manual_seed(8))
    assert torch.equal(a.logsnr, b.logsnr) and torch.equal(a.weighted, b.loss)
    torch.testing.assert_close(a.loss, b.loss)  # u ≡ 0 at initialisation: ℓ_u = ℓ_w
    assert (loss.weighting, loss.schedule, loss.parameterization) == (weighting, schedule, param)
    trained = UncertaintyWeightedLoss(base, _random_head(12))
    plain = trained(model, x, torch.Generator().manual_seed(8)).u
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the head is evaluated in float32 under autocast too
        assert torch.equal(trained(model, x, torch.Generator().manual_seed(8)).u, plain)
    a.loss.mean().backward()
    assert head.linear.bias.grad is not None and head.linear.bias.grad.abs().item() > 0


def test_effective_weighting_is_normalised_w_over_exp_u():
    weighting, schedule, param = _objective()
    head = _random_head(9)
    loss = UncertaintyWeightedLoss(WeightedLoss(weighting, schedule, param), head)
    grid = torch.linspace(-10, 10, 201, dtype=torch.float64)
    w_eff = loss.effective_weighting(grid)
    with torch.no_grad():
        expected = torch.sigmoid(2 - grid) * torch.exp(-head(grid).double())
    # unit trapezoid integral: Σ Δλ (f_i + f_{i+1})/2 written out
    expected = expected / (0.1 * (expected[1:] + expected[:-1]).sum() / 2)
    torch.testing.assert_close(w_eff, expected, rtol=1e-6, atol=0)
    # a constant u does not change the normalised weighting
    with torch.no_grad():
        head.linear.weight.zero_()
    base = torch.sigmoid(2 - grid)
    torch.testing.assert_close(loss.effective_weighting(grid), base / torch.trapezoid(base, grid), rtol=1e-12, atol=0)
    for bad in (torch.tensor([0.0]), torch.tensor([1.0, 0.0]), torch.zeros(2, 2)):
        with pytest.raises(ValueError, match="increasing grid"):
            loss.effective_weighting(bad)


def test_state_dict_round_trip_is_bit_exact():
    head = _random_head(10)
    other = LogVarianceHead(32, generator=torch.Generator().manual_seed(11))
    state = {k: v.clone() for k, v in head.state_dict().items()}
    assert set(state) == {"freqs", "phases", "linear.weight", "linear.bias"}  # buffers travel with the weights
    other.load_state_dict(load(save(state)))  # through safetensors bytes, as a checkpoint would
    for key, value in head.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)
    lam = torch.linspace(-15, 15, 101)
    assert torch.equal(other(lam), head(lam))


@pytest.mark.parametrize("kwargs", [{"num_channels": 0}, {"num_channels": 2.5}, {"bandwidth": 0.0},
                                    {"bandwidth": float("nan")}])
def test_head_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        LogVarianceHead(**kwargs)


def test_at_the_optimum_w_eff_is_2Dp_over_M_and_the_adaptive_schedule_gives_back_w():
    """docs/objectives.md: with e^u = E[ℓ_w | λ]/D, w_eff = w e^{−u} = 2Dp/M (M = E‖ε̂ − ε‖² | λ); if p is KG23's
    adaptive density, learned from the base ``weighted_eps_mse`` (p ∝ wM), then w_eff ∝ w. Checked on the bin
    centres of an AdaptiveSchedule with the exact ring-mixture denoiser, E[· | λ] by the mean of N draws."""
    K, N, D = 10, 4000, 2
    weighting, param = weightings.get("sigmoid", bias=2.0), parameterizations.get("eps")
    schedule = AdaptiveSchedule(-10.0, 10.0, bins=K, floor=1e-12)
    loss = WeightedLoss(weighting, schedule, param)
    mix, g = mixtures.ring(), torch.Generator().manual_seed(13)
    lam = (-10 + 20 * (torch.arange(K, dtype=torch.float64) + 0.5) / K).repeat_interleave(N)
    x, eps = mix.sample(K * N, g), torch.randn(K * N, D, generator=g, dtype=torch.float64)
    schedule.update(lam, loss.loss_at(mix.denoiser(param), x, eps, lam).weighted_eps_mse)  # p ∝ wM now
    out = loss.loss_at(mix.denoiser(param), x, eps, lam)
    mean_weighted = out.loss.detach().reshape(K, N).mean(1)  # E[ℓ_w | λ_k]
    m = out.eps_mse.reshape(K, N).mean(1)  # M(λ_k)
    lam_k, p = lam[::N], schedule.density(lam[::N])
    u = torch.log(mean_weighted / D)  # the optimum of the head (test above)
    w_eff = torch.sigmoid(2 - lam_k) * torch.exp(-u)
    torch.testing.assert_close(w_eff, 2 * D * p / m, rtol=1e-10, atol=0)
    ratio = w_eff / torch.sigmoid(2 - lam_k)
    torch.testing.assert_close(ratio, ratio.mean().expand(K), rtol=1e-8, atol=0)
