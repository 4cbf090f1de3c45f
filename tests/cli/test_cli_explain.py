"""``diffobj explain``: the issue's examples verbatim, a setting with a known KG23 answer, the plot, usage errors."""

import math

import pytest
import torch

from diffusion_objectives import weightings
from diffusion_objectives.cli import explain, main


def test_diffusers_sd3_example(capsys):
    assert main(["explain", "--diffusers", "weighting_scheme=logit_normal", "logit_std=1",
                 "--scheduler", "flow", "shift=3"]) == 0
    out = capsys.readouterr().out
    assert "parameterization: FlowVelocity()" in out and "k(λ) = (1 + e^{−λ/2})²" in out
    assert f"shift={-2 * math.log(3):g}" in out  # SD3's shift 3 moves λ by −2 ln 3
    assert "monotone on [-15, 15]: no" in out and "sigmoid(b − λ) with b =" in out and "edm-monotonic: distance" in out


def test_kohya_example_notes_that_min_snr_is_ignored(capsys):
    assert main(["explain", "--kohya", "timestep_sampling=sigmoid", "sigmoid_scale=1", "min_snr_gamma=5"]) == 0
    out = capsys.readouterr().out
    assert "note: kohya's FLUX.1/SD3 trainers ignore min_snr_gamma" in out
    assert "NormalLogSNR(mean=-0, std=2" in out or "NormalLogSNR(mean=0, std=2" in out


def test_soft_min_snr_is_the_sigmoid_weighting(capsys):
    # log-uniform σ (uniform λ) with k-diffusion's soft-min-snr: w ∝ sigmoid(−2 ln σ_d − λ), KG23's sigmoid exactly
    assert main(["explain", "--k-diffusion", "type=loguniform", "min_value=0.01", "max_value=100",
                 "loss_weighting=soft-min-snr", "sigma_data=0.5"]) == 0
    out = capsys.readouterr().out
    assert "monotone on [-9.21034, 9.21034]: yes" in out and "augmentation distribution" in out
    line = next(s for s in out.splitlines() if "sigmoid(b − λ) with b" in s)
    bias, dist = float(line.split("b = ")[1].split(":")[0]), float(line.split("distance ")[1])
    assert abs(bias - 2 * math.log(2)) < 2e-3 and dist < 1e-3


def test_distance_is_zero_for_proportional_weightings():
    grid = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    assert explain.distance(weightings.Sigmoid(1.0), weightings.Sigmoid(1.0), grid) < 1e-12
    assert explain.distance(weightings.Elbo(), weightings.Sigmoid(30.0), grid) < 1e-6  # sigmoid(30 − λ) ≈ 1
    assert 0.3 < explain.distance(weightings.Sigmoid(-5.0), weightings.Sigmoid(5.0), grid) <= 1.0


def test_plot(tmp_path, capsys):
    out = tmp_path / "edm-vp.png"
    assert main(["explain", "--edm", "kind=vp", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "parameterization: X()" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--kohya", "timestep_samplin=sigmoid"], "--kohya: unknown key(s) timestep_samplin; allowed: timestep_sampling"),
    (["--kohya", "timestep_sampling=sigmod"], "unknown timestep_sampling 'sigmod'; choose from: uniform, sigmoid"),
    (["--diffusers", "--scheduler", "flw"], "unknown diffusers scheduler 'flw'; choose from: ddpm, ddim"),
    (["--diffusers", "--scheduler", "flow", "shiftt=3"], "unknown FlowMatchEulerDiscreteScheduler option(s) shiftt"),
    (["--diffusers", "weighting_scheme=logit_normal"], "weighting_scheme and precondition_outputs apply to flow"),
    (["--k-diffusion", "type=lognormal", "loc=0", "scale=1", "loss_weighting=min-snr"],
     "unknown loss_weighting 'min-snr'; choose from: karras, snr, soft-min-snr"),
    (["--k-diffusion", "tpye=lognormal"], "--k-diffusion: unknown key(s) tpye; allowed: type, loc"),
    (["--edm", "kind"], "--edm: expected KEY=VALUE"),
    (["--edm", "kind=vq"], "unknown EDM loss kind 'vq'; choose from: edm, edm2, vp, ve"),
    (["--kohya", "--scheduler", "flow"], "--scheduler goes with --diffusers"),
])
def test_unknown_keys_and_values_exit_2(argv, message, capsys):
    assert main(["explain", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_peer_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain"])
    assert exc.value.code == 2 and "one of the arguments --diffusers --kohya --k-diffusion --edm is required" in \
        capsys.readouterr().err
