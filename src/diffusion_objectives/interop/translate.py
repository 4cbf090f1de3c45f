r"""Objective translators: a peer's own training settings → the :class:`~diffusion_objectives.core.objectives.Objective`
they train (exposed as ``objectives.from_diffusers``, ``from_k_diffusion``, ``from_kohya``, ``from_edm``).

Every peer's loss is E_{λ~π}[c(λ) ‖ŷ − y‖²] for a sampling density π, a per-example weight c and a target y,
so its weighting is w = 2 p_π c k (KG23 Eq. (7) with k the target's loss factor;
:func:`~diffusion_objectives.core.objectives.from_published`). Each translator derives π as a λ-density, c as a
function of λ (:class:`LossWeight`, carrying the peer's formula) and y from the peer's vocabulary; the
derivations, and what each setting does not change, are in docs/adapters.md. Per-example, a peer's loss and
:class:`~diffusion_objectives.core.loss.WeightedLoss` of the translation differ by one constant: D (the peer
averages over the D dimensions, we sum) times the mass Z of π kept inside the schedule's λ range.

Discrete timesteps (diffusers' and kohya's DDPM tables, the flow-matching scheduler's 1000 σ's) are
translated as their continuum: λ linear between steps (:mod:`~diffusion_objectives.core.tabulated`), or the
closed-form density the table discretises.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core import objectives, parameterizations, schedules, shifts
from ..core.tabulated import Tabulated, logsnr_from_alphas_cumprod
from ..errors import OptionError
from ..registry import Registry
from . import adapters

__all__ = ["LossWeight", "from_diffusers", "from_k_diffusion", "from_kohya", "from_edm", "DIFFUSERS_SCHEDULERS",
           "KD_DENSITY_KEYS"]

_INF = math.inf


@dataclass(frozen=True)
class LossWeight:
    """A published per-example loss weight c(λ) (``fn`` of a λ tensor) and its ``formula`` in the peer's variables."""

    formula: str
    fn: Callable[[Tensor], Tensor]

    def __call__(self, logsnr: Tensor) -> Tensor:
        return self.fn(logsnr)


def _choice(value: Any, allowed: tuple, option: str) -> Any:
    if value not in allowed:
        raise OptionError(f"unknown {option} {value!r}; choose from: {', '.join(map(str, allowed))}")
    return value


def _product(*weights: LossWeight | None) -> LossWeight | None:
    """c = c₁ · c₂ · … (``None`` factors are 1)."""
    weights = tuple(w for w in weights if w is not None)
    if not weights:
        return None
    if len(weights) == 1:
        return weights[0]
    return LossWeight(" · ".join(f"({w.formula})" for w in weights),
                      lambda lam: math.prod((w(lam) for w in weights[1:]), start=weights[0](lam)))


def _rf_sigma(logsnr: Tensor) -> Tensor:
    """The rectified-flow noise fraction σ_RF = t_RF = sigmoid(−λ/2)."""
    return torch.sigmoid(-0.5 * logsnr)


SIGMA_SQRT = LossWeight("σ⁻² (σ = σ_RF)", lambda lam: _rf_sigma(lam) ** -2)
COSMAP = LossWeight("2/(π(1 − 2σ + 2σ²)) (σ = σ_RF)",
                    lambda lam: 2 / (math.pi * (1 - 2 * _rf_sigma(lam) + 2 * _rf_sigma(lam) ** 2)))


def min_snr(gamma: float, prediction_type: str) -> LossWeight:
    """Min-SNR-γ's c with SNR = e^λ: min(SNR, γ)/SNR on ε, min(SNR, γ)/(SNR + 1) on v, min(SNR, γ) on x
    (Hang et al. 2023, Eq. (11); diffusers' training scripts, kohya's ``apply_snr_weight``)."""
    if not gamma > 0:
        raise OptionError(f"snr gamma must be positive, got {gamma}")
    div = {"epsilon": lambda snr: snr, "v_prediction": lambda snr: snr + 1, "sample": lambda snr: 1.0}[prediction_type]
    name = {"epsilon": "/SNR", "v_prediction": "/(SNR + 1)", "sample": ""}[prediction_type]
    return LossWeight(f"min(SNR, {gamma:g}){name}",
                      lambda lam: torch.clamp(torch.exp(lam), max=gamma) / div(torch.exp(lam)))


