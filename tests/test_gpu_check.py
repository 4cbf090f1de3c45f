"""``scripts/gpu-check``: its CPU-safe parts. Without a CUDA device it says so and exits 2; bad arguments are
errors naming the allowed values; ``--device cpu`` runs every check's logic with tiny sizes (gloo instead of
NCCL) and prints the table; a failed check makes the exit status 1. The GPU numbers themselves need a GPU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a GPU machine


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*args, timeout=120):
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)


def test_script_is_executable_and_has_help():
    assert os.access(SCRIPT, os.X_OK)
    proc = _run("--help")
    assert proc.returncode == 0
    for word in ("--device", "--only", "--json", "cpu-vs-cuda-loss", "resume-after-kill", "torchrun-nccl"):
        assert word in proc.stdout


def test_without_a_gpu_it_says_so_and_exits_2():
    proc = _run()
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "nothing checked" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("args, message", [(["--only", "speed"], "unknown check(s) speed; choose from"),
                                           (["--device", "tpu"], "--device must be cuda, cuda:N or cpu")])
def test_bad_arguments_name_the_allowed_values(args, message):
    proc = _run(*args)
    assert proc.returncode == 2 and message in proc.stderr


def test_a_failed_check_exits_1(tmp_path, capsys):
    gc = _load()
    assert gc.main(["--device", "cpu", "--only", "sample", "--work", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "| sample | FAILED | needs the run of resume-after-kill" in out and "0/1 checks passed" in out


@pytest.mark.slow
def test_cpu_dry_run_runs_every_check(tmp_path):
    out = tmp_path / "gpu-check.json"
    proc = _run("--device", "cpu", "--json", str(out), "--work", str(tmp_path / "work"), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["check"]: r for r in result["rows"]}
    assert list(rows) == list(_load().CHECKS) and all(r["ok"] for r in rows.values())
    assert "parameters equal" in rows["resume-after-kill"]["measured"]
    assert "resumed from step-" in rows["resume-after-kill"]["measured"]
    assert "gloo" in rows["torchrun-nccl"]["criterion"]
    assert "GFLOP/step" in rows["bf16-train"]["measured"] and "images/s" in rows["bf16-train"]["measured"]
    for name in rows:
        assert f"| {name} | ok |" in proc.stdout
    assert "6/6 checks passed" in proc.stdout
