"""``diffobj weightings``: list, show, plot, and usage errors with exit code 2."""

import subprocess
import sys

import pytest

from diffusion_objectives import objectives, schedules, weightings
from diffusion_objectives.cli import main


def test_list_names_everything(capsys):
    assert main(["weightings"]) == 0
    out = capsys.readouterr().out
    for name in weightings.names() + objectives.names():
        assert name in out
    assert "v-cosine        monotone" in out and "eps-cosine      non-monotone" in out
    for name in schedules.names():
        assert f"  {name} " in out


def test_show_takes_text_parameters(capsys):
    assert main(["weightings", "show", "debiased:target=v", "--schedule", "laplace:mu=0,b=0.5"]) == 0
    out = capsys.readouterr().out
    assert "'target': 'v'" in out and "monotone on [-15, 15]: yes" in out
    assert main(["weightings", "show", "debiased:target=x"]) == 2
    assert "target must be one of eps, v" in capsys.readouterr().err


def test_show_monotone_and_non_monotone(capsys):
    assert main(["weightings", "show", "sigmoid:bias=-2"]) == 0
    out = capsys.readouterr().out
    assert "monotone on [-15, 15]: yes" in out and "mean λ -2.0000" in out  # logistic(−2, 1)
    assert main(["weightings", "show", "edm"]) == 0
    out = capsys.readouterr().out
    assert "monotone on [-15, 15]: no" in out and "peak at λ = -3.30" in out


def test_plot_writes_png(tmp_path):
    out = tmp_path / "w.png"
    assert main(["weightings", "plot", "sigmoid", "edm", "edm-monotonic", "iddpm", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,message", [
    (["weightings", "show", "nope"], "unknown weighting or objective 'nope'; choose from"),
    (["weightings", "show", "sigmoid:bogus=1"], "unknown parameter(s) bogus for weighting 'sigmoid'; allowed: bias"),
    (["weightings", "show", "sigmoid:bias=x"], "must be a number"),
    (["weightings", "show", "sigmoid:bias"], "expected KEY=VALUE"),
    (["weightings", "--schedule", "cosin", "show", "sigmoid"], "unknown schedule 'cosin'"),
    (["weightings", "plot", "sigmoid", "--out", "/nonexistent-dir/x.png"], "--out: cannot write"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_console_entry_point_exit_code():
    r = subprocess.run([sys.executable, "-m", "diffusion_objectives", "weightings", "show", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "choose from" in r.stderr
    r = subprocess.run([sys.executable, "-m", "diffusion_objectives", "weightings", "--bogus"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
