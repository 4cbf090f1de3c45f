"""``diffobj ema``: one reconstructed file per σ_rel equal to :func:`phema.reconstruct` of the snapshots, with
σ_rel, γ and step in its metadata; bad directories, mixed snapshots and bad widths exit with code 2."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffusion_objectives import phema
from diffusion_objectives.cli import main
from diffusion_objectives.training import checkpoint as ck
from diffusion_objectives.training import config, train


def _write_snapshots(directory, shape=(4, 3), run="run-a", steps=400, every=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {"net.weight": torch.randn(shape, generator=g), "net.bias": torch.randn(shape[0], generator=g)}
    tracker = phema.PowerEMA(state, [0.05, 0.10])
    for t in range(1, steps + 1):
        state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}
        tracker.update(state, t)
        if t % every == 0:
            phema.save_snapshots(tracker, directory, run=run, extra={"config": {"preset": "toy2d"}})
    return tracker


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["ema", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("SNAPSHOT_DIR", "--sigma-rel", "--step", "--out", "examples:"):
        assert flag in out


def test_writes_one_reconstruction_per_width(tmp_path, capsys):
    snap_dir, out = tmp_path / "phema", tmp_path / "ema"
    tracker = _write_snapshots(snap_dir)
    assert main(["ema", str(snap_dir), "--sigma-rel", "0.05,0.075,0.15", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    snapshots = phema.read_snapshots(snap_dir)
    for sigma_rel in (0.05, 0.075, 0.15):
        path = out / f"ema-{sigma_rel:.6g}.safetensors"
        assert str(path) in printed
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        assert float(meta["sigma_rel"]) == sigma_rel and float(meta["gamma"]) == phema.sigma_rel_to_gamma(sigma_rel)
        assert meta["step"] == "400" and meta["snapshots"] == "16" and meta["run"] == "run-a"
        assert json.loads(meta["extra"]) == {"config": {"preset": "toy2d"}}
        expected = phema.reconstruct(snapshots, sigma_rel)
        assert set(tensors) == set(expected)
        for k in expected:
            assert torch.equal(tensors[k], expected[k])
    # the tracked width comes back as tracked (float32 weights)
    with safe_open(str(out / "ema-0.05.safetensors"), "pt") as f:
        torch.testing.assert_close(f.get_tensor("net.weight"), tracker.averages[0]["net.weight"], rtol=0, atol=1e-5)


def test_step_option_uses_snapshots_up_to_it(tmp_path):
    snap_dir, out = tmp_path / "phema", tmp_path / "ema"
    _write_snapshots(snap_dir)
    assert main(["ema", str(snap_dir), "--sigma-rel", "0.1", "--step", "200", "--out", str(out)]) == 0
    with safe_open(str(out / "ema-0.1.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "200" and f.metadata()["snapshots"] == "8"
    for step in ("10", "401"):
        assert main(["ema", str(snap_dir), "--sigma-rel", "0.1", "--step", step, "--out", str(out)]) == 2


@pytest.mark.parametrize("value", ["nan", "inf", "-0.05", "0", "0.31", "abc", "0.05,0.05"])
def test_bad_sigma_rel_exits_2(tmp_path, capsys, value):
    _write_snapshots(tmp_path / "phema", steps=100)
    assert main(["ema", str(tmp_path / "phema"), "--sigma-rel", value, "--out", str(tmp_path / "ema")]) == 2
    assert "diffobj ema: error: --sigma-rel" in capsys.readouterr().err
    assert not (tmp_path / "ema").exists()


def test_bad_snapshot_directories_exit_2(tmp_path, capsys):
    out = str(tmp_path / "ema")
    assert main(["ema", str(tmp_path / "missing"), "--sigma-rel", "0.1", "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["ema", str(tmp_path / "empty"), "--sigma-rel", "0.1", "--out", out]) == 2
    assert "no post-hoc EMA snapshots" in capsys.readouterr().err
    _write_snapshots(tmp_path / "models", shape=(4, 3), steps=100)
    _write_snapshots(tmp_path / "models", shape=(5, 3), steps=150, every=150)
    assert main(["ema", str(tmp_path / "models"), "--sigma-rel", "0.1", "--out", out]) == 2
    assert "snapshots of different models" in capsys.readouterr().err
    _write_snapshots(tmp_path / "runs", run="run-a", steps=100)
    _write_snapshots(tmp_path / "runs", run="run-b", steps=150, every=150)
    assert main(["ema", str(tmp_path / "runs"), "--sigma-rel", "0.1", "--out", out]) == 2
    assert "snapshots of different training runs" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "phema-0000000001-0.1.safetensors").write_bytes(b"not a safetensors file")
    assert main(["ema", str(tmp_path / "junk"), "--sigma-rel", "0.1", "--out", out]) == 2
    assert "cannot read snapshot" in capsys.readouterr().err
    assert not (tmp_path / "ema").exists()


def test_from_a_training_run_writes_checkpoints_that_sample_reads(tmp_path, capsys):
    """A run trained with ema.posthoc_sigma_rels: its tracked width comes back as its last snapshot (and as the
    tracker state in the run's checkpoint), in a verified training checkpoint with the run's config that
    ``diffobj sample`` accepts; an untracked width is reconstructed from the snapshots alike."""
    run, out = tmp_path / "run", tmp_path / "ema"
    overrides = ["data.n=512", "network.hidden=16", "network.depth=1", "network.fourier_features=8",
                 "run.batch_size=32", "run.sample_every=0", "run.checkpoint_every=0", "run.device=cpu",
                 "ema.posthoc_sigma_rels=[0.05, 0.1]", "ema.snapshot_every=4"]
    torch.set_num_threads(1)
    train(config.resolve("toy2d", steps=16, overrides=overrides), run, progress=False)
    assert main(["ema", str(run), "--sigma-rel", "0.05,0.07", "--out", str(out)]) == 0
    snapshots = phema.read_snapshots(run / "phema")
    assert [s.step for s in snapshots] == [4, 4, 8, 8, 12, 12, 16, 16]
    tracked = load_file(run / "phema" / "phema-0000000016-0.05.safetensors")
    final = ck.load(run / "checkpoints" / "step-00000016")
    for sigma_rel in (0.05, 0.07):
        path = out / f"ema-{sigma_rel:g}" / "checkpoints" / "step-00000016"
        ck.verify(path)
        got = ck.load(path)
        assert got.config == final.config and got.state["posthoc_ema"]["sigma_rel"] == sigma_rel
        for k, v in final.model.items():
            assert torch.equal(got.model[k], v)  # the raw weights: the run's checkpoint at that step
        expected = phema.reconstruct(snapshots, sigma_rel)
        for k in expected:
            assert torch.equal(got.ema[k], expected[k])
    got = ck.load(out / "ema-0.05" / "checkpoints" / "step-00000016")
    for k, v in tracked.items():
        torch.testing.assert_close(got.ema[k], v, rtol=0, atol=1e-5)
        torch.testing.assert_close(final.state["posthoc_ema"][f"average.0.{k}"], v, rtol=0, atol=0)
    samples = tmp_path / "samples"
    assert main(["sample", str(out / "ema-0.07"), "--n", "8", "--steps", "4", "--sampler", "heun", "--no-progress",
                 "--out", str(samples)]) == 0
    assert any(samples.iterdir())