# ---- diffusers ---------------------------------------------------------------------------------------------

FLOW_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")
DIFFUSERS_CITATION = "diffusers training_utils.compute_density_for_timestep_sampling / compute_loss_weighting_for_sd3"


def _flow_density(weighting_scheme: str, logit_mean: float, logit_std: float, mode_scale: float,
                  shift: float) -> schedules.Schedule:
    r"""π of the diffusers flow scripts: u from ``compute_density_for_timestep_sampling``, index ⌊uT⌋ into the
    scheduler's descending table σ_i = S(1 − i/T), S(s) = shift·s/(1 + (shift − 1)s); so in the continuum
    σ = S(1 − u) and λ = −2 logit σ = 2 logit u − 2 ln shift. logit_normal: λ ~ N(2 logit_mean − 2 ln shift,
    4 logit_std²) (note the sign: diffusers' positive ``logit_mean`` moves λ *up*, to less noise); uniform u:
    the flow schedule shifted by −2 ln shift."""
    lam_shift = -2.0 * math.log(shift)
    if weighting_scheme == "logit_normal":
        if not logit_std > 0:
            raise OptionError(f"logit_std must be positive, got {logit_std}")
        return schedules.get("logit-normal", m=-logit_mean, s=logit_std, logsnr_min=-_INF, logsnr_max=_INF,
                             shift=lam_shift)
    if weighting_scheme == "mode":
        return _mode_density(mode_scale, lam_shift)
    return schedules.get("flow", logsnr_min=-_INF, logsnr_max=_INF, shift=lam_shift)


def _mode_density(mode_scale: float, lam_shift: float) -> schedules.Schedule:
    """SD3's mode sampler (Esser et al. 2024, §3.1) as a λ-density: the ``sd3-mode`` schedule, whose density is
    derived there (f_mode has no closed-form inverse). diffusers takes σ = 1 − f_mode(u), which has the same law as
    f_mode(u) (f_mode(1 − u) = 1 − f_mode(u))."""
    return schedules.get("sd3-mode", scale=mode_scale, logsnr_min=-_INF, logsnr_max=_INF, shift=lam_shift)


def _flow_shift(scheduler) -> float:
    """The shift of the *training* table: ``shift``, or 1 with ``use_dynamic_shifting`` (the resolution-dependent
    shift is applied only by ``set_timesteps(mu=…)`` at inference; ``__init__`` leaves the table unshifted)."""
    config = scheduler.config
    return 1.0 if config.get("use_dynamic_shifting", False) else float(config.get("shift", 1.0))


def _scheduler_config(class_name: str) -> Callable[[], dict]:
    def config() -> dict:
        return {"_class_name": class_name}
    return config


DIFFUSERS_SCHEDULERS: Registry[dict] = Registry("diffusers scheduler")
for _name, _cls in (("ddpm", "DDPMScheduler"), ("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler"),
                    ("dpm-solver", "DPMSolverMultistepScheduler"), ("flow", "FlowMatchEulerDiscreteScheduler")):
    DIFFUSERS_SCHEDULERS.add(_name, _scheduler_config(_cls), f"the config dict of diffusers' {_cls}")


