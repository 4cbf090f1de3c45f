r"""EDM2's post-hoc EMA (Karras et al. 2024, §3 and Appendix C; the derivation is in docs/ema.md).

A **power-function EMA** at training time t averages the parameters θ(τ), 0 < τ ≤ t, with the profile

    p_{t,γ}(τ) = (γ + 1) τ^γ / t^{γ+1}                                  (EDM2 Eq. (121))

whose relative standard deviation is σ_rel = √((γ+1) / ((γ+2)² (γ+3))) (EDM2 Eq. (123)). It is tracked by
θ̂_t = β_t θ̂_{t−1} + (1 − β_t) θ_t with β_t = (1 − 1/t)^{γ+1} (EDM2 Eq. (127)), t the optimizer step.
Snapshots of two such EMAs, saved every N steps, span a space of profiles in which any other σ_rel is
reconstructed after training by least squares on the closed-form profile inner products (EDM2 Eq. (151),
Algorithm 3).

Snapshot files (``phema-<step>-<sigma_rel>.safetensors``) hold one EMA's tensors with, in the safetensors
metadata, the ``format``, ``step``, ``sigma_rel``, ``gamma``, the model ``signature`` (a hash of the tensor
names, shapes and dtypes), a ``run`` id and a JSON ``extra`` mapping given by the caller.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import Tensor

__all__ = ["SIGMA_REL_MAX", "SnapshotError", "gamma_to_sigma_rel", "sigma_rel_to_gamma", "profile_inner",
           "solve_weights", "profile_error", "PowerEMA", "model_signature", "Snapshot", "save_snapshots",
           "read_snapshots", "reconstruct"]

SNAPSHOT_FORMAT = "diffobj-phema/1"
GAMMA_PEAK = (math.sqrt(5.0) - 3.0) / 2.0  # σ_rel(γ) rises on (−1, GAMMA_PEAK] and falls after it


class SnapshotError(ValueError):
    """Snapshot files that are missing, unreadable or do not belong together; the message names the path."""


def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = √((γ+1) / ((γ+2)²(γ+3))), the std of p_{t,γ} over t (EDM2 Eq. (123)); γ > −1."""
    gamma = float(gamma)
    if not gamma > -1.0:
        raise ValueError(f"gamma must be > -1, got {gamma}")
    return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


SIGMA_REL_MAX = gamma_to_sigma_rel(GAMMA_PEAK)  # ≈ 0.3003, the widest power-function profile


def check_sigma_rel(sigma_rel: float) -> float:
    """``sigma_rel`` as a float if 0 < σ_rel < SIGMA_REL_MAX, else ValueError naming the range."""
    value = float(sigma_rel)
    if not (math.isfinite(value) and 0.0 < value < SIGMA_REL_MAX):
        raise ValueError(f"sigma_rel must be finite and in (0, {SIGMA_REL_MAX:.6f}), got {sigma_rel}")
    return value


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    r"""The γ > (√5 − 3)/2 with σ_rel(γ) = ``sigma_rel`` (EDM2 Eq. (126), Algorithm 2).

    Squaring Eq. (123) with s = σ_rel⁻²: (γ+2)²(γ+3) = s(γ+1), i.e. γ³ + 7γ² + (16 − s)γ + (12 − s) = 0; the
    wanted γ is its largest real root (σ_rel falls monotonically beyond the peak, where the cubic is < 0)."""
    s = check_sigma_rel(sigma_rel) ** -2
    # the largest real part: near σ_rel,max the two largest roots nearly coincide and may come back as a
    # complex pair whose real part is still the root; Newton steps on the cubic then polish it
    gamma = float(np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]).real.max())
    for _ in range(8):
        f = ((gamma + 7.0) * gamma + 16.0 - s) * gamma + 12.0 - s
        slope = (3.0 * gamma + 14.0) * gamma + 16.0 - s
        if slope <= 0 or f == 0:
            break
        gamma = max(gamma - f / slope, GAMMA_PEAK)
    return gamma


def profile_inner(step_a: Tensor | float, gamma_a: Tensor | float, step_b: Tensor | float,
                  gamma_b: Tensor | float) -> Tensor:
    r"""⟨p_{a}, p_{b}⟩ = ∫₀^∞ p_{t_a,γ_a}(τ) p_{t_b,γ_b}(τ) dτ (EDM2 Eq. (151)), broadcast, float64.

    For t_a ≤ t_b the product lives on [0, t_a] and integrates to
    (γ_a+1)(γ_b+1) / ((γ_a+γ_b+1) t_b) · (t_a/t_b)^{γ_b}; the other case swaps a and b."""
    t_a, g_a, t_b, g_b = (torch.as_tensor(v, dtype=torch.float64) for v in (step_a, gamma_a, step_b, gamma_b))
    a_first = t_a <= t_b
    t_lo, t_hi = torch.where(a_first, t_a, t_b), torch.where(a_first, t_b, t_a)
    g_hi = torch.where(a_first, g_b, g_a)
    return (g_a + 1) * (g_b + 1) / ((g_a + g_b + 1) * t_hi) * (t_lo / t_hi) ** g_hi


