r"""Weighting functions w(λ): the weighting alone defines a diffusion objective (KG23 §2; docs/objectives.md).

    L_w(x) = ½ ∫ w(λ) E_ε‖ε̂(z_λ; λ) − ε‖² dλ                                       (KG23 Eq. 7)

Every weighting can be translated along λ by ``shift`` s: w_s(λ) = w(λ − s) (resolution shifts,
docs/theory.md, "Schedules"). Constants are the exact ones obtained from each published loss through
w = 2·p·c·k (docs/theory.md, "Converting a published loss"), with p the *untruncated* published
density; see :func:`published_weighting`.
Functions are written with ``logsigmoid``/``logaddexp`` so that values and gradients stay finite on
[λ_min, λ_max] in float32 and float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy import optimize
from torch import Tensor

from .._deprecation import renamed
from ..errors import OptionError
from ..registry import Registry

__all__ = [
    "Weighting",
    "Elbo",
    "Sigmoid",
    "EDMWeighting",
    "EpsCosine",
    "VCosine",
    "FlowWeighting",
    "SD3",
    "MinSNR",
    "MinSNRV",
    "Debiased",
    "SoftMinSNR",
    "P2",
    "InDI",
    "DDPM",
    "Published",
    "MonotoneEnvelope",
    "monotone_envelope",
    "published_weighting",
    "REGISTRY",
    "get",
    "names",
]

_LOG_2PI = math.log(2 * math.pi)


def _positive(name: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming the parameter ``name`` unless it is positive."""
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


def _log_sech(x: Tensor) -> Tensor:
    """log sech(x) = log 2 − |x| − log1p(e^{−2|x|})."""
    a = x.abs()
    return math.log(2.0) - a - torch.log1p(torch.exp(-2.0 * a))


def _log_normal_pdf(x: Tensor, mean: float, std: float) -> Tensor:
    u = (x - mean) / std
    return -0.5 * u * u - math.log(std) - 0.5 * _LOG_2PI


class Weighting:
    """Base class: ``w(logsnr)`` for a λ tensor of any shape; subclasses implement ``_log_w`` or ``_w``
    on the unshifted axis."""

    name = "weighting"
    formula = ""

    def __init__(self, shift: float = 0.0):
        shift = float(shift)
        if not math.isfinite(shift):
            raise ValueError(f"shift must be finite, got {shift}")
        self.shift = shift

    def _log_w(self, logsnr: Tensor) -> Tensor:
        raise NotImplementedError

    def _w(self, logsnr: Tensor) -> Tensor:
        return torch.exp(self._log_w(logsnr))

    def __call__(self, logsnr: Tensor) -> Tensor:
        return self._w(logsnr - self.shift)

    def is_monotonic(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0, *, points: int = 20001,
                     rtol: float = 1e-9) -> bool:
        """True if w is non-increasing on [logsnr_min, logsnr_max] (checked on a dense float64 grid).

        Monotone weightings are exactly those for which L_w is an ELBO of noise-augmented data
        (KG23 §4; docs/theory.md, "The theorem")."""
        grid = torch.linspace(logsnr_min, logsnr_max, points, dtype=torch.float64)
        w = self(grid)
        return bool(torch.all(w[1:] <= w[:-1] * (1 + rtol) + 1e-300))

    def params(self) -> dict[str, float]:
        return {"shift": self.shift}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"


class Elbo(Weighting):
    """w ≡ 1: the ELBO (VDM21's continuous-time diffusion loss)."""

    name, formula = "elbo", "w = 1"

    def _w(self, logsnr):
        return 1.0 + 0.0 * logsnr  # keeps the autograd graph (w' = 0) for derivative-based tools


