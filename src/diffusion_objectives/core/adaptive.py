r"""KG23's adaptive noise schedule (KG23 §5 and Appendix; docs/theory.md, "The adaptive schedule").

The variance of ½ (w/p) ‖ε̂ − ε‖² is smallest when p(λ) ∝ E_{x,ε}[w(λ) ‖ε̂ − ε‖²]. This schedule keeps,
for ``bins`` equal-width bins of [λ_min, λ_max], a bias-corrected exponential moving average of the
observed ``w(λ)·‖ε̂ − ε‖²``, and samples λ from the piecewise-constant density

    q_i = (1 − floor) · a_i / Σ_j a_j + floor / bins,        p(λ) = q_i / Δ   for λ in bin i,

with Δ the bin width. The loss divides by the p(λ) that was used to draw λ, so the estimator stays
unbiased whatever the state; :meth:`update` is called *after* the loss, once per step. In distributed
training the per-bin sums and counts from :meth:`statistics` are all-reduced before
:meth:`update_from_statistics`, so every rank holds the same state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .schedules import LOGSNR_MAX, LOGSNR_MIN, stratified_uniform

__all__ = ["AdaptiveSchedule"]


class AdaptiveSchedule:
    """A learned histogram density p(λ) (module docstring). Not a truncated base map, so not a
    :class:`~diffusion_objectives.core.schedules.Schedule` and without ``with_endpoints``; it satisfies
    :class:`~diffusion_objectives.core.schedules.ScheduleLike`, the protocol the loss, the ELBO and the samplers use."""

    name = "adaptive"

    def __init__(self, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX, bins: int = 100,
                 decay: float = 0.99, floor: float = 0.05):
        if not (math.isfinite(logsnr_min) and math.isfinite(logsnr_max) and logsnr_min < logsnr_max):
            raise ValueError(f"need finite logsnr_min < logsnr_max, got {logsnr_min}, {logsnr_max}")
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if not 0.0 < floor <= 1.0:
            raise ValueError(f"floor must be in (0, 1], got {floor}")
        self.logsnr_min, self.logsnr_max, self.shift = float(logsnr_min), float(logsnr_max), 0.0
        self.bins, self.decay, self.floor = int(bins), float(decay), float(floor)
        self.width = (self.logsnr_max - self.logsnr_min) / self.bins
        self.ema = torch.zeros(self.bins, dtype=torch.float64)  # Σ decay^k (1 − decay) m_k
        self.ema_weight = torch.zeros(self.bins, dtype=torch.float64)  # Σ decay^k (1 − decay): bias correction
        self._q: Tensor | None = None  # bin probabilities, cached until the state changes

    # -- the density --------------------------------------------------------------------------------
    def bin_probabilities(self) -> Tensor:
        """q_i, the probability of each bin (float64, sums to 1)."""
        if self._q is None:
            self._q = self._bin_probabilities()
        return self._q

    def _bin_probabilities(self) -> Tensor:
        seen = self.ema_weight > 0
        if not bool(seen.any()):
            return torch.full((self.bins,), 1.0 / self.bins, dtype=torch.float64)
        est = torch.where(seen, self.ema / self.ema_weight.clamp_min(1e-300), torch.zeros_like(self.ema))
        est = torch.where(seen, est, est[seen].mean()).clamp_min(0.0)  # unseen bins: the mean of seen ones
        total = est.sum()
        if not (torch.isfinite(total) and total > 0):
            return torch.full((self.bins,), 1.0 / self.bins, dtype=torch.float64)
        return (1.0 - self.floor) * est / total + self.floor / self.bins

    def _bin_index(self, lam: Tensor) -> Tensor:
        return ((lam - self.logsnr_min) / self.width).floor().long().clamp(0, self.bins - 1)

    def density(self, logsnr: Tensor) -> Tensor:
        lam = logsnr.to(torch.float64)
        q = self.bin_probabilities().to(lam.device)
        p = q[self._bin_index(lam.detach())] / self.width
        inside = (lam >= self.logsnr_min) & (lam <= self.logsnr_max)
        return torch.where(inside, p, torch.zeros_like(p)).to(logsnr.dtype)

    def _cdf_from_min(self, lam: Tensor) -> Tensor:
        q = self.bin_probabilities().to(lam.device)
        cum = torch.cat([q.new_zeros(1), q.cumsum(0)])
        i = self._bin_index(lam)
        frac = ((lam - self.logsnr_min) / self.width - i).clamp(0.0, 1.0)
        return (cum[i] + frac * q[i]).clamp(0.0, 1.0)

    def t(self, logsnr: Tensor) -> Tensor:
        return (1.0 - self._cdf_from_min(logsnr.to(torch.float64))).to(logsnr.dtype)

    def logsnr(self, t: Tensor) -> Tensor:
        u = (1.0 - t.to(torch.float64)).clamp(0.0, 1.0)  # CDF measured from the noise end
        q = self.bin_probabilities().to(u.device)
        cum = q.cumsum(0)
        i = torch.searchsorted(cum, u.contiguous(), right=True).clamp(max=self.bins - 1)
        start = torch.where(i > 0, cum[(i - 1).clamp_min(0)], torch.zeros_like(u))
        frac = ((u - start) / q[i]).clamp(0.0, 1.0)
        lam = self.logsnr_min + (i.to(torch.float64) + frac) * self.width
        return lam.clamp(self.logsnr_min, self.logsnr_max).to(t.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, *, stratified: bool = False,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.logsnr(stratified_uniform(n, generator, stratified=stratified, device=device)).to(dtype)

    # -- learning the density -------------------------------------------------------------------------
    def statistics(self, logsnr: Tensor, weighted_loss: Tensor) -> tuple[Tensor, Tensor]:
        """Per-bin sums and counts of ``weighted_loss`` = w(λ)·‖ε̂ − ε‖² (float64 ``[bins]`` each)."""
        idx = self._bin_index(logsnr.detach().to(torch.float64)).cpu()
        values = weighted_loss.detach().to(torch.float64).cpu()
        sums = torch.zeros(self.bins, dtype=torch.float64).index_add_(0, idx, values)
        counts = torch.zeros(self.bins, dtype=torch.float64).index_add_(0, idx, torch.ones_like(values))
        return sums, counts

    def update_from_statistics(self, sums: Tensor, counts: Tensor) -> None:
        """One EMA step in the bins that were observed (others keep their value)."""
        sums, counts = sums.to(torch.float64).cpu(), counts.to(torch.float64).cpu()
        seen = counts > 0
        mean = torch.where(seen, sums / counts.clamp_min(1), torch.zeros_like(sums))
        if not bool(torch.isfinite(mean).all()):
            raise ValueError("adaptive schedule update received a non-finite loss")
        d = self.decay
        self.ema = torch.where(seen, d * self.ema + (1 - d) * mean, self.ema)
        self.ema_weight = torch.where(seen, d * self.ema_weight + (1 - d), self.ema_weight)
        self._q = None

    def update(self, logsnr: Tensor, weighted_loss: Tensor) -> None:
        """Record one step's per-example λ ``[B]`` and w(λ)·‖ε̂ − ε‖² ``[B]``."""
        self.update_from_statistics(*self.statistics(logsnr, weighted_loss))

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {"ema": self.ema.clone(), "ema_weight": self.ema_weight.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for key in ("ema", "ema_weight"):
            if key not in state:
                raise KeyError(f"adaptive schedule state is missing {key!r}")
            if tuple(state[key].shape) != (self.bins,):
                raise ValueError(f"adaptive schedule state {key!r} has shape {tuple(state[key].shape)}, "
                                 f"expected ({self.bins},)")
        self.ema = state["ema"].to(torch.float64).clone()
        self.ema_weight = state["ema_weight"].to(torch.float64).clone()
        self._q = None

    def params(self) -> dict[str, float]:
        return {"logsnr_min": self.logsnr_min, "logsnr_max": self.logsnr_max, "bins": self.bins,
                "decay": self.decay, "floor": self.floor}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"
