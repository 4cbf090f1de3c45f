"""``diffobj compare``: dry run, usage errors with exit code 2."""

import pytest
import yaml

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
