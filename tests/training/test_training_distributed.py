"""Distributed training on the CPU (gloo) with ``torchrun``: 2 processes keep identical parameters and match
one process with the same global batch; a non-finite loss on one rank stops both without a hang."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_objectives import locking
from diffusion_objectives.training import checkpoint as ck
from diffusion_objectives.training import config, train

OVERRIDES = ["data.n=2048", "network.hidden=32", "network.depth=2", "network.fourier_features=16",
             "run.batch_size=32", "run.sample_every=0", "run.log_every=1", "optim.warmup_images=0",
             "loss.adaptive.enabled=true", "loss.adaptive.bins=20", "loss.stratified=true", "run.device=cpu",
             "run.precision=fp32"]  # fp32 tolerances below; run.precision=auto may pick bf16 on this CPU
TIMEOUT = 180

pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out, steps, overrides, nproc=2, worker=("-m", "diffusion_objectives")):
    """``diffobj train`` in ``nproc`` workers; ``worker``: what torchrun starts (a module or a script and its
    arguments) in front of ``train ...``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           *worker, "train", "--out", str(out), "--steps", str(steps), "--no-progress", *sets]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _stats(run):
    return [json.loads(line) for line in (Path(run) / "stats.jsonl").read_text().splitlines()]


def test_two_processes_agree_and_match_one_process(tmp_path):
    steps = 6
    p = _torchrun(tmp_path / "ddp", steps, OVERRIDES)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == steps
    assert len(summary["param_digests"]) == 2 and len(set(summary["param_digests"])) == 1  # ranks identical

    torch.set_num_threads(1)
    train(config.resolve("toy2d", steps=steps, overrides=OVERRIDES), tmp_path / "single")  # the CLI default
    name = f"step-{steps:08d}"
    for kind in ("model", "ema"):
        a = load_file(tmp_path / "ddp" / "checkpoints" / name / f"{kind}.safetensors")
        b = load_file(tmp_path / "single" / "checkpoints" / name / f"{kind}.safetensors")
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=f"{kind} {k}")
    sa = torch.load(tmp_path / "ddp" / "checkpoints" / name / "training_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "single" / "checkpoints" / name / "training_state.pt", weights_only=True)
    torch.testing.assert_close(sa["adaptive"]["ema"], sb["adaptive"]["ema"], rtol=1e-5, atol=1e-8)
    assert torch.equal(sa["adaptive"]["ema_weight"], sb["adaptive"]["ema_weight"])  # same bins observed
    for ra, rb in zip(_stats(tmp_path / "ddp"), _stats(tmp_path / "single"), strict=True):
        assert ra["step"] == rb["step"]
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)


def test_uncertainty_head_and_posthoc_ema_agree_across_two_processes_and_one(tmp_path):
    """With EDM2's log-variance head (its gradients averaged over the ranks like the network's) and the post-hoc
    EMA tracker, 2 gloo processes end with the head, network and tracker of 1 process (same global batch)."""
    steps = 4
    overrides = [*OVERRIDES, "loss.uncertainty.enabled=true", "loss.uncertainty.channels=16",
                 "ema.posthoc_sigma_rels=[0.1]"]
    p = _torchrun(tmp_path / "ddp", steps, overrides)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(set(json.loads((tmp_path / "ddp" / "summary.json").read_text())["param_digests"])) == 1
    torch.set_num_threads(1)
    train(config.resolve("toy2d", steps=steps, overrides=overrides), tmp_path / "single")
    name = f"step-{steps:08d}"
    sa = torch.load(tmp_path / "ddp" / "checkpoints" / name / "training_state.pt", weights_only=True)
    sb = torch.load(tmp_path / "single" / "checkpoints" / name / "training_state.pt", weights_only=True)
    assert sa["uncertainty_head"].keys() == sb["uncertainty_head"].keys()
    assert torch.abs(sb["uncertainty_head"]["linear.weight"]).max() > 0  # the head moved from its zero start
    for part in ("uncertainty_head", "posthoc_ema"):
        for k in sb[part]:
            torch.testing.assert_close(sa[part][k], sb[part][k], rtol=1e-4, atol=1e-6, msg=f"{part} {k}")
    for ra, rb in zip(_stats(tmp_path / "ddp"), _stats(tmp_path / "single"), strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
        assert ra["w_eff_per_logsnr_bin"] == pytest.approx(rb["w_eff_per_logsnr_bin"], rel=1e-4)


def test_nonfinite_on_one_rank_stops_both(tmp_path):
    """The loss of rank 1 is NaN at step 4 (injected by the worker script tests/_faults.py)."""
    faults = (str(Path(__file__).parents[1] / "_faults.py"), "--nonfinite-step", "4", "--nonfinite-rank", "1")
    p = _torchrun(tmp_path / "nan", 20, OVERRIDES + ["run.checkpoint_every=2"], worker=faults)
    assert p.returncode != 0
    assert "non-finite loss at step 5" in p.stderr
    latest = ck.read_latest(tmp_path / "nan" / "checkpoints")
    assert latest.name == "step-00000004"
    ck.verify(latest)


def test_a_locked_run_stops_every_rank_with_exit_2_and_no_hang(tmp_path):
    """Rank 0 takes the run's lock; when another writer holds it, every rank learns so and exits (no rank left
    waiting in a collective), naming the holder."""
    run = tmp_path / "locked"
    with locking.hold(run, "the other writer"):
        p = _torchrun(run, 4, OVERRIDES)
    assert p.returncode != 0
    assert f"pid {os.getpid()}" in p.stderr and "the other writer" in p.stderr, p.stderr[-3000:]
    # a rank left waiting would hang until the timeout; torchrun may SIGTERM the second rank as it exits
    assert "diffobj train: error:" in p.stderr and "exitcode  : 2" in p.stderr, p.stderr[-3000:]
    assert sorted(q.name for q in run.iterdir()) == [locking.LOCK_NAME]  # nothing written
