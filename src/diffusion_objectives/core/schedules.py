r"""Noise schedules: distributions p(λ) over log-SNR used to *sample* noise levels (docs/theory.md, "Schedules").

KG23 §3: the schedule is an importance-sampling distribution. It changes the variance of the loss
estimator, never the objective (which is the weighting alone, see :mod:`weightings`).

Every schedule here is a truncated version of a base monotone map. Write :math:`g(\lambda)` for a
strictly decreasing function (the base schedule's time, or a survival function) and
:math:`Z = g(\lambda_{min}) - g(\lambda_{max})`; then on :math:`[\lambda_{min}, \lambda_{max}]`

.. math::  t(\lambda) = \frac{g(\lambda - s) - g(\lambda_{max} - s)}{Z},\qquad
           p(\lambda) = -\frac{dt}{d\lambda} = \frac{-g'(\lambda - s)}{Z},

with :math:`t = 0` at the data end (λ_max) and :math:`t = 1` at the noise end (λ_min), and ``s`` the
resolution shift that translates p(λ) along λ (docs/theory.md, "Schedules"). Sampling draws
:math:`t \sim U(0, 1)` and returns :math:`\lambda(t)`. All arithmetic is done in float64 and cast back,
so the maps stay accurate in the tails; the result keeps the input's dtype (and autograd graph).

Truncation and shift are a frozen wrapper, :class:`Truncated` ``(base, logsnr_min, logsnr_max, shift)``, changed
with :func:`dataclasses.replace`; every schedule's :meth:`Schedule.truncated` is that wrapper around its base map.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .._deprecation import renamed
from ..registry import Registry

__all__ = [
    "ScheduleLike",
    "Schedule",
    "Truncated",
    "Cosine",
    "LinearLogSNR",
    "NormalLogSNR",
    "FlowUniformT",
    "DDPMLinear",
    "Laplace",
    "Cauchy",
    "LogLogistic",
    "SplitLogNormal",
    "SD3Mode",
    "InterpolatedCosine",
    "REGISTRY",
    "get",
    "names",
    "stratified_uniform",
    "antithetic_grid",
    "LOGSNR_MIN",
    "LOGSNR_MAX",
]

LOGSNR_MIN = -15.0
LOGSNR_MAX = 15.0


def antithetic_grid(m: int, shape: tuple[int, ...] = (), generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """VDM21's antithetic (low-discrepancy) grid t_j = (u + j/m) mod 1, j = 0, …, m − 1, with one offset
    u ~ U(0, 1) per entry of ``shape`` (drawn first, as ``torch.rand(shape)``); float64 ``[m, *shape]``."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    j = torch.arange(m, dtype=torch.float64, device=device).reshape((m,) + (1,) * len(shape))
    return torch.remainder(u + j / m, 1.0)


def stratified_uniform(n: int, generator: torch.Generator | None = None, *, stratified: bool = False,
                       device: torch.device | str | None = None) -> Tensor:
    """``n`` draws from U(0, 1), ``[n]``; with ``stratified``, one :func:`antithetic_grid` of ``n`` points."""
    if stratified:
        return antithetic_grid(n, (), generator, device)
    return torch.rand(n, generator=generator, dtype=torch.float64, device=device)


def _ndtr(x: Tensor) -> Tensor:
    """Standard normal CDF via erfc: accurate in the lower tail (torch.special.ndtr loses ~7 digits there)."""
    return 0.5 * torch.special.erfc(-x / math.sqrt(2.0))