class Sigmoid(Weighting):
    """KG23's sigmoid weighting w = sigmoid(b − λ) (monotone)."""

    name, formula = "sigmoid", "w = sigmoid(b − λ)"

    def __init__(self, bias: float = 2.0, shift: float = 0.0):
        super().__init__(shift)
        self.bias = float(bias)

    def _log_w(self, logsnr):
        return torch.nn.functional.logsigmoid(self.bias - logsnr)

    def params(self):
        return {"bias": self.bias, **super().params()}


class EDMWeighting(Weighting):
    r"""EDM22's loss as a weighting (σ_d = sigma_data, ln σ_VE ~ N(p_mean, p_std²), F-target):
    :math:`w = 2\,N(\lambda; -2P_{mean}, 4P_{std}^2)\,(e^{-\lambda} + \sigma_d^2)/\sigma_d^2`;
    with the defaults, exactly 8 N(λ; 2.4, 2.4²)(e^{−λ} + 0.25) (docs/theory.md, "Converting a published loss")."""

    name, formula = "edm", "w = 2 N(λ; −2 P_mean, 4 P_std²)(e^{−λ} + σ_d²)/σ_d²"

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5, shift: float = 0.0):
        super().__init__(shift)
        self.p_mean, self.p_std = float(p_mean), _positive("p_std", p_std)
        self.sigma_data = _positive("sigma_data", sigma_data)

    def _log_w(self, logsnr):
        log_sd2 = 2 * math.log(self.sigma_data)
        return (math.log(2.0) + _log_normal_pdf(logsnr, -2 * self.p_mean, 2 * self.p_std)
                + torch.logaddexp(-logsnr, torch.full_like(logsnr, log_sd2)) - log_sd2)

    def params(self):
        return {"p_mean": self.p_mean, "p_std": self.p_std, "sigma_data": self.sigma_data, **super().params()}


class EpsCosine(Weighting):
    """IDDPM's ε-loss with the (untruncated) cosine schedule: w = sech(λ/2)/π exactly."""

    name, formula = "eps-cosine", "w = sech(λ/2)/π"

    def _log_w(self, logsnr):
        return _log_sech(0.5 * logsnr) - math.log(math.pi)


class VCosine(Weighting):
    """v-prediction with the cosine schedule: w = (2/π) e^{−λ/2} exactly (monotone)."""

    name, formula = "v-cosine", "w = (2/π) e^{−λ/2}"

    def _log_w(self, logsnr):
        return math.log(2 / math.pi) - 0.5 * logsnr


class FlowWeighting(Weighting):
    """Flow matching / rectified flow, uniform t, velocity target: w = e^{−λ/2} exactly (derived; monotone)."""

    name, formula = "flow", "w = e^{−λ/2}"

    def _log_w(self, logsnr):
        return -0.5 * logsnr


class SD3(Weighting):
    """SD3 rf/lognorm(m, s): w = 2 N(λ; −2m, 4s²)(1 + e^{−λ/2})² exactly."""

    name, formula = "sd3", "w = 2 N(λ; −2m, 4s²)(1 + e^{−λ/2})²"

    def __init__(self, m: float = 0.0, s: float = 1.0, shift: float = 0.0):
        super().__init__(shift)
        self.m, self.s = float(m), _positive("s", s)

    def _log_w(self, logsnr):
        log_k = 2 * torch.nn.functional.softplus(-0.5 * logsnr)  # log (1 + e^{−λ/2})²
        return math.log(2.0) + _log_normal_pdf(logsnr, -2 * self.m, 2 * self.s) + log_k

    def params(self):
        return {"m": self.m, "s": self.s, **super().params()}


class MinSNR(Weighting):
    """Min-SNR-γ with ε-prediction and the cosine schedule: w = sech(λ/2) min(1, γ e^{−λ}) / π."""

    name, formula = "min-snr", "w = sech(λ/2) min(1, γ e^{−λ}) / π"

    def __init__(self, gamma: float = 5.0, shift: float = 0.0):
        super().__init__(shift)
        self.gamma = _positive("gamma", gamma)

    def _log_w(self, logsnr):
        clip = torch.clamp(math.log(self.gamma) - logsnr, max=0.0)
        return _log_sech(0.5 * logsnr) + clip - math.log(math.pi)

    def params(self):
        return {"gamma": self.gamma, **super().params()}


