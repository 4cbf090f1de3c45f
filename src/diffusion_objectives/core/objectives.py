r"""Objectives = (weighting, schedule, parameterization), and the published objectives as presets.

The weighting says *what* is optimised, the schedule only how it is estimated (variance), the
parameterization what the network outputs (KG23 §2–3). Every published preset also carries its
*published form*, the (sampling density, per-sample loss weight, prediction target) triple of the
paper it comes from; its weighting is w = 2·p·c·k of that triple (docs/theory.md, "Converting a
published loss"), and the tests check that each preset's weighting equals that derivation with the same
constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .._deprecation import forward
from ..registry import Registry
from . import parameterizations, schedules, weightings
from .loss import WeightedLoss
from .parameterizations import Parameterization
from .schedules import Schedule, ScheduleLike
from .weightings import Weighting

__all__ = ["Objective", "PublishedForm", "from_published", "REGISTRY", "get", "names"]

_INF = math.inf


@dataclass(frozen=True)
class PublishedForm:
    """A loss as published: E_{t~π}[c · ‖ŷ − y‖²], with π given as a schedule's λ-density, c as a
    callable of λ (``None`` means c ≡ 1) and y as a parameterization."""

    density: Schedule
    loss_weight: Callable[[Tensor], Tensor] | None
    parameterization: Parameterization
    citation: str = ""

    def weighting(self) -> Weighting:
        """w(λ) = 2 p_π(λ) c(λ) k(λ) (docs/theory.md, "Converting a published loss")."""
        return weightings.published_weighting(self.density, self.loss_weight, self.parameterization)


@dataclass(frozen=True)
class Objective:
    """A diffusion training objective. ``published`` is set for presets converted from a paper."""

    weighting: Weighting
    schedule: ScheduleLike
    parameterization: Parameterization
    name: str = "custom"
    published: PublishedForm | None = None

    def is_monotonic(self) -> bool:
        """Whether w is non-increasing on the schedule's [λ_min, λ_max] (a likelihood objective, KG23 §4)."""
        return self.weighting.is_monotonic(self.schedule.logsnr_min, self.schedule.logsnr_max)

    def loss(self, *, stratified: bool = False) -> WeightedLoss:
        return WeightedLoss(self.weighting, self.schedule, self.parameterization, stratified=stratified)

    def with_schedule(self, schedule: ScheduleLike) -> Objective:
        """The same objective estimated with another sampling density (e.g. the adaptive schedule)."""
        return replace(self, schedule=schedule)


def from_published(density: Schedule, loss_weight: Callable[[Tensor], Tensor] | None,
                   parameterization: Parameterization, schedule: ScheduleLike | None = None,
                   name: str = "custom", citation: str = "") -> Objective:
    """Convert a published loss E_{t~π}[c ‖ŷ − y‖²] to an :class:`Objective` via w = 2·p_π·c·k.

    ``density`` is π as a schedule (endpoints may be infinite where π is normalisable), ``loss_weight``
    c(λ) (compose with ``density.t`` or :func:`~diffusion_objectives.core.process.sigma_ve` to write it in the
    paper's variable), ``parameterization`` the target y. ``schedule`` is the sampling density used for
    training (default: π itself truncated to ±15); ``citation`` names the source of the published form."""
    form = PublishedForm(density, loss_weight, parameterization, citation)
    if schedule is None:
        schedule = density.with_endpoints(max(density.logsnr_min, schedules.LOGSNR_MIN),
                                          min(density.logsnr_max, schedules.LOGSNR_MAX))
    return Objective(form.weighting(), schedule, parameterization, name=name, published=form)


# ---- presets ---------------------------------------------------------------------------------------

REGISTRY: Registry[Objective] = Registry("objective")


def _cosine_untruncated() -> Schedule:
    return schedules.Cosine(-_INF, _INF)


@REGISTRY.register("elbo", "ELBO (VDM21): w ≡ 1, ε-prediction, uniform λ")
def _elbo() -> Objective:
    density = schedules.LinearLogSNR()
    # VDM: ½ E_t[−λ'(t) ‖ε̂ − ε‖²], i.e. c = −½ dλ/dt = 1/(2 p(λ)).
    form = PublishedForm(density, lambda lam: 0.5 / density.density(lam), parameterizations.Eps(), "VDM21 Eq. 17")
    return Objective(weightings.Elbo(), density, parameterizations.Eps(), "elbo", form)


