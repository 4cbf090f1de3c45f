"""Checkpoints: round trip, atomic publication (an injected failure keeps the previous checkpoint and
``latest``), corruption detection (truncation, bit flips, missing manifest), pruning, inference loading."""

import json

import pytest
import torch

from diffusion_objectives.errors import OptionError
from diffusion_objectives.training import checkpoint as ck
from diffusion_objectives.training import config, train

TINY = ["data.n=2048", "network.hidden=32", "network.depth=2", "network.fourier_features=16",
        "run.batch_size=32", "run.sample_every=0", "run.log_every=1", "optim.warmup_images=0",
        "run.device=cpu"]


def _state(step, value=1.0):
    model = {"w": torch.full((3, 4), value), "b": torch.arange(4.0)}
    ema = {"w": torch.full((3, 4), value / 2), "b": torch.zeros(4)}
    optimizer = {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]}
    state = {"step": step, "images_seen": 10 * step, "optimizer": optimizer, "adaptive": None,
             "consecutive_skips": 0}
    return model, ema, state


def _save(root, step, keep=2, value=1.0):
    model, ema, state = _state(step, value)
    return ck.save(root, step, model=model, ema=ema, state=state, config={"seed": 0, "run": {"steps": step}},
                   keep=keep, images_seen=10 * step)


def test_round_trip_layout_and_weights_only_state(tmp_path):
    path = _save(tmp_path, 7)
    assert path.name == "step-00000007"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["model.safetensors", "ema.safetensors", "training_state.pt", "config.yaml", "manifest.json"])
    assert (tmp_path / "latest").read_text().strip() == "step-00000007"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == ck.FORMAT_VERSION and manifest["step"] == 7
    c = ck.load(path)
    model, ema, state = _state(7)
    assert all(torch.equal(c.model[k], model[k]) for k in model) and all(torch.equal(c.ema[k], ema[k]) for k in ema)
    assert c.state["images_seen"] == 70 and c.config == {"seed": 0, "run": {"steps": 7}}
    # the training state is plain data: loadable with weights_only=True
    torch.load(path / "training_state.pt", weights_only=True)
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == {"seed": 0, "run": {"steps": 7}} and meta["format_version"] == "1"


def test_keep_prunes_oldest_only_after_publishing(tmp_path):
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert ck.read_latest(tmp_path).name == "step-00000004"


@pytest.mark.parametrize("target", ["_write_manifest", "_fsync_dir_after_rename", "verify", "_write_latest"])
def test_failure_midway_keeps_previous_checkpoint_and_latest(tmp_path, monkeypatch, target):
    _save(tmp_path, 1)
    before = {p.name: p.read_bytes() for p in (tmp_path / "step-00000001").iterdir()}

    def boom(*args, **kwargs):
        raise OSError("injected failure")

    if target == "_fsync_dir_after_rename":  # fail right after the temp dir was renamed into place
        real = ck.os.replace

        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith("step-00000002"):
                raise OSError("injected failure")

        monkeypatch.setattr(ck.os, "replace", replace)
    else:
        monkeypatch.setattr(ck, target, boom)
    with pytest.raises(OSError, match="injected"):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert ck.read_latest(tmp_path).name == "step-00000001"
    assert {p.name: p.read_bytes() for p in (tmp_path / "step-00000001").iterdir()} == before
    ck.verify(tmp_path / "step-00000001")
    assert not list(tmp_path.glob(".tmp-*"))
    # whatever was left of step 2 is either absent or complete; auto-resume picks a valid one
    found = ck.find_resumable(tmp_path, warn=lambda m: None)
    ck.verify(found)