@runtime_checkable
class ScheduleLike(Protocol):
    """What a sampling density p(λ) on [logsnr_min, logsnr_max] offers its callers (the loss, the ELBO, the
    samplers): :class:`Schedule` (a truncated base map) and
    :class:`~diffusion_objectives.core.adaptive.AdaptiveSchedule` (a learned histogram) both satisfy it."""

    logsnr_min: float
    logsnr_max: float
    shift: float

    def t(self, logsnr: Tensor) -> Tensor: ...

    def logsnr(self, t: Tensor) -> Tensor: ...

    def density(self, logsnr: Tensor) -> Tensor: ...

    def sample(self, n: int, generator: torch.Generator | None = None, *, stratified: bool = False,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor: ...

    def params(self) -> dict[str, float]: ...


def _bounds(logsnr_min: float, logsnr_max: float, shift: float) -> tuple[float, float, float]:
    """The checked floats (logsnr_min, logsnr_max, shift)."""
    logsnr_min, logsnr_max, shift = float(logsnr_min), float(logsnr_max), float(shift)
    if math.isnan(logsnr_min) or math.isnan(logsnr_max) or not logsnr_min < logsnr_max:
        raise ValueError(f"need logsnr_min < logsnr_max, got {logsnr_min} and {logsnr_max}")
    if not math.isfinite(shift):
        raise ValueError(f"shift must be finite, got {shift}")
    return logsnr_min, logsnr_max, shift


class Schedule(ABC):
    """A truncated, shifted base map (module docstring). Subclasses implement the base map ``_g``, its
    derivative ``_dg`` and inverse ``_g_inv`` (all on float64 tensors, on the *unshifted* λ axis); everything
    else follows from them. A subclass's constructor takes the endpoints and shift of its first truncation;
    truncating or shifting again (:meth:`with_endpoints`, :meth:`truncated`) wraps the base map in a
    frozen :class:`Truncated`, changed with :func:`dataclasses.replace`."""

    name: str = "schedule"
    logsnr_min: float
    logsnr_max: float
    shift: float

    def __init__(self, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX, shift: float = 0.0):
        logsnr_min, logsnr_max, shift = _bounds(logsnr_min, logsnr_max, shift)
        self._bind(self, logsnr_min, logsnr_max, shift, self._branch(logsnr_min - shift, logsnr_max - shift))

    def _bind(self, target: Schedule, logsnr_min: float, logsnr_max: float, shift: float, branch: Any) -> None:
        """Set ``target``'s endpoints, shift and normaliser Z for the base map ``branch`` (with
        ``object.__setattr__``, so that it also initialises a frozen :class:`Truncated`)."""
        logsnr_min, logsnr_max, shift = _bounds(logsnr_min, logsnr_max, shift)
        g_lo = branch._g(torch.tensor(logsnr_max - shift, dtype=torch.float64))
        g_hi = branch._g(torch.tensor(logsnr_min - shift, dtype=torch.float64))
        norm = float(g_hi - g_lo)
        if not (math.isfinite(norm) and norm > 0):
            raise ValueError(
                f"{self.name} schedule cannot be normalised on [{logsnr_min}, {logsnr_max}]"
                " (use finite endpoints)"
            )
        for key, value in (("logsnr_min", logsnr_min), ("logsnr_max", logsnr_max), ("shift", shift),
                           ("_map", branch), ("_g_at_max", float(g_lo)), ("_norm", norm)):
            object.__setattr__(target, key, value)

    # -- the base map (float64, unshifted) ------------------------------------------------------
    @abstractmethod
    def _g(self, logsnr: Tensor) -> Tensor:
        """g(λ), strictly decreasing."""

    @abstractmethod
    def _dg(self, logsnr: Tensor) -> Tensor:
        """g'(λ) (≤ 0)."""

    @abstractmethod
    def _g_inv(self, g: Tensor) -> Tensor:
        """λ(g), the inverse of :meth:`_g`."""

    def _branch(self, lo: float, hi: float) -> Any:
        """The object whose ``_g``, ``_dg``, ``_g_inv`` serve on the unshifted interval [lo, hi] (``self``;
        a tail-accurate map picks the tail that is small there)."""
        return self

    # -- public API ------------------------------------------------------------------------------
    def t(self, logsnr: Tensor) -> Tensor:
        """Time in [0, 1] of a log-SNR value (0 = data end, 1 = noise end)."""
        lam = logsnr.to(torch.float64)
        t = (self._map._g(lam - self.shift) - self._g_at_max) / self._norm
        return t.clamp(0.0, 1.0).to(logsnr.dtype)

    def logsnr(self, t: Tensor) -> Tensor:
        """λ(t), strictly decreasing, λ(0) = logsnr_max and λ(1) = logsnr_min."""
        g = self._g_at_max + t.to(torch.float64) * self._norm
        lam = (self._map._g_inv(g) + self.shift).clamp(self.logsnr_min, self.logsnr_max)
        # the endpoints exactly, although g's rounding in the tails cannot resolve them
        lam = torch.where(t >= 1, self.logsnr_min, torch.where(t <= 0, self.logsnr_max, lam))
        return lam.to(t.dtype)

    def density(self, logsnr: Tensor) -> Tensor:
        """p(λ) = −dt/dλ, a probability density on [logsnr_min, logsnr_max] (zero outside)."""
        lam = logsnr.to(torch.float64)
        p = -self._map._dg(lam - self.shift) / self._norm
        inside = (lam >= self.logsnr_min) & (lam <= self.logsnr_max)
        return torch.where(inside, p, torch.zeros_like(p)).to(logsnr.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, *, stratified: bool = False,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """``n`` draws of λ ~ p(λ), shape ``[n]`` (inverse-CDF sampling of t ~ U(0, 1))."""
        return self.logsnr(stratified_uniform(n, generator, stratified=stratified, device=device)).to(dtype)

    def truncated(self) -> Truncated:
        """This schedule as a :class:`Truncated` wrapper of its base map (same endpoints and shift, the same
        numbers); change it with ``dataclasses.replace(schedule.truncated(), logsnr_min=..., shift=...)``."""
        return Truncated(self, self.logsnr_min, self.logsnr_max, self.shift)

    def with_endpoints(self, logsnr_min: float, logsnr_max: float) -> Truncated:
        """The same base map (and shift) truncated to other endpoints (renormalised)."""
        return dataclasses.replace(self.truncated(), logsnr_min=logsnr_min, logsnr_max=logsnr_max)

    def base_params(self) -> dict[str, float]:
        """The base map's own parameters (none here)."""
        return {}

    def params(self) -> dict[str, float]:
        return self.base_params() | {"logsnr_min": self.logsnr_min, "logsnr_max": self.logsnr_max,
                                     "shift": self.shift}

    def _kind(self) -> str:
        """The class name the repr shows (a :class:`Truncated` shows its base's)."""
        return type(self).__name__

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params().items())
        return f"{self._kind()}({inner})"


class _ViaMap:
    """``_g``, ``_dg`` and ``_g_inv`` of the base map bound to the schedule (``self._map``, set by
    :meth:`Schedule._bind`)."""

    _map: Any

    def _g(self, logsnr: Tensor) -> Tensor:
        return self._map._g(logsnr)

    def _dg(self, logsnr: Tensor) -> Tensor:
        return self._map._dg(logsnr)

    def _g_inv(self, g: Tensor) -> Tensor:
        return self._map._g_inv(g)


@dataclass(frozen=True, eq=False, repr=False)
class Truncated(_ViaMap, Schedule):
    r"""The base map of ``base`` truncated to [logsnr_min, logsnr_max] and shifted by ``shift`` (module
    docstring; ``base``'s own endpoints and shift play no part). Frozen: change the endpoints or the shift
    with :func:`dataclasses.replace`, which recomputes the normaliser Z and nothing else. A tail-accurate
    ``base`` keeps the tail it chose when it was built (as re-truncation always has), so its numbers can
    differ from a fresh ``type(base)(..., logsnr_min, logsnr_max, shift)`` in the last bits; for every other
    map they are the same bit for bit."""

    base: Schedule
    logsnr_min: float = LOGSNR_MIN
    logsnr_max: float = LOGSNR_MAX
    shift: float = 0.0

    def __post_init__(self) -> None:
        base = self.base.base if isinstance(self.base, Truncated) else self.base
        object.__setattr__(self, "base", base)
        # the tail of a tail-accurate map stays the one chosen when ``base`` was built
        base._bind(self, self.logsnr_min, self.logsnr_max, self.shift, base._map)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.base.name

    def truncated(self) -> Truncated:
        return self

    def base_params(self) -> dict[str, float]:
        return self.base.base_params()

    def _kind(self) -> str:
        return self.base._kind()


class Cosine(Schedule):
    r"""Cosine schedule (Nichol & Dhariwal 2021), truncated: :math:`g(\lambda) = \arctan e^{-\lambda/2}`,
    so :math:`\lambda(t) = -2\log\tan(a_{min} + t(a_{max}-a_{min}))` and
    :math:`p(\lambda) = \mathrm{sech}(\lambda/2) / (4(a_{max}-a_{min}))` (derived; docs/theory.md, "Schedules").
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


class _TailAccurate(_ViaMap, Schedule):
    r"""A schedule given by a distribution of λ with CDF F, survival S = 1 − F and density f.

    The base map is g = S in the upper tail and g = −F in the lower one (both decreasing; only differences
    of g enter t), chosen by which of F, S is smaller at the interval's midpoint, so that t and λ(t) keep
    full precision far out in a tail. Subclasses give ``_cdf``, ``_sf``, ``_pdf`` and the inverses
    ``_ppf`` (of F) and ``_isf`` (of S), each accurate where its value is small."""

    @abstractmethod
    def _cdf(self, logsnr: Tensor) -> Tensor:
        """F(λ), accurate where it is small."""

    @abstractmethod
    def _sf(self, logsnr: Tensor) -> Tensor:
        """S(λ) = 1 − F(λ), accurate where it is small."""

    @abstractmethod
    def _pdf(self, logsnr: Tensor) -> Tensor:
        """f(λ) = F'(λ)."""

    @abstractmethod
    def _ppf(self, q: Tensor) -> Tensor:
        """F^{-1}(q), accurate for small q."""

    @abstractmethod
    def _isf(self, q: Tensor) -> Tensor:
        """S^{-1}(q), accurate for small q."""

    def _branch(self, lo: float, hi: float) -> _Tail:
        mid = torch.tensor(0.0 if not (math.isfinite(lo) and math.isfinite(hi)) else 0.5 * (lo + hi),
                           dtype=torch.float64)
        return _Tail(self, bool(self._cdf(mid) >= self._sf(mid)))


@dataclass(frozen=True)
class _Tail:
    """The base map of a :class:`_TailAccurate` schedule in one tail: g = S (``upper``) or g = −F."""

    dist: _TailAccurate
    upper: bool

    def _g(self, logsnr: Tensor) -> Tensor:
        return self.dist._sf(logsnr) if self.upper else -self.dist._cdf(logsnr)

    def _dg(self, logsnr: Tensor) -> Tensor:
        return -self.dist._pdf(logsnr)

    def _g_inv(self, g: Tensor) -> Tensor:
        return self.dist._isf(g) if self.upper else self.dist._ppf(-g)


class _Symmetric(_TailAccurate):
    """λ = loc + scale·U with U symmetric about 0, given by its standardised ``_std_cdf``, ``_std_pdf``
    and ``_std_ppf`` (the inverse CDF, accurate for small arguments)."""

    @staticmethod
    @abstractmethod
    def _std_cdf(u: Tensor) -> Tensor:
        """The standardised CDF."""

    @staticmethod
    @abstractmethod
    def _std_pdf(u: Tensor) -> Tensor:
        """The standardised density."""

    @staticmethod
    @abstractmethod
    def _std_ppf(q: Tensor) -> Tensor:
        """The standardised inverse CDF, accurate for small q."""

    def __init__(self, loc: float, scale: float, logsnr_min: float, logsnr_max: float, shift: float,
                 scale_name: str = "scale"):
        if not scale > 0:
            raise ValueError(f"{scale_name} must be positive, got {scale}")
        self.loc, self.scale = float(loc), float(scale)
        super().__init__(logsnr_min, logsnr_max, shift)

    def _cdf(self, logsnr):
        return self._std_cdf((logsnr - self.loc) / self.scale)

    def _sf(self, logsnr):
        return self._std_cdf((self.loc - logsnr) / self.scale)

    def _pdf(self, logsnr):
        return self._std_pdf((logsnr - self.loc) / self.scale) / self.scale

    def _ppf(self, q):
        return self.loc + self.scale * self._std_ppf(q)

    def _isf(self, q):
        return self.loc - self.scale * self._std_ppf(q)


def _std_normal_pdf(u: Tensor) -> Tensor:
    return torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)