@REGISTRY.register("ddpm", "DDPM L_simple: ε-loss, linear β")
def _ddpm() -> Objective:
    form = PublishedForm(schedules.DDPMLinear(schedules.DDPMLinear.natural_logsnr_min(), _INF), None,
                         parameterizations.Eps(), "Ho et al. 2020, L_simple")
    return Objective(weightings.DDPM(), schedules.DDPMLinear(form.density.logsnr_min, schedules.LOGSNR_MAX),
                     parameterizations.Eps(), "ddpm", form)


@REGISTRY.register("iddpm", "IDDPM: ε-loss with the cosine schedule")
def _iddpm() -> Objective:
    form = PublishedForm(_cosine_untruncated(), None, parameterizations.Eps(), "Nichol & Dhariwal 2021")
    return Objective(weightings.EpsCosine(), schedules.Cosine(), parameterizations.Eps(), "iddpm", form)


@REGISTRY.register("v-cosine", "v-prediction with the cosine schedule")
def _v_cosine() -> Objective:
    form = PublishedForm(_cosine_untruncated(), None, parameterizations.V(), "Salimans & Ho 2022")
    return Objective(weightings.VCosine(), schedules.Cosine(), parameterizations.V(), "v-cosine", form)


@REGISTRY.register("edm", "EDM22: F-prediction, log-normal σ, λ(σ) weight")
def _edm() -> Objective:
    # EDM22 Eq. 8: E_σ[λ(σ) c_out² ‖F̂ − F‖²] with λ(σ) = 1/c_out²: c ≡ 1 on the F target.
    form = PublishedForm(schedules.NormalLogSNR(2.4, 2.4, -_INF, _INF), None, parameterizations.EDMPrecond(0.5),
                         "Karras et al. 2022, Eq. 8 and Table 1")
    return Objective(weightings.EDMWeighting(), schedules.get("edm"), parameterizations.EDMPrecond(0.5), "edm", form)


@REGISTRY.register("flow-matching", "flow matching / rectified flow: velocity target, uniform t")
def _flow_matching() -> Objective:
    form = PublishedForm(schedules.FlowUniformT(-_INF, _INF), None, parameterizations.FlowVelocity(),
                         "Lipman 2023; Liu 2023")
    return Objective(weightings.FlowWeighting(), schedules.FlowUniformT(), parameterizations.FlowVelocity(),
                     "flow-matching", form)


@REGISTRY.register("sd3", "SD3 rf/lognorm(0, 1): velocity target, logit-normal t")
def _sd3() -> Objective:
    form = PublishedForm(schedules.NormalLogSNR(0.0, 2.0, -_INF, _INF), None, parameterizations.FlowVelocity(),
                         "Esser et al. 2024")
    return Objective(weightings.SD3(), schedules.get("logit-normal"), parameterizations.FlowVelocity(), "sd3", form)


@REGISTRY.register("min-snr", "Min-SNR-5: ε-loss × min(SNR, 5)/SNR, cosine")
def _min_snr() -> Objective:
    gamma = 5.0
    form = PublishedForm(_cosine_untruncated(), lambda lam: torch.clamp(gamma * torch.exp(-lam), max=1.0),
                         parameterizations.Eps(), "Hang et al. 2023")
    return Objective(weightings.MinSNR(gamma), schedules.Cosine(), parameterizations.Eps(), "min-snr", form)


@REGISTRY.register("p2", "P2 (γ = 1, k = 1): ε-loss × (k + SNR)^−γ, cosine")
def _p2() -> Objective:
    gamma, k = 1.0, 1.0
    form = PublishedForm(_cosine_untruncated(), lambda lam: (k + torch.exp(lam)) ** -gamma,
                         parameterizations.Eps(), "Choi et al. 2022")
    return Objective(weightings.P2(gamma, k), schedules.Cosine(), parameterizations.Eps(), "p2", form)


@REGISTRY.register("indi", "InDI: x-prediction on the flow path, uniform t")
def _indi() -> Objective:
    form = PublishedForm(schedules.FlowUniformT(-_INF, _INF), None, parameterizations.X(), "Delbracio & Milanfar 2023")
    return Objective(weightings.InDI(), schedules.FlowUniformT(), parameterizations.X(), "indi", form)