def from_diffusers(scheduler: Any = None, *, weighting_scheme: str = "none", logit_mean: float = 0.0,
                   logit_std: float = 1.0, mode_scale: float = 1.29, snr_gamma: float | None = None,
                   prediction_type: str | None = None, precondition_outputs: bool = False) -> objectives.Objective:
    r"""The objective of diffusers' training scripts for ``scheduler`` (a scheduler, its config dict with
    ``_class_name``, or ``None`` for ``DDPMScheduler()``) and the scripts' flags.

    *Flow-matching schedulers* (``FlowMatchEulerDiscreteScheduler``; train_dreambooth_sd3.py / _flux.py): π from
    ``weighting_scheme`` (logit_normal, mode; uniform for none, sigma_sqrt, cosmap) through the scheduler's
    shifted σ table (see :func:`_flow_density`), c from ``compute_loss_weighting_for_sd3`` (sigma_sqrt: σ⁻²,
    cosmap: 2/(π(1 − 2σ + 2σ²)), else 1), target ε − x, or x with ``precondition_outputs``. The ``mode``
    density has no closed form in diffusers; it is SD3's f_mode pushed forward, derived in the ``sd3-mode``
    schedule (its inverse CDF is f_mode, its density 1/f_mode'(f_mode⁻¹(·))).

    *DDPM-type schedulers* (``alphas_cumprod``; train_text_to_image.py and the LoRA/DreamBooth scripts):
    uniform integer timesteps (the continuum :class:`~diffusion_objectives.core.tabulated.Tabulated`), target by
    ``prediction_type`` (default: the scheduler's), c = Min-SNR-γ with ``snr_gamma`` (:func:`min_snr`)."""
    sched = adapters.diffusers_scheduler(scheduler)
    if not hasattr(sched, "alphas_cumprod"):
        if snr_gamma is not None or prediction_type not in (None, "flow_prediction"):
            raise OptionError("snr_gamma and prediction_type apply to DDPM-type schedulers (alphas_cumprod); a "
                              "flow-matching scheduler's loss is set by weighting_scheme")
        _choice(weighting_scheme, FLOW_SCHEMES, "weighting_scheme")
        density = _flow_density(weighting_scheme, logit_mean, logit_std, mode_scale, _flow_shift(sched))
        c = {"sigma_sqrt": SIGMA_SQRT, "cosmap": COSMAP}.get(weighting_scheme)
        param = parameterizations.X() if precondition_outputs else parameterizations.FlowVelocity()
        return objectives.from_published(density, c, param, name="diffusers", citation=DIFFUSERS_CITATION)
    if weighting_scheme != "none" or precondition_outputs:
        raise OptionError("weighting_scheme and precondition_outputs apply to flow-matching schedulers "
                          f"(FlowMatchEulerDiscreteScheduler), not {type(sched).__name__}")
    pred = prediction_type or sched.config.get("prediction_type", "epsilon")
    param = adapters.PREDICTION_TYPES.get(pred)
    table = Tabulated(logsnr_from_alphas_cumprod(sched.alphas_cumprod))
    c = None if snr_gamma is None else min_snr(float(snr_gamma), pred)
    return objectives.from_published(table, c, param, schedule=table, name="diffusers",
                                     citation="diffusers examples/text_to_image/train_text_to_image.py (compute_snr)")


# ---- k-diffusion -----------------------------------------------------------------------------------------------

def _sigma_range(params: dict, lo: float, hi: float) -> tuple[float, float]:
    """(λ_min, λ_max) = (−2 ln max_value, −2 ln min_value) of a truncated σ-density."""
    lo, hi = params.pop("min_value", lo), params.pop("max_value", hi)
    return (-2 * math.log(hi) if hi < _INF else -_INF), (-2 * math.log(lo) if lo > 0 else _INF)


def _kd_density(spec: dict, sigma_data: float, sigma_min: float, sigma_max: float) -> schedules.Schedule:
    """k-diffusion's ``config.make_sample_density`` as a λ-density (λ = −2 ln σ; utils.rand_* transcribed)."""
    spec = dict(spec)
    kind = _choice(spec.pop("type", None), tuple(_KD_DENSITIES), "sigma_sample_density type")
    allowed = _KD_DENSITIES[kind]
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise OptionError(f"unknown key(s) {', '.join(unknown)} for sigma_sample_density {kind!r}; "
                          f"allowed: {', '.join(allowed)}")
    for a, b in (("mean", "loc"), ("std", "scale"), ("std_1", "scale_1"), ("std_2", "scale_2")):
        if a in spec:
            spec[b] = spec.pop(a)
    if kind == "lognormal":  # ln σ ~ N(loc, scale²)
        return schedules.get("edm", p_mean=spec["loc"], p_std=spec["scale"], logsnr_min=-_INF, logsnr_max=_INF)
    if kind == "loguniform":  # ln σ uniform: λ uniform
        return schedules.get("log-uniform", sigma_min=spec.get("min_value", sigma_min),
                             sigma_max=spec.get("max_value", sigma_max))
    if kind in ("v-diffusion", "cosine"):  # σ = σ_d tan(θ), θ uniform: the cosine schedule shifted by −2 ln σ_d
        lo, hi = _sigma_range(spec, 1e-3, 1e3)
        return schedules.get("cosine", logsnr_min=lo, logsnr_max=hi, shift=-2 * math.log(sigma_data))
    return _kd_obj_density(kind, spec, sigma_data, sigma_min, sigma_max)


