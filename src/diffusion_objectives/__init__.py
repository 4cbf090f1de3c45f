"""diffusion-objectives: diffusion training objectives as weighted ELBOs (Kingma & Gao, NeurIPS 2023).

An objective is a weighting w(λ) over log-SNR λ (what is optimised), a schedule p(λ) (how λ is
sampled: variance only) and a parameterization (what the network predicts). See docs/theory.md for
the mathematics and docs/api.md for this namespace, one example per name.
"""

import sys
import types
import warnings

from . import _deprecation, data, errors, networks
from .core import objectives, parameterizations, process, schedules, shifts, theory, weightings
from .core.adaptive import AdaptiveSchedule
from .core.loss import LossOutput, WeightedLoss
from .core.objectives import Objective
from .core.parameterizations import Parameterization
from .core.schedules import Schedule
from .core.theory import AugmentationDensity, IntegrationByParts, augmentation_density, integration_by_parts
from .core.weightings import Weighting
from .evaluation import metrics
from .interop import adapters, translate
from .likelihoods.ode import LikelihoodResult, likelihood
from .likelihoods.vlb import ElboResult, elbo
from .sampling import samplers
from .training import phema, uncertainty

__version__ = "0.1.0"

__all__ = [
    # the objective: w(λ), p(λ), the prediction target, and the loss they define (docs/theory.md)
    "Weighting",
    "Schedule",
    "Parameterization",
    "Objective",
    "WeightedLoss",
    "LossOutput",
    "AdaptiveSchedule",
    # likelihood: the ELBO and the exact log-likelihood
    "elbo",
    "ElboResult",
    "likelihood",
    "LikelihoodResult",
    # the theorem: monotone w ⇒ ELBO of noise-augmented data
    "augmentation_density",
    "AugmentationDensity",
    "integration_by_parts",
    "IntegrationByParts",
    # sub-namespaces
    "process",
    "schedules",
    "weightings",
    "parameterizations",
    "objectives",
    "shifts",
    "theory",
    "samplers",
    "adapters",
    "translate",
    "data",
    "networks",
    "metrics",
    "uncertainty",
    "phema",
]

_MOVED = {"OptionError": errors}  # deprecated top-level name -> the module that holds it now


class _Namespace(types.ModuleType):
    """The package's module type: ``elbo`` and ``likelihood`` stay the functions even when a deprecated
    ``import diffusion_objectives.elbo`` (now ``likelihoods.vlb``) binds the module to that name."""

    def __setattr__(self, name: str, value) -> None:
        if name in ("elbo", "likelihood") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Namespace
_deprecation.install()


def __getattr__(name: str):
    """Deprecated top-level names stay importable, with a DeprecationWarning naming the new place."""
    if name in _MOVED:
        where = _MOVED[name].__name__
        warnings.warn(f"diffusion_objectives.{name} is deprecated; import it from {where}", DeprecationWarning,
                      stacklevel=2)
        return getattr(_MOVED[name], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