@REGISTRY.register("edm2", "EDM2: F-prediction, ln σ ~ N(−0.4, 1), weight (σ² + σ_d²)/(σσ_d)² on ‖D − x‖²")
def _edm2() -> Objective:
    # Karras et al. 2024 (EDM2), the loss before its learned uncertainty u(σ): P_mean = −0.4,
    # P_std = 1.0, σ_data = 0.5, λ(σ) = (σ² + σ_d²)/(σσ_d)² on the denoiser loss ‖D − x‖² (x target).
    sd2 = 0.25
    form = PublishedForm(schedules.NormalLogSNR(0.8, 2.0, -_INF, _INF),
                         lambda lam: (torch.exp(-lam) + sd2) / (torch.exp(-lam) * sd2), parameterizations.X(),
                         "Karras et al. 2024 (EDM2): λ(σ) = 1/c_out², P_mean = −0.4, P_std = 1")
    return Objective(weightings.EDMWeighting(-0.4, 1.0, 0.5), schedules.get("edm", p_mean=-0.4, p_std=1.0),
                     parameterizations.EDMPrecond(0.5), "edm2", form)


def _unweighted_eps(name: str, density: Schedule, citation: str) -> Objective:
    """E_{λ~π}‖ε̂ − ε‖² with π = ``density`` (untruncated): w = 2π(λ); trained on π truncated to ±15."""
    form = PublishedForm(density, None, parameterizations.Eps(), citation)
    schedule = density.with_endpoints(schedules.LOGSNR_MIN, schedules.LOGSNR_MAX)
    return Objective(form.weighting(), schedule, parameterizations.Eps(), name, form)


@REGISTRY.register("laplace", "Hang et al. 2024: unweighted ε-loss, λ ~ Laplace(0, 0.5)")
def _laplace() -> Objective:
    return _unweighted_eps("laplace", schedules.Laplace(0.0, 0.5, -_INF, _INF),
                           "Hang et al. 2024, Improved Noise Schedule for Diffusion Training (Laplace μ = 0, b = 0.5)")


@REGISTRY.register("cauchy", "Hang et al. 2024: unweighted ε-loss, λ ~ Cauchy(0, 1)")
def _cauchy() -> Objective:
    return _unweighted_eps("cauchy", schedules.Cauchy(0.0, 1.0, -_INF, _INF),
                           "Hang et al. 2024, Improved Noise Schedule for Diffusion Training (Cauchy μ = 0, γ = 1)")


@REGISTRY.register("soft-min-snr", "k-diffusion soft-min-snr (σ_d = 0.5) on F, λ uniform on [−15, 15]: "
                   "(1/15) sigmoid(2 ln 2 − λ)")
def _soft_min_snr() -> Objective:
    # k-diffusion's Denoiser loss with loss_weighting "soft-min-snr": c = (σσ_d)²/(σ² + σ_d²)² on F, with its
    # log-uniform σ density on [e^{−7.5}, e^{7.5}] (λ uniform on [−15, 15]): w = 2·(1/30)·sigmoid(b − λ).
    sd2 = 0.25
    density = schedules.LinearLogSNR(schedules.LOGSNR_MIN, schedules.LOGSNR_MAX)
    form = PublishedForm(density, lambda lam: torch.exp(-lam) * sd2 / (torch.exp(-lam) + sd2) ** 2,
                         parameterizations.EDMPrecond(0.5), "Crowson et al. 2024 (HDiT); k-diffusion soft-min-snr")
    return Objective(form.weighting(), density, parameterizations.EDMPrecond(0.5), "soft-min-snr", form)


@REGISTRY.register("sigmoid", "KG23: sigmoid(2 − λ) weighting, ε-prediction, cosine schedule")
def _sigmoid() -> Objective:
    return Objective(weightings.Sigmoid(2.0), schedules.Cosine(), parameterizations.Eps(), "sigmoid")


@REGISTRY.register("edm-monotonic", "KG23: monotone envelope of the EDM weighting, EDM's F and schedule")
def _edm_monotonic() -> Objective:
    return Objective(weightings.get("edm-monotonic"), schedules.get("edm"), parameterizations.EDMPrecond(0.5),
                     "edm-monotonic")


def get(name: str) -> Objective:
    """A preset objective by name (see :func:`names`)."""
    return REGISTRY.get(name)


def names() -> list[str]:
    return REGISTRY.names()


# Translation of other libraries' settings lives in ``diffusion_objectives.interop.translate`` (core does not
# depend on interop); the names below were importable from here before.
__getattr__ = forward(__name__, "diffusion_objectives.interop.translate",
                      {"from_diffusers", "from_edm", "from_k_diffusion", "from_kohya"})
