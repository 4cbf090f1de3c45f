r"""Samplers in λ: ancestral (DDPM), DDIM, EDM's Heun, DPM-Solver++(2M) (docs/theory.md, "Samplers").

The guided denoiser is built once, ``denoiser = Denoiser(model, parameterization, labels=..., guidance=...)``
(conditioning, guidance, parameterization), and every sampler core is a pure function
``sample_*(denoiser, noise, logsnrs, *, generators=None, callback=None, ...)`` (as k-diffusion's
``sample_*(model, x, sigmas, ...)``); ``ancestral``, ``ddim``, ``heun``, ``dpmpp_2m`` and ``edm_stochastic``
take ``(model, parameterization, noise, logsnrs, ...)`` and the guidance options, build the denoiser and run
the core. ``noise`` ``[B, ...]`` is standard normal, ``logsnrs`` ``[N]`` the increasing λ-grid from noise to
data. The chain starts at z₀ = σ(λ₀)·noise (EDM's x̃ = σ_max·noise in VP coordinates), moves along the
grid, and returns the denoised x̂ at the last grid point (EDM's final step to σ = 0). With the grids below,
a first-order sampler or DPM-Solver++(2M) makes N network evaluations, Heun 2N − 1 (EDM22's count).

Stochastic draws come from one ``torch.Generator`` per sample, so sample i depends only on its own
generator (and noise), never on the batch it is in. Guidance with scale g (x̂ is affine in ε̂ at fixed z,
so guiding x̂ is guiding ε̂):

- classifier-free (Ho & Salimans 2022): x̂ = (1 + g) x̂(z, c) − g x̂(z, ∅);
- autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", Eq. 2):
  x̂ = x̂_bad + w (x̂ − x̂_bad) with w = 1 + g, the guiding model a smaller or earlier one (:class:`Guide`),
  conditioned on the same labels; it replaces the unconditional model of classifier-free guidance;
- a guidance interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample
  and Distribution Quality"): guidance only where lo ≤ λ ≤ hi of the network evaluation; elsewhere the
  plain x̂(z, c), with one network call, exactly as without guidance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.parameterizations import Parameterization
from ..core.process import alpha_sigma
from ..core.schedules import ScheduleLike
from ..core.schedules import get as _schedule
from ..errors import OptionError
from ..registry import Registry

__all__ = [
    "Step",
    "Guide",
    "Denoiser",
    "sample_ancestral",
    "sample_ddim",
    "sample_heun",
    "sample_dpmpp_2m",
    "sample_edm_stochastic",
    "ancestral",
    "ddim",
    "heun",
    "edm_stochastic",
    "EDMStochastic",
    "EDM_STOCHASTIC",
    "dpmpp_2m",
    "grid_uniform_t",
    "grid_edm",
    "grid_uniform_logsnr",
    "seeded_generators",
    "seeded_noise",
    "Sampler",
    "REGISTRY",
    "get",
    "names",
    "GRIDS",
    "grid",
]

Model = Callable[..., Tensor]


@dataclass(frozen=True)
class Step:
    """What a sampler passes to ``callback`` at grid point ``index`` (0 … ``total`` − 1), before leaving it:
    the λ there, the latent ``z`` at it and the denoised prediction ``x_hat`` made there (``[B, ...]``)."""

    index: int
    total: int
    logsnr: float
    z: Tensor
    x_hat: Tensor


NullLabel = int | Tensor | None  # the label of the unconditional model, for classifier-free guidance
Callback = Callable[[Step], None] | None


# -- λ-grids (increasing, from noise to data) -----------------------------------------------------------

def grid_uniform_t(schedule: ScheduleLike, steps: int) -> Tensor:
    """λ(t_i) at t_i = 1 − i/(steps − 1): uniform in the schedule's time, from λ_min to λ_max (float64)."""
    _check_steps(steps)
    t = 1.0 - torch.arange(steps, dtype=torch.float64) / (steps - 1)
    return schedule.logsnr(t).to(torch.float64)


