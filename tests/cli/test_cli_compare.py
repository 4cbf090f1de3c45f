"""``diffobj compare``: dry run, usage errors with exit code 2."""

import os
from pathlib import Path

import pytest
import yaml

from diffusion_objectives import locking
from diffusion_objectives.cli import main


def test_dry_run_prints_resolved_study(capsys):
    assert main(["compare", "--grid", "edm,sigmoid:bias=2+adaptive", "--seeds", "0-2", "--steps", "50",
                 "--dry-run"]) == 0
    study = yaml.safe_load(capsys.readouterr().out)
    assert study["grid"] == ["edm", "sigmoid:bias=2+adaptive"] and study["seeds"] == [0, 1, 2]
    assert study["steps"] == 50


def test_config_file(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"grid": ["elbo"], "seeds": [3], "evaluation": {"n": 10}}))
    assert main(["compare", "--config", str(cfg), "--dry-run"]) == 0
    study = yaml.safe_load(capsys.readouterr().out)
    assert study["grid"] == ["elbo"] and study["seeds"] == [3] and study["evaluation"]["n"] == 10


@pytest.mark.parametrize("argv,message", [
    (["compare", "--preset", "huge", "--dry-run"], "unknown study preset 'huge'"),
    (["compare", "--grid", "edm,nope", "--dry-run"], "unknown objective 'nope'"),
    (["compare", "--seeds", "3-1", "--dry-run"], "--seeds"),
    (["compare", "--steps", "0", "--dry-run"], "--steps must be a positive integer"),
    (["compare", "--config", "/nonexistent.yaml", "--dry-run"], "--config: cannot read"),
    (["compare"], "--out is required"),
])
def test_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("grdi: [edm]\n")
    assert main(["compare", "--config", str(cfg), "--dry-run"]) == 2
    assert "unknown key(s) grdi" in capsys.readouterr().err


@pytest.mark.parametrize("grid,message", [
    ("", "names no objective"),
    (",", "names no objective"),
    ("edm,,elbo", "has an empty entry"),
    ("edm,edm", "lists edm more than once"),
    ("sigmoid:bias=2,sigmoid:bias=2.0", "lists sigmoid:bias=2 more than once"),
    ("sigmoid:bias=nan", "bias must be a finite number"),
    ("sigmoid:bias=-inf", "bias must be a finite number"),
])
def test_bad_grids_are_refused_also_in_a_dry_run(grid, message, capsys):
    """Issue 10 items 8, 11, 12: an empty grid used to run the whole default grid; nan reached training."""
    assert main(["compare", "--grid", grid, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_dry_run_validates_set_keys_like_a_real_run(capsys):
    """Issue 10 item 12: a misspelled --set key used to pass --dry-run and fail only when training began."""
    assert main(["compare", "--grid", "edm", "--set", "netwrok.params.hidden=64", "--dry-run"]) == 2
    assert "unknown config key 'netwrok'" in capsys.readouterr().err


TINY = {"preset": "toy2d", "steps": 30, "batch_size": 64, "grid": ["edm"], "seeds": [0], "jobs": 1,
        "overrides": ["data.name=anisotropic", "network.params.hidden=32", "network.params.depth=2",
                      "run.checkpoint_every=0", "run.sample_every=0", "run.log_every=5"],
        "evaluation": {"n": 64, "steps": 8, "n_elbo": 32, "elbo_samples": 8}}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert main(["compare", "--config", str(cfg), "--out", str(root / "study")]) == 0
    return cfg, root / "study"


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("extra,difference", [
    (["--set", "network.params.hidden=64"], "network.params.hidden: 32 (saved) -> 64 (requested)"),
    (["--set", "optim.lr=5e-3"], "optim.lr: 0.002 (saved) -> 0.005 (requested)"),
    (["--steps", "40"], "run.steps: 30 (saved) -> 40 (requested)"),
])
def test_compare_refuses_runs_trained_with_other_settings(tiny_study, extra, difference, capsys):
    """Issue 10 item 4: changed settings on an existing study directory used to reuse the old runs while the
    report stated the new settings. Now: exit 2 naming the run and the difference; nothing is touched."""
    cfg, out = tiny_study
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["compare", "--config", str(cfg), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert difference in err and str(out / "runs" / "edm" / "seed-0") in err and "Use another study directory" in err
    assert _snapshot(out) == before


def test_same_settings_reuse_and_report_only(tiny_study, capsys):
    cfg, out = tiny_study
    before = _snapshot(out / "runs")
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--report-only"]) == 0
    assert main(["compare", "--config", str(cfg), "--out", str(out)]) == 0
    assert _snapshot(out / "runs") == before  # nothing retrained or re-evaluated
    # --report-only with a seed that never ran: refused, naming the run
    assert main(["compare", "--config", str(cfg), "--out", str(out), "--seeds", "0-1", "--report-only"]) == 2
    assert "not finished and evaluated yet: edm@1" in capsys.readouterr().err


def test_second_writer_on_a_study_directory_is_refused(tiny_study, capsys):
    """Issue 10 item 2: two `compare` on one directory interleaved their runs; now the second exits 2 naming
    the holder, and touches nothing."""
    cfg, out = tiny_study
    before = _snapshot(out / "runs")
    with locking.hold(out, "a test holding the study"):
        assert main(["compare", "--config", str(cfg), "--out", str(out)]) == 2
        assert main(["compare", "--config", str(cfg), "--out", str(out), "--report-only"]) == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by pid {os.getpid()}" in err and "a test holding the study" in err
    assert _snapshot(out / "runs") == before


@pytest.mark.parametrize("make_out,message", [
    (lambda tmp: tmp / "a-file", "exists and is not a directory"),
    (lambda tmp: Path("/dev/null"), "exists and is not a directory"),
    (lambda tmp: tmp / ("x" * 300), "the file system allows at most"),
])
def test_unusable_out_is_refused(tmp_path, make_out, message, capsys):
    """Issue 10 item 9: --out a regular file, /dev/null or an over-long name: exit 2, one line, file intact."""
    (tmp_path / "a-file").write_text("mine")
    assert main(["compare", "--grid", "edm", "--seeds", "0", "--out", str(make_out(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert message in err and "--out" in err
    assert (tmp_path / "a-file").read_text() == "mine"