class MinSNRV(MinSNR):
    r"""Min-SNR-γ in its v-prediction form (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy"): c = min(SNR, γ)/(SNR + 1) on ‖v̂ − v‖², with the cosine schedule.
    k_v = (SNR + 1)/SNR, so c·k = min(1, γ/SNR) and w = sech(λ/2) min(1, γ e^{−λ}) / π: *the same
    objective* as the ε form ``min-snr`` (derived)."""

    name, formula = "min-snr-v", "w = sech(λ/2) min(1, γ e^{−λ}) / π  (c = min(SNR, γ)/(SNR+1) on v)"


class Debiased(Weighting):
    r"""Debiased estimation (Yu et al. 2024, "Unmasking Bias in Diffusion Model Training"): the loss
    is multiplied by c = 1/√SNR on ‖ε̂ − ε‖² (``target="eps"``) or c = 1/(SNR + 1) on ‖v̂ − v‖²
    (``target="v"``, the kohya-ss form). Stated with the cosine schedule (like ``min-snr``),
    w = 2 p_cos c k = sech(λ/2)/π · c k, with c k = e^{−λ/2} (ε) or e^{−λ} (v, as k_v = 1 + e^{−λ}):

        eps:  w = (2/π) sigmoid(−λ)              (KG23's sigmoid weighting with b = 0, times 2/π)
        v:    w = (2/π) sigmoid(−λ) e^{−λ/2}

    Both are monotone."""

    name, formula = "debiased", "w = (2/π) sigmoid(−λ) [eps]; (2/π) sigmoid(−λ) e^{−λ/2} [v]"
    TARGETS = ("eps", "v")

    def __init__(self, target: str = "eps", shift: float = 0.0):
        super().__init__(shift)
        if target not in self.TARGETS:
            raise OptionError(f"target must be one of {', '.join(self.TARGETS)}, got {target!r}")
        self.target = target

    def _log_w(self, logsnr):
        log_w = math.log(2 / math.pi) + torch.nn.functional.logsigmoid(-logsnr)
        return log_w - 0.5 * logsnr if self.target == "v" else log_w

    def params(self):
        return {"target": self.target, **super().params()}


class SoftMinSNR(Weighting):
    r"""k-diffusion's ``soft-min-snr`` loss weighting (Crowson et al. 2024, HDiT; k-diffusion
    ``layers.Denoiser``): c = (σσ_d)²/(σ² + σ_d²)² on the EDM F-target, i.e. 1/(σ² + σ_d²) on ‖D − x‖²,
    the harmonic "soft minimum" of SNR = σ^{−2} and γ = σ_d^{−2}. With σ = e^{−λ/2} and
    k_F = (σ² + σ_d²)/σ_d², the per-example ε-space factor is c k_F = σ²/(σ² + σ_d²), so

        w(λ) = sigmoid(b − λ),   b = −2 ln σ_d:

    KG23's sigmoid weighting, with factor exactly 1, when the per-example loss is read as w/p (KG23's
    importance-sampled estimator). k-diffusion's raw loss under a λ-density π is w_π = 2π(λ)·w(λ)
    (w = 2·p·c·k); with λ uniform on [λ_lo, λ_hi] (k-diffusion's ``log-uniform`` σ) that is the sigmoid
    weighting times the constant 2/(λ_hi − λ_lo) (the ``soft-min-snr`` objective preset). Monotone."""

    name, formula = "soft-min-snr", "w = sigmoid(−2 ln σ_d − λ)"

    def __init__(self, sigma_data: float = 0.5, shift: float = 0.0):
        super().__init__(shift)
        self.sigma_data = _positive("sigma_data", sigma_data)

    def _log_w(self, logsnr):
        return torch.nn.functional.logsigmoid(-2 * math.log(self.sigma_data) - logsnr)

    def params(self):
        return {"sigma_data": self.sigma_data, **super().params()}


