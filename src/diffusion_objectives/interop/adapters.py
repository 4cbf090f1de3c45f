r"""Model adapters: call a network written in another library's convention as ``model(z, logsnr[, labels])``.

Every convention fixes three things: the noise input the network is given (a timestep, σ, t, c_noise, …), the
scaling of its input (VP z, EDM's variance-exploding x̃ = z/α, the rectified-flow z/(α + σ), …) and what its
output is. :func:`wrap` returns an :class:`Adapter`, an ``nn.Module`` whose ``parameterization`` names the
library parameterization of its output, so that :class:`~diffusion_objectives.core.loss.WeightedLoss`,
:func:`~diffusion_objectives.likelihoods.vlb.elbo`, :func:`~diffusion_objectives.likelihoods.ode.likelihood` and every
sampler
use it unchanged. Formulas and derivations: docs/adapters.md.

| convention       | network called as                   | input          | output                 | parameterization |
|------------------|-------------------------------------|----------------|------------------------|------------------|
| `logsnr`         | net(z, λ)                           | z              | as given               | as given         |
| `diffusers`      | net(sample=z, timestep=τ(λ))        | z              | ε / v / x              | eps / v / x      |
| `diffusers-flow` | net(z_RF, timestep=T·t_RF)          | z/(α + σ)      | ε − x                  | flow             |
| `denoiser-sigma` | D(x̃, σ)                             | z/α            | x̂                      | x                |
| `edm-raw`        | F(c_in x̃, c_noise = ¼ ln σ)         | c_in z/α       | F                      | edm(σ_d)         |
| `flow-matching`  | v(x_t, t), t = 1 data               | z/(α + σ)      | x − ε (negated)        | flow             |

with σ = σ_VE = e^{−λ/2}, t_RF = sigmoid(−λ/2) and τ(λ) the scheduler's fractional timestep
(:mod:`~diffusion_objectives.core.tabulated`).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..core import parameterizations
from ..core.parameterizations import Parameterization
from ..core.process import alpha_sigma, expand_like, sigma_ve
from ..core.tabulated import Tabulated, logsnr_from_alphas_cumprod
from ..core.weightings import Weighting
from ..errors import OptionError
from ..registry import Registry

__all__ = ["Adapter", "LogSNR", "Diffusers", "DiffusersFlow", "DenoiserSigma", "EDMRaw", "FlowMatching",
           "PREDICTION_TYPES", "REGISTRY", "wrap", "names", "check_objective", "x_loss_ratio",
           "diffusers_scheduler", "scheduler_table"]

# diffusers' ``prediction_type`` vocabulary → library parameterization
PREDICTION_TYPES: Registry[Parameterization] = Registry("prediction_type")
PREDICTION_TYPES.add("epsilon", parameterizations.Eps, "the noise ε")
PREDICTION_TYPES.add("v_prediction", parameterizations.V, "v = α ε − σ x")
PREDICTION_TYPES.add("sample", parameterizations.X, "the data x")


class Adapter(nn.Module):
    """``forward(z, logsnr, labels=None)`` with ``z`` ``[B, ...]`` (VP) and ``logsnr`` ``[B]``; returns the
    wrapped network's output in ``parameterization``'s space, ``[B, ...]``.

    ``labels_as``: the keyword the wrapped network takes labels under (``None``: a third positional argument).
    ``skip_connection``: whether an x-predicting network has a skip connection (``None``: unknown); see
    :func:`check_objective`."""

    convention = "adapter"

    def __init__(self, module: nn.Module, parameterization: Parameterization, *, labels_as: str | None = None,
                 skip_connection: bool | None = None):
        super().__init__()
        self.module = module
        self.parameterization = parameterization
        self.labels_as = labels_as
        self.skip_connection = skip_connection

    def inputs(self, z: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
        """(network input, noise conditioning) of the convention."""
        raise NotImplementedError

    def output(self, out: Tensor, z: Tensor, logsnr: Tensor) -> Tensor:
        """The network's output converted to ``parameterization``'s space (identity unless overridden)."""
        return out

    def call(self, x: Tensor, noise: Tensor, labels: Tensor | None) -> Tensor:
        if labels is None:
            return self.module(x, noise)
        if self.labels_as is None:
            return self.module(x, noise, labels)
        return self.module(x, noise, **{self.labels_as: labels})

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        x, noise = self.inputs(z, logsnr)
        return self.output(self.call(x, noise, labels), z, logsnr)

    def extra_repr(self) -> str:
        return f"convention={self.convention!r}, parameterization={self.parameterization!r}"


class LogSNR(Adapter):
    """Identity: the network already is ``net(z, λ)``; its output is in ``parameterization``."""

    convention = "logsnr"

    def inputs(self, z, logsnr):
        return z, logsnr


def _ve_input(z: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """(x̃ = z/α, σ = e^{−λ/2}): EDM's variance-exploding input (EDM Eq. (2) with s(t) = 1; 1/α = √(1 + σ²))."""
    sigma = sigma_ve(logsnr)
    return z * expand_like(torch.sqrt(1 + sigma * sigma), z), sigma


