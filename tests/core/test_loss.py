"""WeightedLoss: the formula term by term, shapes, stratification, reproducibility, labels."""

import pytest
import torch

from diffusion_objectives import WeightedLoss, parameterizations, schedules, weightings


class Linear(torch.nn.Module):
    """A fixed, shape-agnostic 'network': out = a z + b λ."""

    def forward(self, z, logsnr, labels=None):
        out = 0.7 * z + 0.01 * logsnr.reshape(-1, *([1] * (z.ndim - 1)))
        return out if labels is None else out + labels.reshape(-1, *([1] * (z.ndim - 1))).to(z.dtype)


@pytest.mark.parametrize("shape", [(5,), (5, 2), (5, 3, 4, 4)])
@pytest.mark.parametrize("param", ["eps", "v", "x"])
def test_loss_formula(shape, param):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    lam = torch.tensor([-15.0, -3.0, 0.0, 4.0, 15.0], dtype=torch.float64)
    w, s, p = weightings.get("sigmoid"), schedules.get("edm"), parameterizations.get(param)
    out = WeightedLoss(w, s, p).loss_at(Linear(), x, eps, lam)
    # by hand: z = αx + σε, ½ (w/p) k⁻¹ ‖out − target‖²
    a = torch.sigmoid(lam).sqrt().reshape(-1, *([1] * (len(shape) - 1)))
    sg = torch.sigmoid(-lam).sqrt().reshape(a.shape)
    z = a * x + sg * eps
    net = Linear()(z, lam)
    target = {"eps": eps, "v": a * eps - sg * x, "x": x}[param]
    k = {"eps": torch.ones_like(lam), "v": 1 + torch.exp(-lam), "x": torch.exp(-lam)}[param]
    sq = (net - target).square().reshape(len(lam), -1).sum(1)
    expected = 0.5 * torch.sigmoid(2 - lam) / s.density(lam) / k * sq
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.eps_mse, sq / k)
    torch.testing.assert_close(out.weighted_eps_mse, torch.sigmoid(2 - lam) * sq / k)
    assert out.loss.shape == (5,) and out.logsnr is lam


def test_reproducible_with_generator_and_gradients_flow():
    net = torch.nn.Linear(4, 4)
    model = lambda z, lam: net(z)  # noqa: E731
    loss = WeightedLoss(weightings.get("elbo"), schedules.get("cosine"), parameterizations.get("eps"))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    a = loss(model, x, torch.Generator().manual_seed(7))
    b = loss(model, x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.loss, b.loss)
    a.loss.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_stratified_batch():
    loss = WeightedLoss(weightings.get("elbo"), schedules.get("linear-logsnr"), parameterizations.get("eps"),
                        stratified=True)
    out = loss(Linear(), torch.zeros(10, 2), torch.Generator().manual_seed(0))
    t = (15 - out.logsnr.double()) / 30
    assert sorted((t * 10).floor().long().clamp(max=9).tolist()) == list(range(10))


def test_labels_are_passed():
    loss = WeightedLoss(weightings.get("elbo"), schedules.get("cosine"), parameterizations.get("eps"))
    x = torch.zeros(4, 2)
    a = loss(Linear(), x, torch.Generator().manual_seed(0)).loss
    b = loss(Linear(), x, torch.Generator().manual_seed(0), labels=torch.ones(4, dtype=torch.long)).loss
    assert not torch.allclose(a, b)


def test_bfloat16_output_reduced_in_float32():
    loss = WeightedLoss(weightings.get("sigmoid"), schedules.get("cosine"), parameterizations.get("eps"))
    model = lambda z, lam: (0.5 * z).to(torch.bfloat16)  # noqa: E731
    out = loss(model, torch.randn(6, 3), torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss).all()


def test_infinite_endpoints_rejected():
    import math

    with pytest.raises(ValueError, match="finite endpoints"):
        WeightedLoss(weightings.get("elbo"), schedules.Cosine(-math.inf, math.inf), parameterizations.get("eps"))