def _std_normal_ppf(q: Tensor) -> Tensor:
    return torch.special.ndtri(q.clamp(1e-300, 1.0))


class NormalLogSNR(_Symmetric):
    r"""λ ~ N(mean, std²) truncated to the endpoints.

    EDM's log-normal σ (ln σ_VE ~ N(P_mean, P_std²)) is mean = −2 P_mean, std = 2 P_std; SD3's
    logit-normal t (logit t_RF ~ N(m, s²)) is mean = −2m, std = 2s (derived; docs/theory.md, "Schedules")."""

    name = "normal-logsnr"
    _std_cdf, _std_pdf, _std_ppf = staticmethod(_ndtr), staticmethod(_std_normal_pdf), staticmethod(_std_normal_ppf)

    def __init__(self, mean: float, std: float, logsnr_min: float = LOGSNR_MIN,
                 logsnr_max: float = LOGSNR_MAX, shift: float = 0.0):
        self.mean, self.std = float(mean), float(std)
        super().__init__(mean, std, logsnr_min, logsnr_max, shift, "std")

    def base_params(self):
        return {"mean": self.mean, "std": self.std}


class Laplace(_Symmetric):
    r"""λ ~ Laplace(μ, b): :math:`p(\lambda) = e^{-|\lambda-\mu|/b}/(2b)` (Hang et al. 2024, "Improved
    Noise Schedule for Diffusion Training", §2), inverse CDF :math:`\mu - b\,\mathrm{sgn}(q - \tfrac12)
    \ln(1 - 2|q - \tfrac12|)`."""

    name = "laplace"

    def __init__(self, mu: float = 0.0, b: float = 0.5, logsnr_min: float = LOGSNR_MIN,
                 logsnr_max: float = LOGSNR_MAX, shift: float = 0.0):
        super().__init__(mu, b, logsnr_min, logsnr_max, shift, "b")

    @staticmethod
    def _std_cdf(u):
        return torch.where(u < 0, 0.5 * torch.exp(u.clamp(max=0.0)), 1.0 - 0.5 * torch.exp(-u.clamp(min=0.0)))

    @staticmethod
    def _std_pdf(u):
        return 0.5 * torch.exp(-u.abs())

    @staticmethod
    def _std_ppf(q):
        return torch.where(q < 0.5, torch.log(2 * q.clamp(1e-300, 0.5)), -torch.log(2 * (1 - q).clamp(1e-300, 0.5)))

    def base_params(self):
        return {"mu": self.loc, "b": self.scale}


