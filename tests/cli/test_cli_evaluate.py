"""``diffobj evaluate`` end to end on tiny trained checkpoints: sample → evaluate → elbo give finite numbers
that agree with each other (the samples file and fresh sampling give the same FD/KID/coverage; ``bpd`` equals
``diffobj elbo``; ``--ref`` from ``diffobj fid-ref`` equals the training-split reference), and a table of
bad checkpoints and options that exit with code 2 and a clear message."""

import json
import math
import shutil
from pathlib import Path

import pytest

from diffusion_objectives.cli import main

CKPT = "checkpoints/step-00000006"  # the digits run of conftest.TINY_TRAIN


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return tiny_runs


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--metrics", "--n", "--seeds", "--sampler", "--steps", "--split", "--extractor", "--ref",
                 "--from-samples", "--out", "loss-std", "examples:"):
        assert flag in out


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


def test_sample_evaluate_elbo_end_to_end(runs, tmp_path, capsys):
    run = runs / "digits"
    samples = tmp_path / "samples"
    assert main(["sample", str(run), "--steps", "5", "--seeds", "0-99", "--out", str(samples), "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--from-samples", str(samples), "--metrics", "fd,kid,coverage,bpd,loss-std",
                 "--n-elbo", "40", "--elbo-samples", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    # default --out: RUN/eval/<checkpoint>/metrics.json, beside the checkpoints (pruning never goes there)
    result = json.loads((run / "eval" / Path(CKPT).name / "metrics.json").read_text())
    assert not (run / CKPT / "metrics.json").exists()
    m = result["metrics"]
    assert set(m) == {"fd", "kid", "coverage", "bpd", "loss-std"} and _finite(result)
    assert m["fd"]["value"] >= 0 and m["fd"]["n_samples"] == 100 and m["fd"]["seeds"] == "0-99"
    assert m["kid"]["n_samples"] == 100 and sum(m["coverage"]["counts"]) == 100
    assert m["bpd"]["unit"] == "bits/dim" and m["bpd"]["n_examples"] == 40
    assert result["sampling"]["file"] == str(samples) and result["sampling"]["steps"] == 5
    assert result["step"] == 6 and result["checkpoint"].endswith(CKPT)
    assert f"{m['fd']['value']:.6g}" in out
    # fresh sampling with the same seeds and settings gives the same samples, hence the same numbers
    fresh = tmp_path / "fresh.json"
    assert main(["evaluate", str(run), "--metrics", "fd,kid,coverage", "--steps", "5", "--n", "100",
                 "--out", str(fresh), "--no-progress"]) == 0
    f = json.loads(fresh.read_text())["metrics"]
    assert f["fd"]["value"] == m["fd"]["value"] and f["kid"] == m["kid"] and f["coverage"] == m["coverage"]
    # diffobj elbo on the same examples with the same draws equals the bpd metric
    assert main(["elbo", str(run), "--n", "40", "--samples", "16", "--out", str(tmp_path / "elbo"),
                 "--no-progress"]) == 0
    e = json.loads((tmp_path / "elbo" / "elbo.json").read_text())["elbo"]
    assert e["value"] == m["bpd"]["value"] and e["se"] == m["bpd"]["se"]
    # FD against reference statistics written by fid-ref equals FD against the training split
    ref = tmp_path / "ref.npz"
    assert main(["fid-ref", "digits", "--param", "split=train", "--out", str(ref), "--no-progress"]) == 0
    with_ref = tmp_path / "ref.json"
    assert main(["evaluate", str(run), "--from-samples", str(samples / "samples.npz"), "--metrics", "fd",
                 "--ref", str(ref), "--out", str(with_ref), "--no-progress"]) == 0
    r = json.loads(with_ref.read_text())["metrics"]["fd"]
    assert r["value"] == pytest.approx(m["fd"]["value"], rel=1e-9) and r["reference"] == str(ref)


def test_toy_end_to_end(runs, tmp_path):
    run = runs / "toy"
    assert main(["sample", str(run), "--n", "300", "--steps", "6", "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    out = tmp_path / "m.json"
    assert main(["evaluate", str(run), "--from-samples", str(tmp_path / "s"), "--n-elbo", "32", "--elbo-samples", "8",
                 "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"toy", "bpd"} and _finite(result)  # the defaults for 2-D data
    assert result["metrics"]["toy"]["n_samples"] == 300 and result["metrics"]["bpd"]["unit"] == "nats"
    fresh = tmp_path / "f.json"
    assert main(["evaluate", str(run), "--metrics", "toy", "--n", "300", "--steps", "6", "--out", str(fresh),
                 "--no-progress"]) == 0
    assert json.loads(fresh.read_text())["metrics"]["toy"] == result["metrics"]["toy"]


# ---- exit code 2 with a clear message ------------------------------------------------------------------

def _copy(runs, tmp_path, name="digits"):
    dst = tmp_path / "step-00000006"
    shutil.copytree(runs / name / CKPT if name == "digits" else next((runs / name / "checkpoints").glob("step-*")),
                    dst)
    return dst


def _missing(runs, tmp_path):
    return tmp_path / "nowhere"


def _corrupt(runs, tmp_path):
    dst = _copy(runs, tmp_path)
    f = dst / "ema.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    return dst


def _version(runs, tmp_path):
    dst = _copy(runs, tmp_path)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["format_version"] = 99
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _partial(runs, tmp_path):
    dst = _copy(runs, tmp_path)
    (dst / "manifest.json").unlink()
    return dst


def _not_a_run(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


@pytest.mark.parametrize("command", ["sample", "elbo", "evaluate"])
@pytest.mark.parametrize("make, message", [
    (_missing, "does not exist"),
    (_corrupt, "is corrupt: ema.safetensors fails its SHA-256 check"),
    (_version, "has format version 99; this version of diffusion_objectives reads format 1"),
    (_partial, "is partial: no manifest.json"),
    (_not_a_run, "is neither a run directory"),
])
def test_bad_checkpoints_exit_2(runs, tmp_path, capsys, command, make, message):
    path = make(runs, tmp_path)
    extra = {"sample": ["--out", str(tmp_path / "o")], "elbo": ["--out", str(tmp_path / "o")],
             "evaluate": ["--out", str(tmp_path / "o.json")]}[command]
    assert main([command, str(path), *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"diffobj {command}: error:" in err and message in err


@pytest.mark.parametrize("run, args, message", [
    ("digits", ["--metrics", "fd,fid"], "unknown metric(s) fid; choose from: fd, kid, coverage, toy, bpd, loss-std"),
    ("digits", ["--metrics", "fd", "--extractor", "inception", "--extractor-path", "{tmp}/missing.pt"],
     "Inception weights '{tmp}/missing.pt' not found; the Inception-v3 TorchScript file default_1.pt ships"),
    ("digits", ["--metrics", "fd", "--ref", "{tmp}/missing.npz"], "reference statistics '{tmp}/missing.npz' not found"),
    ("digits", ["--metrics", "kid", "--ref", "{tmp}/missing.npz"], "'kid' needs reference features"),
    ("digits", ["--metrics", "toy"], "metric 'toy' is for 2-D toy data"),
    ("toy", ["--metrics", "fd"], "metric 'fd' is for image data"),
    ("digits", ["--from-samples", "{tmp}/nothing"], "not found"),
    ("digits", ["--from-samples", "{tmp}", "--n", "4"], "drop --n and --seeds"),
    ("digits", ["--n", "4", "--seeds", "0-9"], "disagrees with --seeds"),
    ("digits", ["--elbo-samples", "20"], "multiple of 8"),
    ("digits", ["--metrics", "fd", "--extractor-path", "x.pt", "--extractor", "classifier-digits"],
     "--extractor-path is for --extractor inception"),
])
def test_bad_options_exit_2(runs, tmp_path, capsys, run, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = ["evaluate", str(runs / run), "--n-elbo", "8", "--steps", "3", "--out", str(tmp_path / "o.json"),
            "--no-progress", *args]
    if "--n" not in args and "--from-samples" not in args:
        argv += ["--n", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "diffobj evaluate: error:" in err and message.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "o.json").exists()
