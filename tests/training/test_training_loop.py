"""The training loop: bit-identical resume across processes, SIGKILL/SIGTERM, non-finite handling, config
changes on resume, gradient accumulation, logging, and that learning happens (2-D mixture, digits)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from _faults import nonfinite_loss
from _procs import reaped
from diffusion_objectives.errors import OptionError
from diffusion_objectives.training import build_network, config, load_for_inference, train
from diffusion_objectives.training import checkpoint as ck
from diffusion_objectives.training.distributed import Dist
from diffusion_objectives.training.loop import NonFiniteError, StepStatistics

TOY = ["data.n=2048", "network.hidden=32", "network.depth=2", "network.fourier_features=16",
       "run.batch_size=32", "run.sample_every=0", "run.log_every=1", "optim.warmup_images=0", "run.device=cpu"]
# a tiny conditional U-Net on digits with dropout, flips, label dropout, accumulation and the adaptive schedule:
# every random stream of the loop is exercised
DIGITS = ["data.name=digits", "data.params={split: train, hflip: true, limit: 256}", "network.name=unet",
          "network.params={channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [4], "
          "dropout: 0.1, emb_mult: 2}", "network.conditional=true", "run.batch_size=16", "run.grad_accum=2",
          "loss.adaptive.enabled=true", "loss.adaptive.bins=10", "loss.objective=edm-monotonic",
          "run.sample_every=0", "run.log_every=1", "optim.warmup_images=0", "run.device=cpu"]
TIMEOUT = 120


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _cmd(out, steps, overrides, *extra):
    sets = [a for o in overrides for a in ("--set", o)]
    return [sys.executable, "-m", "diffusion_objectives", "train", "--out", str(out), "--steps", str(steps),
            "--no-progress", *sets, *extra]


def _run(out, steps, overrides, *extra, check=True):
    p = subprocess.run(_cmd(out, steps, overrides, *extra), env=_env(), capture_output=True, text=True,
                       timeout=TIMEOUT)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _run_here(out, steps, overrides, checkpoint_every):
    """The same run as :func:`_run` but in this process (single thread, as the subprocesses)."""
    cfg = config.resolve("toy2d", steps=steps, checkpoint_every=checkpoint_every, overrides=overrides)
    return train(cfg, out, progress=False)


def _stats(run):
    return [json.loads(line) for line in (Path(run) / "stats.jsonl").read_text().splitlines()]


def _final(run, step):
    d = Path(run) / "checkpoints" / f"step-{step:08d}"
    ck.verify(d)
    return (load_file(d / "model.safetensors"), load_file(d / "ema.safetensors"),
            torch.load(d / "training_state.pt", weights_only=True))


def _assert_identical(a, b):
    for x, y in zip(a[:2], b[:2], strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k
    sa, sb = a[2], b[2]
    assert sa["step"] == sb["step"] and sa["images_seen"] == sb["images_seen"]
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    for i in oa["state"]:
        for k in oa["state"][i]:
            assert torch.equal(oa["state"][i][k], ob["state"][i][k]), (i, k)
    for part in ("adaptive", "uncertainty_head", "posthoc_ema"):
        if sa.get(part) is not None:
            assert sa[part].keys() == sb[part].keys(), part
            for k in sa[part]:
                assert torch.equal(sa[part][k], sb[part][k]), (part, k)
        else:
            assert sb.get(part) is None, part


def _losses(run):
    return [(r["step"], r["loss"], r["loss_per_logsnr_bin"], r["lr"], r["grad_norm"], r.get("w_eff_per_logsnr_bin"),
             r.get("u_per_logsnr_bin")) for r in _stats(run)]


def _snapshots(run):
    return {p.name: load_file(p) for p in sorted((Path(run) / "phema").glob("*.safetensors"))}


# EDM2's learned uncertainty weighting and post-hoc EMA snapshots on top of TOY
UNCERTAINTY = [*TOY, "loss.uncertainty.enabled=true", "loss.uncertainty.channels=16",
               "ema.posthoc_sigma_rels=[0.05, 0.1]", "ema.snapshot_every=5"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [TOY, DIGITS], ids=["toy", "digits-adaptive-dropout-accum"])
def test_resume_in_new_process_is_bit_identical(tmp_path, overrides):
    n, k = 10, 4
    _run_here(tmp_path / "straight", n, overrides, 0)
    _run_here(tmp_path / "split", k, overrides, 0)
    _run(tmp_path / "split", n, overrides, "--checkpoint-every", "0")  # a new process, same directory: resumes
    assert "resuming from" in (tmp_path / "split" / "log.txt").read_text()
    _assert_identical(_final(tmp_path / "straight", n), _final(tmp_path / "split", n))
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "split")
    assert [r["step"] for r in _stats(tmp_path / "split")] == list(range(1, n + 1))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [TOY, UNCERTAINTY], ids=["toy", "uncertainty-posthoc-ema"])
def test_sigkill_at_random_step_then_rerun_matches_uninterrupted(tmp_path, overrides):
    n = 40
    args = (overrides, "--checkpoint-every", "3")
    _run_here(tmp_path / "straight", n, overrides, 3)
    kill_at = random.Random().randint(4, 30)
    with reaped(subprocess.Popen(_cmd(tmp_path / "killed", n, *args), env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)) as proc:
        deadline = time.time() + TIMEOUT
        stats = tmp_path / "killed" / "stats.jsonl"
        while time.time() < deadline and proc.poll() is None:
            if stats.exists() and len(stats.read_text().splitlines()) >= kill_at:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    _run(tmp_path / "killed", n, *args)
    _assert_identical(_final(tmp_path / "straight", n), _final(tmp_path / "killed", n))
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "killed"), f"killed near step {kill_at}"
    straight, killed = _snapshots(tmp_path / "straight"), _snapshots(tmp_path / "killed")
    assert straight.keys() == killed.keys()
    assert len(straight) == (2 * n // 5 if overrides is UNCERTAINTY else 0)
    for name in straight:
        for k in straight[name]:
            assert torch.equal(straight[name][k], killed[name][k]), (name, k)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    with reaped(subprocess.Popen(_cmd(run, 10**6, TOY, "--checkpoint-every", "0"), env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) as proc:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and proc.poll() is None:
            if (run / "stats.jsonl").exists() and len((run / "stats.jsonl").read_text().splitlines()) >= 3:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "interrupted" in out and "SIGTERM" in (run / "log.txt").read_text()
    latest = ck.read_latest(run / "checkpoints")
    ck.verify(latest)
    last = _stats(run)[-1]["step"]
    assert latest.name == f"step-{last:08d}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["step"] == last


def test_nonfinite_stops_naming_step_range_and_seed_and_keeps_checkpoint(tmp_path):
    cfg = config.resolve(steps=8, checkpoint_every=2, seed=5, overrides=TOY)
    with pytest.raises(NonFiniteError) as info, nonfinite_loss(step=3):
        train(cfg, tmp_path)
    msg = str(info.value)
    assert "step 4" in msg and "seed 5" in msg and "λ" in msg and "step-00000002" in msg
    assert ck.read_latest(tmp_path / "checkpoints").name == "step-00000002"
    assert [p.name for p in ck.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]
    ck.verify(tmp_path / "checkpoints" / "step-00000002")


def test_nonfinite_skip_and_cap(tmp_path):
    cfg = config.resolve(steps=6, overrides=TOY + ["run.nonfinite=skip"])
    with nonfinite_loss(step=3):
        train(cfg, tmp_path / "skip")
    stats = _stats(tmp_path / "skip")
    assert [r["skipped_steps"] for r in stats] == [0, 0, 0, 1, 0, 0]
    assert stats[3]["loss"] is None and stats[4]["loss"] is not None
    # a diverged model produces non-finite losses every step: the cap stops it
    cfg = config.resolve(steps=30, overrides=TOY + ["optim.lr=1e30", "optim.grad_clip=null", "run.nonfinite=skip",
                                                    "run.max_consecutive_skips=3"])
    with pytest.raises(NonFiniteError, match="consecutive"):
        train(cfg, tmp_path / "cap")


def test_changed_config_on_resume_is_refused_with_a_diff(tmp_path):
    train(config.resolve(steps=2, overrides=TOY), tmp_path)
    changed = config.resolve(steps=4, objective="edm", overrides=TOY + ["run.batch_size=16"])
    with pytest.raises(OptionError) as info:
        train(changed, tmp_path)
    msg = str(info.value)
    assert "loss.objective: 'sigmoid' -> 'edm'" in msg and "run.batch_size: 32 -> 16" in msg
    assert "run.steps" not in msg  # allowed to change
    summary = train(changed, tmp_path, override_resume_check=True)
    assert summary["step"] == 4 and summary["resumed_from"].endswith("step-00000002")
    with pytest.raises(OptionError, match="already has checkpoints"):
        train(changed, tmp_path, resume="none")


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    fp32 = TOY + ["run.precision=fp32"]  # an fp32 identity: run.precision=auto may pick bf16 on this CPU
    a = train(config.resolve(steps=3, overrides=fp32), tmp_path / "a")
    b = train(config.resolve(steps=3, overrides=fp32 + ["run.grad_accum=4"]), tmp_path / "b")
    wa = load_for_inference(a["checkpoint"], ema=False).model.state_dict()
    wb = load_for_inference(b["checkpoint"], ema=False).model.state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    for x, y in zip(la, lb, strict=True):
        assert x[1] == pytest.approx(y[1], rel=1e-5)


def test_stats_and_run_layout(tmp_path):
    cfg = config.resolve(steps=5, checkpoint_every=2, overrides=TOY + ["run.log_every=2"])
    summary = train(cfg, tmp_path)
    assert summary["status"] == "finished" and summary["step"] == 5
    for name in ("config.yaml", "stats.jsonl", "log.txt", "samples", "checkpoints/latest", "summary.json"):
        assert (tmp_path / name).exists(), name
    # records at every log interval, at checkpoints and at the end
    stats = _stats(tmp_path)
    assert [r["step"] for r in stats] == [2, 4, 5]
    rec = stats[0]
    assert rec["images_seen"] == 64 and len(rec["loss_per_logsnr_bin"]) == 10 and rec["logsnr_range"] == [-15, 15]
    finite_bins = [v for v in rec["loss_per_logsnr_bin"] if v is not None]
    assert finite_bins and all(v >= 0 for v in finite_bins)
    assert {"step_s", "steps_per_s", "images_per_s", "elapsed_s"} <= set(rec["time"])
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000005"
    assert config.from_dict(config.TrainConfig, config.load_yaml(tmp_path / "config.yaml")).network.params["dim"] == 2


def test_uncertainty_run_logs_the_effective_weighting_of_its_head(tmp_path):
    """stats.jsonl's w_eff per λ-bin is w(λ) e^{−u(λ)} normalised on the bin centres, recomputed here in float64
    from the checkpointed head (u = b + Σ a_i √2 cos(−f_i λ/8 + φ_i), KG23's sigmoid w = 1/(1 + e^{λ − 2}));
    the head trains in its own AdamW group without weight decay and stays out of the model and EMA files."""
    overrides = [*TOY, "loss.uncertainty.enabled=true", "loss.uncertainty.channels=8", "loss.log_bins=6",
                 "run.log_every=3", "optim.weight_decay=0.1"]
    train(config.resolve("toy2d", steps=6, checkpoint_every=0, overrides=overrides), tmp_path, progress=False)
    model, ema, state = _final(tmp_path, 6)
    head = {k: v.double().numpy() for k, v in state["uncertainty_head"].items()}
    network_keys = set(load_for_inference(tmp_path).model.state_dict())
    assert set(model) == set(ema) == network_keys  # the network's tensors only
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert np.abs(head["linear.weight"]).max() > 0  # the head was trained (it starts at zero)
    rec = _stats(tmp_path)[-1]
    lam = np.linspace(-15, 15, 7)
    lam = (lam[:-1] + lam[1:]) / 2
    assert np.allclose(rec["logsnr_bin_centres"], lam)
    features = np.sqrt(2) * np.cos(np.outer(-lam / 8, head["freqs"]) + head["phases"])
    u = features @ head["linear.weight"][0] + head["linear.bias"][0]
    w = 1 / (1 + np.exp(lam - 2.0))
    np.testing.assert_allclose(rec["u_per_logsnr_bin"], u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec["w_per_logsnr_bin"], w / np.trapezoid(w, lam), rtol=1e-9)
    w_eff = w * np.exp(-u)
    np.testing.assert_allclose(rec["w_eff_per_logsnr_bin"], w_eff / np.trapezoid(w_eff, lam), rtol=1e-5)


def _fixed_loss(model, objective, x, seed=0):
    """The weighted loss at fixed ε and λ (same draws for every model compared)."""
    g = torch.Generator().manual_seed(seed)
    lam = objective.schedule.sample(x.shape[0], g)
    eps = torch.randn(x.shape, generator=g)
    with torch.no_grad():
        return float(objective.loss().loss_at(model, x, eps, lam).loss.mean())


@pytest.mark.slow
def test_learning_on_a_2d_mixture(tmp_path):
    """Loss and ELBO improve over the initial network, and samples land on the 8 modes of the ring."""
    from diffusion_objectives import samplers
    from diffusion_objectives.likelihoods.vlb import elbo

    cfg = config.resolve("toy2d", steps=600, objective="edm", overrides=[
        "data.n=8192", "network.hidden=64", "network.depth=3", "run.batch_size=256", "run.sample_every=600",
        "run.num_samples=512", "run.sample_steps=16", "optim.lr=3e-3", "optim.warmup_images=5000",
        "ema.half_life_images=20000", "run.device=cpu"])
    train(cfg, tmp_path)
    assert (tmp_path / "samples" / "step-00000600.png").exists()  # the scatter plot of the EMA samples
    trained = load_for_inference(tmp_path)
    untrained = build_network(trained.config.network)  # the initial weights (seeded)
    test = trained.dataset(split="test", n=4096)
    obj = trained.objective
    exact = test.mixture.denoiser(obj.parameterization)  # the closed-form optimum: the lowest loss possible

    def optimum(z, lam):
        return exact(z.double(), lam.double()).float()

    best, before, after = (_fixed_loss(m, obj, test.data) for m in (optimum, untrained, trained.model))
    assert after - best < 0.25 * (before - best)  # training closes most of the gap to the optimum
    g = torch.Generator().manual_seed(1)
    nelbo = elbo(trained.model, obj.parameterization, test.data[:512], samples=32, generator=g).total.mean()
    nelbo0 = elbo(untrained, obj.parameterization, test.data[:512], samples=32, generator=g).total.mean()
    nll = -test.mixture.log_prob(test.data[:512]).mean()
    assert nelbo < nelbo0 - 1.0, (nelbo, nelbo0)  # the ELBO improves by more than a nat per example
    assert nelbo > nll - 0.05  # sanity: −ELBO bounds the true negative log-likelihood from above

    noise = torch.randn(1024, 2, generator=torch.Generator().manual_seed(0))
    means = test.mixture.means
    x = samplers.dpmpp_2m(trained.model, obj.parameterization, noise, samplers.grid_edm(32)).double()
    x0 = samplers.dpmpp_2m(untrained, obj.parameterization, noise, samplers.grid_edm(32)).double()
    near, near0 = (torch.cdist(v, means).min(dim=1).values < 0.3 for v in (x, x0))
    # ring std 0.1: 99% of the data lies within 0.3 of its mode
    assert float(near.double().mean()) > 0.75 and float(near0.double().mean()) < 0.3
    counts = torch.bincount(torch.cdist(x, means).argmin(dim=1), minlength=8)
    assert int(counts.min()) > 1024 / 8 / 3  # every mode gets a fair share


@pytest.mark.slow
def test_digits_short_run_loss_decreases(tmp_path):
    cfg = config.resolve("digits", steps=60, overrides=[
        "network.channels=16", "run.batch_size=32", "run.sample_every=0", "optim.warmup_images=320",
        "ema.half_life_images=500", "run.device=cpu"])
    train(cfg, tmp_path)
    loaded = load_for_inference(tmp_path, ema=False)
    first = build_network(loaded.config.network)  # the initial weights (seeded)
    test = loaded.dataset(split="test")
    x = test.data[:256]
    labels = test.labels[:256]

    def model(net):
        return lambda z, lam: net(z, lam, labels) if loaded.config.network.conditional else net(z, lam)

    after = _fixed_loss(model(loaded.model), loaded.objective, x)
    before = _fixed_loss(model(first), loaded.objective, x)
    assert after < 0.7 * before
    stats = _stats(tmp_path)
    assert sum(r["loss"] for r in stats[-2:]) < sum(r["loss"] for r in stats[:2])


@given(adaptive_bins=st.one_of(st.none(), st.integers(1, 12)), seed=st.integers(0, 2**31))
def test_step_statistics_pack_unpack_round_trip(adaptive_bins, seed):
    """The one-vector layout: [bad loss, bad grad, stop, loss sum, count, (adaptive sums, adaptive counts)];
    unpacking the packed vector gives every field back, and one process's all-reduce is the identity."""
    g = torch.Generator().manual_seed(seed)
    n = 5 + (0 if adaptive_bins is None else 2 * adaptive_bins)
    vec = torch.randn(n, generator=g, dtype=torch.float64)
    stats = StepStatistics.unpack(vec, adaptive_bins)
    assert [float(stats.bad_loss), float(stats.bad_grad), float(stats.stop), float(stats.loss_sum),
            float(stats.count)] == vec[:5].tolist()
    if adaptive_bins is None:
        assert stats.adaptive_sum is None and stats.adaptive_count is None
    else:
        assert stats.adaptive_sum.tolist() == vec[n - 2 * adaptive_bins:n - adaptive_bins].tolist()
        assert stats.adaptive_count.tolist() == vec[n - adaptive_bins:].tolist()
    assert torch.equal(stats.pack(), vec)
    reduced = stats.all_reduce(Dist())
    assert torch.equal(reduced.pack(), vec)
