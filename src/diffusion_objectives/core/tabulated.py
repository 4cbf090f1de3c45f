r"""Discrete-time noise tables as a schedule: λ tabulated at integer timesteps τ = 0, …, T − 1.

Discrete-time models (DDPM and every diffusers scheduler built on ``alphas_cumprod`` ᾱ_τ) define noise levels
only at integer timesteps: λ_τ = log ᾱ_τ − log(1 − ᾱ_τ) (since α² = ᾱ and σ² = 1 − ᾱ on the VP process), a
decreasing table. :class:`Tabulated` extends it to a continuum by linear interpolation in λ between
neighbouring steps, so every λ in [λ_{T−1}, λ_0] has a *fractional* timestep

.. math::  \tau(\lambda) = i + \frac{\lambda_i - \lambda}{\lambda_i - \lambda_{i+1}}
           \quad\text{for}\quad \lambda_{i+1} \le \lambda \le \lambda_i ,

and outside the table the end segments are continued linearly. As a schedule, t = τ/(T − 1): uniform
fractional timesteps (the continuum of drawing τ uniformly from the integers, as the diffusers and DDPM
training scripts do), with the piecewise-constant density p(λ) = 1/((T − 1)(λ_i − λ_{i+1})) on each segment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = ["Tabulated", "logsnr_from_alphas_cumprod"]


def logsnr_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    r"""λ_τ = log ᾱ_τ − log(1 − ᾱ_τ) (float64 ``[T]``) from a table of ᾱ_τ (DDPM Eq. (4) notation)."""
    a = torch.as_tensor(alphas_cumprod).detach().to(torch.float64).cpu()
    return torch.log(a) - torch.log1p(-a)


class Tabulated(Schedule):
    """λ piecewise linear in the fractional timestep τ ∈ [0, T − 1] through ``logsnr_table`` ``[T]`` (strictly
    decreasing). Endpoints default to the table's ends λ_{T−1} and λ_0."""

    name = "tabulated"

    def __init__(self, logsnr_table: Tensor, logsnr_min: float | None = None, logsnr_max: float | None = None):
        table = torch.as_tensor(logsnr_table).detach().to(torch.float64).cpu()
        if table.ndim != 1 or table.numel() < 2 or not bool((table[1:] < table[:-1]).all()):
            raise ValueError("logsnr_table must be a strictly decreasing 1-D table of at least 2 values")
        if not bool(torch.isfinite(table).all()):
            raise ValueError("logsnr_table must be finite (an ᾱ of exactly 0 or 1 has no log-SNR)")
        self.table = table
        self._ascending = table.flip(0)  # for searchsorted
        lo = float(table[-1]) if logsnr_min is None else logsnr_min
        hi = float(table[0]) if logsnr_max is None else logsnr_max
        super().__init__(lo, hi, 0.0)

    @property
    def num_timesteps(self) -> int:
        return self.table.numel()

    def _segment(self, logsnr: Tensor) -> Tensor:
        """Index i of the segment [λ_{i+1}, λ_i] that holds (or, outside the table, continues to) λ."""
        n = self.num_timesteps
        j = torch.searchsorted(self._ascending.to(logsnr.device), logsnr.contiguous(), right=True)
        return (n - 1 - j).clamp(0, n - 2)

    def timestep(self, logsnr: Tensor) -> Tensor:
        """The fractional timestep τ(λ) (float64, same shape as ``logsnr``); τ(λ_i) = i exactly."""
        lam = logsnr.to(torch.float64)
        table = self.table.to(lam.device)
        i = self._segment(lam)
        hi, lo = table[i], table[i + 1]
        return i.to(torch.float64) + (hi - lam) / (hi - lo)

    def logsnr_at(self, timestep: Tensor) -> Tensor:
        """λ(τ) for fractional timesteps τ (float64), the inverse of :meth:`timestep`."""
        tau = timestep.to(torch.float64)
        table = self.table.to(tau.device)
        i = tau.floor().clamp(0, self.num_timesteps - 2).long()
        frac = tau - i.to(torch.float64)
        return table[i] + frac * (table[i + 1] - table[i])

    # the base map of Schedule: g = τ/(T − 1), decreasing in λ
    def _g(self, logsnr):
        return self.timestep(logsnr) / (self.num_timesteps - 1)

    def _dg(self, logsnr):
        table = self.table.to(logsnr.device)
        i = self._segment(logsnr)
        return -1.0 / ((self.num_timesteps - 1) * (table[i] - table[i + 1]))

    def _g_inv(self, g):
        return self.logsnr_at(g * (self.num_timesteps - 1))

    def base_params(self):
        return {"num_timesteps": self.num_timesteps}