def _corrupt(path, how):
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    if how == "truncate":
        f.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "bitflip":
        data[-3] ^= 0x10
        f.write_bytes(bytes(data))
    elif how == "no-manifest":
        (path / "manifest.json").unlink()
    elif how == "missing-file":
        (path / "training_state.pt").unlink()
    elif how == "bad-version":
        m = json.loads((path / "manifest.json").read_text())
        m["format_version"] = 999
        (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("how, match", [("truncate", "truncated"), ("bitflip", "SHA-256"),
                                        ("no-manifest", "partial"), ("missing-file", "missing"),
                                        ("bad-version", "format version")])
def test_corruption_detected_skipped_on_auto_error_when_explicit(tmp_path, how, match):
    _save(tmp_path, 1)
    path = _save(tmp_path, 2)
    _corrupt(path, how)
    with pytest.raises(ck.CheckpointError, match=match):
        ck.verify(path)
    with pytest.raises(OptionError, match=match):
        ck.load(ck.resolve_path(path))
    warnings = []
    assert ck.find_resumable(tmp_path, warn=warnings.append).name == "step-00000001"
    assert any(match in w for w in warnings)


def test_resolve_path_errors(tmp_path):
    with pytest.raises(OptionError, match="does not exist"):
        ck.resolve_path(tmp_path / "nope")
    with pytest.raises(OptionError, match="neither"):
        ck.resolve_path(tmp_path)


def test_resave_of_the_same_checkpoint_is_idempotent(tmp_path, recwarn):
    a = _save(tmp_path, 3)
    before = {p.name: p.read_bytes() for p in a.iterdir()}
    assert _save(tmp_path, 3) == a  # identical weights and config: kept as is, nothing moved
    assert {p.name: p.read_bytes() for p in a.iterdir()} == before and not recwarn.list
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["step-00000003"]


def test_a_different_checkpoint_is_never_kept_under_the_new_ones_name(tmp_path):
    a = _save(tmp_path, 3)
    old = {p.name: p.read_bytes() for p in a.iterdir()}
    with pytest.warns(UserWarning, match="step-00000003 holds different weights or config; moved it to"):
        b = _save(tmp_path, 3, value=5.0)
    assert a == b and torch.equal(ck.load(a).model["w"], torch.full((3, 4), 5.0))  # the new one is published
    (aside,) = tmp_path.glob("superseded-*/step-00000003")  # the old one is kept, byte for byte
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == old


def test_a_broken_leftover_is_quarantined_not_deleted(tmp_path):
    a = _save(tmp_path, 3)
    _corrupt(a, "bitflip")
    broken = {p.name: p.read_bytes() for p in a.iterdir()}
    with pytest.warns(UserWarning, match="unreadable .*SHA-256.*moved it to .*corrupt"):
        _save(tmp_path, 3, value=5.0)
    assert torch.equal(ck.load(a).model["w"], torch.full((3, 4), 5.0))
    assert {p.name: p.read_bytes() for p in (tmp_path / "corrupt" / "step-00000003").iterdir()} == broken


def test_pruning_never_removes_a_newer_checkpoint(tmp_path):
    for s in (1, 2, 5):
        _save(tmp_path, s, keep=2)
    _save(tmp_path, 3, keep=2)  # 5 is not superseded by 3; 1 is (two older than 3 would exceed keep)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003", "step-00000005"]


def test_train_explicit_corrupt_checkpoint_is_an_error_auto_skips(tmp_path):
    cfg = config.resolve(steps=4, checkpoint_every=2, overrides=TINY)
    train(cfg, tmp_path / "run")
    ckpts = ck.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step-00000002", "step-00000004"]
    _corrupt(ckpts[-1], "bitflip")
    with pytest.raises(OptionError, match="SHA-256"):
        train(config.resolve(steps=6, checkpoint_every=2, overrides=TINY), tmp_path / "other", resume=str(ckpts[-1]))
    summary = train(config.resolve(steps=6, checkpoint_every=2, overrides=TINY), tmp_path / "run")
    assert summary["resumed_from"].endswith("step-00000002") and summary["step"] == 6
    assert "skipping" in (tmp_path / "run" / "log.txt").read_text()


def test_load_for_inference(tmp_path):
    cfg = config.resolve(steps=3, overrides=TINY + ["loss.adaptive.enabled=true", "loss.weighting.bias=-1"])
    train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    for where in (run, run / "checkpoints", run / "checkpoints" / "step-00000003"):
        loaded = ck.load_for_inference(where)
        assert loaded.step == 3 and loaded.images_seen == 96 and not loaded.model.training
        assert loaded.config.loss.weighting.params == {"bias": -1}
        assert loaded.objective.schedule.name == "adaptive"
        assert loaded.objective.schedule.ema_weight.sum() > 0  # the learned adaptive state came back
        z = torch.randn(5, 2)
        assert loaded.model(z, torch.zeros(5)).shape == (5, 2)
        assert loaded.dataset(n=10).data.shape == (10, 2)
    raw = ck.load_for_inference(tmp_path / "run", ema=False)
    c = ck.load(tmp_path / "run" / "checkpoints" / "step-00000003")
    assert all(torch.equal(raw.model.state_dict()[k], c.model[k]) for k in c.model)
    with pytest.raises(OptionError, match="does not exist"):
        ck.load_for_inference(tmp_path / "missing")
