r"""Noise schedules: distributions p(λ) over log-SNR used to *sample* noise levels (FRAMEWORK §4).

KG23 §3: the schedule is an importance-sampling distribution. It changes the variance of the loss
estimator, never the objective (which is the weighting alone, see :mod:`weightings`).

Every schedule here is a truncated version of a base monotone map. Write :math:`g(\lambda)` for a
strictly decreasing function (the base schedule's time, or a survival function) and
:math:`Z = g(\lambda_{min}) - g(\lambda_{max})`; then on :math:`[\lambda_{min}, \lambda_{max}]`

.. math::  t(\lambda) = \frac{g(\lambda - s) - g(\lambda_{max} - s)}{Z},\qquad
           p(\lambda) = -\frac{dt}{d\lambda} = \frac{-g'(\lambda - s)}{Z},

with :math:`t = 0` at the data end (λ_max) and :math:`t = 1` at the noise end (λ_min), and ``s`` the
resolution shift that translates p(λ) along λ (FRAMEWORK §4, last item). Sampling draws
:math:`t \sim U(0, 1)` and returns :math:`\lambda(t)`. All arithmetic is done in float64 and cast back,
so the maps stay accurate in the tails; the result keeps the input's dtype (and autograd graph).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from .registry import Registry

__all__ = [
    "Schedule",
    "Cosine",
    "LinearLogSNR",
    "NormalLogSNR",
    "Flow",
    "DDPMLinear",
    "REGISTRY",
    "get",
    "names",
    "stratified_uniform",
    "LOGSNR_MIN",
    "LOGSNR_MAX",
]

LOGSNR_MIN = -15.0
LOGSNR_MAX = 15.0


def stratified_uniform(n: int, generator: torch.Generator | None = None, *, stratified: bool = False,
                       device: torch.device | str | None = None) -> Tensor:
    """``n`` draws from U(0, 1); with ``stratified``, VDM21's antithetic grid ``(u + j/n) mod 1``."""
    if stratified:
        u = torch.rand((), generator=generator, dtype=torch.float64, device=device)
        return torch.remainder(u + torch.arange(n, dtype=torch.float64, device=device) / n, 1.0)
    return torch.rand(n, generator=generator, dtype=torch.float64, device=device)


def _ndtr(x: Tensor) -> Tensor:
    """Standard normal CDF via erfc: accurate in the lower tail (torch.special.ndtr loses ~7 digits there)."""
    return 0.5 * torch.special.erfc(-x / math.sqrt(2.0))


