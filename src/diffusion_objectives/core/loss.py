r"""The weighted diffusion loss (KG23 Eq. 7–8; docs/theory.md, "The weighted loss").

    L_w(x) = ½ E_{λ~p, ε~N(0,I)} [ (w(λ)/p(λ)) · k(λ)⁻¹ · ‖out − target‖² ]
           = ½ E_{λ~p, ε} [ (w(λ)/p(λ)) · ‖ε̂ − ε‖² ]

The sampling density p is the schedule (any :class:`~diffusion_objectives.core.schedules.ScheduleLike`: a
:class:`~diffusion_objectives.core.schedules.Schedule` or an
:class:`~diffusion_objectives.core.adaptive.AdaptiveSchedule`);
it changes the variance only. ``k`` is the parameterization's loss factor, so the value is the same whatever the network
predicts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .parameterizations import Parameterization
from .process import add_noise
from .schedules import ScheduleLike
from .weightings import Weighting

__all__ = ["LossOutput", "WeightedLoss"]


@dataclass(frozen=True)
class LossOutput:
    """Per-example values, all ``[B]``: ``loss`` (with graph), the ``logsnr`` drawn, and the detached
    ``eps_mse`` = ‖ε̂ − ε‖² and ``weighted_eps_mse`` = w(λ)‖ε̂ − ε‖² (what the adaptive schedule learns)."""

    loss: Tensor
    logsnr: Tensor
    eps_mse: Tensor
    weighted_eps_mse: Tensor


class WeightedLoss:
    """``loss_fn(model, x)`` draws λ ~ p, noises ``x``, calls ``model(z, logsnr)`` and returns a
    :class:`LossOutput`. ``stratified`` draws the batch's λ on VDM21's antithetic grid."""

    def __init__(self, weighting: Weighting, schedule: ScheduleLike, parameterization: Parameterization,
                 *, stratified: bool = False):
        if not (math.isfinite(schedule.logsnr_min) and math.isfinite(schedule.logsnr_max)):
            raise ValueError("WeightedLoss needs a schedule with finite endpoints")
        self.weighting, self.schedule, self.parameterization = weighting, schedule, parameterization
        self.stratified = stratified

    def __call__(self, model: Callable[..., Tensor], x: Tensor, generator: torch.Generator | None = None,
                 labels: Tensor | None = None) -> LossOutput:
        return self.loss_fn(model, x, generator, labels)

    def loss_fn(self, model: Callable[..., Tensor], x: Tensor, generator: torch.Generator | None = None,
                labels: Tensor | None = None) -> LossOutput:
        """Monte-Carlo loss for a batch ``x`` ``[B, ...]``; ``labels`` ``[B]`` are passed to a conditional
        model as ``model(z, logsnr, labels)``. Randomness comes only from ``generator``."""
        logsnr = self.schedule.sample(x.shape[0], generator, stratified=self.stratified,
                                      device=x.device, dtype=x.dtype)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.loss_at(model, x, eps, logsnr, labels)

    def loss_at(self, model: Callable[..., Tensor], x: Tensor, eps: Tensor, logsnr: Tensor,
                labels: Tensor | None = None) -> LossOutput:
        """The loss at given noise ``eps`` ``[B, ...]`` and λ ``[B]`` (deterministic)."""
        z = add_noise(x, eps, logsnr)
        out = model(z, logsnr) if labels is None else model(z, logsnr, labels)
        target = self.parameterization.target(x, eps, logsnr)
        dtype = torch.promote_types(x.dtype, torch.float32)  # reduce bf16 outputs in float32
        sq = (out.to(dtype) - target.to(dtype)).square().reshape(x.shape[0], -1).sum(1)
        lam = logsnr.to(dtype)
        eps_mse = sq / self.parameterization.loss_factor(lam)
        w = self.weighting(lam)
        loss = 0.5 * w / self.schedule.density(lam) * eps_mse
        return LossOutput(loss=loss, logsnr=logsnr, eps_mse=eps_mse.detach(),
                          weighted_eps_mse=(w * eps_mse).detach())
