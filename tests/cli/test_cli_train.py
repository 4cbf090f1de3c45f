"""``diffobj train``: help and dry run, a short real run, and a table of bad configurations and datasets,
each exiting with code 2 and a message that names the problem."""

import json
import os
import subprocess
import sys

import pytest
import torch

from _faults import nonfinite_loss
from diffusion_objectives.cli import main
from diffusion_objectives.training import checkpoint as ck

TINY = ["--set", "data.n=512", "--set", "network.hidden=16", "--set", "network.depth=1",
        "--set", "network.fourier_features=8", "--batch-size", "16", "--set", "run.sample_every=0",
        "--set", "optim.warmup_images=0", "--set", "run.device=cpu", "--no-progress"]


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--preset", "--objective", "--out", "--steps", "--batch-size", "--seed", "--checkpoint-every",
                 "--resume", "--set", "--dry-run", "examples:", "torchrun"):
        assert flag in out


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["train", "--preset", "digits", "--objective", "edm-monotonic", "--set", "loss.weighting.p_mean=-0.4",
                 "--steps", "12", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "objective: edm-monotonic" in out and "steps: 12" in out and "p_mean: -0.4" in out
    assert "monotone: True" in out


def test_train_writes_the_run_layout_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--steps", "3", "--checkpoint-every", "2", *TINY]) == 0
    assert "finished at step 3" in capsys.readouterr().out
    names = {p.name for p in ck.list_checkpoints(out / "checkpoints")}
    assert names == {"step-00000002", "step-00000003"}
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert main(["train", "--out", str(out), "--steps", "5", "--checkpoint-every", "2", *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("step-00000003") and summary["step"] == 5


def test_python_dash_m_works(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "diffusion_objectives", "train", "--preset", "toy2d", "--dry-run"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and "name: ring" in p.stdout


def _corrupt_run(tmp_path):
    run = tmp_path / "corrupt"
    assert main(["train", "--out", str(run), "--steps", "1", *TINY]) == 0
    f = run / "checkpoints" / "step-00000001" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-2] ^= 0xFF
    f.write_bytes(bytes(data))
    return ["--resume", str(run / "checkpoints" / "step-00000001")]


def _changed_run(tmp_path):
    run = tmp_path / "changed"
    assert main(["train", "--out", str(run), "--steps", "1", *TINY]) == 0
    return ["--objective", "edm"]  # same --out, different objective


def _existing_run(tmp_path):
    run = tmp_path / "existing"
    assert main(["train", "--out", str(run), "--steps", "1", *TINY]) == 0
    return ["--resume", "none"]


def _bad_yaml(tmp_path, text):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return ["--config", str(p)]


BAD = [  # (id, extra args or a function of tmp_path, expected words in the message)
    ("unknown-preset", ["--preset", "nope"], "unknown preset 'nope'"),
    ("unknown-objective", ["--objective", "nope"], "unknown objective 'nope'"),
    ("unknown-weighting", ["--set", "loss.weighting.name=nope"], "unknown weighting 'nope'"),
    ("unknown-weighting-param", ["--set", "loss.weighting.biass=1"], "biass"),
    ("unknown-parameterization", ["--set", "loss.parameterization.name=z"], "unknown parameterization 'z'"),
    ("unknown-schedule", ["--set", "loss.schedule.name=nope"], "unknown schedule 'nope'"),
    ("reversed-endpoints", ["--set", "loss.schedule.logsnr_min=5", "--set", "loss.schedule.logsnr_max=-5"],
     "logsnr_min < logsnr_max"),
    ("unknown-dataset", ["--set", "data.name=nope"], "unknown dataset 'nope'"),
    ("unknown-dataset-param", ["--set", "data.nn=5"], "nn"),
    ("unknown-network", ["--set", "network.name=nope"], "unknown network 'nope'"),
    ("unknown-network-param", ["--set", "network.widht=3"], "widht"),
    ("wrong-type", ["--set", "run.steps=abc"], "run.steps"),
    ("wrong-type-bool", ["--set", "run.bf16=maybe"], "run.bf16"),
    ("unknown-key", ["--set", "run.stepz=3"], "run.stepz"),
    ("unknown-section", ["--set", "optimizer.lr=1"], "optimizer"),
    ("set-without-value", ["--set", "seed"], "KEY=VALUE"),
    ("negative-steps", ["--steps", "-1"], "run.steps"),
    ("zero-batch", ["--batch-size", "0"], "run.batch_size"),
    ("batch-not-divisible", ["--batch-size", "6", "--set", "run.grad_accum=4"], "not divisible"),
    ("negative-lr", ["--set", "optim.lr=-1"], "optim.lr"),
    ("bad-nonfinite-mode", ["--set", "run.nonfinite=ignore"], "run.nonfinite"),
    ("missing-config-file", ["--config", "/nonexistent/c.yaml"], "cannot read config file"),
    ("config-unknown-key", lambda t: _bad_yaml(t, "run:\n  stepz: 3\n"), "run.stepz"),
    ("config-not-yaml", lambda t: _bad_yaml(t, "run: [unclosed\n"), "not valid YAML"),
    ("missing-folder", ["--set", "data.name=folder", "--set", "data.path=/nonexistent/images"], "/nonexistent/images"),
    ("missing-npz", ["--set", "data.name=npz", "--set", "data.path=/nonexistent.npz"], "/nonexistent.npz"),
    ("missing-fashion-root", ["--set", "data.name=fashion-mnist", "--set", "data.root=/nonexistent/fm"],
     "/nonexistent/fm"),
    ("bad-split", ["--set", "data.name=digits", "--set", "data.split=validation"], "unknown split 'validation'"),
    ("conditional-without-labels", ["--set", "network.conditional=true"], "no labels"),
    ("resume-missing-path", ["--resume", "/nonexistent/ckpt"], "does not exist"),
    ("resume-corrupt-checkpoint", _corrupt_run, "SHA-256"),
    ("resume-changed-config", _changed_run, "loss.objective: 'sigmoid' -> 'edm'"),
    ("resume-none-with-checkpoints", _existing_run, "already has checkpoints"),
    ("no-out", "NO-OUT", "--out"),
]


@pytest.mark.parametrize("case, args, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_naming_the_problem(tmp_path, capsys, case, args, words):
    out = ["--out", str(tmp_path / case.replace("resume-", ""))]
    if callable(args):
        args = args(tmp_path)
        out = ["--out", str(tmp_path / {"resume-changed-config": "changed",
                                        "resume-none-with-checkpoints": "existing"}.get(case, "other"))]
    elif args == "NO-OUT":
        args, out = [], []
    capsys.readouterr()
    code = main(["train", *out, "--steps", "2", *TINY, *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err, err


def test_world_size_must_divide_the_batch(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--batch-size", "5", "--dry-run"]) == 2
    assert "world size" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--steps", "1", *TINY, "--set", "run.device=cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_nonfinite_exits_1_with_the_step(tmp_path, capsys):
    with nonfinite_loss(step=1):  # the loss of step 1 is NaN (tests/_faults.py)
        code = main(["train", "--out", str(tmp_path), "--steps", "4", *TINY])
    assert code == 1
    assert "non-finite loss at step 2" in capsys.readouterr().err


def test_tensorboard_requested_without_the_package(tmp_path, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed")
    assert main(["train", "--out", str(tmp_path / "tb"), "--steps", "1", *TINY, "--set", "run.tensorboard=true"]) == 2
    assert "tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "tb").exists()