class P2(Weighting):
    """P2 weighting with ε-prediction and the cosine schedule: w = sech(λ/2)(k + e^{λ})^{−γ} / π."""

    name, formula = "p2", "w = sech(λ/2) (k + e^{λ})^{−γ} / π"

    def __init__(self, gamma: float = 1.0, k: float = 1.0, shift: float = 0.0):
        super().__init__(shift)
        self.gamma, self.k = float(gamma), _positive("k", k)

    def _log_w(self, logsnr):
        log_k_plus_snr = torch.logaddexp(torch.full_like(logsnr, math.log(self.k)), logsnr)
        return _log_sech(0.5 * logsnr) - self.gamma * log_k_plus_snr - math.log(math.pi)

    def params(self):
        return {"gamma": self.gamma, "k": self.k, **super().params()}


class InDI(Weighting):
    """InDI: x-prediction loss on the flow path with uniform t: w = ¼ e^{−λ} sech²(λ/4) (monotone)."""

    name, formula = "indi", "w = ¼ e^{−λ} sech²(λ/4)"

    def _log_w(self, logsnr):
        return math.log(0.25) - logsnr + 2 * _log_sech(0.25 * logsnr)


class DDPM(Weighting):
    r"""DDPM's L_simple with the linear β schedule: w = 2 p_linear(λ), with p_linear the λ-density of
    uniform t ∈ [0, 1] under :class:`~diffusion_objectives.core.schedules.DDPMLinear` (zero below λ(1) ≈ −10.05)."""

    name, formula = "ddpm", "w = 2 p_DDPM-linear(λ)"

    def _w(self, logsnr):
        s = torch.nn.functional.softplus(-logsnr)
        p = torch.sigmoid(-logsnr) / torch.sqrt(0.01 + 39.8 * s)
        t = (-0.1 + torch.sqrt(0.01 + 39.8 * s)) / 19.9
        return torch.where(t <= 1.0, 2 * p, torch.zeros_like(p))


class Published(Weighting):
    r"""w(λ) = 2 · p_π(λ) · c(λ) · k(λ) from a published loss :math:`E_{t\sim\pi}[c\,\|\hat y - y\|^2]`
    (docs/theory.md, "Converting a published loss"): ``density`` p_π is a schedule (its λ-density),
    ``loss_weight`` c is a callable of λ (compose with ``schedule.t`` or
    :func:`~diffusion_objectives.core.process.sigma_ve` to express it in the paper's variable) and
    ``parameterization`` supplies k(λ) of the prediction target."""

    name, formula = "published", "w = 2 p_π(λ) c(λ) k(λ)"

    def __init__(self, density, loss_weight: Callable[[Tensor], Tensor] | None, parameterization,
                 shift: float = 0.0):
        super().__init__(shift)
        self.schedule, self.loss_weight, self.parameterization = density, loss_weight, parameterization

    def _w(self, logsnr):
        c = torch.ones_like(logsnr) if self.loss_weight is None else self.loss_weight(logsnr)
        return 2 * self.schedule.density(logsnr) * c * self.parameterization.loss_factor(logsnr)


def published_weighting(density, loss_weight, parameterization) -> Weighting:
    """Convert a published loss (sampling density, per-sample loss weight c(λ), prediction target) to w(λ)."""
    return Published(density, loss_weight, parameterization)


