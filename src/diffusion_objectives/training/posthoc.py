"""Training checkpoints from a run's post-hoc EMA snapshots (EDM2 §3; docs/ema.md).

A run trained with ``ema.posthoc_sigma_rels`` leaves power-function EMA snapshots in ``RUN/phema/``.
:func:`write_checkpoint` reconstructs the EMA of any relative width σ_rel from them
(:func:`diffusion_objectives.training.phema.reconstruct`, EDM2 Algorithm 3) and publishes it as an ordinary training
checkpoint (:func:`.checkpoint.save`): the reconstruction as the EMA weights, the run's config, and the raw
weights and adaptive-schedule state of the run's own checkpoint at the same step when it has one (else the raw
weights are the reconstruction too). ``load_for_inference`` and every command that reads a checkpoint then
accept it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import OptionError
from . import checkpoint as ckpt_io
from . import phema
from .rundir import PHEMA_DIR

__all__ = ["PHEMA_DIR", "Reconstruction", "reconstruct", "write_checkpoint"]


@dataclass(frozen=True)
class Reconstruction:
    """The EMA at ``sigma_rel`` after ``step``: its ``state`` dict, the relative L² ``profile_error`` of the fit
    and the number of snapshots ``used``."""

    sigma_rel: float
    step: int
    state: dict[str, torch.Tensor]
    profile_error: float
    used: int


def reconstruct(snapshots: Sequence[phema.Snapshot], sigma_rel: float, step: int) -> Reconstruction:
    """The reconstruction from the snapshots taken at or before ``step`` (see :func:`phema.reconstruct`)."""
    used = [s for s in snapshots if s.step <= step]
    gamma = phema.sigma_rel_to_gamma(sigma_rel)
    steps, gammas = [s.step for s in used], [s.gamma for s in used]
    error = phema.profile_error(steps, gammas, phema.solve_weights(steps, gammas, step, gamma), step, gamma)
    return Reconstruction(sigma_rel, step, phema.reconstruct(used, sigma_rel, step), error, len(used))


def _run_checkpoint(run_dir: Path, step: int) -> ckpt_io.Checkpoint | None:
    """The run's checkpoint at ``step``, if it has a readable one."""
    path = ckpt_io.CheckpointStore.of_run(run_dir).path(step)
    try:
        return ckpt_io.load(path) if path.is_dir() else None
    except ckpt_io.CheckpointError:
        return None


def write_checkpoint(run_dir: str | Path, snapshots: Sequence[phema.Snapshot], sigma_rel: float, step: int,
                     out_dir: str | Path, warn: Callable[[str], None] | None = None) -> tuple[Path, Reconstruction,
                                                                                              Path | None]:
    """Publish ``out_dir/checkpoints/step-<step>/`` with the EMA at ``sigma_rel`` reconstructed from ``snapshots``
    (those of ``run_dir``, whose config they record). Returns the checkpoint directory, the reconstruction and
    the run checkpoint the raw weights came from (None: none at ``step``). OptionError if the snapshots do not
    record a config (written outside training)."""
    run_dir = Path(run_dir)
    config = snapshots[0].extra.get("config") if snapshots else None
    if not isinstance(config, dict):
        raise OptionError(f"the snapshots of {str(run_dir)!r} do not record the run's config (written outside "
                          "training?); reconstruct them into bare weight files instead")
    rec = reconstruct(snapshots, sigma_rel, step)
    source = _run_checkpoint(run_dir, step)
    batch = int(config.get("run", {}).get("batch_size", 0))
    state = {"step": step, "images_seen": source.state.get("images_seen") if source else step * batch,
             "adaptive": source.state.get("adaptive") if source else None,
             "posthoc_ema": {"sigma_rel": sigma_rel, "profile_error": rec.profile_error, "snapshots": rec.used}}
    path = ckpt_io.CheckpointStore.of_run(out_dir).save(step, model=source.model if source else rec.state,
                                                        ema=rec.state, state=state, config=config, keep=1, warn=warn)
    return path, rec, source.path if source else None