class Cauchy(_Symmetric):
    r"""λ ~ Cauchy(μ, γ): :math:`p(\lambda) = \gamma / (\pi(\gamma^2 + (\lambda-\mu)^2))` (Hang et al. 2024,
    §2); CDF written as atan2(1, −u)/π and inverse CDF as −cot(πq), both exact in the tails."""

    name = "cauchy"

    def __init__(self, mu: float = 0.0, gamma: float = 1.0, logsnr_min: float = LOGSNR_MIN,
                 logsnr_max: float = LOGSNR_MAX, shift: float = 0.0):
        super().__init__(mu, gamma, logsnr_min, logsnr_max, shift, "gamma")

    @staticmethod
    def _std_cdf(u):
        return torch.atan2(torch.ones_like(u), -u) / math.pi

    @staticmethod
    def _std_pdf(u):
        return 1.0 / (math.pi * (1.0 + u * u))

    @staticmethod
    def _std_ppf(q):
        return -1.0 / torch.tan(math.pi * q)

    def base_params(self):
        return {"mu": self.loc, "gamma": self.scale}


class LogLogistic(_Symmetric):
    r"""k-diffusion's log-logistic σ: ln σ = loc + scale·logit(u), u ~ U(0, 1) (``rand_log_logistic``),
    i.e. ln σ ~ Logistic(loc, scale) ⇔ λ = −2 ln σ ~ Logistic(−2 loc, 2 scale):
    :math:`p(\lambda) = \mathrm{sigmoid}(v)\,\mathrm{sigmoid}(-v)/(2\,\mathrm{scale})`, v = (λ + 2 loc)/(2 scale)."""

    name = "log-logistic"

    def __init__(self, loc: float = 0.0, scale: float = 1.0, logsnr_min: float = LOGSNR_MIN,
                 logsnr_max: float = LOGSNR_MAX, shift: float = 0.0):
        self.loc_sigma, self.scale_sigma = float(loc), float(scale)
        super().__init__(-2.0 * loc, 2.0 * scale, logsnr_min, logsnr_max, shift, "scale")

    @staticmethod
    def _std_cdf(u):
        return torch.sigmoid(u)

    @staticmethod
    def _std_pdf(u):
        return torch.sigmoid(u) * torch.sigmoid(-u)

    @staticmethod
    def _std_ppf(q):
        return torch.logit(q)

    def base_params(self):
        return {"loc": self.loc_sigma, "scale": self.scale_sigma}


