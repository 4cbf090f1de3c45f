"""Launchers for a study's runs: each (entry, seed) of :mod:`.study` is one independent job.

Every launcher runs the same per-run command, ``diffobj compare --config OUT/study.json --out OUT
--run-one ENTRY@SEED`` (under ``torchrun --nproc_per_node=N`` when a run uses N processes), which trains
(or resumes, or reuses) that run and evaluates it into ``eval.json``; the report is then built from the
``eval.json`` files. So resuming, the reuse of finished runs and the report are the same whatever runs the
jobs:

* :class:`~diffusion_objectives.study.runner.LocalLauncher` (in :mod:`.study`): this machine, a process pool;
* :class:`CommandLauncher`: this machine, the per-run commands as subprocesses (a run under torchrun);
* :class:`SubmititLauncher`: one Slurm job per run through ``submitit`` (an optional dependency:
  ``pip install "diffusion-objectives[cluster]"``), as one job array; ``cluster="local"`` runs the same jobs
  with submitit's local executor (the tests do);
* :func:`commands`: the per-run shell commands and the report command, for any other scheduler.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import locking
from ..errors import OptionError
from . import runner as S

__all__ = ["SlurmOptions", "run_command", "report_command", "commands", "CommandLauncher", "SubmititLauncher"]


def run_command(study_file: Path, task: S.RunTask, *, nproc: int = 1, python: str | None = None) -> list[str]:
    """The argv that trains and evaluates ``task`` of the study in ``study_file`` (``OUT/study.json``):
    ``diffobj compare --config … --out … --run-one ENTRY@SEED``, under ``torchrun --standalone
    --nproc_per_node=nproc`` when ``nproc`` > 1. ``python``: an interpreter to run the modules with
    (``python -m diffusion_objectives``, ``python -m torch.distributed.run``); ``None``: the console scripts."""
    out = study_file.parent
    args = ["compare", "--config", str(study_file), "--out", str(out), "--run-one", task.name]
    if nproc > 1:
        launcher = [python, "-m", "torch.distributed.run"] if python else ["torchrun"]
        return [*launcher, "--standalone", f"--nproc_per_node={nproc}", "-m", "diffusion_objectives", *args]
    return [python, "-m", "diffusion_objectives", *args] if python else ["diffobj", *args]


def report_command(study_file: Path, *, python: str | None = None) -> list[str]:
    """The argv that writes the report once every run is finished (``--report-only``)."""
    head = [python, "-m", "diffusion_objectives"] if python else ["diffobj"]
    return [*head, "compare", "--config", str(study_file), "--out", str(study_file.parent), "--report-only"]


def commands(study: S.StudyConfig, out: str | Path, *, nproc: int = 1) -> tuple[list[str], str, int]:
    """Shell commands for another scheduler: one per run not yet finished and evaluated (in any order or all
    at once), the report command to run after them, and the number of runs in all. Validates the study,
    refuses runs trained with other settings and writes ``OUT/study.json``, holding ``out``'s lock."""
    out = Path(out).resolve()
    run_tasks = S.tasks(study, out)
    with locking.hold(out, "diffobj compare --print-commands"):
        pending, study_file = S.prepare(study, out, run_tasks)
    return ([shlex.join(run_command(study_file, t, nproc=nproc)) for t in pending],
            shlex.join(report_command(study_file)), len(run_tasks))


class CommandLauncher:
    """Run the per-run commands on this machine as subprocesses, ``jobs`` at a time (each under torchrun with
    ``nproc`` processes when ``nproc`` > 1)."""

    def __init__(self, jobs: int = 1, nproc: int = 1) -> None:
        self.jobs, self.nproc = jobs, nproc

    def run(self, study: S.StudyConfig, pending: list[S.RunTask], study_file: Path,
            say: Callable[[str], None]) -> None:
        def one(task: S.RunTask) -> None:
            subprocess.run(run_command(study_file, task, nproc=self.nproc, python=sys.executable), check=True)
            say(f"{task.name} done")

        with ThreadPoolExecutor(max_workers=max(1, self.jobs)) as pool:
            for fut in [pool.submit(one, t) for t in pending]:
                fut.result()


