"""``diffobj ema``: EDM2's post-hoc EMA — reconstruct the power-function EMA of any width after training.

Reads the snapshot files (``phema-*.safetensors``) written during training by
:func:`diffusion_objectives.training.phema.save_snapshots` and, for each relative width σ_rel in --sigma-rel, writes
``ema-<sigma_rel>.safetensors`` into --out: the weighted sum of the snapshots whose power-function profiles best
match, in least squares, the profile of σ_rel at step --step (default: the last snapshot's step) (EDM2 §3,
Algorithm 3; docs/ema.md). Its metadata holds ``sigma_rel``, ``gamma``, ``step``, the number of snapshots
used, the relative L² ``profile_error`` of the fit, and the snapshots' ``run``, ``signature`` and ``extra``.

SNAPSHOT_DIR may also be a training RUN directory trained with ``ema.posthoc_sigma_rels`` (its ``phema/``
snapshots): then, for each σ_rel, --out gets ``ema-<sigma_rel>/``, a run-like directory holding one training
checkpoint (``checkpoints/step-NNNNNNNN/``, the format training writes) whose EMA weights are the reconstruction
and whose config is the run's, so that ``diffobj sample``/``elbo``/``evaluate`` accept it. Its raw weights and
adaptive-schedule state come from the run's checkpoint at the same step if there is one (else the raw weights
are the reconstruction too).

σ_rel must be finite and in (0, 0.3003): the widest power-function profile has σ_rel ≈ 0.3003.
A missing or empty snapshot directory, unreadable snapshots, snapshots of different models or runs, and a
--step outside the snapshots' steps exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from safetensors.torch import save

from ..errors import OptionError
from ..training import phema, posthoc
from ._common import add_command, check_output_dir, staged_dir, write_atomic

EXAMPLES = """examples:
  diffobj ema runs/toy/phema --sigma-rel 0.05,0.10,0.15 --out runs/toy/ema
  diffobj ema runs/toy/phema --sigma-rel 0.08 --step 20000 --out runs/toy/ema-20k
  diffobj ema runs/toy --sigma-rel 0.05,0.10,0.15 --out runs/toy/ema    then: diffobj sample runs/toy/ema/ema-0.1
"""

RECONSTRUCTION_FORMAT = "diffobj-phema-reconstruction/1"


def parse_sigma_rels(text: str) -> list[float]:
    """``"0.05,0.10"`` → ``[0.05, 0.1]``; OptionError naming --sigma-rel for anything outside (0, σ_rel max)."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise OptionError(f"--sigma-rel: expected comma-separated numbers, got {item.strip()!r}") from None
        if not (math.isfinite(value) and 0.0 < value < phema.SIGMA_REL_MAX):
            raise OptionError(f"--sigma-rel: {item.strip()!r} is not a relative width; each must be finite and in "
                              f"(0, {phema.SIGMA_REL_MAX:.4f})")
        values.append(value)
    if len(set(values)) != len(values):
        raise OptionError(f"--sigma-rel: repeated value in {text!r}")
    return values


def reconstruction_bytes(snapshots: list[phema.Snapshot], sigma_rel: float, step: int) -> tuple[bytes, float, int]:
    """The safetensors file of one reconstructed width, its profile error and the number of snapshots used."""
    gamma = phema.sigma_rel_to_gamma(sigma_rel)
    rec = posthoc.reconstruct(snapshots, sigma_rel, step)
    state, error, used = rec.state, rec.profile_error, [s for s in snapshots if s.step <= step]
    first = used[0]
    meta = {"format": RECONSTRUCTION_FORMAT, "kind": "ema", "sigma_rel": repr(sigma_rel), "gamma": repr(gamma),
            "step": str(step), "snapshots": str(len(used)), "profile_error": repr(error), "run": first.run,
            "signature": first.signature, "extra": json.dumps(first.extra, sort_keys=True)}
    return save({k: v.contiguous() for k, v in state.items()}, metadata=meta), error, len(used)


def write_checkpoints(run_dir: Path, snapshots: list[phema.Snapshot], sigma_rels: list[float], step: int,
                      stage: Path, out: Path) -> None:
    """Per σ_rel, ``stage/ema-<sigma_rel>/checkpoints/step-<step>/`` (:func:`.training.posthoc.write_checkpoint`)."""
    for sigma_rel in sigma_rels:
        name = f"ema-{sigma_rel:.6g}"
        _, rec, source = posthoc.write_checkpoint(run_dir, snapshots, sigma_rel, step, stage / name, warn=print)
        print(f"sigma_rel {sigma_rel:.6g} at step {step}: {rec.used} snapshots, profile error "
              f"{100 * rec.profile_error:.3f}% -> {out / name} (raw weights "
              f"{'of ' + str(source) if source else 'not saved at this step'})")


def run(args: argparse.Namespace) -> int:
    sigma_rels = parse_sigma_rels(args.sigma_rel)
    out = check_output_dir(args.out)
    source = Path(args.snapshot_dir)
    run_dir = source if (source / posthoc.PHEMA_DIR).is_dir() else None
    try:
        snapshots = phema.read_snapshots(source / posthoc.PHEMA_DIR if run_dir is not None else source)
    except phema.SnapshotError as exc:
        raise OptionError(str(exc)) from None
    first_step, last_step = snapshots[0].step, snapshots[-1].step
    step = last_step if args.step is None else args.step
    if not first_step <= step <= last_step:
        raise OptionError(f"--step {step}: the snapshots cover steps {first_step}…{last_step}")
    if run_dir is not None:
        with staged_dir(out) as stage:
            write_checkpoints(run_dir, snapshots, sigma_rels, step, stage, Path(out))
        return 0
    with staged_dir(out) as stage:
        for sigma_rel in sigma_rels:
            name = f"ema-{sigma_rel:.6g}.safetensors"
            data, error, used = reconstruction_bytes(snapshots, sigma_rel, step)
            write_atomic(stage / name, data)
            print(f"sigma_rel {sigma_rel:.6g} (gamma {phema.sigma_rel_to_gamma(sigma_rel):.4f}) at step {step}: "
                  f"{used} snapshots, profile error {100 * error:.3f}% -> {Path(out) / name}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "ema", "post-hoc EMA: reconstruct power-function EMAs of any width from snapshots",
                    sys.modules[__name__])
    p.add_argument("snapshot_dir", metavar="SNAPSHOT_DIR",
                   help="directory of phema-*.safetensors snapshot files, or a training run directory with phema/")
    p.add_argument("--sigma-rel", required=True, metavar="LIST",
                   help="comma-separated relative EMA widths σ_rel, each in (0, 0.3003), e.g. 0.05,0.10,0.15")
    p.add_argument("--step", type=int, default=None,
                   help="reconstruct the EMA at this optimizer step, between the first and the last snapshot's "
                        "(default: the last snapshot's)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory for ema-<sigma_rel>.safetensors (from a run: ema-<sigma_rel>/ checkpoints)")
    p.set_defaults(run=run)