_KD_DENSITIES = {
    "lognormal": ("loc", "scale", "mean", "std"),
    "loglogistic": ("loc", "scale", "min_value", "max_value"),
    "loguniform": ("min_value", "max_value"),
    "v-diffusion": ("min_value", "max_value"),
    "cosine": ("min_value", "max_value"),
    "split-lognormal": ("loc", "scale_1", "scale_2", "mean", "std_1", "std_2"),
    "cosine-interpolated": ("image_d", "noise_d_low", "noise_d_high", "min_value", "max_value"),
}


def _kd_obj_density(kind: str, spec: dict, sigma_data: float, sigma_min: float, sigma_max: float
                    ) -> schedules.Schedule:
    """k-diffusion's log-logistic, split-log-normal and cosine-interpolated densities."""
    if kind == "loglogistic":  # ln σ = loc + scale·logit(u), truncated to [min_value, max_value]
        lo, hi = _sigma_range(spec, 0.0, _INF)
        return schedules.get("log-logistic", loc=spec.get("loc", math.log(sigma_data)), scale=spec.get("scale", 0.5),
                             logsnr_min=lo, logsnr_max=hi)
    if kind == "split-lognormal":
        return schedules.get("split-log-normal", loc=spec["loc"], scale_1=spec["scale_1"], scale_2=spec["scale_2"],
                             logsnr_min=-_INF, logsnr_max=_INF)
    # cosine-interpolated (utils.rand_cosine_interpolated): logsnr(u) = lerp(cos(u) + s_low, cos(u) + s_high, u) with
    # s = 2 ln(noise_d/image_d) and u = 0 at the noise end; σ = σ_d e^{−logsnr/2}, so λ = logsnr − 2 ln σ_d. That is
    # the interpolated cosine with shift_lo (noise end) = s_low, shift_hi (data end) = s_high; k-diffusion truncates
    # each shifted cosine to [λ_min, λ_max] before interpolating, a difference of order e^{−λ_max/2} in t.
    if "image_d" not in spec:
        raise OptionError("sigma_sample_density 'cosine-interpolated' needs image_d (max of the input size)")
    image_d = spec["image_d"]
    lo, hi = _sigma_range(spec, min(sigma_min, 1e-3), max(sigma_max, 1e3))
    return schedules.get("interpolated-cosine", shift_lo=2 * math.log(spec.get("noise_d_low", 32) / image_d),
                         shift_hi=2 * math.log(spec.get("noise_d_high", image_d) / image_d), logsnr_min=lo,
                         logsnr_max=hi, shift=-2 * math.log(sigma_data))


KD_DENSITY_KEYS = ("type",) + tuple(dict.fromkeys(k for keys in _KD_DENSITIES.values() for k in keys))
KD_WEIGHTINGS = ("karras", "snr", "soft-min-snr")