@dataclass(frozen=True)
class SlurmOptions:
    """Slurm resources of each run's job: ``partition``, ``gpus_per_run`` (GPUs on its node),
    ``time_min`` (wall-clock limit in minutes), ``cpus_per_run``, ``mem_gb``, ``account``, ``qos``
    (``None``: the cluster's default), and ``array_parallelism`` (runs at once)."""

    partition: str | None = None
    gpus_per_run: int = 0
    time_min: int = 240
    cpus_per_run: int | None = None
    mem_gb: int | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int = 64

    def parameters(self, name: str, nproc: int, threads: int) -> dict[str, Any]:
        """``submitit.AutoExecutor.update_parameters`` arguments: one node and one task per run (torchrun
        starts the run's ``nproc`` processes), ``cpus_per_run`` or ``nproc × threads`` CPUs."""
        params: dict[str, Any] = {
            "name": name, "timeout_min": self.time_min, "nodes": 1, "tasks_per_node": 1,
            "cpus_per_task": self.cpus_per_run or nproc * max(1, threads),
            "slurm_array_parallelism": self.array_parallelism,
        }
        optional = {"gpus_per_node": self.gpus_per_run or None, "mem_gb": self.mem_gb,
                    "slurm_partition": self.partition, "slurm_account": self.account, "slurm_qos": self.qos}
        return params | {k: v for k, v in optional.items() if v is not None}


class SubmititLauncher:
    """One job per run through submitit, submitted as one job array; waits for them all. ``cluster``:
    ``"slurm"`` (needs ``sbatch``), or ``"local"``/``"debug"`` for submitit's local executors. Job logs go to
    ``OUT/submitit/``; a failed job raises RuntimeError naming its run and log."""

    def __init__(self, slurm: SlurmOptions = SlurmOptions(), *, nproc: int = 1, cluster: str = "slurm") -> None:
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise OptionError("launcher 'submitit' submits to Slurm, but sbatch is not on PATH here; run from a "
                              "Slurm login node, or print the per-run commands for another scheduler")
        self.slurm, self.nproc, self.cluster = slurm, nproc, cluster

    def run(self, study: S.StudyConfig, pending: list[S.RunTask], study_file: Path,
            say: Callable[[str], None]) -> None:
        try:
            import submitit  # optional dependency: the [cluster] extra
        except ImportError:
            raise OptionError("launcher 'submitit' needs the submitit package: "
                              "pip install 'diffusion-objectives[cluster]'") from None
        study_file = study_file.resolve()  # the jobs may start in another working directory
        out = study_file.parent
        executor = submitit.AutoExecutor(folder=out / "submitit", cluster=self.cluster)
        executor.update_parameters(**self.slurm.parameters(f"diffobj-{out.name}", self.nproc, study.threads))
        jobs = []
        with executor.batch():
            for task in pending:
                argv = run_command(study_file, task, nproc=self.nproc, python=sys.executable)
                jobs.append(executor.submit(submitit.helpers.CommandFunction(argv, verbose=False)))
        say(f"submitted {len(jobs)} job(s) ({self.cluster}): {', '.join(j.job_id for j in jobs[:4])}"
            f"{' …' if len(jobs) > 4 else ''}; logs in {out / 'submitit'}")
        failed = []
        for task, job in zip(pending, jobs, strict=True):
            try:
                job.result()
                say(f"{task.name} done (job {job.job_id})")
            except Exception as exc:  # a failed job: collect all, then name them
                failed.append(f"{task.name} (job {job.job_id}, log {job.paths.stderr}): "
                              f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}")
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(jobs)} run(s) failed; rerun to resume them:\n  "
                               + "\n  ".join(failed))