def solve_weights(steps: Sequence[float], gammas: Sequence[float], step: float, gamma: float) -> Tensor:
    r"""Weights x ``[N]`` (float64) with Σ_i x_i p_{t_i,γ_i} ≈ p_{t,γ}: the least-squares solution of the
    normal equations A x = b, A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p_{t,γ}⟩ (EDM2 Algorithm 3), rescaled to
    Σ x_i = 1 as in EDM2 so that parameters that never moved are reproduced exactly."""
    t = torch.as_tensor(steps, dtype=torch.float64)
    g = torch.as_tensor(gammas, dtype=torch.float64)
    if t.ndim != 1 or t.shape != g.shape or t.numel() == 0:
        raise ValueError("steps and gammas must be non-empty 1-D sequences of the same length")
    A = profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])
    b = profile_inner(t, g, torch.tensor(float(step)), torch.tensor(float(gamma)))
    x = torch.linalg.lstsq(A, b[:, None], driver="gelsd").solution[:, 0]
    return x / x.sum()


def profile_error(steps: Sequence[float], gammas: Sequence[float], weights: Tensor, step: float,
                  gamma: float) -> float:
    """‖Σ_i x_i p_i − p_{t,γ}‖ / ‖p_{t,γ}‖ in L²(0, ∞), from the closed-form inner products."""
    t = torch.as_tensor(steps, dtype=torch.float64)
    g = torch.as_tensor(gammas, dtype=torch.float64)
    x = weights.to(torch.float64)
    A = profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])
    tt, gg = torch.tensor(float(step)), torch.tensor(float(gamma))
    b = profile_inner(t, g, tt, gg)
    c = profile_inner(tt, gg, tt, gg)
    return math.sqrt(max(float(x @ A @ x - 2 * x @ b + c), 0.0) / float(c))


class PowerEMA:
    """Power-function EMAs of a state dict at several ``sigma_rels`` (EDM2 §3, Eq. (127)).

    ``update(state, step)`` after optimizer step ``step`` (1, 2, …): each average moves by
    β = (t_prev/t)^{γ+1}, which is (1 − 1/t)^{γ+1} for consecutive steps and, across a gap, treats the
    parameters as constant since t_prev. Floating-point tensors are averaged in their own dtype; other
    tensors (counters) are copied. ``averages[i]`` is the EMA at ``sigma_rels[i]``."""

    def __init__(self, state: Mapping[str, Tensor], sigma_rels: Sequence[float]):
        self.sigma_rels = tuple(check_sigma_rel(s) for s in sigma_rels)
        if not self.sigma_rels or len(set(self.sigma_rels)) != len(self.sigma_rels):
            raise ValueError(f"sigma_rels must be non-empty and distinct, got {list(sigma_rels)}")
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.averages = [{k: v.detach().clone() for k, v in state.items()} for _ in self.sigma_rels]
        self.step = 0

    @torch.no_grad()
    def update(self, state: Mapping[str, Tensor], step: int) -> None:
        step = int(step)
        if step <= self.step:
            raise ValueError(f"step must increase: got {step} after {self.step}")
        for gamma, average in zip(self.gammas, self.averages, strict=True):
            beta = (self.step / step) ** (gamma + 1.0)
            for name, avg in average.items():
                src = state[name].detach()
                if avg.is_floating_point():
                    avg.lerp_(src.to(avg.dtype), 1.0 - beta)
                else:
                    avg.copy_(src)
        self.step = step

    def state_dict(self) -> dict[str, Tensor]:
        state = {"step": torch.tensor(self.step, dtype=torch.int64),
                 "sigma_rel": torch.tensor(self.sigma_rels, dtype=torch.float64)}
        for i, average in enumerate(self.averages):
            state.update({f"average.{i}.{k}": v.clone() for k, v in average.items()})
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        sigma_rels = tuple(float(s) for s in state["sigma_rel"].tolist())
        if sigma_rels != self.sigma_rels:
            raise ValueError(f"PowerEMA state has sigma_rels {list(sigma_rels)}, expected {list(self.sigma_rels)}")
        for i, average in enumerate(self.averages):
            keys = {k.split(".", 2)[2] for k in state if k.startswith(f"average.{i}.")}
            if keys != set(average):
                missing, extra = sorted(set(average) - keys)[:3], sorted(keys - set(average))[:3]
                raise ValueError(f"PowerEMA state for sigma_rel {self.sigma_rels[i]} has other tensors than the "
                                 f"model (missing {missing}, extra {extra})")
            for k, avg in average.items():
                avg.copy_(state[f"average.{i}.{k}"])
        self.step = int(state["step"])


