"""``diffobj elbo``: what it prints and writes equals the library's ELBO (``evaluation.elbo_summary`` and a
direct ``elbo()`` call with the same seed); the per-λ table sums to the diffusion term; errors exit 2."""

import csv
import json
import math
import re

import pytest
import torch
from PIL import Image

from diffusion_objectives.cli import main
from diffusion_objectives.evaluation import protocol as E
from diffusion_objectives.likelihoods.vlb import elbo
from diffusion_objectives.training import load_for_inference


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return tiny_runs


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["elbo", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--split", "--n", "--samples", "--seed", "--out", "--no-ema", "examples:"):
        assert flag in out


def _printed(out: str) -> tuple[float, float]:
    m = re.search(r": (\S+) ± (\S+) ", out)
    return float(m.group(1)), float(m.group(2))


def test_digits_equals_the_library(runs, capsys):
    assert main(["elbo", str(runs / "digits"), "--split", "test", "--n", "40", "--samples", "16", "--seed", "5",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    loaded = load_for_inference(runs / "digits")
    # the default --out: RUN/eval/<checkpoint>/elbo-SPLIT, beside the checkpoints (pruning never goes there)
    target = runs / "digits" / "eval" / loaded.checkpoint_dir.name / "elbo-test"
    assert not (loaded.checkpoint_dir / "elbo-test").exists()
    record = json.loads((target / "elbo.json").read_text())
    summary = record["elbo"]
    # the library, called independently: the same 40 test examples, the same seed
    x, labels, levels = E.elbo_examples(loaded, "test", 40)
    lib, _ = E.elbo_summary(loaded, x, levels, samples=16, seed=5, labels=labels)
    assert summary == json.loads(json.dumps(lib))
    res = elbo(loaded.model, loaded.objective.parameterization, x, 17, samples=16,
               generator=torch.Generator().manual_seed(5), labels=labels)
    bpd = res.total.double() / (64 * math.log(2))  # D = 64 pixels; in float64 like the summary
    assert summary["value"] == pytest.approx(float(bpd.mean()), rel=1e-12)
    assert summary["se"] == pytest.approx(float(bpd.std()) / math.sqrt(40), rel=1e-9)
    value, se = _printed(out)
    assert value == pytest.approx(summary["value"], abs=1e-6) and se == pytest.approx(summary["se"], abs=1e-6)
    assert "bits/dim" in out and "prior" in out and "reconstruction" in out and "diffusion" in out
    printed_terms = {k: float(v) for k, v in re.findall(r"^  (prior|reconstruction|diffusion) +(\S+)$", out, re.M)}
    for term in ("prior", "reconstruction", "diffusion"):
        assert printed_terms[term] == pytest.approx(summary[term], abs=1e-6)
    assert record["split"] == "test" and record["step"] == 6 and record["ema"] is True
    assert summary["n_examples"] == 40 and summary["samples"] == 16 and summary["seed"] == 5
    # the per-λ table: bins tile [λ_min, λ_max] and their diffusion terms sum to the diffusion term
    rows = list(csv.DictReader((target / "per_logsnr.csv").open()))
    assert float(rows[0]["logsnr_lo"]) == -15 and float(rows[-1]["logsnr_hi"]) == 15
    assert all(float(a["logsnr_hi"]) == float(b["logsnr_lo"]) for a, b in zip(rows, rows[1:], strict=False))
    per_bin = [float(r["diffusion_bits_per_dim"]) for r in rows]
    assert sum(per_bin) == pytest.approx(summary["diffusion"], rel=1e-6)
    assert float(rows[-1]["cumulative_bits_per_dim"]) == pytest.approx(summary["diffusion"], rel=1e-6)
    assert per_bin == pytest.approx((res.diffusion_bins.double().mean(0) / (64 * math.log(2))).tolist(), rel=1e-6)
    assert Image.open(target / "per_logsnr.png").format == "PNG"


def test_toy_reports_nats_and_honours_out(runs, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["elbo", str(runs / "toy"), "--n", "32", "--samples", "8", "--out", str(out), "--no-ema",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "elbo.json").read_text())["elbo"]
    assert summary["unit"] == "nats" and "nats per example" in text
    loaded = load_for_inference(runs / "toy", ema=False)
    x, _, levels = E.elbo_examples(loaded, "test", 32)
    assert levels is None
    res = elbo(loaded.model, loaded.objective.parameterization, x, None, samples=8,
               generator=torch.Generator().manual_seed(0))
    assert summary["value"] == pytest.approx(float(res.total.double().mean()), rel=1e-12)
    assert json.loads((out / "elbo.json").read_text())["ema"] is False
    assert "diffusion_nats" in (out / "per_logsnr.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("args, message", [
    (["--samples", "12"], "multiple of 8"),
    (["--n", "0"], "--n must be"),
    (["--split", "validation"], "split"),
])
def test_usage_errors_exit_2(runs, tmp_path, capsys, args, message):
    assert main(["elbo", str(runs / "digits"), "--out", str(tmp_path / "x"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert "diffobj elbo: error:" in err and message in err