def _flow_input(z: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """(z_RF = z/(α + σ), t_RF = σ/(α + σ) = sigmoid(−λ/2)): the rectified-flow path z_RF = (1 − t) x + t ε."""
    alpha, sigma = alpha_sigma(logsnr)
    return z / expand_like(alpha + sigma, z), torch.sigmoid(-0.5 * logsnr)


class DenoiserSigma(Adapter):
    """D(x̃, σ) → x̂ in EDM's VE space (k-diffusion's ``Denoiser``, EDM's ``*Precond``): x̃ = z/α, σ = e^{−λ/2}."""

    convention = "denoiser-sigma"

    def inputs(self, z, logsnr):
        return _ve_input(z, logsnr)


class EDMRaw(Adapter):
    """The raw network F inside EDM's preconditioning (EDM Table 1): F(c_in x̃, c_noise) with
    c_in = 1/√(σ² + σ_d²) and c_noise = ¼ ln σ; output F, i.e. parameterization ``edm(sigma_data)``."""

    convention = "edm-raw"

    def inputs(self, z, logsnr):
        x_tilde, sigma = _ve_input(z, logsnr)
        sd = self.parameterization.sigma_data
        c_in = 1 / torch.sqrt(sigma * sigma + sd * sd)
        return x_tilde * expand_like(c_in, z), 0.25 * torch.log(sigma)


class FlowMatching(Adapter):
    """facebookresearch/flow_matching: v(x_t, t) on x_t = t x + (1 − t) ε (t = 1 is data), velocity x − ε.
    Input z/(α + σ), t = α/(α + σ) = sigmoid(λ/2); the output is negated to the library's u = ε − x."""

    convention = "flow-matching"

    def inputs(self, z, logsnr):
        x_t, t_rf = _flow_input(z, logsnr)
        return x_t, 1 - t_rf

    def output(self, out, z, logsnr):
        return -out


class _DiffusersCall(Adapter):
    """Calls a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, ``DiTTransformer2DModel``,
    ``SD3Transformer2DModel``, …) by keyword: its first argument (``sample`` or ``hidden_states``), ``timestep``,
    labels under ``labels_as`` (default ``encoder_hidden_states`` where the model requires it, else
    ``class_labels``) and ``return_dict=False``. An output with twice the input's channels (a learned variance,
    as DiT's) is cut to its first half, as diffusers' DiT pipeline does."""

    def __init__(self, module, parameterization, *, labels_as=None, skip_connection=None):
        super().__init__(module, parameterization, labels_as=labels_as, skip_connection=skip_connection)
        signature = inspect.signature(module.forward).parameters
        self._input_name = next(iter(signature))
        if self.labels_as is None:
            ehs = signature.get("encoder_hidden_states")
            needs_ehs = ehs is not None and ehs.default is inspect.Parameter.empty
            self.labels_as = "encoder_hidden_states" if needs_ehs else "class_labels"

    def call(self, x, noise, labels):
        kwargs = {self._input_name: x, "timestep": noise.to(x.dtype), "return_dict": False}
        if labels is not None:
            kwargs[self.labels_as] = labels
        out = self.module(**kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        if out.ndim > 1 and x.ndim > 1 and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out


class Diffusers(_DiffusersCall):
    """A discrete-time diffusers model with a scheduler's ``alphas_cumprod`` ᾱ_τ: input z (VP, as
    ``scheduler.add_noise``), timestep τ(λ) fractional between steps (:class:`~diffusion_objectives.core.tabulated.
    Tabulated`), output by ``prediction_type`` (epsilon → eps, v_prediction → v, sample → x)."""

    convention = "diffusers"

    def __init__(self, module, parameterization, table: Tabulated, *, labels_as=None, skip_connection=None):
        super().__init__(module, parameterization, labels_as=labels_as, skip_connection=skip_connection)
        self.table = table

    def inputs(self, z, logsnr):
        return z, self.table.timestep(logsnr)


class DiffusersFlow(_DiffusersCall):
    """A diffusers flow-matching model (``SD3Transformer2DModel``, …; scheduler ``FlowMatchEulerDiscreteScheduler``):
    input z_RF = z/(α + σ), timestep = T·t_RF with t_RF = sigmoid(−λ/2), output the velocity ε − x."""

    convention = "diffusers-flow"

    def __init__(self, module, parameterization, num_train_timesteps: float = 1000.0, *, labels_as=None,
                 skip_connection=None):
        super().__init__(module, parameterization, labels_as=labels_as, skip_connection=skip_connection)
        self.num_train_timesteps = float(num_train_timesteps)

    def inputs(self, z, logsnr):
        z_rf, t_rf = _flow_input(z, logsnr)
        return z_rf, self.num_train_timesteps * t_rf


# ---- the conventions --------------------------------------------------------------------------------------

REGISTRY: Registry[Callable[[nn.Module], Adapter]] = Registry("convention")


@REGISTRY.register("logsnr", "identity: net(z, λ), output in the given parameterization")
def _logsnr(parameterization: str | Parameterization, labels_as: str | None = None):
    if isinstance(parameterization, str):
        parameterization = parameterizations.get(parameterization)
    return lambda module: LogSNR(module, parameterization, labels_as=labels_as)


def diffusers_scheduler(scheduler: Any = None):
    """A diffusers scheduler from itself, from its configuration dict (``_class_name`` picks the class, default
    ``DDPMScheduler``; unknown keys raise :class:`~diffusion_objectives.errors.OptionError` listing the class's
    own) or, for ``None``, ``DDPMScheduler()``. Imports diffusers (an optional dependency: the ``diffusers``
    extra)."""
    if scheduler is not None and not isinstance(scheduler, dict):
        return scheduler
    try:
        import diffusers
    except ImportError as exc:  # the optional dependency
        raise OptionError("diffusers schedulers need diffusers: pip install 'diffusion-objectives[diffusers]'") from exc
    config = dict(scheduler or {})
    class_name = config.pop("_class_name", "DDPMScheduler")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    cls = getattr(diffusers, str(class_name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise OptionError(f"unknown diffusers scheduler class {class_name!r}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise OptionError(f"unknown {class_name} option(s) {', '.join(unknown)}; allowed: {', '.join(accepted)}")
    try:
        return cls(**config)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise OptionError(f"{class_name}: {exc}") from None


def scheduler_table(scheduler: Any) -> Tabulated:
    """The :class:`Tabulated` λ table of a diffusers scheduler's ``alphas_cumprod`` (a scheduler, its
    configuration dict, see :func:`diffusers_scheduler`, or an ᾱ tensor)."""
    if isinstance(scheduler, dict):
        scheduler = diffusers_scheduler(scheduler)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", scheduler)
    if not isinstance(alphas_cumprod, Tensor):
        raise OptionError(f"{type(scheduler).__name__} has no alphas_cumprod: not a discrete-time VP scheduler")
    return Tabulated(logsnr_from_alphas_cumprod(alphas_cumprod))


@REGISTRY.register("diffusers", "diffusers UNet/DiT: VP input, scheduler timestep, prediction_type output")
def _diffusers(scheduler, prediction_type: str | None = None, labels_as: str | None = None,
               skip_connection: bool | None = None):
    scheduler = diffusers_scheduler(scheduler) if isinstance(scheduler, dict) else scheduler
    if prediction_type is None:
        prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", None) or "epsilon"
    param, table = PREDICTION_TYPES.get(prediction_type), scheduler_table(scheduler)
    return lambda module: Diffusers(module, param, table, labels_as=labels_as, skip_connection=skip_connection)


@REGISTRY.register("diffusers-flow", "diffusers flow models: input z/(α+σ), timestep T·t_RF, velocity ε − x")
def _diffusers_flow(num_train_timesteps: float = 1000.0, labels_as: str | None = None):
    if not num_train_timesteps > 0:
        raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
    return lambda module: DiffusersFlow(module, parameterizations.FlowVelocity(), num_train_timesteps,
                                        labels_as=labels_as)


@REGISTRY.register("denoiser-sigma", "D(x̃, σ) → x̂ in EDM's VE space (k-diffusion Denoiser, EDM Precond)")
def _denoiser_sigma(labels_as: str | None = None, skip_connection: bool | None = None):
    return lambda module: DenoiserSigma(module, parameterizations.X(), labels_as=labels_as,
                                        skip_connection=skip_connection)


@REGISTRY.register("edm-raw", "raw F inside EDM's preconditioning: F(c_in x̃, ¼ ln σ), with sigma_data")
def _edm_raw(sigma_data: float = 0.5, labels_as: str | None = None):
    return lambda module: EDMRaw(module, parameterizations.EDMPrecond(sigma_data), labels_as=labels_as,
                                 skip_connection=True)


@REGISTRY.register("flow-matching", "facebookresearch/flow_matching: v(x_t, t), t = 1 data, velocity x − ε")
def _flow_matching(labels_as: str | None = None):
    return lambda module: FlowMatching(module, parameterizations.FlowVelocity(), labels_as=labels_as)


def wrap(module: nn.Module, convention: str, *, objective=None, **params) -> Adapter:
    """``module`` in ``convention`` (see :data:`REGISTRY`) as ``model(z, logsnr[, labels])``.

    ``params`` are the convention's (e.g. ``scheduler=`` for ``diffusers``, ``sigma_data=`` for ``edm-raw``);
    unknown ones raise :class:`~diffusion_objectives.errors.OptionError`. With ``objective`` (an
    :class:`~diffusion_objectives.core.objectives.Objective`), :func:`check_objective` runs on the pair."""
    adapter = REGISTRY.get(convention, **params)(module)
    if objective is not None:
        check_objective(adapter, objective.weighting, objective.schedule.logsnr_max)
    return adapter


def names() -> list[str]:
    return REGISTRY.names()


# ---- x-prediction without a skip connection under the ELBO -----------------------------------------------

X_LOSS_RATIO_LIMIT = 1e3


def x_loss_ratio(weighting: Weighting, logsnr_max: float) -> float:
    r"""How much more an x-space error counts at λ_max than at λ = 0: w(λ_max) e^{λ_max} / w(0).

    On x the weighted loss is ½ w(λ) e^{λ} ‖x̂ − x‖² (KG23 Eq. (7) with k_x = e^{−λ}); for the ELBO (w ≡ 1) the
    factor e^{λ} reaches e^{15} ≈ 3·10⁶ at λ_max = 15."""
    lam = torch.tensor([logsnr_max, 0.0], dtype=torch.float64)
    w = weighting(lam)
    return float(w[0] / w[1]) * math.exp(logsnr_max)


def check_objective(model: nn.Module, weighting: Weighting, logsnr_max: float) -> bool:
    """Warn (``UserWarning``) when an x-predicting ``model`` without a known skip connection is trained with a
    weighting that puts e^{λ}-growing weight on x-errors at low noise (the ELBO: :func:`x_loss_ratio` above
    ``X_LOSS_RATIO_LIMIT``). Such a network must output x̂ → z/α exactly as σ → 0, which a network
    without a skip connection cannot do; its ELBO is dominated by the low-noise end. Returns whether it warned.

    The check uses only ``model.parameterization`` and ``model.skip_connection`` (set by :func:`wrap`), so the
    loss needs no knowledge of the architecture."""
    param = getattr(model, "parameterization", None)
    if not isinstance(param, parameterizations.X) or getattr(model, "skip_connection", None) is True:
        return False
    ratio = x_loss_ratio(weighting, logsnr_max)
    if ratio <= X_LOSS_RATIO_LIMIT:
        return False
    warnings.warn(
        f"an x-predicting model without a (declared) skip connection is paired with {weighting!r}, which weighs "
        f"x-errors at λ_max = {logsnr_max:g} {ratio:.3g}× more than at λ = 0 (w e^λ; the ELBO's is e^λ_max): "
        "the network must return x̂ = z/α exactly at low noise, and its ELBO will be dominated by that end. Use an "
        "ε-, v- or EDM-preconditioned output (D = c_skip x̃ + c_out F), or declare skip_connection=True if the "
        "network has one", UserWarning, stacklevel=2)
    return True