class SplitLogNormal(_TailAccurate):
    r"""k-diffusion's split log-normal σ (``rand_split_log_normal``): ln σ = loc − scale_1|n| with probability
    scale_1/(scale_1 + scale_2), else loc + scale_2|n|, n ~ N(0, 1). In λ = −2 ln σ, with m = −2 loc,
    a = 2 scale_1 (the side λ > m) and c = 2 scale_2 (the side λ < m):

    .. math::  p(\lambda) = \frac{2}{a + c}\,\varphi\Big(\frac{\lambda - m}{a}\Big) \ (\lambda \ge m),\qquad
               \frac{2}{a + c}\,\varphi\Big(\frac{\lambda - m}{c}\Big) \ (\lambda < m),

    continuous at m, with mass a/(a + c) above m."""

    name = "split-log-normal"

    def __init__(self, loc: float = 0.0, scale_1: float = 1.0, scale_2: float = 1.0,
                 logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX, shift: float = 0.0):
        if not (scale_1 > 0 and scale_2 > 0):
            raise ValueError(f"scale_1 and scale_2 must be positive, got {scale_1} and {scale_2}")
        self.loc, self.scale_1, self.scale_2 = float(loc), float(scale_1), float(scale_2)
        self._m, self._a, self._c = -2.0 * self.loc, 2.0 * self.scale_1, 2.0 * self.scale_2
        self._mass_up = self._a / (self._a + self._c)  # P(λ > m)
        super().__init__(logsnr_min, logsnr_max, shift)

    def _cdf(self, logsnr):
        d = logsnr - self._m
        below = 2 * (1 - self._mass_up) * _ndtr(d.clamp(max=0.0) / self._c)
        return torch.where(d < 0, below, 1.0 - 2 * self._mass_up * _ndtr(-d.clamp(min=0.0) / self._a))

    def _sf(self, logsnr):
        d = logsnr - self._m
        above = 2 * self._mass_up * _ndtr(-d.clamp(min=0.0) / self._a)
        return torch.where(d >= 0, above, 1.0 - 2 * (1 - self._mass_up) * _ndtr(d.clamp(max=0.0) / self._c))

    def _pdf(self, logsnr):
        d = logsnr - self._m
        return 2.0 / (self._a + self._c) * _std_normal_pdf(torch.where(d >= 0, d / self._a, d / self._c))

    def _ppf(self, q):
        low = 1 - self._mass_up
        below = self._m + self._c * _std_normal_ppf((q / (2 * low)).clamp(max=0.5))
        above = self._m - self._a * _std_normal_ppf(((1 - q) / (2 * self._mass_up)).clamp(max=0.5))
        return torch.where(q < low, below, above)

    def _isf(self, q):
        low = 1 - self._mass_up
        above = self._m - self._a * _std_normal_ppf((q / (2 * self._mass_up)).clamp(max=0.5))
        below = self._m + self._c * _std_normal_ppf(((1 - q) / (2 * low)).clamp(max=0.5))
        return torch.where(q < self._mass_up, above, below)

    def base_params(self):
        return {"loc": self.loc, "scale_1": self.scale_1, "scale_2": self.scale_2}


