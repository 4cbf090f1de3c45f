"""diffusion-objectives: diffusion training objectives as weighted ELBOs (Kingma & Gao, NeurIPS 2023).

An objective is a weighting w(λ) over log-SNR λ (what is optimised), a schedule p(λ) (how λ is
sampled: variance only) and a parameterization (what the network predicts). See docs/theory.md for
the mathematics and docs/api.md for this namespace, one example per name.
"""

import warnings

from . import (
    adapters,
    data,
    errors,
    metrics,
    networks,
    objectives,
    parameterizations,
    phema,
    process,
    samplers,
    schedules,
    shifts,
    theory,
    uncertainty,
    weightings,
)
from .adaptive import AdaptiveSchedule
from .elbo import ElboResult, elbo
from .likelihood import LikelihoodResult, likelihood
from .loss import LossOutput, WeightedLoss
from .objectives import Objective
from .parameterizations import Parameterization
from .schedules import Schedule
from .theory import AugmentationDensity, IntegrationByParts, augmentation_density, integration_by_parts
from .weightings import Weighting

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
    "data",
    "networks",
    "metrics",
    "uncertainty",
    "phema",
]

_MOVED = {"OptionError": errors}  # deprecated top-level name -> the module that holds it now


def __getattr__(name: str):
    """Deprecated top-level names stay importable, with a DeprecationWarning naming the new place."""
    if name in _MOVED:
        where = _MOVED[name].__name__
        warnings.warn(f"diffusion_objectives.{name} is deprecated; import it from {where}", DeprecationWarning,
                      stacklevel=2)
        return getattr(_MOVED[name], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
