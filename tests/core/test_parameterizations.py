"""Parameterizations: definitions and k(λ) identities on random tensors, with k written out here."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from diffusion_objectives import parameterizations

SD = 0.5
K = {  # k(λ) derived in docs/theory.md, independently of the code
    "eps": lambda l: np.ones_like(l),
    "x": lambda l: np.exp(-l),
    "v": lambda l: 1 + np.exp(-l),
    "flow": lambda l: (1 + np.exp(-l / 2)) ** 2,
    "edm": lambda l: 1 + np.exp(-l) / SD**2,
    "score": lambda l: 1 + np.exp(l),
}


def _setup(seed, shape=(64, 3, 2)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    eps_hat = eps + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64)
    lam = torch.empty(shape[0], dtype=torch.float64).uniform_(-15, 15, generator=g)
    a = torch.sigmoid(lam).sqrt().reshape(-1, 1, 1)
    s = torch.sigmoid(-lam).sqrt().reshape(-1, 1, 1)
    z = a * x + s * eps
    return x, eps, eps_hat, lam, z, a, s


def _independent_output(name, eps_hat, z, a, s):
    """The network output for a given ε̂, from each parameterization's definition (VP)."""
    x_hat = (z - s * eps_hat) / a
    if name == "eps":
        return eps_hat
    if name == "x":
        return x_hat
    if name == "v":
        return a * eps_hat - s * x_hat
    if name == "flow":
        return eps_hat - x_hat
    if name == "score":
        return -eps_hat / s
    if name == "edm":  # D = c_skip x̃ + c_out F with x̃ = z/α, σ = σ/α
        sig = s / a
        c_skip = SD**2 / (sig**2 + SD**2)
        c_out = sig * SD / torch.sqrt(sig**2 + SD**2)
        return (x_hat - c_skip * z / a) / c_out
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(K))
@given(seed=st.integers(0, 2**31 - 1))
def test_loss_factor_identity(name, seed):
    x, eps, eps_hat, lam, z, a, s = _setup(seed)
    p = parameterizations.get(name)
    out = _independent_output(name, eps_hat, z, a, s)
    target = _independent_output(name, eps, z, a, s)
    torch.testing.assert_close(p.target(x, eps, lam), target, rtol=1e-8, atol=1e-8 * target.abs().max())
    lhs = (out - target).square().flatten(1).sum(1)
    rhs = torch.from_numpy(K[name](lam.numpy())) * (eps_hat - eps).square().flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-7, atol=0)
    torch.testing.assert_close(p.loss_factor(lam), torch.from_numpy(K[name](lam.numpy())), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", sorted(K))
@given(seed=st.integers(0, 2**31 - 1))
def test_conversions_round_trip(name, seed):
    x, eps, eps_hat, lam, z, a, s = _setup(seed)
    p = parameterizations.get(name)
    out = _independent_output(name, eps_hat, z, a, s)
    torch.testing.assert_close(p.output(eps_hat, z, lam), out, rtol=1e-7, atol=1e-7 * out.abs().max())
    torch.testing.assert_close(p.eps_hat(out, z, lam), eps_hat, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.x_hat(out, z, lam), (z - s * eps_hat) / a, rtol=1e-6, atol=1e-6 * x.abs().max())


@pytest.mark.parametrize("name", sorted(K))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_at_endpoints(name, dtype):
    p = parameterizations.get(name)
    lam = torch.tensor([-15.0, 0.0, 15.0], dtype=dtype)
    z = torch.randn(3, 4, dtype=dtype, generator=torch.Generator().manual_seed(0))
    out = torch.randn(3, 4, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for value in (p.eps_hat(out, z, lam), p.x_hat(out, z, lam), p.loss_factor(lam), p.output(out, z, lam)):
        assert torch.isfinite(value).all() and value.dtype == dtype


def test_edm_sigma_data_parameter():
    p = parameterizations.get("edm", sigma_data=1.0)
    lam = torch.tensor([0.3], dtype=torch.float64)
    assert float(p.loss_factor(lam)) == pytest.approx(1 + math.exp(-0.3))
