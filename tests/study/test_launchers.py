"""Study launchers: submitit's local executor, the printed per-run commands (one under torchrun), the Slurm
parameters; each ends in the same report and reuses finished runs."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import submitit
import yaml

from diffusion_objectives.cli import main
from diffusion_objectives.study import launchers as L
from diffusion_objectives.study import runner as S

TINY = ["data.name=anisotropic", "network.params.hidden=32", "network.params.depth=2",
        "network.params.fourier_features=16", "run.checkpoint_every=0", "run.sample_every=0", "run.log_every=5"]


def _tiny(grid=("edm",), seeds=(0,)):
    return S.StudyConfig(preset="toy2d", overrides=list(TINY), steps=20, batch_size=64, grid=list(grid),
                         seeds=list(seeds), evaluation=S.EvalProtocol(n=64, steps=8, n_elbo=32, elbo_samples=8),
                         jobs=1, threads=1)


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*") if p.is_file()}


def test_submitit_local_executor_runs_reuses_and_reports(tmp_path):
    """Issue 14 item 4: the submitit path, with submitit's local executor (what CI can run)."""
    out = tmp_path / "study"
    launcher = L.SubmititLauncher(L.SlurmOptions(time_min=10), cluster="local")
    said = []
    results = S.run_study(_tiny(), out, launcher=launcher, say=said.append)
    assert any("submitted 1 job(s) (local)" in s for s in said)
    record = json.loads((out / "runs" / "edm" / "seed-0" / "eval.json").read_text())
    assert results["runs"] == [record] and record["result"]["metrics"]["toy"]["reverse_kl"] > 0
    assert (out / "report.md").is_file() and list((out / "submitit").glob("*_log.out"))
    # rerun: the finished run is reused, nothing is submitted and no run file changes
    before, said = _mtimes(out), []
    again = S.run_study(_tiny(), out, launcher=launcher, say=said.append)
    assert not any("submitted" in s for s in said) and _mtimes(out) == before
    assert again["summary"] == results["summary"]


def test_command_launcher_runs_the_per_run_command_as_a_subprocess(tmp_path):
    """The local launcher used with --nproc-per-run: the same per-run command in a subprocess, then the report."""
    out = tmp_path / "study"
    results = S.run_study(_tiny(), out, launcher=L.CommandLauncher(jobs=1, nproc=1), say=lambda msg: None)
    record = json.loads((out / "runs" / "edm" / "seed-0" / "eval.json").read_text())
    assert results["runs"] == [record] and record["seed"] == 0


def _as_argv(command):
    """A printed command with the console scripts replaced by this interpreter's modules."""
    argv = shlex.split(command)
    heads = {"diffobj": [sys.executable, "-m", "diffusion_objectives"],
             "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
    return heads[argv[0]] + argv[1:]


def test_print_commands_run_by_hand_under_torchrun_then_report(tmp_path, capsys):
    """--print-commands: one command per run (here each a 2-process torchrun job, gloo on the CPU), then the
    report command; running them gives the study's report; printing again lists only what is left."""
    cfg, out = tmp_path / "tiny.yaml", tmp_path / "study"
    cfg.write_text(yaml.safe_dump({**vars(_tiny(seeds=(0, 1))), "evaluation": vars(_tiny().evaluation)}))
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--nproc-per-run", "2",
                 "--print-commands"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    *runs, report = lines
    assert len(runs) == 2 and all(r.startswith("torchrun --standalone --nproc_per_node=2 ") for r in runs)
    assert "--run-one edm@0" in runs[0] and report.endswith("--report-only")
    assert not (out / "runs").exists()  # printing runs nothing
    done = subprocess.run(_as_argv(runs[0]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "runs" / "edm" / "seed-0" / "eval.json").read_text())
    assert json.loads((out / "runs" / "edm" / "seed-0" / "summary.json").read_text())["world_size"] == 2
    # the report waits for the other run, naming it; the remaining command list is just that run
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--report-only"]) == 2
    assert "not finished and evaluated yet: edm@1" in capsys.readouterr().err
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--print-commands"]) == 0
    left = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(left) == 2 and "--run-one edm@1" in left[0] and left[0].startswith("diffobj compare")
    assert subprocess.run(_as_argv(left[0]), capture_output=True, timeout=300).returncode == 0
    done = subprocess.run(_as_argv(report), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["runs"][0] == record and [r["seed"] for r in results["runs"]] == [0, 1]


def test_slurm_parameters_reach_the_sbatch_file(tmp_path, monkeypatch):
    """The --slurm-* options become these #SBATCH lines of submitit's Slurm executor (rendered without Slurm:
    submitit only checks that srun exists, so a stand-in is put on PATH)."""
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    options = L.SlurmOptions(partition="gpu", gpus_per_run=4, time_min=90, mem_gb=32, account="proj",
                             qos="high")
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**options.parameters("diffobj-x", nproc=4, threads=2))  # validates every name
    text = submitit.slurm.slurm._make_sbatch_string(command="true", folder=tmp_path, **executor._executor.parameters)
    for line in ("--partition=gpu", "--gpus-per-node=4", "--time=90", "--mem=32GB", "--account=proj",
                 "--qos=high", "--cpus-per-task=8", "--ntasks-per-node=1", "--nodes=1", "--job-name=diffobj-x"):
        assert f"#SBATCH {line}" in text


@pytest.mark.parametrize("argv,message", [
    (["--launcher", "submitit"], "sbatch is not on PATH"),
    (["--slurm-partition", "gpu"], "the --slurm-* flags need --launcher submitit"),
    (["--nproc-per-run", "0"], "--nproc-per-run must be a positive integer"),
    (["--launcher", "submitit", "--slurm-time", "0"], "--slurm-time must be a positive integer"),
])
def test_launch_usage_errors(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(["compare", "--grid", "edm", "--out", str(tmp_path / "s"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