def grid_edm(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> Tensor:
    r"""EDM22 Eq. 5: σ_i = (σ_max^{1/ρ} + i/(N−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, as λ_i = −2 log σ_i (float64)."""
    _check_steps(steps)
    if not 0 < sigma_min < sigma_max or not rho > 0:
        raise ValueError("need 0 < sigma_min < sigma_max and rho > 0")
    i = torch.arange(steps, dtype=torch.float64)
    sigma = (sigma_max ** (1 / rho) + i / (steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return -2.0 * torch.log(sigma)


def grid_uniform_logsnr(steps: int, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> Tensor:
    """``steps`` equally spaced λ from ``logsnr_min`` to ``logsnr_max`` (float64)."""
    _check_steps(steps)
    if not logsnr_min < logsnr_max:
        raise ValueError("need logsnr_min < logsnr_max")
    return torch.linspace(logsnr_min, logsnr_max, steps, dtype=torch.float64)


def _check_steps(steps: int) -> None:
    if int(steps) != steps or steps < 2:
        raise ValueError(f"a grid needs at least 2 points, got {steps}")


# -- per-sample randomness --------------------------------------------------------------------------------

def seeded_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per seed: pass them to :func:`seeded_noise` first, then to a stochastic sampler."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def seeded_noise(seeds: Sequence[int] | Sequence[torch.Generator], shape: Sequence[int], *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Initial noise ``[len(seeds), *shape]``: row i is ``randn(shape)`` from seed i (or generator i, which
    it advances), so it does not depend on the other rows."""
    gens = [s if isinstance(s, torch.Generator) else torch.Generator().manual_seed(int(s)) for s in seeds]
    return _randn(gens, tuple(shape), dtype, device)


def _randn(generators: Sequence[torch.Generator], shape: tuple[int, ...], dtype: torch.dtype,
           device: torch.device | str | None) -> Tensor:
    rows = [torch.randn(shape, generator=g, dtype=dtype, device=g.device) for g in generators]
    return torch.stack(rows).to(device)


def _randn_like(z: Tensor, generators: Sequence[torch.Generator] | None) -> Tensor:
    if generators is None:
        return torch.randn_like(z)
    if len(generators) != z.shape[0]:
        raise ValueError(f"need one generator per sample: got {len(generators)} for a batch of {z.shape[0]}")
    return _randn(generators, tuple(z.shape[1:]), z.dtype, z.device)


# -- the denoiser with guidance -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Guide:
    """The guiding model of autoguidance: ``model(z, logsnr[, labels])`` and its parameterization."""

    model: Model
    parameterization: Parameterization


def _x_hat(model: Model, parameterization: Parameterization, z: Tensor, lam: Tensor,
           labels: Tensor | None) -> Tensor:
    return parameterization.x_hat(model(z, lam) if labels is None else model(z, lam, labels), z, lam)


class Denoiser:
    r"""The guided denoiser, built once and called by every sampler: ``denoiser(z, logsnr)`` → x̂ ``[B, ...]``
    for a latent ``z`` ``[B, ...]`` at one λ (a float), without gradients.

    ``model(z, logsnr[, labels])`` predicts what ``parameterization`` names, and x̂ follows from it
    (``Parameterization.x_hat``); ``labels`` ``[B]`` condition it. With ``guidance`` g ≠ 0 and λ inside
    ``guidance_interval`` (lo, hi) (default: every λ), x̂ is guided (module docstring): classifier-free,
    x̂ = (1 + g) x̂(z, c) − g x̂(z, ∅) with ∅ = ``null_label`` (one network call on 2B rows), or, with a
    ``guide``, autoguidance x̂ = (1 + g) x̂(z, c) − g x̂_guide(z, c) (Karras et al. 2024, Eq. 2, w = 1 + g).
    Outside the interval, or with g = 0, it is the plain x̂(z, c) with one network call."""

    def __init__(self, model: Model, parameterization: Parameterization, *, labels: Tensor | None = None,
                 guidance: float = 0.0, null_label: NullLabel = None, guide: Guide | None = None,
                 guidance_interval: tuple[float, float] | None = None) -> None:
        lo, hi = (-math.inf, math.inf) if guidance_interval is None else (float(v) for v in guidance_interval)
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ValueError(f"guidance_interval must be (lo, hi) with lo <= hi, got {guidance_interval}")
        if guidance != 0.0 and guide is None and (labels is None or null_label is None):
            raise ValueError("classifier-free guidance needs labels and a null_label (or pass a guide model)")
        self.model, self.parameterization, self.labels = model, parameterization, labels
        self.guidance, self.null_label, self.guide = float(guidance), null_label, guide
        self.guidance_interval = (lo, hi)

    def guided_at(self, logsnr: float) -> bool:
        """Whether x̂ at λ = ``logsnr`` is guided (g ≠ 0 and lo ≤ λ ≤ hi)."""
        lo, hi = self.guidance_interval
        return self.guidance != 0.0 and lo <= logsnr <= hi

    def __call__(self, z: Tensor, logsnr: float) -> Tensor:
        lam = torch.full((z.shape[0],), float(logsnr), dtype=z.dtype, device=z.device)
        g, labels, model, param = self.guidance, self.labels, self.model, self.parameterization
        with torch.no_grad():
            if not self.guided_at(logsnr):
                return _x_hat(model, param, z, lam, labels)
            if self.guide is not None:
                x_bad = _x_hat(self.guide.model, self.guide.parameterization, z, lam, labels)
                return (1 + g) * _x_hat(model, param, z, lam, labels) - g * x_bad
            null = torch.as_tensor(self.null_label, dtype=labels.dtype, device=labels.device).expand_as(labels)
            z2, lam2 = torch.cat([z, z]), torch.cat([lam, lam])
            x_c, x_u = _x_hat(model, param, z2, lam2, torch.cat([labels, null])).chunk(2)
            return (1 + g) * x_c - g * x_u  # one network call on 2B rows


def _grid(logsnrs: Tensor | Sequence[float]) -> list[float]:
    lam = [float(v) for v in torch.as_tensor(logsnrs, dtype=torch.float64).reshape(-1)]
    if len(lam) < 1 or any(b <= a for a, b in zip(lam, lam[1:], strict=False)):
        raise ValueError("logsnrs must be a non-empty strictly increasing grid (noise → data)")
    return lam


def _ab(logsnr: float) -> tuple[float, float]:
    alpha, sigma = alpha_sigma(torch.tensor(logsnr, dtype=torch.float64))
    return float(alpha), float(sigma)


# -- the samplers: cores on a Denoiser ------------------------------------------------------------------------

Generators = Sequence[torch.Generator] | None
FirstOrderStep = Callable[[Tensor, Tensor, float, float], Tensor]


def _first_order(denoiser: Denoiser, noise: Tensor, logsnrs: Tensor | Sequence[float], callback: Callback,
                 step: FirstOrderStep) -> Tensor:
    """The chain of a one-step sampler: z₀ = σ(λ₀)·noise, then z ← ``step(z, x̂, λ_t, λ_s)`` along the grid,
    and x̂ at the last point."""
    lam = _grid(logsnrs)
    z = _ab(lam[0])[1] * noise
    for i, (lt, ls) in enumerate(zip(lam, lam[1:] + [None], strict=True)):
        x_hat = denoiser(z, lt)
        _report(callback, i, len(lam), lt, z, x_hat)
        z = x_hat if ls is None else step(z, x_hat, lt, ls)
    return z


def sample_ancestral(denoiser: Denoiser, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
                     generators: Generators = None, callback: Callback = None) -> Tensor:
    r"""Ancestral sampling (DDPM; VDM21's sampler, in λ): from λ_t to λ_s > λ_t, with c = −expm1(λ_t − λ_s),

        z_s = (α_s/α_t)(z_t − σ_t c ε̂) + σ_s √c · n = α_s c x̂ + (α_s/α_t)(1 − c) z_t + σ_s √c · n,

    the exact posterior q(z_s | z_t, x = x̂); n ~ N(0, I) from each sample's generator."""

    def step(z: Tensor, x_hat: Tensor, lt: float, ls: float) -> Tensor:
        (a_t, _), (a_s, s_s) = _ab(lt), _ab(ls)
        c = -math.expm1(lt - ls)
        return a_s * c * x_hat + (a_s / a_t) * (1 - c) * z + s_s * math.sqrt(c) * _randn_like(z, generators)

    return _first_order(denoiser, noise, logsnrs, callback, step)


def sample_ddim(denoiser: Denoiser, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
                generators: Generators = None, callback: Callback = None) -> Tensor:
    r"""DDIM (Song et al. 2021, η = 0): z_s = α_s x̂ + σ_s ε̂, written as
    z_s = (σ_s/σ_t) z_t − α_s expm1(−h) x̂ with h = (λ_s − λ_t)/2 (deterministic; first-order DPM-Solver++;
    ``generators`` is accepted for a uniform signature and unused)."""

    def step(z: Tensor, x_hat: Tensor, lt: float, ls: float) -> Tensor:
        (_, s_t), (a_s, s_s) = _ab(lt), _ab(ls)
        return (s_s / s_t) * z - a_s * math.expm1(-0.5 * (ls - lt)) * x_hat

    return _first_order(denoiser, noise, logsnrs, callback, step)


def sample_dpmpp_2m(denoiser: Denoiser, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
                    generators: Generators = None, callback: Callback = None) -> Tensor:
    r"""DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in the half-log-SNR λ/2: with h_i = (λ_i − λ_{i−1})/2,
    r = h_{i−1}/h_i and D = (1 + 1/(2r)) x̂_{i−1} − x̂_{i−2}/(2r) (D = x̂_{i−1} on the first step),

        z_i = (σ_i/σ_{i−1}) z_{i−1} − α_i expm1(−h_i) D

    (deterministic; ``generators`` is accepted for a uniform signature and unused)."""
    lam = _grid(logsnrs)
    z = _ab(lam[0])[1] * noise
    x_prev = None
    for i, lt in enumerate(lam):
        x_hat = denoiser(z, lt)
        _report(callback, i, len(lam), lt, z, x_hat)
        if i + 1 == len(lam):
            z = x_hat
        else:
            ls = lam[i + 1]
            (_, s_t), (a_s, s_s) = _ab(lt), _ab(ls)
            h = 0.5 * (ls - lt)
            if x_prev is None:
                d = x_hat
            else:
                r = 0.5 * (lt - lam[i - 1]) / h
                d = (1 + 1 / (2 * r)) * x_hat - x_prev / (2 * r)
            z = (s_s / s_t) * z - a_s * math.expm1(-h) * d
            x_prev = x_hat
    return z


def sample_heun(denoiser: Denoiser, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
                generators: Generators = None, callback: Callback = None, s_churn: float = 0.0,
                s_min: float = 0.0, s_max: float = math.inf, s_noise: float = 1.0) -> Tensor:
    r"""EDM22 Algorithm 2 in x̃ = z/α with σ = σ_VE = e^{−λ/2}: the ODE dx̃/dσ = (x̃ − D(x̃; σ))/σ (= ε̂)
    by Heun's method between grid points and an Euler step to σ = 0 from the last (which returns D).

    Churn: at σ_i ∈ [s_min, s_max], γ = min(s_churn/N, √2 − 1) and x̃ gains noise of std
    √(σ̂² − σ_i²)·s_noise, σ̂ = (1 + γ)σ_i, before the step from σ̂; s_churn = 0 (default) is deterministic."""
    lam = _grid(logsnrs)
    n = len(lam)
    sig = [math.exp(-0.5 * v) for v in lam]

    def denoise(x_tilde: Tensor, sigma: float) -> Tensor:
        logsnr = -2.0 * math.log(sigma)
        alpha = _ab(logsnr)[0]
        return denoiser(alpha * x_tilde, logsnr)

    x = sig[0] * noise
    for i in range(n):
        z_in = _ab(lam[i])[0] * x
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_min <= sig[i] <= s_max else 0.0
        sigma_hat = sig[i] * (1.0 + gamma)
        if gamma > 0:
            x = x + math.sqrt(sigma_hat**2 - sig[i] ** 2) * s_noise * _randn_like(x, generators)
        d_hat = denoise(x, sigma_hat)
        _report(callback, i, n, lam[i], z_in, d_hat)
        if i + 1 == n:
            x = d_hat  # Euler step to σ = 0: x + (0 − σ̂)(x − D)/σ̂ = D
        else:
            d = (x - d_hat) / sigma_hat
            x_next = x + (sig[i + 1] - sigma_hat) * d
            d_next = (x_next - denoise(x_next, sig[i + 1])) / sig[i + 1]
            x = x + (sig[i + 1] - sigma_hat) * (0.5 * d + 0.5 * d_next)
    return x


@dataclass(frozen=True)
class EDMStochastic:
    """A named Heun setting with churn: ``steps`` grid points (2·steps − 1 network evaluations) and the churn
    parameters of :func:`heun`."""

    steps: int
    s_churn: float
    s_min: float
    s_max: float
    s_noise: float

    @property
    def nfe(self) -> int:
        return 2 * self.steps - 1


# EDM22's stochastic sampler (Algorithm 2 with churn) as published for its class-conditional ImageNet-64 model,
# the sampler of its FID 1.36 (EDM's ``generate.py --steps=256 --S_churn=40 --S_min=0.05 --S_max=50
# --S_noise=1.003``): N = 256 steps (511 evaluations) on the ρ = 7 grid.
EDM_STOCHASTIC = EDMStochastic(steps=256, s_churn=40.0, s_min=0.05, s_max=50.0, s_noise=1.003)


def sample_edm_stochastic(denoiser: Denoiser, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
                          generators: Generators = None, callback: Callback = None) -> Tensor:
    """:func:`sample_heun` with the churn of :data:`EDM_STOCHASTIC` (S_churn 40, S_min 0.05, S_max 50,
    S_noise 1.003). With EDM22's published numbers it is used on ``grid_edm(EDM_STOCHASTIC.steps)`` (256
    points, 511 evaluations); γ = min(S_churn/N, √2 − 1) takes N from the grid given."""
    e = EDM_STOCHASTIC
    return sample_heun(denoiser, noise, logsnrs, generators=generators, callback=callback,
                       s_churn=e.s_churn, s_min=e.s_min, s_max=e.s_max, s_noise=e.s_noise)


def _report(callback, index: int, total: int, logsnr: float, z: Tensor, x_hat: Tensor) -> None:
    if callback is not None:
        callback(Step(index=index, total=total, logsnr=logsnr, z=z, x_hat=x_hat))


# -- the samplers on (model, parameterization): build the Denoiser, run the core ----------------------------

def ancestral(model: Model, parameterization: Parameterization, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
              generators: Generators = None, labels: Tensor | None = None,
              guidance: float = 0.0, null_label: NullLabel = None, guide: Guide | None = None,
              guidance_interval: tuple[float, float] | None = None, callback: Callback = None) -> Tensor:
    """:func:`sample_ancestral` on ``Denoiser(model, parameterization, labels=..., guidance=..., ...)``."""
    denoiser = Denoiser(model, parameterization, labels=labels, guidance=guidance, null_label=null_label,
                        guide=guide, guidance_interval=guidance_interval)
    return sample_ancestral(denoiser, noise, logsnrs, generators=generators, callback=callback)


def ddim(model: Model, parameterization: Parameterization, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
         labels: Tensor | None = None, guidance: float = 0.0, null_label: NullLabel = None,
         guide: Guide | None = None, guidance_interval: tuple[float, float] | None = None,
         callback: Callback = None) -> Tensor:
    """:func:`sample_ddim` on ``Denoiser(model, parameterization, labels=..., guidance=..., ...)``."""
    denoiser = Denoiser(model, parameterization, labels=labels, guidance=guidance, null_label=null_label,
                        guide=guide, guidance_interval=guidance_interval)
    return sample_ddim(denoiser, noise, logsnrs, callback=callback)


def dpmpp_2m(model: Model, parameterization: Parameterization, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
             labels: Tensor | None = None, guidance: float = 0.0, null_label: NullLabel = None,
             guide: Guide | None = None, guidance_interval: tuple[float, float] | None = None,
             callback: Callback = None) -> Tensor:
    """:func:`sample_dpmpp_2m` on ``Denoiser(model, parameterization, labels=..., guidance=..., ...)``."""
    denoiser = Denoiser(model, parameterization, labels=labels, guidance=guidance, null_label=null_label,
                        guide=guide, guidance_interval=guidance_interval)
    return sample_dpmpp_2m(denoiser, noise, logsnrs, callback=callback)


def heun(model: Model, parameterization: Parameterization, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
         generators: Generators = None, labels: Tensor | None = None,
         guidance: float = 0.0, null_label: NullLabel = None, guide: Guide | None = None,
         guidance_interval: tuple[float, float] | None = None, callback: Callback = None,
         s_churn: float = 0.0, s_min: float = 0.0, s_max: float = math.inf, s_noise: float = 1.0) -> Tensor:
    """:func:`sample_heun` on ``Denoiser(model, parameterization, labels=..., guidance=..., ...)``."""
    denoiser = Denoiser(model, parameterization, labels=labels, guidance=guidance, null_label=null_label,
                        guide=guide, guidance_interval=guidance_interval)
    return sample_heun(denoiser, noise, logsnrs, generators=generators, callback=callback,
                       s_churn=s_churn, s_min=s_min, s_max=s_max, s_noise=s_noise)


def edm_stochastic(model: Model, parameterization: Parameterization, noise: Tensor,
                   logsnrs: Tensor | Sequence[float], *, generators: Generators = None,
                   labels: Tensor | None = None, guidance: float = 0.0, null_label: NullLabel = None,
                   guide: Guide | None = None, guidance_interval: tuple[float, float] | None = None,
                   callback: Callback = None) -> Tensor:
    """:func:`sample_edm_stochastic` on ``Denoiser(model, parameterization, labels=..., guidance=..., ...)``:
    Heun with EDM22's published ImageNet-64 churn (:data:`EDM_STOCHASTIC`)."""
    denoiser = Denoiser(model, parameterization, labels=labels, guidance=guidance, null_label=null_label,
                        guide=guide, guidance_interval=guidance_interval)
    return sample_edm_stochastic(denoiser, noise, logsnrs, generators=generators, callback=callback)


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: its ``core`` ``sample_*(denoiser, noise, logsnrs, *, generators, callback)``, the
    same on ``(model, parameterization, ...)`` (``function``, e.g. :func:`heun`), and whether it draws noise
    along the chain (``stochastic``: it needs one generator per sample for samples that do not depend on
    their batch)."""

    name: str
    core: Callable[..., Tensor]
    function: Callable[..., Tensor]
    stochastic: bool

    def __call__(self, denoiser: Denoiser, noise: Tensor, logsnrs: Tensor | Sequence[float], *,
                 generators: Generators = None, callback: Callback = None) -> Tensor:
        """``core(denoiser, noise, logsnrs)``; ``generators`` (one per sample) reach only a stochastic sampler."""
        return self.core(denoiser, noise, logsnrs, generators=generators if self.stochastic else None,
                         callback=callback)


REGISTRY: Registry[Sampler] = Registry("sampler")


def _add(name: str, core: Callable[..., Tensor], function: Callable[..., Tensor], stochastic: bool,
         summary: str) -> None:
    sampler = Sampler(name, core, function, stochastic)
    REGISTRY.add(name, lambda: sampler, summary, info=sampler)


_add("ancestral", sample_ancestral, ancestral, True, "ancestral / DDPM sampling in λ (stochastic)")
_add("ddim", sample_ddim, ddim, False, "DDIM, η = 0 (deterministic)")
_add("heun", sample_heun, heun, False, "EDM22 Algorithm 2: Heun's method with optional churn")
_add("dpmpp-2m", sample_dpmpp_2m, dpmpp_2m, False, "DPM-Solver++(2M), multistep second order (deterministic)")
_add("edm-stochastic", sample_edm_stochastic, edm_stochastic, True,
     "EDM22's ImageNet-64 stochastic sampler: Heun with S_churn 40, S_min 0.05, S_max 50, S_noise 1.003; "
     "use with 256 steps (511 NFE), the sampler of EDM's published FID 1.36")


def get(name: str) -> Callable[..., Tensor]:
    """A sampler function on ``(model, parameterization, noise, logsnrs, ...)`` by registry name (``ancestral``,
    ``ddim``, ``heun``, ``dpmpp-2m``, ``edm-stochastic``); ``REGISTRY.get(name)`` is the :class:`Sampler`."""
    return REGISTRY.get(name).function


def names() -> list[str]:
    return REGISTRY.names()


# -- named λ-grids -------------------------------------------------------------------------------------------

GRIDS: Registry[Callable[[int], Tensor]] = Registry("sampling grid")
GRIDS.add("edm", lambda: grid_edm, "EDM22's ρ = 7 grid, σ from 80 to 0.002")
GRIDS.add("cosine", lambda: (lambda steps: grid_uniform_t(_schedule("cosine", logsnr_min=-15,
                                                                          logsnr_max=15), steps)),
          "uniform in t of the cosine schedule on [−15, 15]")
GRIDS.add("uniform-logsnr", lambda: (lambda steps: grid_uniform_logsnr(steps, -15.0, 15.0)),
          "uniform in λ on [−15, 15]")


def grid(name: str, steps: int) -> Tensor:
    """The increasing λ-grid ``name`` (``edm``, ``cosine``, ``uniform-logsnr``) with ``steps`` points; unknown
    names and fewer than 2 points are :class:`~diffusion_objectives.errors.OptionError` naming ``steps``."""
    make = GRIDS.get(name)
    try:
        return make(steps)
    except ValueError as exc:  # fewer than 2 points
        raise OptionError(f"steps {steps}: {exc}") from None