class Schedule:
    """Base class. Subclasses implement the base map ``_g``, its derivative ``_dg`` and inverse ``_g_inv``
    (all on float64 tensors, on the *unshifted* λ axis)."""

    name: str = "schedule"

    def __init__(self, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX, shift: float = 0.0):
        logsnr_min, logsnr_max, shift = float(logsnr_min), float(logsnr_max), float(shift)
        if math.isnan(logsnr_min) or math.isnan(logsnr_max) or not logsnr_min < logsnr_max:
            raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
        if not math.isfinite(shift):
            raise ValueError(f"shift must be finite, got {shift}")
        self.logsnr_min, self.logsnr_max, self.shift = logsnr_min, logsnr_max, shift
        g_lo = self._g(torch.tensor(logsnr_max - shift, dtype=torch.float64))
        g_hi = self._g(torch.tensor(logsnr_min - shift, dtype=torch.float64))
        self._g_at_max, self._norm = float(g_lo), float(g_hi - g_lo)
        if not (math.isfinite(self._norm) and self._norm > 0):
            raise ValueError(
                f"{self.name} schedule cannot be normalised on [{logsnr_min}, {logsnr_max}]"
                " (use finite endpoints)"
            )

    # -- the base map (float64, unshifted) ------------------------------------------------------
    def _g(self, logsnr: Tensor) -> Tensor:
        raise NotImplementedError

    def _dg(self, logsnr: Tensor) -> Tensor:
        raise NotImplementedError

    def _g_inv(self, g: Tensor) -> Tensor:
        raise NotImplementedError

    # -- public API ------------------------------------------------------------------------------
    def t(self, logsnr: Tensor) -> Tensor:
        """Time in [0, 1] of a log-SNR value (0 = data end, 1 = noise end)."""
        lam = logsnr.to(torch.float64)
        t = (self._g(lam - self.shift) - self._g_at_max) / self._norm
        return t.clamp(0.0, 1.0).to(logsnr.dtype)

    def logsnr(self, t: Tensor) -> Tensor:
        """λ(t), strictly decreasing, λ(0) = logsnr_max and λ(1) = logsnr_min."""
        g = self._g_at_max + t.to(torch.float64) * self._norm
        lam = (self._g_inv(g) + self.shift).clamp(self.logsnr_min, self.logsnr_max)
        # the endpoints exactly, although g's rounding in the tails cannot resolve them
        lam = torch.where(t >= 1, self.logsnr_min, torch.where(t <= 0, self.logsnr_max, lam))
        return lam.to(t.dtype)

    def density(self, logsnr: Tensor) -> Tensor:
        """p(λ) = −dt/dλ, a probability density on [logsnr_min, logsnr_max] (zero outside)."""
        lam = logsnr.to(torch.float64)
        p = -self._dg(lam - self.shift) / self._norm
        inside = (lam >= self.logsnr_min) & (lam <= self.logsnr_max)
        return torch.where(inside, p, torch.zeros_like(p)).to(logsnr.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, *, stratified: bool = False,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """``n`` draws of λ ~ p(λ), shape ``[n]`` (inverse-CDF sampling of t ~ U(0, 1))."""
        return self.logsnr(stratified_uniform(n, generator, stratified=stratified, device=device)).to(dtype)

    def with_endpoints(self, logsnr_min: float, logsnr_max: float) -> Schedule:
        """The same base schedule truncated to other endpoints (renormalised)."""
        new = copy.copy(self)
        Schedule.__init__(new, logsnr_min, logsnr_max, self.shift)
        return new

    def params(self) -> dict[str, float]:
        return {"logsnr_min": self.logsnr_min, "logsnr_max": self.logsnr_max, "shift": self.shift}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"


class Cosine(Schedule):
    r"""Cosine schedule (Nichol & Dhariwal 2021), truncated: :math:`g(\lambda) = \arctan e^{-\lambda/2}`,
    so :math:`\lambda(t) = -2\log\tan(a_{min} + t(a_{max}-a_{min}))` and
    :math:`p(\lambda) = \mathrm{sech}(\lambda/2) / (4(a_{max}-a_{min}))` (FRAMEWORK §4).
    With ``shift`` s this is simple diffusion's shifted cosine, :math:`\lambda(t) = \lambda_{cos}(t) + s`."""

    name = "cosine"

    def _g(self, logsnr):
        return torch.atan(torch.exp(-0.5 * logsnr))

    def _dg(self, logsnr):
        # d/dλ arctan(e^{−λ/2}) = −¼ sech(λ/2), written to stay finite for |λ| large.
        a = 0.5 * logsnr.abs()
        return -0.5 * torch.exp(-a) / (1.0 + torch.exp(-2.0 * a))

    def _g_inv(self, g):
        return -2.0 * torch.log(torch.tan(g))


class LinearLogSNR(Schedule):
    r"""Uniform in λ: :math:`\lambda(t) = \lambda_{max} - t(\lambda_{max} - \lambda_{min})`, p = 1/(λ_max − λ_min)."""

    name = "linear-logsnr"

    def _g(self, logsnr):
        return -logsnr

    def _dg(self, logsnr):
        return -torch.ones_like(logsnr)

    def _g_inv(self, g):
        return -g


class NormalLogSNR(Schedule):
    r"""λ ~ N(mean, std²) truncated to the endpoints; :math:`g(\lambda) = \Phi((\text{mean} - \lambda)/\text{std})`.

    EDM's log-normal σ (ln σ_VE ~ N(P_mean, P_std²)) is mean = −2 P_mean, std = 2 P_std; SD3's
    logit-normal t (logit t_RF ~ N(m, s²)) is mean = −2m, std = 2s (FRAMEWORK §4, derived)."""

    name = "normal-logsnr"

    def __init__(self, mean: float, std: float, logsnr_min: float = LOGSNR_MIN,
                 logsnr_max: float = LOGSNR_MAX, shift: float = 0.0):
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.mean, self.std = float(mean), float(std)
        # Work with whichever Gaussian tail is small on the interval, so that t and λ(t) keep full
        # precision even far out in a tail: g = Φ((mean − λ)/std) above the mean, g = −Φ((λ − mean)/std)
        # below it (both decreasing; only differences of g enter t).
        lo, hi = float(logsnr_min) - float(shift), float(logsnr_max) - float(shift)
        mid = 0.0 if not (math.isfinite(lo) and math.isfinite(hi)) else 0.5 * (lo + hi)
        self._upper = mid >= self.mean
        super().__init__(logsnr_min, logsnr_max, shift)

    def _g(self, logsnr):
        if self._upper:
            return _ndtr((self.mean - logsnr) / self.std)
        return -_ndtr((logsnr - self.mean) / self.std)

    def _dg(self, logsnr):
        u = (logsnr - self.mean) / self.std
        return -torch.exp(-0.5 * u * u) / (self.std * math.sqrt(2 * math.pi))

    def _g_inv(self, g):
        if self._upper:
            return self.mean - self.std * torch.special.ndtri(g.clamp(1e-300, 1.0))
        return self.mean + self.std * torch.special.ndtri((-g).clamp(1e-300, 1.0))

    def params(self):
        return {"mean": self.mean, "std": self.std, **super().params()}


class Flow(Schedule):
    r"""Rectified flow with uniform :math:`t_{RF}`: :math:`t_{RF} = \mathrm{sigmoid}(-\lambda/2)`,
    :math:`p(\lambda) = \tfrac18\mathrm{sech}^2(\lambda/4)` before truncation (FRAMEWORK §4, derived)."""

    name = "flow"

    def _g(self, logsnr):
        return torch.sigmoid(-0.5 * logsnr)

    def _dg(self, logsnr):
        return -0.5 * torch.sigmoid(0.5 * logsnr) * torch.sigmoid(-0.5 * logsnr)

    def _g_inv(self, g):
        return -2.0 * torch.logit(g)


class DDPMLinear(Schedule):
    r"""Continuous limit of DDPM's linear β (1e−4 → 0.02, T = 1000):
    :math:`\sigma^2/\alpha^2 = \mathrm{expm1}(0.1 t + 9.95 t^2)`,
    i.e. :math:`\lambda(t) = -\log\mathrm{expm1}(0.1t + 9.95t^2)`.

    Inverse: :math:`t = (-0.1 + \sqrt{0.01 + 39.8\,\mathrm{softplus}(-\lambda)})/19.9`. Its natural range is
    t ∈ [0, 1], i.e. λ ≥ −log expm1(10.05) ≈ −10.05; wider endpoints continue the quadratic."""

    name = "ddpm-linear"
    B0, B1 = 0.1, 9.95  # ∫β dt = 0.1 t + 9.95 t²  (β_0 T = 0.1, (β_1 − β_0) T / 2 = 9.95)

    def _g(self, logsnr):
        s = torch.nn.functional.softplus(-logsnr)
        return (-self.B0 + torch.sqrt(self.B0**2 + 4 * self.B1 * s)) / (2 * self.B1)

    def _dg(self, logsnr):
        s = torch.nn.functional.softplus(-logsnr)
        return -torch.sigmoid(-logsnr) / torch.sqrt(self.B0**2 + 4 * self.B1 * s)

    def _g_inv(self, g):
        return -torch.log(torch.expm1(self.B0 * g + self.B1 * g * g))

    @classmethod
    def natural_logsnr_min(cls) -> float:
        """λ at t = 1 of the discrete DDPM chain's continuous limit."""
        return -math.log(math.expm1(cls.B0 + cls.B1))


REGISTRY: Registry[Schedule] = Registry("schedule", infinite=("logsnr_min", "logsnr_max"))


@REGISTRY.register("cosine", "cosine (IDDPM), truncated to the endpoints")
def _cosine(logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX, shift: float = 0.0) -> Schedule:
    return Cosine(logsnr_min, logsnr_max, shift)


@REGISTRY.register("shifted-cosine", "cosine shifted by s = 2 log(reference/resolution) (simple diffusion)")
def _shifted_cosine(resolution: float = 64.0, reference: float = 64.0, logsnr_min: float = LOGSNR_MIN,
                    logsnr_max: float = LOGSNR_MAX) -> Schedule:
    if not (resolution > 0 and reference > 0):
        raise ValueError("resolution and reference must be positive")
    return Cosine(logsnr_min, logsnr_max, shift=2.0 * math.log(reference / resolution))


@REGISTRY.register("linear-logsnr", "uniform in log-SNR")
def _linear(logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX) -> Schedule:
    return LinearLogSNR(logsnr_min, logsnr_max)


@REGISTRY.register("edm", "EDM log-normal: ln σ_VE ~ N(p_mean, p_std²) ⇔ λ ~ N(−2 p_mean, 4 p_std²)")
def _edm(p_mean: float = -1.2, p_std: float = 1.2, logsnr_min: float = LOGSNR_MIN,
         logsnr_max: float = LOGSNR_MAX, shift: float = 0.0) -> Schedule:
    return NormalLogSNR(-2.0 * p_mean, 2.0 * p_std, logsnr_min, logsnr_max, shift)


@REGISTRY.register("flow", "rectified flow, uniform t_RF = sigmoid(−λ/2)")
def _flow(logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX, shift: float = 0.0) -> Schedule:
    return Flow(logsnr_min, logsnr_max, shift)


@REGISTRY.register("logit-normal", "SD3 logit-normal t_RF: logit t ~ N(m, s²) ⇔ λ ~ N(−2m, 4s²)")
def _logit_normal(m: float = 0.0, s: float = 1.0, logsnr_min: float = LOGSNR_MIN,
                  logsnr_max: float = LOGSNR_MAX, shift: float = 0.0) -> Schedule:
    return NormalLogSNR(-2.0 * m, 2.0 * s, logsnr_min, logsnr_max, shift)


@REGISTRY.register("ddpm-linear", "DDPM linear β (1e−4 → 0.02), continuous limit")
def _ddpm_linear(logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX) -> Schedule:
    return DDPMLinear(logsnr_min, logsnr_max)


def get(name: str, **params) -> Schedule:
    """A schedule by registry name, e.g. ``get("edm", p_mean=-0.4, p_std=1.0)``."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    return REGISTRY.names()