class MonotoneEnvelope(Weighting):
    r"""The monotone envelope :math:`\tilde w(\lambda) = \max_{\lambda' \ge \lambda} w(\lambda')`: the running
    maximum from the data end (KG23 §5, used for EDM-monotonic).

    Computed as max(w(λ), M(λ)) where M is the running max of w over a dense float64 grid on
    [grid_min, grid_max] to the right of λ, with every interior local maximum refined by a bounded scalar
    search, so the plateau equals the true peak to optimiser precision. Above grid_max, w itself is used."""

    name, formula = "monotone-envelope", "w̃(λ) = max_{λ' ≥ λ} w(λ')"

    def __init__(self, base: Weighting, grid_min: float = -40.0, grid_max: float = 40.0, points: int = 8001):
        super().__init__(0.0)
        self.base = base
        grid = np.linspace(grid_min, grid_max, points)
        w = base(torch.from_numpy(grid)).numpy()
        peaks = []  # (location, value) of every interior local maximum, refined
        for i in np.flatnonzero((w[1:-1] > w[:-2]) & (w[1:-1] >= w[2:])) + 1:
            res = optimize.minimize_scalar(
                lambda lam: -float(base(torch.tensor(lam, dtype=torch.float64))),
                bounds=(grid[i - 1], grid[i + 1]), method="bounded", options={"xatol": 1e-12},
            )
            peaks.append((res.x, -res.fun) if -res.fun > w[i] else (grid[i], w[i]))
        self._grid = torch.from_numpy(grid)
        self._running_max = torch.from_numpy(np.maximum.accumulate(w[::-1])[::-1].copy())
        self._peaks = torch.tensor(peaks, dtype=torch.float64).reshape(-1, 2)

    def _w(self, logsnr):
        lam = logsnr.detach().to(torch.float64)
        grid, running, peaks = (v.to(lam.device) for v in (self._grid, self._running_max, self._peaks))
        idx = torch.searchsorted(grid, lam.contiguous(), right=True)  # grid points strictly above λ
        plateau = torch.where(idx < len(grid), running[idx.clamp(max=len(grid) - 1)], torch.zeros_like(lam))
        for loc, val in peaks:  # a refined peak between grid points counts for every λ ≤ its location
            plateau = torch.where(lam <= loc, torch.clamp(plateau, min=val), plateau)
        w = self.base(logsnr)
        plateau = plateau.to(logsnr.dtype)
        # Not torch.maximum, which halves gradients at ties; grid values equal to w(λ) up to rounding
        # must not win either, or w' would vanish where w is already decreasing.
        return torch.where(plateau > w * (1 + 1e-9), plateau, w)

    def params(self):
        return {"base": self.base.name, **self.base.params()}


def monotone_envelope(weighting: Weighting, **grid) -> Weighting:
    """The running maximum of ``weighting`` from the data end (a monotone weighting)."""
    return MonotoneEnvelope(weighting, **grid)


class EDMMonotonic(MonotoneEnvelope):
    """KG23's EDM-monotonic: the EDM weighting for λ ≥ λ* (≈ −3.3078) and its peak value below."""

    name, formula = "edm-monotonic", "w = max_{λ' ≥ λ} w_EDM(λ')"

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5, shift: float = 0.0):
        super().__init__(EDMWeighting(p_mean, p_std, sigma_data))
        self.shift = float(shift)

    def params(self):
        return self.base.params() | {"shift": self.shift}


REGISTRY: Registry[Weighting] = Registry("weighting")
for _cls in (Elbo, Sigmoid, EDMWeighting, EDMMonotonic, EpsCosine, VCosine, FlowWeighting, SD3, MinSNR, P2, InDI, DDPM,
             MinSNRV, Debiased, SoftMinSNR):
    REGISTRY.add(_cls.name, _cls, _cls.formula)


def get(name: str, **params) -> Weighting:
    """A weighting by registry name, e.g. ``get("sigmoid", bias=2.0)``."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    return REGISTRY.names()


# deprecated names (issue 11: names unique across modules); registry names are unchanged
__getattr__ = renamed(__name__, {"EDM": "EDMWeighting", "from_published": "published_weighting"}, globals())
