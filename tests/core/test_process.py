"""The VP forward process helpers."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from diffusion_objectives import process


@given(lam=st.floats(-30, 30))
def test_alpha_sigma_variance_preserving(lam):
    a, s = process.alpha_sigma(torch.tensor(lam, dtype=torch.float64))
    assert abs(float(a**2 + s**2) - 1) < 1e-12
    assert abs(float(torch.log(a**2 / s**2)) - lam) < 1e-9 * max(1, abs(lam))


def test_expand_like_and_add_noise():
    x = torch.ones(3, 2, 4)
    v = torch.arange(3.0)
    assert process.expand_like(v, x).shape == (3, 1, 1)
    lam = torch.tensor([0.0, 2.0, -2.0])
    z = process.add_noise(x, torch.zeros_like(x), lam)
    torch.testing.assert_close(z[:, 0, 0], torch.sigmoid(lam).sqrt())
    torch.testing.assert_close(process.logsnr_from_sigma_ve(process.sigma_ve(lam)), lam)
