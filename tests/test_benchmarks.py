"""Smoke test of the benchmarks: every script in benchmarks/ runs with ``--quick`` and writes its JSON
with the provenance and tables the README is built from. Not a timing test: the numbers of a quick run
mean nothing; speed is measured by the benchmarks themselves (benchmarks/README.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# script -> extra flags that keep the smoke run to seconds
SCRIPTS = {
    "trainer_overhead": ["--presets", "toy2d"],
    "estimator_variance": [],
    "elbo_efficiency": [],
    "samplers": [],
    "peers": [],
    "throughput": ["--presets", "toy2d", "--no-compile"],
}
KEYS = {"benchmark", "quick", "date", "machine", "torch", "threads", "clock", "git_commit", "tables", "results"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache of briefly trained models for all scripts (trained on first use, 30 steps)."""
    return tmp_path_factory.mktemp("bench-cache")


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_benchmark_quick_run_writes_json(name, tmp_path, cache):
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--out", str(tmp_path),
           "--cache", str(cache), *SCRIPTS[name]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / f"{name}-quick.json").read_text())
    assert KEYS <= set(result), KEYS - set(result)
    assert result["benchmark"] == name and result["quick"] is True
    assert result["threads"] == 1 and result["machine"]["cpu"]
    assert result["tables"] and all(t["rows"] and t["columns"] for t in result["tables"])
    for t in result["tables"]:
        assert all(len(row) == len(t["columns"]) for row in t["rows"]), t["title"]
    if name == "throughput":  # issue 14: achieved FLOP/s as a fraction of the same run's sgemm
        toy = result["results"]["presets"]["toy2d"]
        assert toy["train"]["flops_per_step"] > 0 and toy["sample"]["flops_per_nfe"] > 0
        for part in ("train", "sample"):
            frac = toy[part]["variants"]["fp32"]["sgemm_fraction"]
            assert 0 < frac["q25"] <= frac["median"] <= frac["q75"]
