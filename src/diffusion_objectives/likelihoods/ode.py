r"""Exact log-likelihood through the probability-flow ODE in λ (Song et al. 2021; docs/theory.md, "Samplers").

In x̃ = z/α with σ̃ = e^{−λ/2}, the noisy data are x̃ = x + σ̃ ε and the probability-flow ODE is
dx̃/dσ̃ = ε̂, i.e. dx̃/dλ = −½ e^{−λ/2} ε̂ (EDM22 Eq. 1 with the score −ε̂/σ̃). We integrate the same ODE in
z = α x̃, where every quantity stays O(1) (dα/dλ = ½ α σ²):

    dz/dλ = ½ (σ² z − σ ε̂(z; λ))
    d log q_λ(z_λ)/dλ = −div f = −½ σ² D + ½ σ div_z ε̂             (instantaneous change of variables)

Integrating from z(λ_max) = α_max x down to λ_min and using the prior N(0, I) for z(λ_min):

    log p(x) = log N(z(λ_min); 0, I) + D log α(λ_min) + ∫_{λ_min}^{λ_max} ½ σ div_z ε̂ dλ

(the ∫ −½σ²D dλ = D log α_min − D log α_max and the Jacobian D log α_max of x̃ ↦ z combine into the
D log α_min). The result is the log-density at x of the model's distribution of x̃ at λ_max, which for the
exact denoiser is q smoothed by N(0, σ̃²_max I): log q(x) + O(e^{−λ_max}); the prior contributes
O(e^{λ_min}). div_z ε̂ is exact (D vector–Jacobian products per evaluation, for low-dimensional data) or
Hutchinson's v^T (∂ε̂/∂z) v with Rademacher probes v fixed along the trajectory (FFJORD), whose per-probe
integrals are i.i.d. unbiased estimates; their spread gives the standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.parameterizations import Parameterization
from ..core.process import alpha_sigma
from ..core.schedules import LOGSNR_MAX, LOGSNR_MIN
from ..errors import OptionError
from .vlb import level_indices

__all__ = ["LikelihoodResult", "likelihood", "METHODS", "DIVERGENCES"]

METHODS = ("fixed", "adaptive")
DIVERGENCES = ("exact", "hutchinson")


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-example ``[B]`` log-likelihood in nats (for discrete data: the dequantised lower bound on log P(x)),
    its Hutchinson standard error (0 with the exact divergence, NaN with a single probe), the two parts
    ``prior`` = log N(z_min; 0, I) + D log α_min and ``divergence_integral``, and ``nfe``, the number of
    network forward evaluations (each also costs D or ``probes`` vector–Jacobian products)."""

    log_likelihood: Tensor
    log_likelihood_se: Tensor
    prior: Tensor
    divergence_integral: Tensor
    dims: int
    levels: int | None
    nfe: int

    @property
    def bits_per_dim(self) -> Tensor:
        """−log p / (D ln 2); for discrete data an upper bound (in expectation) on −log₂ P(x) / D."""
        return -self.log_likelihood / (self.dims * math.log(2.0))

    @property
    def bits_per_dim_se(self) -> Tensor:
        return self.log_likelihood_se / (self.dims * math.log(2.0))


