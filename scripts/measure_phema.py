"""Measure the post-hoc EMA reconstruction errors reported in docs/ema.md and print them as a Markdown table.

    OMP_NUM_THREADS=1 python scripts/measure_phema.py          # a few seconds on one CPU core

Synthetic trajectories (a drifting random walk with per-step noise, 20 parameters, T = 2000 optimizer steps,
the setup of tests/training/test_phema.py): snapshots of σ_rel 0.05 and 0.10 every N steps; every other width is
tracked only as the oracle. Error = max over parameters of |reconstructed − oracle| / max |oracle − θ_T|;
"profile" is the relative L² residual of the fitted profile (phema.profile_error).
"""

from __future__ import annotations

import tempfile

import torch

from diffusion_objectives import phema

TRACKED = (0.05, 0.10)
TARGETS = (0.03, 0.06, 0.075, 0.09, 0.15, 0.20)


def trajectory(steps: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    walk = torch.randn(steps + 1, size, generator=g, dtype=torch.float64).cumsum(0) / 30
    return walk + 0.3 * torch.randn(steps + 1, size, generator=g, dtype=torch.float64)


def row(steps: int, every: int, seed: int = 4) -> str:
    theta = trajectory(steps, 20, seed)
    tracker = phema.PowerEMA({"w": theta[0]}, TRACKED + TARGETS)
    with tempfile.TemporaryDirectory() as directory:
        for t in range(1, steps + 1):
            tracker.update({"w": theta[t]}, t)
            if t % every == 0:
                phema.save_snapshots(tracker, directory)
        snaps = [s for s in phema.read_snapshots(directory) if s.sigma_rel in TRACKED]
        cells = []
        for sigma_rel in TARGETS + TRACKED:
            oracle = tracker.averages[tracker.sigma_rels.index(sigma_rel)]["w"]
            got = phema.reconstruct(snaps, sigma_rel)["w"]
            gamma = phema.sigma_rel_to_gamma(sigma_rel)
            steps_, gammas = [s.step for s in snaps], [s.gamma for s in snaps]
            profile = phema.profile_error(steps_, gammas, phema.solve_weights(steps_, gammas, steps, gamma), steps,
                                          gamma)
            error = float((got - oracle).abs().max() / (oracle - theta[-1]).abs().max())
            cells.append(f"{error:.1e} ({profile:.1e})")
    return f"| {every} steps ({len(snaps)} files) | " + " | ".join(cells) + " |"


def main() -> None:
    print("| snapshots every | " + " | ".join(f"σ_rel {s}" for s in TARGETS + TRACKED) + " |")
    print("|---" * (len(TARGETS) + len(TRACKED) + 1) + "|")
    for every in (200, 100, 50, 20):
        print(row(2000, every))
    print("\nerror (profile residual)")


if __name__ == "__main__":
    main()
