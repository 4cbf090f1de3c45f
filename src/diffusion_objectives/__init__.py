"""diffusion-objectives: diffusion training objectives as weighted ELBOs (Kingma & Gao, NeurIPS 2023).

An objective is a weighting w(λ) over log-SNR λ (what is optimised), a schedule p(λ) (how λ is
sampled: variance only) and a parameterization (what the network predicts). See docs/ and
FRAMEWORK.md for the mathematics.
"""

from . import adapters, objectives, parameterizations, process, samplers, schedules, shifts, weightings
from .adaptive import AdaptiveSchedule
from .elbo import ElboResult, elbo
from .errors import OptionError
from .likelihood import LikelihoodResult, likelihood
from .loss import LossOutput, WeightedLoss
from .objectives import Objective
from .theory import augmentation_density, integration_by_parts

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSchedule",
    "adapters",
    "ElboResult",
    "LikelihoodResult",
    "LossOutput",
    "Objective",
    "OptionError",
    "WeightedLoss",
    "augmentation_density",
    "elbo",
    "integration_by_parts",
    "likelihood",
    "objectives",
    "parameterizations",
    "process",
    "samplers",
    "schedules",
    "shifts",
    "weightings",
]