class FlowUniformT(Schedule):
    r"""Rectified flow with uniform :math:`t_{RF}`: :math:`t_{RF} = \mathrm{sigmoid}(-\lambda/2)`,
    :math:`p(\lambda) = \tfrac18\mathrm{sech}^2(\lambda/4)` before truncation (derived; docs/theory.md, "Schedules")."""

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


def _bisect_increasing(f, target: Tensor, lo: float, hi: float, iterations: int = 64) -> Tensor:
    """x in [lo, hi] with f(x) = target for an increasing ``f`` (elementwise bisection, no autograd)."""
    with torch.no_grad():
        a = torch.full_like(target, lo)
        b = torch.full_like(target, hi)
        for _ in range(iterations):
            mid = 0.5 * (a + b)
            below = f(mid) < target
            a, b = torch.where(below, mid, a), torch.where(below, b, mid)
    return 0.5 * (a + b)


class SD3Mode(Schedule):
    r"""SD3's "mode" timestep sampler (Esser et al. 2024, §3.1): :math:`t_{RF} = f(u) = 1 - u -
    s(\cos^2(\pi u/2) - 1 + u)`, u ~ U(0, 1), on the rectified-flow path λ = 2 ln((1 − t_RF)/t_RF).

    Writing F(x) = (1 + s)x − s sin²(πx/2), f(u) = F(1 − u) and 1 − f(u) = F(u) (f is antisymmetric about
    ½). F' = (1 + s) − (sπ/2) sin(πx) > 0 on [0, 1], i.e. f is a strictly monotone map, iff
    **−1 < s < 2/(π − 2) ≈ 1.7519**. F has no closed-form inverse (x − c·sin² is Kepler-like), so u(λ) is
    found by bisection. With y = sigmoid(−|λ|/2) and x = F^{-1}(y) ∈ [0, ½]: u = 1 − x for λ ≥ 0, u = x for
    λ < 0, and the density (derived: p(λ) = p_u(u)·|du/dt_RF|·|dt_RF/dλ|, p_u = 1) is

    .. math::  p(\lambda) = \frac{y(1-y)/2}{(1 + s) - \tfrac{s\pi}{2}\sin(\pi x)}
                          = \frac{t_{RF}(1 - t_{RF})/2}{(1 + s) - \tfrac{s\pi}{2}\sin(\pi u)}.

    The base map is g = −u (u increases with λ); λ(g) = 2(ln F(u) − ln F(1 − u)) in closed form."""

    name = "sd3-mode"
    MAX_SCALE = 2.0 / (math.pi - 2.0)

    def __init__(self, scale: float = 1.29, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX,
                 shift: float = 0.0):
        if not -1.0 < scale < self.MAX_SCALE:
            raise ValueError(f"scale must lie in (-1, 2/(pi - 2) = {self.MAX_SCALE:.6f}) for a monotone "
                             f"sampler, got {scale}")
        self.scale = float(scale)
        super().__init__(logsnr_min, logsnr_max, shift)

    def _f(self, x: Tensor) -> Tensor:
        return (1 + self.scale) * x - self.scale * torch.sin(0.5 * math.pi * x) ** 2

    def _df(self, x: Tensor) -> Tensor:
        return (1 + self.scale) - 0.5 * math.pi * self.scale * torch.sin(math.pi * x)

    def _f_inv_half(self, y: Tensor) -> Tensor:
        """F^{-1}(y) for y ∈ [0, ½]; one Newton step with autograd gives dx/dy = 1/F'(x)."""
        x = _bisect_increasing(self._f, y.detach(), 0.0, 0.5)
        return x - (self._f(x) - y) / self._df(x)

    def _g(self, logsnr):
        x = self._f_inv_half(torch.sigmoid(-0.5 * logsnr.abs()))
        return torch.where(logsnr >= 0, x - 1.0, -x)

    def _dg(self, logsnr):
        y = torch.sigmoid(-0.5 * logsnr.abs())
        return -0.5 * y * (1 - y) / self._df(self._f_inv_half(y))

    def _g_inv(self, g):
        u = (-g).clamp(0.0, 1.0)
        return 2.0 * (torch.log(self._f(u)) - torch.log(self._f(1.0 + g.clamp(-1.0, 0.0))))

    def base_params(self):
        return {"scale": self.scale}


