r"""The continuous-time ELBO (VDM21 Eq. (11); docs/theory.md, "The ELBO"), per example and per noise level.

    −ELBO(x) = L_prior + L_recon + L_diff                            (VDM21: prior, reconstruction, diffusion loss)
    L_prior  = KL(q(z_{λ_min} | x) ‖ N(0, I))
    L_recon  = E_{q(z_{λ_max} | x)} [−log p(x | z_{λ_max})]
    L_diff   = ½ ∫_{λ_min}^{λ_max} E_ε ‖ε̂(z_λ; λ) − ε‖² dλ = ½ E_{λ~p, ε} [‖ε̂ − ε‖² / p(λ)]  (KG23 Eq. 7–8)

L_diff is the weighted loss with w ≡ 1 (KG23 Eq. 7); the proposal p is any schedule with the same endpoints
(importance sampling: it changes the variance, not the value). λ is drawn on VDM21's antithetic grid
t_j = (u + j/M) mod 1 of the proposal's time, in independent replicates so that the standard error is
estimated without bias.

Decoders p(x | z) at λ_max, with x̃ = z/α and σ̃ = σ/α = e^{−λ/2}:

- continuous data: N(x; x̃, σ̃² I), so L_recon = ½ D (log 2π − λ_max + 1) in closed form (a density, nats);
- discrete data with K levels at bin centres c_k = −1 + 2k/(K − 1): a per-dimension categorical with
  logits −½ ((x̃ − c_k)/σ̃)² (as in VDM21's code), a proper probability, estimated by Monte Carlo.

Endpoint terms (derived, see docs/likelihood-and-sampling.md): with the exact denoiser of the data
distribution q, −ELBO(x) = −log q(x) + A(λ_min) + R(λ_max) where A = E_{q(z|x)}[log q_{λ_min}(z)/N(z; 0, I)]
= O(e^{λ_min}) and, for continuous data, R = E_ε[log q(x) − log q̃(x + σ̃ ε)] ≈ −½ σ̃² (2Δ log q + ‖∇ log q‖²)
= O(e^{−λ_max}), q̃ being q smoothed by N(0, σ̃² I). With the defaults (±15) both are below 10⁻⁵ nats per
dimension for data whose density varies on scales ≥ 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.functional import softplus

from ..core.adaptive import AdaptiveSchedule
from ..core.parameterizations import Parameterization
from ..core.process import add_noise
from ..core.schedules import LOGSNR_MAX, LOGSNR_MIN, LinearLogSNR, Schedule, ScheduleLike, antithetic_grid

__all__ = [
    "ElboResult",
    "elbo",
    "diffusion_loss_at",
    "proposal_from",
    "prior_kl",
    "reconstruction_nll",
    "bin_centres",
    "level_indices",
]


@dataclass(frozen=True)
class ElboResult:
    """The negative ELBO of each example, in nats, and its Monte-Carlo standard errors (all ``[B]``).

    ``diffusion_bins`` ``[B, bins]`` splits ``diffusion`` over the λ-intervals ``bin_edges`` ``[bins + 1]``
    (the ELBO per noise level; its rows sum to ``diffusion``). ``nfe`` is the number of network evaluations
    per example, ``dims`` the number D of dimensions of one example, ``levels`` K for discrete data."""

    prior: Tensor
    reconstruction: Tensor
    diffusion: Tensor
    total: Tensor
    prior_se: Tensor
    reconstruction_se: Tensor
    diffusion_se: Tensor
    total_se: Tensor
    diffusion_bins: Tensor
    bin_edges: Tensor
    dims: int
    levels: int | None
    nfe: int

    @property
    def bits_per_dim(self) -> Tensor:
        """−ELBO / (D ln 2): an upper bound on −log₂ P(x) / D for discrete data (``[B]``)."""
        return self.total / (self.dims * math.log(2.0))

    @property
    def bits_per_dim_se(self) -> Tensor:
        return self.total_se / (self.dims * math.log(2.0))


def bin_centres(levels: int, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """c_k = −1 + 2k/(K − 1), k = 0 … K − 1 (docs/theory.md, "The ELBO")."""
    if int(levels) != levels or levels < 2:
        raise ValueError(f"levels must be an integer ≥ 2, got {levels}")
    return torch.linspace(-1.0, 1.0, int(levels), dtype=dtype, device=device)


def level_indices(x: Tensor, levels: int) -> Tensor:
    """The level index k of each entry of ``x`` (which must lie on the K bin centres), same shape, int64."""
    bin_centres(levels)  # validates ``levels``
    k = torch.round((x.to(torch.float64) + 1.0) * (levels - 1) / 2.0)
    off = (x.to(torch.float64) - (-1.0 + 2.0 * k / (levels - 1))).abs().max() if x.numel() else 0.0
    if not (bool((k >= 0).all()) and bool((k <= levels - 1).all()) and float(off) <= 1e-3 / (levels - 1)):
        raise ValueError(f"x is not on the {levels} bin centres −1 + 2k/(K−1) (discrete data in [−1, 1])")
    return k.long()


def prior_kl(x: Tensor, logsnr_min: float) -> Tensor:
    r"""L_prior = KL(N(α x, σ² I) ‖ N(0, I)) = ½ Σ_i [α² (x_i² − 1) + softplus(λ_min)] at λ_min, ``[B]``.

    (½ Σ [α² x² + σ² − log σ² − 1] with σ² − 1 = −α² and −log σ² = softplus(λ), exact and stable.)"""
    lam = torch.tensor(float(logsnr_min), dtype=torch.float64)
    alpha2, log_term = torch.sigmoid(lam), softplus(lam)
    x64 = x.to(torch.float64).flatten(1)
    return (0.5 * (alpha2 * (x64.square() - 1.0) + log_term)).sum(1).to(_reduce_dtype(x))


def reconstruction_nll(x: Tensor, eps: Tensor, logsnr_max: float, levels: int) -> Tensor:
    r"""−log p(x | z) for the discretized decoder at z = α x + σ ε, λ = λ_max, ``[B]`` (one draw).

    p(x_i = c_k | z) = softmax_k(−½ ((x̃_i − c_k)/σ̃)²) with x̃ = z/α = x + σ̃ ε, σ̃ = e^{−λ_max/2}."""
    idx = level_indices(x, levels).flatten(1)  # [B, D]
    dtype = _reduce_dtype(x)
    sigma_t = math.exp(-0.5 * float(logsnr_max))
    c = bin_centres(levels, dtype=dtype, device=x.device)
    x_tilde = (x.to(dtype) + sigma_t * eps.to(dtype)).flatten(1)  # [B, D]
    out = torch.empty(x.shape[0], dtype=dtype, device=x.device)
    step = max(1, (1 << 24) // max(1, x_tilde.shape[1] * levels))  # examples per chunk of [b, D, K]
    for s in range(0, x.shape[0], step):
        logits = -0.5 * ((x_tilde[s:s + step, :, None] - c) / sigma_t).square()  # [b, D, K]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, idx[s:s + step, :, None])[..., 0]
        out[s:s + step] = -logp.sum(1)
    return out


def diffusion_loss_at(model: Callable[..., Tensor], parameterization: Parameterization, x: Tensor,
                      eps: Tensor, logsnr: Tensor, proposal: ScheduleLike, labels: Tensor | None = None) -> Tensor:
    r"""One-sample estimate of L_diff per example: ½ ‖ε̂(z_λ; λ) − ε‖² / p(λ), ``[B]``.

    This is :meth:`~diffusion_objectives.core.loss.WeightedLoss.loss_at` with w ≡ 1 (KG23 Eq. 8),
    evaluated without building a graph. ``eps`` ``[B, ...]``, ``logsnr`` ``[B]``."""
    z = add_noise(x, eps, logsnr)
    with torch.no_grad():
        out = model(z, logsnr) if labels is None else model(z, logsnr, labels)
        eps_hat = parameterization.eps_hat(out, z, logsnr)
    dtype = _reduce_dtype(x)
    sq = (eps_hat.to(dtype) - eps.to(dtype)).square().flatten(1).sum(1)
    return 0.5 * sq / proposal.density(logsnr.to(dtype))


def elbo(model: Callable[..., Tensor], parameterization: Parameterization, x: Tensor, levels: int | None = None,
         *, logsnr_min: float | None = None, logsnr_max: float | None = None, samples: int = 64,
         replicates: int = 8, stratified: bool = True, schedule: ScheduleLike | None = None, bins: int = 30,
         reconstruction_samples: int = 16, batch_size: int = 4096, generator: torch.Generator | None = None,
         labels: Tensor | None = None) -> ElboResult:
    r"""Negative ELBO of each example of ``x`` ``[B, ...]`` under a denoiser ``model(z, logsnr)`` (nats).

    ``levels = K`` treats ``x`` as discrete data on the K bin centres (discretized decoder; use
    :attr:`ElboResult.bits_per_dim`); ``levels = None`` as continuous data (Gaussian decoder, a density).

    L_diff is estimated with ``samples`` network evaluations per example, λ drawn from ``schedule`` (the
    importance-sampling proposal; default uniform in λ, i.e. the plain estimator) truncated to
    [``logsnr_min``, ``logsnr_max``] (defaults: the schedule's endpoints, else ±15). With ``stratified``,
    the samples are ``replicates`` independent antithetic grids t_j = (u + j/M) mod 1, M = samples/replicates
    (VDM21's low-discrepancy sampler), and the standard error is that of the replicate means; otherwise λ is i.i.d.
    L_prior is exact, L_recon exact for continuous data and a ``reconstruction_samples``-draw average for
    discrete data (no network evaluations). ``batch_size`` caps the rows per network call.
    """
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    if stratified and (replicates < 2 or samples % replicates):
        raise ValueError(f"stratified needs samples ({samples}) to be a multiple of replicates ({replicates}) "
                         "and replicates ≥ 2")
    if bins < 1 or reconstruction_samples < 1 or batch_size < 1:
        raise ValueError("bins, reconstruction_samples and batch_size must be positive")
    lo, hi, proposal = _proposal(schedule, logsnr_min, logsnr_max)
    n, dims = x.shape[0], x[0].numel()
    dtype, device = _reduce_dtype(x), x.device

    lam = proposal.logsnr(_times(samples, replicates if stratified else None, n, generator, device)).to(x.dtype)

    # L_diff: one row per (sample, example), evaluated ``batch_size`` rows at a time.
    f = torch.empty(samples * n, dtype=dtype, device=device)
    lam_rows = lam.reshape(-1)
    example = torch.arange(n, device=device).repeat(samples)
    step = max(1, batch_size)
    for s in range(0, samples * n, step):
        rows = example[s:s + step]
        xb = x[rows]
        eps = torch.randn(xb.shape, generator=generator, dtype=x.dtype, device=device)
        f[s:s + step] = diffusion_loss_at(model, parameterization, xb, eps, lam_rows[s:s + step], proposal,
                                          None if labels is None else labels[rows])
    f = f.reshape(samples, n)
    diffusion = f.mean(0)
    if stratified:
        means = f.reshape(replicates, samples // replicates, n).mean(1)
        diffusion_se = means.std(0) / math.sqrt(replicates)
    else:
        diffusion_se = f.std(0) / math.sqrt(samples) if samples > 1 else torch.full_like(diffusion, math.nan)

    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    which = ((lam.to(torch.float64) - lo) / (hi - lo) * bins).floor().long().clamp(0, bins - 1)  # [S, B]
    per_bin = torch.zeros(n, bins, dtype=dtype, device=device)
    per_bin.scatter_add_(1, which.T.contiguous(), f.T.contiguous())
    per_bin = per_bin / samples

    prior = prior_kl(x, lo)
    zero = torch.zeros(n, dtype=dtype, device=device)
    recon, recon_se = _reconstruction(x, hi, levels, reconstruction_samples, generator, dtype)
    total = prior + recon + diffusion
    total_se = torch.sqrt(recon_se.square() + diffusion_se.square())
    return ElboResult(prior=prior, reconstruction=recon, diffusion=diffusion, total=total, prior_se=zero,
                      reconstruction_se=recon_se, diffusion_se=diffusion_se, total_se=total_se,
                      diffusion_bins=per_bin, bin_edges=edges, dims=dims, levels=levels, nfe=samples)


def _times(samples: int, replicates: int | None, n: int, generator: torch.Generator | None,
           device: torch.device) -> Tensor:
    """t for every (sample, example), float64 ``[samples, n]``: i.i.d. U(0, 1) when ``replicates`` is None,
    else ``replicates`` independent antithetic grids of samples/replicates points per example, replicate-major."""
    if replicates is None:
        return torch.rand(samples, n, generator=generator, dtype=torch.float64, device=device)
    grid = antithetic_grid(samples // replicates, (replicates, n), generator, device)  # [M, R, B]
    return grid.transpose(0, 1).reshape(samples, n)


def _reconstruction(x: Tensor, logsnr_max: float, levels: int | None, draws: int,
                    generator: torch.Generator | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """L_recon per example and its standard error, ``[B]`` each: exact for continuous data (the Gaussian
    decoder N(x; z/α, σ²/α²) at λ_max: E_z[−log N] = ½ D (log 2π − λ_max + 1)), else a ``draws``-draw
    average of :func:`reconstruction_nll`."""
    n, dims = x.shape[0], x[0].numel()
    zero = torch.zeros(n, dtype=dtype, device=x.device)
    if levels is None:
        return torch.full((n,), 0.5 * dims * (math.log(2 * math.pi) - logsnr_max + 1.0), dtype=dtype,
                          device=x.device), zero
    samples = torch.stack([
        reconstruction_nll(x, torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device),
                           logsnr_max, levels).to(dtype)
        for _ in range(draws)])
    return samples.mean(0), samples.std(0) / math.sqrt(draws) if draws > 1 else zero


def proposal_from(result: ElboResult, floor: float = 0.05) -> AdaptiveSchedule:
    """An importance-sampling proposal fitted to a pilot estimate: the piecewise-constant density on
    ``result.bin_edges`` proportional to the ELBO per noise level averaged over the batch (KG23 §5's
    adaptive schedule, fitted once), mixed with a uniform ``floor`` so no bin has zero mass."""
    edges = result.bin_edges
    mass = result.diffusion_bins.detach().to(torch.float64).mean(0).clamp_min(0.0).cpu()
    proposal = AdaptiveSchedule(float(edges[0]), float(edges[-1]), bins=len(edges) - 1, floor=floor)
    proposal.load_state_dict({"ema": mass, "ema_weight": torch.ones_like(mass)})
    return proposal


def _proposal(schedule: ScheduleLike | None, logsnr_min: float | None,
              logsnr_max: float | None) -> tuple[float, float, ScheduleLike]:
    """Endpoints and proposal: the schedule's endpoints unless given; the schedule truncated to them."""
    lo = float(logsnr_min if logsnr_min is not None else (schedule.logsnr_min if schedule else LOGSNR_MIN))
    hi = float(logsnr_max if logsnr_max is not None else (schedule.logsnr_max if schedule else LOGSNR_MAX))
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"the ELBO needs finite logsnr_min < logsnr_max, got {lo} and {hi}")
    if schedule is None:
        return lo, hi, LinearLogSNR(lo, hi)
    if (schedule.logsnr_min, schedule.logsnr_max) != (lo, hi):
        if not isinstance(schedule, Schedule):  # e.g. an AdaptiveSchedule: no base map to truncate
            raise ValueError(f"{schedule!r} cannot be truncated to [{lo}, {hi}]; give it these endpoints")
        schedule = schedule.with_endpoints(lo, hi)
    return lo, hi, schedule


def _reduce_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)
