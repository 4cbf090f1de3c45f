"""The ELBO: each term against closed forms, quadrature and brute force, with exact denoisers.

Oracles, all computed here independently of the code under test:
- Gaussian data N(μ, Σ): ε̂*(z) = σ C⁻¹(z − αμ), C = α²Σ + σ²I, so E_ε‖ε̂* − ε‖² = σ²α²‖C⁻¹(x − μ)‖²
  + ‖σ²C⁻¹ − I‖²_F (ε̂* − ε = σα C⁻¹(x − μ) + (σ²C⁻¹ − I)ε) and L_diff is a 1-D quadrature over λ.
- With the exact denoiser of q the finite-endpoint −ELBO telescopes (derived in
  docs/likelihood-and-sampling.md) to A(λ_min) + E_ε[−log q̃(x + σ̃ε)], q̃ = q * N(0, σ̃²I); both sides are
  checked against each other here, and against −log q(x) as the endpoints widen.
- Discrete data with independent dimensions: per-dimension brute force on dense (λ, ε) grids.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

from diffusion_objectives import parameterizations, schedules, weightings
from diffusion_objectives.core import mixtures
from diffusion_objectives.core.loss import WeightedLoss
from diffusion_objectives.likelihoods.vlb import (
    ElboResult,
    diffusion_loss_at,
    elbo,
    prior_kl,
    proposal_from,
    reconstruction_nll,
)

Z = 4.0  # per-check tolerance in standard errors (replicate SEs have ≥ 31 degrees of freedom here)
Z_RANDOM = 5.0  # for hypothesis-drawn cases, which run with fresh seeds

MU = np.array([0.3, -0.2])
SIGMA = np.array([[0.09, 0.03], [0.03, 0.04]])


def gaussian() -> mixtures.GaussianMixture:
    return mixtures.GaussianMixture([1.0], [MU.tolist()], [SIGMA.tolist()])


# -- Gaussian-data oracles (numpy / scipy) ----------------------------------------------------------------

def _quad_minus_elbo(x, lo, hi, mu=MU, cov=SIGMA):
    """−ELBO(x) of Gaussian data with the exact denoiser: prior + ∫ ½ E‖ε̂* − ε‖² dλ + recon (quadrature)."""
    d = len(mu)
    eye = np.eye(d)

    def half_mse(lam):
        a2, s2 = special.expit(lam), special.expit(-lam)
        ci = np.linalg.inv(a2 * cov + s2 * eye)
        r = ci @ (x - mu)
        return 0.5 * (s2 * a2 * r @ r + np.sum((s2 * ci - eye) ** 2))

    diff = sum(integrate.quad(half_mse, a, b, epsabs=1e-11, epsrel=1e-11, limit=200)[0]
               for a, b in zip(np.linspace(lo, hi, 7)[:-1], np.linspace(lo, hi, 7)[1:], strict=True))
    a2, s2 = special.expit(lo), special.expit(-lo)
    prior = 0.5 * (d * s2 + a2 * x @ x - d - d * np.log(s2))  # KL(N(αx, σ²I) ‖ N(0, I)), textbook form
    # E_ε[−log N(x; x + σ̃ε, σ̃²I)] by Gauss–Hermite, σ̃² = e^{−λ_max}
    nodes, w = special.roots_hermitenorm(20)
    s2t = math.exp(-hi)
    recon = d * np.sum(w / math.sqrt(2 * math.pi) * (0.5 * np.log(2 * math.pi * s2t) + 0.5 * nodes**2))
    return prior + diff + recon


def _telescoped_minus_elbo(x, lo, hi, mu=MU, cov=SIGMA):
    """A(λ_min) + E_ε[−log q̃(x + σ̃ε)] in closed form (the endpoint formula of the docs)."""
    d = len(mu)
    eye = np.eye(d)

    def expected_log_normal(a, s, m, c):  # E_{z~N(a, s)} log N(z; m, c)
        ci = np.linalg.inv(c)
        return -0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(c)[1] + np.trace(ci @ s) + (a - m) @ ci @ (a - m))

    alpha2, s2 = special.expit(lo), special.expit(-lo)
    alpha = math.sqrt(alpha2)
    a_term = (expected_log_normal(alpha * x, s2 * eye, alpha * mu, alpha2 * cov + s2 * eye)
              - expected_log_normal(alpha * x, s2 * eye, 0 * mu, eye))
    s2t = math.exp(-hi)
    recon = -expected_log_normal(x, s2t * eye, mu, cov + s2t * eye)
    return a_term + recon


def _points(n, seed):
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(MU, SIGMA, size=n) * 1.5  # also points in the tails


# -- closed-form pieces ------------------------------------------------------------------------------------

@given(lo=st.floats(-25.0, 5.0), seed=st.integers(0, 2**31 - 1))
def test_prior_is_the_gaussian_kl(lo, seed):
    x = torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a2 = torch.sigmoid(torch.tensor(lo, dtype=torch.float64))
    q = torch.distributions.Normal(a2.sqrt() * x, torch.sigmoid(-torch.tensor(lo, dtype=torch.float64)).sqrt())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(prior_kl(x, lo), kl, rtol=1e-9, atol=1e-12)


def test_discrete_reconstruction_matches_a_direct_softmax():
    g = torch.Generator().manual_seed(0)
    k, lam = 7, 2.0
    x = (torch.randint(0, k, (4, 3), generator=g).double() * 2 / (k - 1)) - 1
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    a, s = math.sqrt(special.expit(lam)), math.sqrt(special.expit(-lam))
    z = a * x + s * eps
    c = np.linspace(-1, 1, k)
    logits = -0.5 * ((z.numpy()[..., None] - a * c) / s) ** 2  # VDM: logits −(z − α c_k)²/(2σ²)
    logp = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    idx = np.rint((x.numpy() + 1) * (k - 1) / 2).astype(int)
    expected = -np.take_along_axis(logp, idx[..., None], -1)[..., 0].sum(1)
    got = reconstruction_nll(x, eps, lam, k)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


PARAMS = ["eps", "x", "v", "flow", "edm", "score"]
SCHEDULES = ["cosine", "linear-logsnr", "edm", "flow", "ddpm-linear"]


@given(param=st.sampled_from(PARAMS), schedule=st.sampled_from(SCHEDULES), seed=st.integers(0, 2**31 - 1))
def test_diffusion_term_is_the_weighted_loss_with_elbo_weighting(param, schedule, seed):
    """Same ε and λ: ½‖ε̂ − ε‖²/p(λ) equals WeightedLoss(w ≡ 1).loss_at, in every parameterization."""
    gm = mixtures.anisotropic_pair()
    p = parameterizations.get(param)
    sched = schedules.get(schedule)
    g = torch.Generator().manual_seed(seed)
    x = gm.sample(16, g)
    eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
    lam = sched.sample(16, g, dtype=torch.float64)
    got = diffusion_loss_at(gm.denoiser(p), p, x, eps, lam, sched)
    expected = WeightedLoss(weightings.Elbo(), sched, p).loss_at(gm.denoiser(p), x, eps, lam).loss
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


# -- tightness with exact denoisers --------------------------------------------------------------------------

@given(lo=st.floats(-8.0, 0.0), hi=st.floats(2.0, 10.0))
@settings(max_examples=15)
def test_endpoint_formula_matches_quadrature(lo, hi):
    """The telescoped finite-endpoint −ELBO (docs) equals prior + quadrature of L_diff + recon."""
    for x in _points(3, 1):
        assert _quad_minus_elbo(x, lo, hi) == pytest.approx(_telescoped_minus_elbo(x, lo, hi), rel=1e-8, abs=1e-8)


def test_gaussian_endpoint_gap_at_default_endpoints_is_the_derived_one():
    """−ELBO − (−log q) = A(λ_min) + R(λ_max), A = O(e^{λ_min}) and R ≈ −½σ̃²(2Δ log q + ‖∇ log q‖²),
    σ̃² = e^{−λ_max} (docs): at ±15 a few 1e-4 nats even in the tails, far below the SEs below."""
    inv = np.linalg.inv(SIGMA)
    for x in _points(6, 2):
        exact = -stats.multivariate_normal(MU, SIGMA).logpdf(x)
        grad = -inv @ (x - MU)
        predicted = -0.5 * math.exp(-15.0) * (2 * -np.trace(inv) + grad @ grad)
        gap = _telescoped_minus_elbo(x, -15.0, 15.0) - exact
        assert gap == pytest.approx(predicted, rel=0.02, abs=1e-6)
        assert abs(gap) < 5e-4
        assert _quad_minus_elbo(x, -15.0, 15.0) == pytest.approx(exact + gap, abs=1e-8)


def test_gaussian_elbo_equals_exact_nll_within_se():
    gm = gaussian()
    x = torch.from_numpy(_points(6, 3))
    exact = torch.from_numpy(-stats.multivariate_normal(MU, SIGMA).logpdf(x.numpy()))
    r = elbo(gm.denoiser(parameterizations.Eps()), parameterizations.Eps(), x, samples=8192, replicates=32,
             generator=torch.Generator().manual_seed(1))
    assert r.nfe == 8192 and r.dims == 2 and r.levels is None
    assert bool(((r.total - exact).abs() <= Z * r.total_se).all()), ((r.total - exact) / r.total_se)
    assert float(r.total_se.max()) < 0.3


@given(lo=st.floats(-12.0, -2.0), hi=st.floats(3.0, 14.0), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=8)
def test_gaussian_elbo_matches_quadrature_at_random_endpoints(lo, hi, seed):
    gm = gaussian()
    x = torch.from_numpy(_points(3, seed % 1000))
    p = parameterizations.V()
    r = elbo(gm.denoiser(p), p, x, logsnr_min=lo, logsnr_max=hi, samples=2048, replicates=32,
             generator=torch.Generator().manual_seed(seed))
    expected = torch.tensor([_quad_minus_elbo(xi, lo, hi) for xi in x.numpy()], dtype=torch.float64)
    assert bool(((r.total - expected).abs() <= Z_RANDOM * r.total_se).all())


def test_mixture_elbo_equals_exact_nll_within_se():
    gm = mixtures.anisotropic_pair()
    g = torch.Generator().manual_seed(4)
    x = gm.sample(8, g)
    exact = -gm.log_prob(x)
    r = elbo(gm.denoiser(parameterizations.Eps()), parameterizations.Eps(), x, samples=8192, replicates=32,
             generator=g)
    zscore = (r.total - exact) / r.total_se
    assert bool((zscore.abs() <= Z).all()), zscore
    assert abs(float(zscore.mean())) <= Z / math.sqrt(len(x))  # no common bias across examples


def test_elbo_does_not_depend_on_the_parameterization():
    gm = mixtures.anisotropic_pair()
    x = gm.sample(4, torch.Generator().manual_seed(5))
    results = [elbo(gm.denoiser(parameterizations.get(p)), parameterizations.get(p), x, samples=64,
                    generator=torch.Generator().manual_seed(6)) for p in ["eps", "x", "v", "edm"]]
    for r in results[1:]:
        torch.testing.assert_close(r.total, results[0].total, rtol=1e-8, atol=1e-8)


def test_bins_split_the_diffusion_term():
    gm = gaussian()
    x = torch.from_numpy(_points(3, 7))
    r = elbo(gm.denoiser(parameterizations.Eps()), parameterizations.Eps(), x, samples=4096, replicates=16,
             bins=12, logsnr_min=-9.0, logsnr_max=9.0, generator=torch.Generator().manual_seed(8))
    assert r.diffusion_bins.shape == (3, 12)
    torch.testing.assert_close(r.bin_edges, torch.linspace(-9.0, 9.0, 13, dtype=torch.float64))
    torch.testing.assert_close(r.diffusion_bins.sum(1), r.diffusion)
    # each bin against the quadrature of ½E‖ε̂* − ε‖² over it (loose: a bin holds ~1/12 of the samples)
    eye = np.eye(2)
    for xi, row in zip(x.numpy(), r.diffusion_bins, strict=True):
        def half_mse(lam, xi=xi):
            a2, s2 = special.expit(lam), special.expit(-lam)
            ci = np.linalg.inv(a2 * SIGMA + s2 * eye)
            rr = ci @ (xi - MU)
            return 0.5 * (s2 * a2 * rr @ rr + np.sum((s2 * ci - eye) ** 2))
        edges = r.bin_edges.numpy()
        expected = np.array([integrate.quad(half_mse, a, b)[0] for a, b in zip(edges[:-1], edges[1:], strict=True)])
        np.testing.assert_allclose(row.numpy(), expected, atol=6 * float(r.diffusion_se.max()) / math.sqrt(3))


@pytest.mark.parametrize("stratified", [True, False])
def test_reported_se_matches_the_spread_of_repeated_estimates(stratified):
    gm = gaussian()
    x = torch.from_numpy(_points(1, 9))
    p = parameterizations.Eps()
    runs = [elbo(gm.denoiser(p), p, x, samples=256, replicates=16, stratified=stratified,
                 generator=torch.Generator().manual_seed(100 + i)) for i in range(48)]
    totals = torch.stack([r.total[0] for r in runs])
    reported = torch.stack([r.total_se[0] for r in runs]).square().mean().sqrt()
    ratio = float(totals.std() / reported)
    # 48 draws: the sample std is within ±25% of the truth with probability > 0.99
    assert 0.7 < ratio < 1.35, ratio


# -- discrete data: brute force ------------------------------------------------------------------------------

K = 5
PI = [np.array([0.1, 0.2, 0.4, 0.2, 0.1]), np.array([0.5, 0.05, 0.05, 0.1, 0.3])]  # independent dimensions
CENTRES = np.linspace(-1.0, 1.0, K)


def discrete_model(pis, parameterization):
    """The exact denoiser of independent per-dimension categoricals on the bin centres (any trailing shape
    whose last axis indexes the dimensions): E[x | z] = Σ_k softmax_k(log π_k − (z − α c_k)²/(2σ²)) c_k."""
    log_pi = torch.log(torch.tensor(np.stack(pis), dtype=torch.float64))  # [D, K]
    c = torch.tensor(CENTRES, dtype=torch.float64)

    def model(z, logsnr, labels=None):
        lam = logsnr.reshape((-1,) + (1,) * (z.ndim - 1))
        a, s = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        logits = log_pi - 0.5 * ((z[..., None] - a[..., None] * c) / s[..., None]) ** 2
        x_hat = (torch.softmax(logits, -1) * c).sum(-1)
        eps_hat = (z - a * x_hat) / s
        return parameterization.output(eps_hat, z, logsnr)

    return model


def _brute_force_minus_elbo_1d(xk, pi_model, lo, hi, n_eps=1201, panels=30):
    """−ELBO of one dimension at level index xk with the denoiser for ``pi_model``, on dense grids:
    trapezoid in ε on [−12, 12], Gauss–Legendre (8 nodes) on ``panels`` panels in λ."""
    x = CENTRES[xk]
    eps = np.linspace(-12, 12, n_eps)
    w_eps = stats.norm.pdf(eps) * (eps[1] - eps[0])
    nodes, weights = np.polynomial.legendre.leggauss(8)
    edges = np.linspace(lo, hi, panels + 1)
    half, mid = (edges[1:, None] - edges[:-1, None]) / 2, (edges[1:, None] + edges[:-1, None]) / 2
    lam, wl = (half * nodes + mid).ravel(), (half * weights).ravel()
    a, s = np.sqrt(special.expit(lam))[:, None], np.sqrt(special.expit(-lam))[:, None]
    z = a * x + s * eps  # [L, E]
    logits = np.log(pi_model) - 0.5 * ((z[..., None] - a[..., None] * CENTRES) / s[..., None]) ** 2
    x_hat = (special.softmax(logits, -1) * CENTRES).sum(-1)
    eps_hat = (z - a * x_hat) / s
    diff = np.sum(wl * np.sum(w_eps * 0.5 * (eps_hat - eps) ** 2, 1))
    a2, s2 = special.expit(lo), special.expit(-lo)
    prior = 0.5 * (s2 + a2 * x * x - 1 - np.log(s2))
    st_ = math.exp(-hi / 2)
    dec = -0.5 * ((x + st_ * eps[:, None] - CENTRES) / st_) ** 2
    recon = np.sum(w_eps * -(dec[:, xk] - special.logsumexp(dec, axis=1)))
    return prior + diff + recon


def _brute_force_atoms(pis_model, lo=-15.0, hi=15.0):
    """−ELBO of every atom (i, j): the sum over the two independent dimensions."""
    table = [[_brute_force_minus_elbo_1d(k, pis_model[d], lo, hi) for k in range(K)] for d in range(2)]
    grid, _ = _atoms()
    return np.array([table[0][i] + table[1][j] for i, j in grid])


def _atoms():
    grid = np.array([(i, j) for i in range(K) for j in range(K)])
    prob = PI[0][grid[:, 0]] * PI[1][grid[:, 1]]
    return grid, prob


def test_brute_force_oracle_is_converged_and_tight():
    """Oracle sanity: the grids resolve the integrals (doubling both changes < 1e-7), and with the exact
    denoiser −ELBO ≈ −log π(x) (the discrete decoder is sharp at λ_max = 15)."""
    for xk in range(K):
        v = _brute_force_minus_elbo_1d(xk, PI[1], -15.0, 15.0)
        fine = _brute_force_minus_elbo_1d(xk, PI[1], -15.0, 15.0, n_eps=2401, panels=60)
        assert v == pytest.approx(fine, abs=1e-7)
        assert v == pytest.approx(-math.log(PI[1][xk]), abs=1e-5)


@pytest.mark.parametrize("shape", [(2,), (1, 1, 2)])
def test_discrete_bits_per_dim_match_brute_force(shape):
    grid, prob = _atoms()
    x = torch.tensor(CENTRES[grid], dtype=torch.float64).reshape((-1,) + shape)
    exact = _brute_force_atoms(PI)
    entropy = -sum(np.sum(p * np.log(p)) for p in PI)
    assert float(prob @ exact) >= entropy - 1e-9  # a theorem: E_x[−ELBO] ≥ E_x[−log p] ≥ H

    p = parameterizations.X()
    r = elbo(discrete_model(PI, p), p, x, levels=K, samples=1024, replicates=32,
             generator=torch.Generator().manual_seed(10))
    assert r.levels == K and r.dims == 2
    z = (r.total.numpy() - exact) / r.total_se.numpy()
    assert np.all(np.abs(z) <= Z), z
    bpd, bpd_se = float(prob @ r.bits_per_dim.numpy()), float(np.sqrt(prob**2 @ r.bits_per_dim_se.numpy() ** 2))
    exact_bpd = float(prob @ exact) / (2 * math.log(2))
    assert abs(bpd - exact_bpd) <= Z * bpd_se
    assert bpd >= entropy / (2 * math.log(2)) - Z * bpd_se


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=4)
def test_misspecified_discrete_model_is_never_below_the_entropy(seed):
    rng = np.random.default_rng(seed)
    wrong = [rng.dirichlet(np.ones(K)) + 1e-3 for _ in range(2)]
    wrong = [w / w.sum() for w in wrong]
    grid, prob = _atoms()
    x = torch.tensor(CENTRES[grid], dtype=torch.float64)
    exact = _brute_force_atoms(wrong)
    entropy = -sum(np.sum(p * np.log(p)) for p in PI)
    assert float(prob @ exact) > entropy
    p = parameterizations.Eps()
    r = elbo(discrete_model(wrong, p), p, x, levels=K, samples=512, replicates=16,
             generator=torch.Generator().manual_seed(seed))
    se = float(np.sqrt(prob**2 @ r.total_se.numpy() ** 2))
    assert abs(float(prob @ r.total.numpy()) - float(prob @ exact)) <= Z_RANDOM * se
    assert float(prob @ r.total.numpy()) >= entropy - Z_RANDOM * se


# -- variance reduction -------------------------------------------------------------------------------------------

def test_stratified_and_importance_sampling_cut_the_se_per_evaluation(capsys):
    """Same number of network evaluations per example; the ratio is SE / SE(plain i.i.d. uniform-λ)."""
    gm = mixtures.anisotropic_pair()
    g = torch.Generator().manual_seed(11)
    x = gm.sample(8, g)
    p = parameterizations.Eps()
    model = gm.denoiser(p)
    n = 4096

    def rms_se(r: ElboResult) -> float:
        return float(r.total_se.square().mean().sqrt())

    plain = rms_se(elbo(model, p, x, samples=n, stratified=False, generator=g))
    strat = rms_se(elbo(model, p, x, samples=n, replicates=64, generator=g))
    pilot = elbo(model, p, x, samples=256, replicates=8, generator=g)
    proposal = proposal_from(pilot)
    importance = rms_se(elbo(model, p, x, samples=n, stratified=False, schedule=proposal, generator=g))
    both = rms_se(elbo(model, p, x, samples=n, replicates=64, schedule=proposal, generator=g))
    ratios = {"stratified": strat / plain, "importance": importance / plain, "both": both / plain}
    with capsys.disabled():
        print("\nELBO SE ratio vs plain uniform-λ at equal NFE:", {k: round(v, 3) for k, v in ratios.items()})
    assert ratios["stratified"] < 0.95
    assert ratios["importance"] < 0.8
    assert ratios["both"] < 0.8


def test_proposal_from_is_a_density_proportional_to_the_bins():
    gm = gaussian()
    x = torch.from_numpy(_points(2, 12))
    p = parameterizations.Eps()
    r = elbo(gm.denoiser(p), p, x, samples=512, bins=10, generator=torch.Generator().manual_seed(0))
    prop = proposal_from(r, floor=1e-9)
    lam = torch.linspace(-15, 15, 100001, dtype=torch.float64)
    assert float(torch.trapezoid(prop.density(lam), lam)) == pytest.approx(1.0, abs=1e-3)
    mids = (r.bin_edges[1:] + r.bin_edges[:-1]) / 2
    mass = r.diffusion_bins.mean(0)
    torch.testing.assert_close(prop.density(mids), mass / mass.sum() / 3.0, rtol=1e-6, atol=1e-9)


# -- options ---------------------------------------------------------------------------------------------------------

def test_bad_options_are_errors():
    gm = gaussian()
    p = parameterizations.Eps()
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="multiple of replicates"):
        elbo(gm.denoiser(p), p, x, samples=10, replicates=4)
    with pytest.raises(ValueError, match="logsnr_min < logsnr_max"):
        elbo(gm.denoiser(p), p, x, logsnr_min=3.0, logsnr_max=1.0)
    with pytest.raises(ValueError, match="bin centres"):
        elbo(gm.denoiser(p), p, x + 0.1, levels=5, samples=8)
    with pytest.raises(ValueError, match="levels"):
        elbo(gm.denoiser(p), p, x, levels=1, samples=8)


def test_proposal_is_truncated_to_the_requested_endpoints():
    gm = gaussian()
    p = parameterizations.Eps()
    x = torch.from_numpy(_points(2, 13))
    r = elbo(gm.denoiser(p), p, x, schedule=schedules.get("cosine"), logsnr_min=-6.0, logsnr_max=7.0,
             samples=1024, replicates=16, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor([_quad_minus_elbo(xi, -6.0, 7.0) for xi in x.numpy()], dtype=torch.float64)
    assert bool(((r.total - expected).abs() <= Z * r.total_se).all())
    assert float(r.bin_edges[0]) == -6.0 and float(r.bin_edges[-1]) == 7.0


class _TinyConvNet(torch.nn.Module):
    """An untrained image denoiser: shapes only (ELBO terms must be finite and consistent for images)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, z, logsnr):
        return self.conv(torch.cat([z, logsnr.reshape(-1, 1, 1, 1).expand(-1, 1, *z.shape[2:]) / 15], 1))


def test_images_with_a_network_in_float32():
    net = _TinyConvNet()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 4, 4), generator=g).float() / 127.5 - 1.0
    r = elbo(net, parameterizations.V(), x, 256, samples=16, replicates=4, batch_size=10, generator=g)
    assert r.dims == 48 and r.total.dtype == torch.float32 and r.total.shape == (3,)
    for v in (r.prior, r.reconstruction, r.diffusion, r.total_se, r.bits_per_dim):
        assert bool(torch.isfinite(v).all())
    torch.testing.assert_close(r.diffusion_bins.sum(1), r.diffusion)
    assert bool((r.reconstruction >= 0).all())  # −log of a probability
    # conditional models receive the labels of their rows
    seen = []

    def cond(z, logsnr, labels):
        seen.append(labels.clone())
        return net(z, logsnr)

    elbo(cond, parameterizations.V(), x, 256, samples=4, replicates=2, batch_size=5, generator=g,
         labels=torch.tensor([7, 8, 9]))
    assert torch.equal(torch.cat(seen), torch.tensor([7, 8, 9]).repeat(4))