class InterpolatedCosine(Schedule):
    r"""simple diffusion's interpolated cosine schedule (Hoogeboom et al. 2023, §3.1): the shifted
    cosine schedules λ_cos(τ) + s_lo and λ_cos(τ) + s_hi mixed linearly in time,

    .. math::  \lambda(\tau) = \tau(\lambda_{cos}(\tau) + s_{lo}) + (1 - \tau)(\lambda_{cos}(\tau) + s_{hi})
               = -2\ln\tan(\pi\tau/2) + s_{hi} + \tau(s_{lo} - s_{hi}),

    so the noise end (τ = 1) uses the low-resolution shift and the data end (τ = 0) the high one (paper:
    s_lo = 2 ln(32/d), s_hi = 2 ln(256/d) for a d×d image). This is the base map (untruncated, τ ∈ [0, 1]
    ↔ λ ∈ ℝ), truncated like every schedule here; the paper instead interpolates the truncated cosine, a
    difference of order e^{−λ_max/2} in t. λ'(τ) = −2π/sin(πτ) + (s_lo − s_hi) < 0 for all τ iff
    **s_lo − s_hi < 2π**; g(λ) = τ(λ) by bisection, and

    .. math::  p(\lambda) = \frac{\sin\pi\tau}{2\pi - (s_{lo} - s_{hi})\sin\pi\tau}\quad
               (= \mathrm{sech}(\lambda/2)/(2\pi) \text{ for } s_{lo} = s_{hi} = 0)."""

    name = "interpolated-cosine"

    def __init__(self, shift_lo: float = 2 * math.log(32 / 512), shift_hi: float = 2 * math.log(256 / 512),
                 logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX, shift: float = 0.0):
        self.shift_lo, self.shift_hi = float(shift_lo), float(shift_hi)
        if not (math.isfinite(self.shift_lo) and math.isfinite(self.shift_hi)
                and self.shift_lo - self.shift_hi < 2 * math.pi):
            raise ValueError(f"need finite shift_lo - shift_hi < 2 pi for a monotone schedule, got "
                             f"{shift_lo} and {shift_hi}")
        super().__init__(logsnr_min, logsnr_max, shift)

    def _g_inv(self, g):
        return -2.0 * torch.log(torch.tan(0.5 * math.pi * g)) + self.shift_hi + g * (self.shift_lo - self.shift_hi)

    def _dlogsnr_dtau(self, tau: Tensor) -> Tensor:
        return -2.0 * math.pi / torch.sin(math.pi * tau) + (self.shift_lo - self.shift_hi)

    def _g(self, logsnr):
        tau = _bisect_increasing(lambda v: -self._g_inv(v), -logsnr.detach(), 0.0, 1.0)
        newton = tau - (self._g_inv(tau) - logsnr) / self._dlogsnr_dtau(tau)  # autograd: dτ/dλ = 1/λ'(τ)
        return torch.where(torch.isfinite(logsnr), newton, tau)

    def _dg(self, logsnr):
        return 1.0 / self._dlogsnr_dtau(self._g(logsnr.detach()))

    def base_params(self):
        return {"shift_lo": self.shift_lo, "shift_hi": self.shift_hi}


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
    return FlowUniformT(logsnr_min, logsnr_max, shift)