def likelihood(model: Callable[..., Tensor], parameterization: Parameterization, x: Tensor, *,
               logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX, method: str = "adaptive",
               steps: int = 200, rtol: float = 1e-5, atol: float = 1e-5, divergence: str = "exact",
               probes: int = 4, generator: torch.Generator | None = None, levels: int | None = None,
               labels: Tensor | None = None) -> LikelihoodResult:
    r"""Log-likelihood of each example of ``x`` ``[B, ...]`` by the probability-flow ODE (module docstring).

    ``method``: ``"fixed"`` (classical RK4, ``steps`` uniform steps in λ, 4·steps evaluations) or
    ``"adaptive"`` (Dormand–Prince 5(4) with ``rtol``/``atol``, one step size for the batch).
    ``divergence``: ``"exact"`` or ``"hutchinson"`` with ``probes`` Rademacher probes per example drawn from
    ``generator``.

    ``levels = K``: ``x`` lies on the K bin centres c_k = −1 + 2k/(K−1); it is dequantised uniformly within
    its bin, x + Δ(u − ½), Δ = 2/(K − 1), u ~ U[0, 1)^D from ``generator``, and the result is
    log p(x + Δ(u − ½)) + D log Δ, whose expectation over u is a lower bound on log P(x) = log ∫_bin p
    (Jensen), P the model's probability of the bin (Theis et al. 2016); bits/dim is then an upper bound.
    """
    if method not in METHODS:
        raise OptionError(f"unknown method {method!r}; choose from: {', '.join(METHODS)}")
    if divergence not in DIVERGENCES:
        raise OptionError(f"unknown divergence {divergence!r}; choose from: {', '.join(DIVERGENCES)}")
    lo, hi = float(logsnr_min), float(logsnr_max)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"need finite logsnr_min < logsnr_max, got {lo} and {hi}")
    if steps < 1 or probes < 1:
        raise ValueError("steps and probes must be positive")
    n, dims, shape = x.shape[0], x[0].numel(), x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)

    x, log_bin = _dequantised(x, levels, generator)

    if divergence == "exact":
        n_div = 1
        div_fn = _exact_divergence
    else:
        n_div = probes
        v = torch.randint(0, 2, (n, probes, dims), generator=generator, device=x.device).to(dtype) * 2 - 1
        div_fn = _hutchinson(v)

    nfe = [0]

    def rhs(lam: float, y: Tensor) -> Tensor:
        z = y[:, :dims]
        logsnr = torch.full((n,), lam, dtype=dtype, device=x.device)
        _, sigma = alpha_sigma(torch.tensor(lam, dtype=torch.float64))
        sigma = float(sigma)
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            zs = zz.reshape(shape)
            out = model(zs, logsnr) if labels is None else model(zs, logsnr, labels)
            eps_hat = parameterization.eps_hat(out, zs, logsnr).reshape(n, dims).to(dtype)
            div = div_fn(eps_hat, zz)  # [B, n_div]
        nfe[0] += 1
        dz = 0.5 * (sigma * sigma * z - sigma * eps_hat.detach())
        return torch.cat([dz, 0.5 * sigma * div.detach()], 1)

    alpha_max, _ = alpha_sigma(torch.tensor(hi, dtype=torch.float64))
    y0 = torch.cat([float(alpha_max) * x.reshape(n, dims).to(dtype),
                    torch.zeros(n, n_div, dtype=dtype, device=x.device)], 1)
    if method == "fixed":
        y1 = _rk4(rhs, y0, hi, lo, steps)
    else:
        y1 = _dopri5(rhs, y0, hi, lo, rtol=rtol, atol=atol)

    z_min, integral = y1[:, :dims], -y1[:, dims:]  # we integrated from λ_max down to λ_min
    prior = _prior_log_density(z_min, lo)
    per_probe = prior[:, None] + integral + log_bin
    ll = per_probe.mean(1)
    if divergence == "exact":
        se = torch.zeros_like(ll)
    elif n_div > 1:
        se = per_probe.std(1) / math.sqrt(n_div)
    else:
        se = torch.full_like(ll, math.nan)
    return LikelihoodResult(log_likelihood=ll, log_likelihood_se=se, prior=prior,
                            divergence_integral=integral.mean(1), dims=dims, levels=levels, nfe=nfe[0])


def _dequantised(x: Tensor, levels: int | None, generator: torch.Generator | None) -> tuple[Tensor, float]:
    """``x`` dequantised uniformly within its bin, x + Δ(u − ½) with Δ = 2/(K − 1), and D log Δ (``levels``
    = K); ``x`` itself and 0 for continuous data (``levels`` None)."""
    if levels is None:
        return x, 0.0
    level_indices(x, levels)  # validates that x is discrete data on the bin centres
    width = 2.0 / (levels - 1)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + width * (u - 0.5), x[0].numel() * math.log(width)