def model_signature(state: Mapping[str, Tensor]) -> str:
    """sha256 of the sorted tensor names, shapes and dtypes: equal for snapshots of the same architecture."""
    text = "\n".join(f"{k}|{tuple(v.shape)}|{v.dtype}" for k, v in sorted(state.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file: the EMA at ``sigma_rel`` (exponent ``gamma``) after optimizer step ``step``."""

    path: Path
    step: int
    sigma_rel: float
    gamma: float
    signature: str
    run: str
    extra: dict = field(default_factory=dict)

    def load(self) -> dict[str, Tensor]:
        return load_file(self.path)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_snapshots(tracker: PowerEMA, directory: str | Path, *, run: str = "",
                   extra: Mapping[str, object] | None = None) -> list[Path]:
    """Write the tracker's EMAs at its current step, one file per σ_rel, into ``directory`` (atomically).
    ``run`` identifies the training run; ``extra`` (JSON-serialisable, e.g. the resolved config) is kept in
    every file's metadata and passed through by reconstruction."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for sigma_rel, gamma, average in zip(tracker.sigma_rels, tracker.gammas, tracker.averages, strict=True):
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in average.items()}
        meta = {"format": SNAPSHOT_FORMAT, "step": str(tracker.step), "sigma_rel": repr(sigma_rel),
                "gamma": repr(gamma), "signature": model_signature(tensors), "run": run,
                "extra": json.dumps(dict(extra or {}), sort_keys=True, allow_nan=False)}
        path = directory / f"phema-{tracker.step:010d}-{sigma_rel:.6g}.safetensors"
        _write_atomic(path, save(tensors, metadata=meta))
        paths.append(path)
    return paths


def _read_header(path: Path) -> Snapshot:
    """The snapshot's metadata, read from the safetensors header without loading the tensors."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")  # safetensors: u64 header length, then JSON
            if not 0 < size <= path.stat().st_size - 8:
                raise ValueError("not a safetensors file (bad header length)")
            meta = json.loads(f.read(size)).get("__metadata__") or {}
        if meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a post-hoc EMA snapshot (format {meta.get('format')!r})")
        return Snapshot(path, int(meta["step"]), float(meta["sigma_rel"]), float(meta["gamma"]),
                        meta["signature"], meta.get("run", ""), json.loads(meta.get("extra", "{}")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(f"cannot read snapshot {str(path)!r}: {exc}") from None


def check_same_model(snapshots: Sequence[Snapshot]) -> None:
    """SnapshotError unless all ``snapshots`` have one model signature and one run id."""
    for attr, what in (("signature", "models"), ("run", "training runs")):
        values = {getattr(s, attr) for s in snapshots}
        if len(values) > 1:
            first = snapshots[0]
            other = next(s for s in snapshots if getattr(s, attr) != getattr(first, attr))
            raise SnapshotError(f"snapshots of different {what}: {str(first.path)!r} and {str(other.path)!r}")


def read_snapshots(directory: str | Path) -> list[Snapshot]:
    """The snapshots in ``directory`` sorted by (step, σ_rel); SnapshotError if the directory is missing,
    holds none, holds an unreadable one, or holds snapshots of different models or runs."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SnapshotError(f"snapshot directory {str(directory)!r} does not exist or is not a directory")
    snapshots = sorted((_read_header(p) for p in directory.glob("phema-*.safetensors")),
                       key=lambda s: (s.step, s.sigma_rel))
    if not snapshots:
        raise SnapshotError(f"no post-hoc EMA snapshots (phema-*.safetensors) in {str(directory)!r}")
    check_same_model(snapshots)
    return snapshots


def reconstruct(snapshots: Sequence[Snapshot], sigma_rel: float, step: int | None = None) -> dict[str, Tensor]:
    """The EMA at ``sigma_rel`` after ``step`` (default: the last snapshot's; at most that) as Σ_i x_i θ̂_i over
    the snapshots taken at or before ``step``, x from :func:`solve_weights`. Accumulated in float64, returned in
    each tensor's dtype; non-floating tensors come from the latest snapshot used."""
    gamma = sigma_rel_to_gamma(sigma_rel)
    if not snapshots:
        raise SnapshotError("no snapshots to reconstruct from")
    check_same_model(snapshots)
    last = max(s.step for s in snapshots)
    step = last if step is None else int(step)
    used = [s for s in snapshots if s.step <= step]
    if not used or step > last:
        raise SnapshotError(f"step {step} is outside the snapshots' steps {used[0].step if used else snapshots[0].step}"
                            f"…{last}: the weights after the last snapshot are unknown")
    x = solve_weights([s.step for s in used], [s.gamma for s in used], step, gamma)
    total: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for xi, snap in sorted(zip(x.tolist(), used, strict=True), key=lambda pair: pair[1].step):
        for name, value in snap.load().items():
            dtypes[name] = value.dtype
            if value.is_floating_point():
                total[name] = total.get(name, 0.0) + xi * value.to(torch.float64)
            else:
                total[name] = value
    return {name: value.to(dtypes[name]) for name, value in total.items()}
