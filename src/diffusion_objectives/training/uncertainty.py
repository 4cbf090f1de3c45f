r"""EDM2's learned uncertainty weighting, for any base objective (EDM2 §2, Config B, Eq. (2);
derivation in docs/objectives.md, "Learned uncertainty weighting").

EDM2 (Karras et al. 2024) learns a log-variance u(σ) jointly with the denoiser and minimises, per pixel,
λ(σ)/e^{u(σ)} (D − y)² + u(σ). Summed over the D dimensions of an example this is, in this library's terms
(ℓ_w = ½ (w(λ)/p(λ)) ‖ε̂ − ε‖², the per-example loss of :class:`~diffusion_objectives.core.loss.WeightedLoss`,
KG23 Eq. (7)):

    ℓ_u(x, λ) = ℓ_w(x, λ) / e^{u(λ)} + D · u(λ).

For fixed λ the expectation E[ℓ_w | λ] e^{−u} + D u is minimised at e^{u*(λ)} = E[ℓ_w | λ] / D, the
per-dimension expected weighted loss; the network then minimises the KG23 loss with the **effective
weighting** w_eff(λ) = w(λ) e^{−u(λ)} (the proposal p is unchanged). At u*, w_eff(λ) = 2 D p(λ) / E[‖ε̂ − ε‖² | λ]:
the base w cancels, and what is left is set by the proposal p and the model's ε-error curve.

:class:`LogVarianceHead` is EDM2's u: random Fourier features of the noise input c_noise = −λ/8
(= ¼ ln σ_VE, EDM2's input) followed by a linear layer, initialised to u ≡ 0 (so training starts from the
base objective). :class:`UncertaintyWeightedLoss` wraps any :class:`~diffusion_objectives.core.loss.WeightedLoss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.loss import LossOutput, WeightedLoss
from ..networks.embedding import noise_input

__all__ = ["LogVarianceHead", "UncertaintyLossOutput", "UncertaintyWeightedLoss", "uncertainty_loss"]


class LogVarianceHead(nn.Module):
    r"""u(λ) = b + Σ_i a_i √2 cos(f_i c_noise(λ) + φ_i), c_noise = −λ/8 (EDM2's MPFourier + linear).

    f_i = 2π · ``bandwidth`` · N(0, 1) and φ_i = 2π · U(0, 1) are fixed buffers drawn from ``generator`` (saved
    in the state dict); a, b start at zero, so u ≡ 0 at initialisation. ``forward(logsnr [B]) → u [B]``
    (float32, whatever the dtype of λ). EDM2's linear layer is weight-normalised without a bias and starts
    at a random unit-scale u; this head uses a plain zero-initialised linear layer with a bias.
    """

    def __init__(self, num_channels: int = 128, *, bandwidth: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        if int(num_channels) != num_channels or num_channels < 1:
            raise ValueError(f"num_channels must be a positive integer, got {num_channels}")
        if not (math.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"bandwidth must be finite and positive, got {bandwidth}")
        num_channels = int(num_channels)
        self.register_buffer("freqs", 2 * math.pi * bandwidth * torch.randn(num_channels, generator=generator))
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels, generator=generator))
        self.linear = nn.Linear(num_channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def features(self, logsnr: Tensor) -> Tensor:
        """√2 cos(f c_noise + φ), ``[B, num_channels]``: unit mean square over random phases."""
        c_noise = noise_input(logsnr.to(self.freqs.dtype))
        return math.sqrt(2) * torch.cos(c_noise[:, None] * self.freqs[None] + self.phases[None])

    def forward(self, logsnr: Tensor) -> Tensor:
        return self.linear(self.features(logsnr))[:, 0]


def uncertainty_loss(weighted: Tensor, u: Tensor, dim: int) -> Tensor:
    """ℓ_u = ℓ_w e^{−u} + D u (EDM2 Eq. (2) summed over the ``dim`` = D dimensions of an example); all ``[B]``."""
    return weighted * torch.exp(-u) + dim * u


@dataclass(frozen=True)
class UncertaintyLossOutput(LossOutput):
    """:class:`~diffusion_objectives.core.loss.LossOutput` whose ``loss`` is ℓ_u = ℓ_w e^{−u} + D u (graph through the
    network and the head), plus ``weighted`` = ℓ_w (the base loss, with graph) and ``u`` = u(λ), all ``[B]``.
    ``eps_mse`` and ``weighted_eps_mse`` are the base ones (w is the base weighting)."""

    weighted: Tensor
    u: Tensor


class UncertaintyWeightedLoss:
    """``loss_fn(model, x, generator, labels)`` → :class:`UncertaintyLossOutput`: the base loss of ``base``
    divided by e^{u(λ)} plus D·u(λ), u from ``head``. The head's parameters are trained with the network's."""

    def __init__(self, base: WeightedLoss, head: LogVarianceHead):
        self.base, self.head = base, head
        # the base objective's parts, so code written for a WeightedLoss reads them unchanged
        self.weighting, self.schedule, self.parameterization = base.weighting, base.schedule, base.parameterization

    def __call__(self, model: Callable[..., Tensor], x: Tensor, generator: torch.Generator | None = None,
                 labels: Tensor | None = None) -> UncertaintyLossOutput:
        return self.loss_fn(model, x, generator, labels)

    def loss_fn(self, model: Callable[..., Tensor], x: Tensor, generator: torch.Generator | None = None,
                labels: Tensor | None = None) -> UncertaintyLossOutput:
        """Draws exactly what ``base.loss_fn`` draws (same generator use), so ``+uncertainty`` runs see the
        same λ and ε as the base run."""
        return self._wrap(self.base.loss_fn(model, x, generator, labels), x)

    def loss_at(self, model: Callable[..., Tensor], x: Tensor, eps: Tensor, logsnr: Tensor,
                labels: Tensor | None = None) -> UncertaintyLossOutput:
        """The loss at given ``eps`` ``[B, ...]`` and λ ``[B]`` (deterministic)."""
        return self._wrap(self.base.loss_at(model, x, eps, logsnr, labels), x)

    def _wrap(self, out: LossOutput, x: Tensor) -> UncertaintyLossOutput:
        with torch.autocast(x.device.type, enabled=False):  # u in the head's precision, also under bf16 autocast
            u = self.head(out.logsnr.to(x.device)).to(out.loss.dtype)
        loss = uncertainty_loss(out.loss, u, x[0].numel())
        return UncertaintyLossOutput(loss=loss, logsnr=out.logsnr, eps_mse=out.eps_mse,
                                     weighted_eps_mse=out.weighted_eps_mse, weighted=out.loss, u=u)

    @torch.no_grad()
    def effective_weighting(self, logsnr_grid: Tensor) -> Tensor:
        r"""w_eff(λ) = w(λ) e^{−u(λ)} on an increasing grid ``[G]`` (G ≥ 2), normalised to unit trapezoid
        integral over the grid (float64 ``[G]``); compare with the base w normalised the same way."""
        lam = logsnr_grid.detach().to(torch.float64).cpu()
        if lam.ndim != 1 or lam.numel() < 2 or not bool((lam.diff() > 0).all()):
            raise ValueError("logsnr_grid must be a 1-D increasing grid of at least 2 values")
        device = next(self.head.parameters()).device
        u = self.head(lam.to(device)).to(torch.float64).cpu()
        w_eff = self.base.weighting(lam).to(torch.float64) * torch.exp(-u)
        return w_eff / torch.trapezoid(w_eff, lam)
