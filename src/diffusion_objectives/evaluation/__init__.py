"""Evaluating a trained model: the protocol (``protocol``: sampling settings, seeds, the ELBO summary, the
metrics run on samples) and the metrics themselves (``metrics``: Fréchet distance, KID, coverage, the toy
divergences, feature extractors)."""

from .._deprecation import forward

__getattr__ = forward(__name__, "protocol")  # ``diffusion_objectives.evaluation.X`` before it became a package
