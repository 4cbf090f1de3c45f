r"""Resolution-dependent shifts as values of the library's ``shift`` (a translation of p(λ) and w(λ)).

Every schedule and weighting takes ``shift`` s and is translated by it: λ(t) → λ(t) + s, p_s(λ) = p(λ − s),
w_s(λ) = w(λ − s) (``schedules.py``, ``weightings.py``). A rectified-flow time shift
t' = αt / (1 + (α − 1)t) (SD3, Esser et al. 2024, §5.3.2; Flux) multiplies the noise-to-signal ratio
t/(1 − t) = e^{−λ/2} by α, i.e. **λ' = λ − 2 ln α**, the shift s = −2 ln α.
"""

from __future__ import annotations

import math

__all__ = ["sd3_shift", "flux_shift", "flux_mu"]


def sd3_shift(m: float, n: float) -> float:
    r"""SD3's resolution shift for a target resolution of ``m`` pixels (or latent tokens) trained from ``n``.

    SD3 (Esser et al. 2024, §5.3.2) maps t_n to t_m = α t_n / (1 + (α − 1) t_n) with α = √(m/n), so
    λ_m = λ_n − 2 ln α and the library's shift is s = −2 ln √(m/n) = ln(n/m) (negative: noisier for larger
    images, the same sign as ``shifted-cosine``'s 2 ln(reference/resolution)). SD3's ``shift=3.0`` is α = 3,
    s = −2 ln 3."""
    if not (m > 0 and n > 0):
        raise ValueError(f"m and n must be positive, got {m} and {n}")
    return math.log(n / m)


def flux_mu(tokens: float, base_tokens: float = 256, max_tokens: float = 4096, base_shift: float = 0.5,
            max_shift: float = 1.15) -> float:
    """Flux's μ (Black Forest Labs' reference sampler, ``get_lin_function``; diffusers ``calculate_shift``):
    linear in the image token count, base_shift at ``base_tokens`` and max_shift at
    ``max_tokens`` (extrapolated outside)."""
    if not max_tokens > base_tokens:
        raise ValueError(f"max_tokens must exceed base_tokens, got {max_tokens} and {base_tokens}")
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return base_shift + slope * (tokens - base_tokens)


def flux_shift(tokens: float, base_tokens: float = 256, max_tokens: float = 4096, base_shift: float = 0.5,
               max_shift: float = 1.15) -> float:
    r"""Flux's resolution shift as the library's ``shift``: s = −2μ with μ = :func:`flux_mu`.

    Flux shifts the rectified-flow time by t' = e^μ / (e^μ + (1/t − 1)) (exponential time shift with
    exponent 1), i.e. α = e^μ and λ' = λ − 2μ."""
    return -2.0 * flux_mu(tokens, base_tokens, max_tokens, base_shift, max_shift)