@REGISTRY.register("logit-normal", "SD3 logit-normal t_RF: logit t ~ N(m, s²) ⇔ λ ~ N(−2m, 4s²)")
def _logit_normal(m: float = 0.0, s: float = 1.0, logsnr_min: float = LOGSNR_MIN,
                  logsnr_max: float = LOGSNR_MAX, shift: float = 0.0) -> Schedule:
    return NormalLogSNR(-2.0 * m, 2.0 * s, logsnr_min, logsnr_max, shift)


@REGISTRY.register("ddpm-linear", "DDPM linear β (1e−4 → 0.02), continuous limit")
def _ddpm_linear(logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX) -> Schedule:
    return DDPMLinear(logsnr_min, logsnr_max)


@REGISTRY.register("laplace", "Laplace(mu, b) in log-SNR (Hang et al. 2024)")
def _laplace(mu: float = 0.0, b: float = 0.5, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX,
             shift: float = 0.0) -> Schedule:
    return Laplace(mu, b, logsnr_min, logsnr_max, shift)


@REGISTRY.register("cauchy", "Cauchy(mu, gamma) in log-SNR (Hang et al. 2024)")
def _cauchy(mu: float = 0.0, gamma: float = 1.0, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX,
            shift: float = 0.0) -> Schedule:
    return Cauchy(mu, gamma, logsnr_min, logsnr_max, shift)


@REGISTRY.register("sd3-mode", "SD3 mode sampler t_RF = 1 − u − scale(cos²(πu/2) − 1 + u), −1 < scale < 1.7519")
def _sd3_mode(scale: float = 1.29, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX,
              shift: float = 0.0) -> Schedule:
    return SD3Mode(scale, logsnr_min, logsnr_max, shift)


@REGISTRY.register("interpolated-cosine", "simple diffusion: cosine shifted by shift_lo at noise, shift_hi at data")
def _interpolated_cosine(shift_lo: float = 2 * math.log(32 / 512), shift_hi: float = 2 * math.log(256 / 512),
                         logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX,
                         shift: float = 0.0) -> Schedule:
    return InterpolatedCosine(shift_lo, shift_hi, logsnr_min, logsnr_max, shift)


@REGISTRY.register("log-logistic", "k-diffusion: ln σ ~ Logistic(loc, scale) ⇔ λ ~ Logistic(−2 loc, 2 scale)")
def _log_logistic(loc: float = 0.0, scale: float = 1.0, logsnr_min: float = LOGSNR_MIN,
                  logsnr_max: float = LOGSNR_MAX, shift: float = 0.0) -> Schedule:
    return LogLogistic(loc, scale, logsnr_min, logsnr_max, shift)


@REGISTRY.register("log-uniform", "k-diffusion: ln σ ~ U(ln sigma_min, ln sigma_max) ⇔ λ uniform on "
                   "[−2 ln sigma_max, −2 ln sigma_min] (+ shift)")
def _log_uniform(sigma_min: float = 0.002, sigma_max: float = 80.0, shift: float = 0.0) -> Schedule:
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min} and {sigma_max}")
    # uniform λ is translation invariant, so the shift moves the support itself
    return LinearLogSNR(-2.0 * math.log(sigma_max) + shift, -2.0 * math.log(sigma_min) + shift)


@REGISTRY.register("split-log-normal", "k-diffusion split log-normal σ (loc, scale_1 below loc, scale_2 above)")
def _split_log_normal(loc: float = 0.0, scale_1: float = 1.0, scale_2: float = 1.0, logsnr_min: float = LOGSNR_MIN,
                      logsnr_max: float = LOGSNR_MAX, shift: float = 0.0) -> Schedule:
    return SplitLogNormal(loc, scale_1, scale_2, logsnr_min, logsnr_max, shift)


def get(name: str, **params) -> Schedule:
    """A schedule by registry name, e.g. ``get("edm", p_mean=-0.4, p_std=1.0)``."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    return REGISTRY.names()


# deprecated names (issue 11: names unique across modules); registry names are unchanged
__getattr__ = renamed(__name__, {"Flow": "FlowUniformT"}, globals())
