r"""Output parameterizations: what the network predicts (docs/theory.md, "Parameterizations and k(λ)").

Each is affine in (z, ε̂) at fixed λ, so its squared error is k(λ)·‖ε̂ − ε‖² (VP, x̂ = (z − σ ε̂)/α).
A parameterization converts a network output to ε̂ and x̂, gives the training target, converts an ε̂
back to the output it corresponds to (for analytic oracles), and returns k(λ) = ``loss_factor``.

| name  | output                                   | k(λ)                      |
|-------|------------------------------------------|---------------------------|
| eps   | ε̂                                        | 1                         |
| x     | x̂                                        | e^{−λ}                    |
| v     | v = α ε − σ x                            | 1 + e^{−λ}                |
| flow  | u = ε − x  (z_RF = z/(α+σ))              | (1 + e^{−λ/2})²           |
| edm   | F with D = c_skip z/α + c_out F          | 1 + e^{−λ}/σ_d²           |
| score | s = −ε̂/σ                                 | 1 + e^{λ}                 |
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._deprecation import renamed
from ..registry import Registry
from .process import alpha_sigma, expand_like

__all__ = ["Parameterization", "Eps", "X", "V", "FlowVelocity", "EDMPrecond", "Score", "REGISTRY", "get", "names"]


class Parameterization:
    """Base class. ``out``, ``z``, ``x``, ``eps`` are ``[B, ...]``; ``logsnr`` is ``[B]``."""

    name = "parameterization"
    k_formula = ""  # k(λ) as text

    def eps_hat(self, out: Tensor, z: Tensor, logsnr: Tensor) -> Tensor:
        raise NotImplementedError

    def x_hat(self, out: Tensor, z: Tensor, logsnr: Tensor) -> Tensor:
        """x̂ = (z − σ ε̂)/α unless a subclass has a more direct form."""
        alpha, sigma = (expand_like(v, z) for v in alpha_sigma(logsnr))
        return (z - sigma * self.eps_hat(out, z, logsnr)) / alpha

    def target(self, x: Tensor, eps: Tensor, logsnr: Tensor) -> Tensor:
        raise NotImplementedError

    def output(self, eps_hat: Tensor, z: Tensor, logsnr: Tensor) -> Tensor:
        """The network output that corresponds to a given ε̂ (inverse of :meth:`eps_hat`)."""
        raise NotImplementedError

    def loss_factor(self, logsnr: Tensor) -> Tensor:
        """k(λ) with ‖out − target‖² = k(λ) ‖ε̂ − ε‖² (docs/theory.md, "Parameterizations and k(λ)")."""
        raise NotImplementedError

    def params(self) -> dict[str, float]:
        return {}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:g}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"


class Eps(Parameterization):
    name, k_formula = "eps", "1"

    def eps_hat(self, out, z, logsnr):
        return out

    def target(self, x, eps, logsnr):
        return eps

    def output(self, eps_hat, z, logsnr):
        return eps_hat

    def loss_factor(self, logsnr):
        return torch.ones_like(logsnr)


class X(Parameterization):
    name, k_formula = "x", "e^{−λ}"

    def eps_hat(self, out, z, logsnr):
        alpha, sigma = (expand_like(v, z) for v in alpha_sigma(logsnr))
        return (z - alpha * out) / sigma

    def x_hat(self, out, z, logsnr):
        return out

    def target(self, x, eps, logsnr):
        return x

    def output(self, eps_hat, z, logsnr):
        alpha, sigma = (expand_like(v, z) for v in alpha_sigma(logsnr))
        return (z - sigma * eps_hat) / alpha

    def loss_factor(self, logsnr):
        return torch.exp(-logsnr)


class V(Parameterization):
    """v = α ε − σ x (Salimans & Ho 2022); ε = σ z + α v, x = α z − σ v."""

    name, k_formula = "v", "1 + e^{−λ}"

    def eps_hat(self, out, z, logsnr):
        alpha, sigma = (expand_like(v, z) for v in alpha_sigma(logsnr))
        return sigma * z + alpha * out

    def x_hat(self, out, z, logsnr):
        alpha, sigma = (expand_like(v, z) for v in alpha_sigma(logsnr))
        return alpha * z - sigma * out

    def target(self, x, eps, logsnr):
        alpha, sigma = (expand_like(v, x) for v in alpha_sigma(logsnr))
        return alpha * eps - sigma * x

    def output(self, eps_hat, z, logsnr):
        alpha, sigma = (expand_like(v, z) for v in alpha_sigma(logsnr))
        return (eps_hat - sigma * z) / alpha

    def loss_factor(self, logsnr):
        return 1 + torch.exp(-logsnr)


class FlowVelocity(Parameterization):
    """Rectified-flow velocity u = ε − x; ε̂ = (z + α û)/(α + σ), x̂ = (z − σ û)/(α + σ)."""

    name, k_formula = "flow", "(1 + e^{−λ/2})²"

    def eps_hat(self, out, z, logsnr):
        alpha, sigma = (expand_like(v, z) for v in alpha_sigma(logsnr))
        return (z + alpha * out) / (alpha + sigma)

    def x_hat(self, out, z, logsnr):
        alpha, sigma = (expand_like(v, z) for v in alpha_sigma(logsnr))
        return (z - sigma * out) / (alpha + sigma)

    def target(self, x, eps, logsnr):
        return eps - x

    def output(self, eps_hat, z, logsnr):
        alpha, sigma = (expand_like(v, z) for v in alpha_sigma(logsnr))
        return ((alpha + sigma) * eps_hat - z) / alpha

    def loss_factor(self, logsnr):
        return (1 + torch.exp(-0.5 * logsnr)) ** 2


class EDMPrecond(Parameterization):
    r"""EDM22 preconditioning in VP coordinates: x̃ = z/α, σ = σ_VE = e^{−λ/2},
    c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/√(σ²+σ_d²), D = c_skip x̃ + c_out F (EDM22 Table 1).

    ε̂ = (z − α D)/σ_VP simplifies to σ x̃/(σ²+σ_d²) − σ_d F/√(σ²+σ_d²), finite at both ends."""

    name, k_formula = "edm", "1 + e^{−λ}/σ_d²"

    def __init__(self, sigma_data: float = 0.5):
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def _coefficients(self, z, logsnr):
        alpha, _ = alpha_sigma(logsnr)
        s = torch.exp(-0.5 * logsnr)
        sd = self.sigma_data
        norm = torch.sqrt(s * s + sd * sd)
        c_skip = sd * sd / (s * s + sd * sd)
        c_out = s * sd / norm
        return (expand_like(v, z) for v in (alpha, s, norm, c_skip, c_out))

    def eps_hat(self, out, z, logsnr):
        alpha, s, norm, _, _ = self._coefficients(z, logsnr)
        return s * (z / alpha) / (norm * norm) - self.sigma_data * out / norm

    def x_hat(self, out, z, logsnr):
        alpha, _, _, c_skip, c_out = self._coefficients(z, logsnr)
        return c_skip * z / alpha + c_out * out

    def target(self, x, eps, logsnr):
        alpha, sigma = alpha_sigma(logsnr)
        _, _, _, c_skip, c_out = self._coefficients(x, logsnr)
        x_tilde = x + expand_like(sigma / alpha, x) * eps
        return (x - c_skip * x_tilde) / c_out

    def output(self, eps_hat, z, logsnr):
        alpha, s, norm, _, _ = self._coefficients(z, logsnr)
        return (s * (z / alpha) / norm - norm * eps_hat) / self.sigma_data

    def loss_factor(self, logsnr):
        return 1 + torch.exp(-logsnr) / self.sigma_data**2

    def params(self):
        return {"sigma_data": self.sigma_data}


class Score(Parameterization):
    """The score of the noisy marginal, s = −ε̂/σ."""

    name, k_formula = "score", "1 + e^{λ}"

    def eps_hat(self, out, z, logsnr):
        _, sigma = alpha_sigma(logsnr)
        return -expand_like(sigma, z) * out

    def target(self, x, eps, logsnr):
        _, sigma = alpha_sigma(logsnr)
        return -eps / expand_like(sigma, eps)

    def output(self, eps_hat, z, logsnr):
        _, sigma = alpha_sigma(logsnr)
        return -eps_hat / expand_like(sigma, z)

    def loss_factor(self, logsnr):
        return 1 + torch.exp(logsnr)


REGISTRY: Registry[Parameterization] = Registry("parameterization")
REGISTRY.add("eps", Eps, "predict the noise ε")
REGISTRY.add("x", X, "predict the data x")
REGISTRY.add("v", V, "predict v = α ε − σ x")
REGISTRY.add("flow", FlowVelocity, "predict the rectified-flow velocity ε − x")
REGISTRY.add("edm", EDMPrecond, "predict EDM's F (preconditioned denoiser)")
REGISTRY.add("score", Score, "predict the score −ε/σ")


def get(name: str, **params) -> Parameterization:
    """A parameterization by registry name, e.g. ``get("edm", sigma_data=0.5)``."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    return REGISTRY.names()



# deprecated names (issue 11: names unique across modules); registry names are unchanged
__getattr__ = renamed(__name__, {"Flow": "FlowVelocity", "EDM": "EDMPrecond"}, globals())