def from_k_diffusion(sigma_sample_density: dict, *, loss_weighting: str = "karras", sigma_data: float = 1.0,
                     loss_config: str = "karras", sigma_min: float = 1e-2, sigma_max: float = 80.0
                     ) -> objectives.Objective:
    r"""k-diffusion's objective from its model config: ``sigma_sample_density`` (``{"type": …, …}`` as
    ``config.make_sample_density`` reads it), ``loss_weighting`` and ``sigma_data`` (``layers.Denoiser``),
    ``loss_config`` (karras: ``Denoiser``, simple: ``SimpleLossDenoiser``), ``sigma_min``/``sigma_max`` (the
    loguniform defaults).

    ``Denoiser.loss`` is c(σ)·mean_d‖F − F_target‖² on EDM's F (EDM Table 1, parameterization ``edm(σ_d)``):
    karras c = 1, snr c = σ_d²/(σ² + σ_d²), soft-min-snr c = (σσ_d)²/(σ² + σ_d²)²; with k_F = (σ² + σ_d²)/σ_d²,
    c·k is (σ² + σ_d²)/σ_d², 1 and sigmoid(−2 ln σ_d − λ): ``snr`` is the ε-loss and ``soft-min-snr`` KG23's
    sigmoid weighting with bias −2 ln σ_d, times 2π. ``simple`` is the ε-loss (c = 1 on ε)."""
    if not sigma_data > 0:
        raise OptionError(f"sigma_data must be positive, got {sigma_data}")
    density = _kd_density(sigma_sample_density, sigma_data, sigma_min, sigma_max)
    cite = "k-diffusion k_diffusion/layers.py Denoiser.loss, config.py make_sample_density"
    if _choice(loss_config, ("karras", "simple"), "loss_config") == "simple":
        return objectives.from_published(density, None, parameterizations.Eps(), name="k-diffusion", citation=cite)
    sd2 = sigma_data**2
    c = {"karras": None,
         "snr": LossWeight(f"σ_d²/(σ² + σ_d²), σ_d = {sigma_data:g}", lambda lam: sd2 / (torch.exp(-lam) + sd2)),
         "soft-min-snr": LossWeight(f"(σ σ_d)²/(σ² + σ_d²)², σ_d = {sigma_data:g}",
                                    lambda lam: torch.exp(-lam) * sd2 / (torch.exp(-lam) + sd2) ** 2),
         }[_choice(loss_weighting, KD_WEIGHTINGS, "loss_weighting")]
    return objectives.from_published(density, c, parameterizations.EDMPrecond(sigma_data), name="k-diffusion",
                                     citation=cite)


# ---- kohya sd-scripts ---------------------------------------------------------------------------------------

KOHYA_SAMPLING = ("uniform", "sigmoid", "shift", "flux_shift", "sigma")
KOHYA_SCHEMES = ("uniform", "none", "logit_normal", "mode", "sigma_sqrt", "cosmap")
KOHYA_CITATION = "kohya-ss/sd-scripts library/flux_train_utils.py get_noisy_model_input_and_timesteps"