def _prior_log_density(z_min: Tensor, logsnr_min: float) -> Tensor:
    r"""The prior's share of log p(x) (module docstring): log N(z(λ_min); 0, I) + D log α(λ_min), with
    α² = sigmoid(λ); ``z_min`` ``[B, D]``, result ``[B]``."""
    dims = z_min.shape[1]
    log_alpha_min = 0.5 * float(torch.nn.functional.logsigmoid(torch.tensor(logsnr_min, dtype=torch.float64)))
    return -0.5 * z_min.square().sum(1) - 0.5 * dims * math.log(2 * math.pi) + dims * log_alpha_min


def _exact_divergence(eps_hat: Tensor, z: Tensor) -> Tensor:
    """tr(∂ε̂/∂z) per example by D vector–Jacobian products, ``[B, 1]``."""
    div = torch.zeros(z.shape[0], dtype=eps_hat.dtype, device=z.device)
    for i in range(z.shape[1]):
        (g,) = torch.autograd.grad(eps_hat[:, i].sum(), z, retain_graph=True)
        div = div + g[:, i].to(div.dtype)
    return div[:, None]


def _hutchinson(v: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """v_p^T (∂ε̂/∂z) v_p for fixed probes ``v`` ``[B, P, D]``, ``[B, P]`` (Hutchinson 1990)."""

    def div(eps_hat: Tensor, z: Tensor) -> Tensor:
        out = []
        for p in range(v.shape[1]):
            (g,) = torch.autograd.grad((eps_hat * v[:, p]).sum(), z, retain_graph=True)
            out.append((g.to(v.dtype) * v[:, p]).sum(1))
        return torch.stack(out, 1)

    return div


def _rk4(f: Callable[[float, Tensor], Tensor], y: Tensor, t0: float, t1: float, steps: int) -> Tensor:
    """Classical fourth-order Runge–Kutta with ``steps`` equal steps from t0 to t1."""
    h = (t1 - t0) / steps
    for i in range(steps):
        t = t0 + i * h
        k1 = f(t, y)
        k2 = f(t + h / 2, y + h / 2 * k1)
        k3 = f(t + h / 2, y + h / 2 * k2)
        k4 = f(t + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


# Dormand & Prince (1980) RK5(4)7FM: nodes, stages, 5th-order weights, and 5th − 4th order error weights.
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DP_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _dopri5(f: Callable[[float, Tensor], Tensor], y: Tensor, t0: float, t1: float, *, rtol: float,
            atol: float, max_steps: int = 10_000) -> Tensor:
    """Adaptive Dormand–Prince 5(4) with first-same-as-last; the error norm is the RMS of
    err / (atol + rtol·max(|y|, |y_new|)) per example, maximised over the batch (one step size)."""
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    t, h = t0, direction * span / 100
    k1 = f(t, y)
    for _ in range(max_steps):
        if direction * (t1 - t) <= 1e-12 * span:
            return y
        if direction * (t + h - t1) > 0:
            h = t1 - t
        k = [k1]
        for i in range(1, 7):
            yi = y + h * sum(a * kj for a, kj in zip(_DP_A[i], k, strict=False) if a != 0.0)
            k.append(f(t + _DP_C[i] * h, yi))
        y_new = yi  # the 7th stage is evaluated at the 5th-order solution (FSAL)
        err = h * sum(e * kj for e, kj in zip(_DP_E, k, strict=True) if e != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        norm = float((err / scale).square().mean(1).sqrt().max())
        if norm <= 1.0:
            t, y, k1 = t + h, y_new, k[6]
        factor = 10.0 if norm == 0.0 else min(10.0, max(0.2, 0.9 * norm ** -0.2))
        h = h * factor
    raise RuntimeError(f"adaptive ODE solver did not reach λ = {t1} in {max_steps} steps")
