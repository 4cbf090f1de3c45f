"""The Gaussian-mixture oracle against scipy and autograd."""

import numpy as np
import torch
from scipy import stats

from diffusion_objectives.core import mixtures


def _scipy_log_prob(mix, x, alpha=1.0, sigma=0.0):
    comps = [w * stats.multivariate_normal(alpha * m, alpha**2 * c + sigma**2 * np.eye(mix.dim)).pdf(x)
             for w, m, c in zip(mix.weights.numpy(), mix.means.numpy(), mix.covariances.numpy(), strict=True)]
    return np.log(np.sum(comps, 0))


def test_log_prob_matches_scipy():
    mix = mixtures.anisotropic_pair()
    x = mix.sample(50, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(mix.log_prob(x).numpy(), _scipy_log_prob(mix, x.numpy()), rtol=1e-10)


def test_noisy_log_prob_and_eps_hat():
    mix = mixtures.ring()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, 2, generator=g, dtype=torch.float64)
    lam = torch.empty(40, dtype=torch.float64).uniform_(-6, 8, generator=g)
    a, s = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    expected = [_scipy_log_prob(mix, z[i].numpy(), float(a[i]), float(s[i])) for i in range(40)]
    np.testing.assert_allclose(mix.noisy_log_prob(z, lam).numpy(), expected, rtol=1e-9)
    zz = z.clone().requires_grad_(True)
    (score,) = torch.autograd.grad(mix.noisy_log_prob(zz, lam).sum(), zz)
    torch.testing.assert_close(mix.eps_hat(z, lam), -s[:, None] * score)


def test_sample_moments():
    mix = mixtures.anisotropic_pair()
    x = mix.sample(400_000, torch.Generator().manual_seed(2))
    torch.testing.assert_close(x.mean(0), mix.mean(), atol=3e-3, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), mix.covariance(), atol=3e-3, rtol=0)


def test_named_mixtures():
    assert mixtures.ring().means.shape == (8, 2)
    assert mixtures.grid(side=4).means.shape == (16, 2)
    assert float(mixtures.ring(radius=2.0).means.norm(dim=1).max()) == 2.0