def kohya_sd_table(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tabulated:
    """kohya's SD noise table, ``DDPMScheduler(beta_schedule="scaled_linear", …)`` (train_util.py):
    β_τ = (linspace(√β_start, √β_end, T))², ᾱ_τ = Π(1 − β), in float32 as diffusers computes it (the table
    kohya trains with)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float32) ** 2
    return Tabulated(logsnr_from_alphas_cumprod(torch.cumprod(1.0 - betas, dim=0)))


def _kohya_flow_density(timestep_sampling, sigmoid_scale, discrete_flow_shift, image_seq_len, scheme_args):
    """π of kohya's flow trainers (flux_train_utils.get_noisy_model_input_and_timesteps): σ_RF = sigmoid(scale·n)
    (sigmoid), its shift S (shift; flux_shift with shift e^μ, μ = :func:`~diffusion_objectives.core.shifts.flux_mu` of
    L = ``image_seq_len``), U(0, 1) (uniform), or diffusers' scheme on the shifted table (sigma)."""
    if timestep_sampling == "uniform":
        return schedules.get("flow", logsnr_min=-_INF, logsnr_max=_INF)
    if timestep_sampling == "sigma":
        return _flow_density(*scheme_args, discrete_flow_shift)
    shift = 1.0
    if timestep_sampling == "shift":
        shift = discrete_flow_shift
    elif timestep_sampling == "flux_shift":
        if image_seq_len is None:
            raise OptionError("timestep_sampling 'flux_shift' needs image_seq_len ((h/2)·(w/2) of the latents)")
        shift = math.exp(shifts.flux_mu(image_seq_len))
    if not (sigmoid_scale > 0 and shift > 0):
        raise OptionError("sigmoid_scale and discrete_flow_shift must be positive")
    return schedules.get("logit-normal", m=0.0, s=sigmoid_scale, logsnr_min=-_INF, logsnr_max=_INF,
                         shift=-2 * math.log(shift))


def _kohya_sd_weight(v_parameterization: bool, min_snr_gamma, debiased_estimation_loss: bool) -> LossWeight | None:
    """c of kohya's SD trainers (custom_train_functions.py apply_snr_weight, apply_debiased_estimation)."""
    pred = "v_prediction" if v_parameterization else "epsilon"
    gamma = None if not min_snr_gamma else min_snr(float(min_snr_gamma), pred)
    debiased = None
    if debiased_estimation_loss:
        if v_parameterization:
            debiased = LossWeight("1/(min(SNR, 1000) + 1)", lambda lam: 1 / (torch.clamp(torch.exp(lam), max=1e3) + 1))
        else:
            debiased = LossWeight("1/√min(SNR, 1000)", lambda lam: torch.clamp(torch.exp(lam), max=1e3) ** -0.5)
    return _product(gamma, debiased)


def from_kohya(*, timestep_sampling: str | None = None, discrete_flow_shift: float = 3.0, sigmoid_scale: float = 1.0,
               weighting_scheme: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0,
               mode_scale: float = 1.29, image_seq_len: float | None = None, model_prediction_type: str = "raw",
               min_snr_gamma: float | None = None, debiased_estimation_loss: bool = False,
               v_parameterization: bool = False, min_timestep: int = 0, max_timestep: int = 1000
               ) -> objectives.Objective:
    r"""kohya sd-scripts' objective from its flags (transcribed: the package cannot be installed here).

    With ``timestep_sampling`` (uniform, sigmoid, shift, flux_shift, sigma): the FLUX.1/SD3 trainers, π by
    :func:`_kohya_flow_density`, target ε − x in every ``model_prediction_type``: raw (û = out) and additive
    (û = out + z) with c = 1; sigma_scaled (û = z − σ·out, compared with ε − x as well, so still a velocity loss,
    not the x-loss its name suggests) with c from ``compute_loss_weighting_for_sd3(weighting_scheme)`` (σ⁻² for
    sigma_sqrt, 2/(π(1 − 2σ + 2σ²)) for cosmap). Their ``post_process_loss`` returns the loss unchanged, so
    ``min_snr_gamma`` and ``debiased_estimation_loss`` have no effect there (a warning says so).

    Without it: the SD 1.x/2.x/XL trainers, uniform integer timesteps in [min_timestep, max_timestep) of
    :func:`kohya_sd_table`, target ε (v with ``v_parameterization``), c = Min-SNR-γ (``apply_snr_weight``) times
    the debiased weight 1/√min(SNR, 1000) (v: 1/(min(SNR, 1000) + 1); ``apply_debiased_estimation``)."""
    if timestep_sampling is None:
        table = kohya_sd_table()
        if not 0 <= min_timestep < max_timestep - 1 < table.num_timesteps:
            raise OptionError(f"need 0 <= min_timestep < max_timestep - 1 < 1000, got {min_timestep}, {max_timestep}")
        sched = table.with_endpoints(float(table.table[max_timestep - 1]), float(table.table[min_timestep]))
        param = parameterizations.V() if v_parameterization else parameterizations.Eps()
        c = _kohya_sd_weight(v_parameterization, min_snr_gamma, debiased_estimation_loss)
        return objectives.from_published(sched, c, param, schedule=sched, name="kohya",
                                         citation="kohya-ss/sd-scripts library/custom_train_functions.py")
    _choice(timestep_sampling, KOHYA_SAMPLING, "timestep_sampling")
    scheme = _choice(weighting_scheme, KOHYA_SCHEMES, "weighting_scheme")
    scaled = _choice(model_prediction_type, ("raw", "additive", "sigma_scaled"), "model_prediction_type")
    c = {"sigma_sqrt": SIGMA_SQRT, "cosmap": COSMAP}.get(scheme) if scaled == "sigma_scaled" else None
    if min_snr_gamma or debiased_estimation_loss:
        warnings.warn("kohya's FLUX.1/SD3 trainers ignore min_snr_gamma and debiased_estimation_loss "
                      "(flux_train_network.py post_process_loss returns the loss unchanged)", UserWarning, stacklevel=2)
    density = _kohya_flow_density(timestep_sampling, sigmoid_scale, discrete_flow_shift, image_seq_len,
                                  ("none" if scheme == "uniform" else scheme, logit_mean, logit_std, mode_scale))
    return objectives.from_published(density, c, parameterizations.FlowVelocity(), name="kohya",
                                     citation=KOHYA_CITATION)


# ---- EDM / EDM2 -------------------------------------------------------------------------------------------

EDM_KINDS = ("edm", "edm2", "vp", "ve")


def from_edm(kind: str = "edm", *, P_mean: float | None = None, P_std: float | None = None,  # noqa: N803
             sigma_data: float = 0.5, epsilon_t: float = 1e-5, sigma_min: float = 0.02, sigma_max: float = 100.0
             ) -> objectives.Objective:
    r"""EDM's (NVlabs/edm training/loss.py) and EDM2's (NVlabs/edm2 training/training_loop.py) losses.

    edm / edm2: ln σ ~ N(P_mean, P_std²) (defaults −1.2, 1.2 and −0.4, 1.0), weight (σ² + σ_d²)/(σσ_d)² on
    D = x̂, i.e. c = 1 on F (EDM Eq. (8) and Table 1): parameterization ``edm(σ_d)``. EDM2's learned
    uncertainty u(σ) multiplies w by e^{−u(σ)} (EDM2 Eq. (21)); that adaptive factor is not included (u ≡ 0).
    vp: t ~ U(ε_t, 1), σ(t) = √(e^{½β_d t² + β_min t} − 1) (β_d = 19.9, β_min = 0.1): the ``ddpm-linear`` schedule;
    ve: ln σ ~ U(ln σ_min, ln σ_max); both weight 1/σ² = e^{λ} on x̂, so w = 2 p_π (the ε-loss)."""
    cite = "NVlabs/edm training/loss.py" if kind != "edm2" else "NVlabs/edm2 training/training_loop.py EDM2Loss"
    if _choice(kind, EDM_KINDS, "EDM loss kind") in ("edm", "edm2"):
        default = (-1.2, 1.2) if kind == "edm" else (-0.4, 1.0)
        p_mean, p_std = default[0] if P_mean is None else P_mean, default[1] if P_std is None else P_std
        density = schedules.get("edm", p_mean=p_mean, p_std=p_std, logsnr_min=-_INF, logsnr_max=_INF)
        return objectives.from_published(density, None, parameterizations.EDMPrecond(sigma_data), name=kind,
                                         citation=cite)
    if P_mean is not None or P_std is not None:
        raise OptionError(f"P_mean and P_std apply to the edm and edm2 losses, not {kind!r}")
    inv_sigma2 = LossWeight("1/σ² (on D)", torch.exp)
    if kind == "vp":
        t = torch.tensor([1.0, epsilon_t], dtype=torch.float64)
        lam = -torch.log(torch.expm1(schedules.DDPMLinear.B0 * t + schedules.DDPMLinear.B1 * t * t))
        density = schedules.get("ddpm-linear", logsnr_min=float(lam[0]), logsnr_max=float(lam[1]))
    else:
        density = schedules.get("linear-logsnr", logsnr_min=-2 * math.log(sigma_max),
                                logsnr_max=-2 * math.log(sigma_min))
    return objectives.from_published(density, inv_sigma2, parameterizations.X(), schedule=density, name=kind,
                                     citation=cite + (" VPLoss" if kind == "vp" else " VELoss"))
