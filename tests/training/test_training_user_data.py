"""``diffobj train`` never loses or silently replaces what a user has, and foreseeable mistakes end in one line
and an exit code, not a traceback (issue 10, training cases 1, 2, 3, 5, 10, 11, 13). Each test runs the
reproduction through the CLI and hashes the user's files before and after."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _procs import reaped
from diffusion_objectives import locking
from diffusion_objectives.cli import main
from diffusion_objectives.training import checkpoint as ck
from diffusion_objectives.training import config, logs, train

ARGS = ["--preset", "toy2d", "--batch-size", "64", "--set", "data.n=1024", "--set", "network.params.hidden=32",
        "--set", "run.sample_every=0", "--set", "run.device=cpu", "--set", "optim.warmup_images=0"]
QUIET = [*ARGS, "--no-progress"]
TIMEOUT = 300


def _hashes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` except the names in ``skip``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


def _train(capsys, out, *extra):
    capsys.readouterr()
    code = main(["train", "--out", str(out), *QUIET, *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


def _run(tmp_path, capsys, name, steps, every):
    out = tmp_path / name
    code, _, err = _train(capsys, out, "--steps", str(steps), "--checkpoint-every", str(every))
    assert code == 0, err
    return out


# ---- 1. resuming an older checkpoint of the same run -------------------------------------------------------

def test_resuming_an_older_checkpoint_over_newer_ones_is_refused_and_changes_nothing(tmp_path, capsys):
    run = _run(tmp_path, capsys, "R", 20, 5)
    before = _hashes(run)
    old = run / "checkpoints" / "step-00000015"
    code, _, err = _train(capsys, run, "--steps", "20", "--checkpoint-every", "5", "--resume", str(old),
                          "--set", "optim.lr=1e-2")
    assert code == 2, err
    assert "newer checkpoints (step-00000020)" in err and "--out NEW_RUN" in err, err
    assert _hashes(run) == before  # config.yaml, stats.jsonl and step-00000020 untouched


def test_branching_from_an_older_checkpoint_into_a_new_out_keeps_the_original(tmp_path, capsys):
    run = _run(tmp_path, capsys, "R", 20, 5)
    before = _hashes(run)
    old = run / "checkpoints" / "step-00000015"
    code, _, err = _train(capsys, tmp_path / "branch", "--steps", "20", "--checkpoint-every", "5",
                          "--resume", str(old), "--set", "optim.lr=1e-2")
    assert code == 0, err
    branch = ck.load(tmp_path / "branch" / "checkpoints" / "step-00000020")
    assert branch.config["optim"]["lr"] == 1e-2
    assert json.loads((tmp_path / "branch" / "summary.json").read_text())["resumed_from"] == str(old)
    assert _hashes(run) == before


# ---- 2. one writer per run directory -------------------------------------------------------------------------

def test_second_train_on_a_locked_out_exits_2_naming_the_holder(tmp_path, capsys):
    run = _run(tmp_path, capsys, "R", 5, 5)
    before = _hashes(run, skip=(locking.LOCK_NAME,))
    with locking.hold(run, "diffobj train --out R (the first writer)"):
        code, _, err = _train(capsys, run, "--steps", "10")
    assert code == 2, err
    assert f"pid {os.getpid()}" in err and "the first writer" in err and "in use" in err, err
    assert _hashes(run, skip=(locking.LOCK_NAME,)) == before


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2] / "src"))


def _wait_for(pred, proc, what):
    deadline = time.monotonic() + TIMEOUT
    while not pred():
        assert proc.poll() is None, f"trainer exited early ({what})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_trainer_killed_with_sigkill_does_not_block_the_next_one(tmp_path, capsys):
    run = tmp_path / "R"
    cmd = [sys.executable, "-m", "diffusion_objectives", "train", "--out", str(run), *QUIET,
           "--steps", "100000", "--checkpoint-every", "5"]
    with reaped(subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)) as proc:
        _wait_for(lambda: (run / "checkpoints" / "latest").exists(), proc, "a checkpoint")
        code, _, err = _train(capsys, run, "--steps", "100000", "--checkpoint-every", "5")
        assert code == 2 and f"pid {proc.pid}" in err, err  # a live trainer holds it
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    done = ck.find_resumable(run / "checkpoints")
    code, out, err = _train(capsys, run, "--steps", str(ck.load(done).step + 5), "--checkpoint-every", "5")
    assert code == 0, err  # the dead holder's lock was released by the kernel
    assert json.loads((run / "summary.json").read_text())["resumed_from"] == str(done)


# ---- 3. --out that is not a run -------------------------------------------------------------------------------

def test_empty_out_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _train(capsys, "", "--steps", "2")
    assert code == 2 and "--out" in err and "empty" in err, err
    assert not list(tmp_path.iterdir())


def test_out_that_is_a_users_folder_is_refused_and_left_untouched(tmp_path, capsys):
    mine = tmp_path / "my-project"
    mine.mkdir()
    (mine / "config.yaml").write_text("learning_rate: 3\n")
    (mine / "summary.json").write_text('{"my": "results"}\n')
    (mine / "notes").mkdir()
    (mine / "notes" / "todo.txt").write_text("keep me\n")
    before, mtime = _hashes(mine), mine.stat().st_mtime_ns
    code, _, err = _train(capsys, mine, "--steps", "2")
    assert code == 2, err
    assert mine.stat().st_mtime_ns == mtime  # not even a probe file was created and removed
    assert "is not a training run directory" in err and str(mine) in err, err
    assert _hashes(mine) == before and sorted(p.name for p in mine.iterdir()) == ["config.yaml", "notes",
                                                                                  "summary.json"]


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("data\n")
    code, _, err = _train(capsys, f, "--steps", "2")
    assert code == 2 and "not a directory" in err, err
    assert f.read_text() == "data\n"


# ---- 5. corrupt checkpoints are quarantined, never deleted ------------------------------------------------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_when_every_checkpoint_is_corrupt_a_rerun_keeps_them_and_does_not_restart(tmp_path, capsys):
    run = _run(tmp_path, capsys, "R", 10, 5)
    for name in ("step-00000005", "step-00000010"):
        _truncate(run / "checkpoints" / name / "ema.safetensors")  # model and state stay intact
    before = {k.split("/", 1)[1]: v for k, v in _hashes(run).items() if k.startswith("checkpoints/step-")}
    code, _, err = _train(capsys, run, "--steps", "10", "--checkpoint-every", "5")
    assert code == 2, err
    assert "does not exist" not in err
    for name in ("step-00000005", "step-00000010"):
        assert re.search(rf"{name}' is corrupt: ema.safetensors has \d+ bytes", err), err
    assert "checkpoints/corrupt" in err and "--resume none" in err and "backup" in err, err
    kept = {k.split("/", 2)[2]: v for k, v in _hashes(run).items() if k.startswith("checkpoints/corrupt/")}
    assert kept == before  # every file, byte for byte, under checkpoints/corrupt/
    with pytest.warns(UserWarning, match="'latest' names step-00000010, which is corrupt and was moved to"):
        with pytest.raises(ck.CheckpointError, match="unreadable ones are kept in .*corrupt"):
            ck.resolve_path(run)  # what sample/elbo/evaluate see meanwhile
    # a second rerun still refuses (it must not start over from step 0 now that checkpoints/ looks empty)
    code, _, err = _train(capsys, run, "--steps", "10", "--checkpoint-every", "5")
    assert code == 2 and "no usable checkpoint" in err, err
    # starting over is explicit, and the quarantined checkpoints survive it
    code, _, err = _train(capsys, run, "--steps", "10", "--checkpoint-every", "5", "--resume", "none")
    assert code == 0, err
    assert {k.split("/", 2)[2]: v for k, v in _hashes(run).items() if k.startswith("checkpoints/corrupt/")} == kept


def test_a_corrupt_newest_checkpoint_is_quarantined_and_training_resumes_from_the_previous(tmp_path, capsys):
    run = _run(tmp_path, capsys, "R", 10, 5)
    newest = run / "checkpoints" / "step-00000010"
    _truncate(newest / "ema.safetensors")
    before = _hashes(newest)
    code, _, err = _train(capsys, run, "--steps", "15", "--checkpoint-every", "5")
    assert code == 0, err
    assert "step-00000010' is corrupt: ema.safetensors" in err and "moved it to" in err, err
    assert json.loads((run / "summary.json").read_text())["resumed_from"].endswith("step-00000005")
    assert _hashes(run / "checkpoints" / "corrupt" / "step-00000010") == before


# ---- 10. damaged files never block resume or end in a traceback ------------------------------------------

def test_a_binary_stats_jsonl_does_not_block_resume(tmp_path, capsys):
    run = _run(tmp_path, capsys, "R", 10, 5)
    good = (run / "stats.jsonl").read_bytes().splitlines(keepends=True)
    garbage = b"\x00\xff\xfe binary \x89PNG\r"
    (run / "stats.jsonl").write_bytes(good[0] + garbage + b"\n" + b"".join(good[1:]) + b'{"step": "x"}\n')
    code, _, err = _train(capsys, run, "--steps", "15", "--checkpoint-every", "5")
    assert code == 0, err
    assert "2 damaged line(s)" in err and "training goes on" in err, err
    (aside,) = run.glob("stats.jsonl.damaged-*")
    assert aside.read_bytes() == garbage + b'\n{"step": "x"}\n'  # set aside byte for byte
    steps = [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15]  # records at checkpoints (log_every 10) and the end; none lost


def _rehash(path: Path, fname: str) -> None:
    """Make ``fname``'s manifest entry match its (damaged) content, as if it had been written that way."""
    m = json.loads((path / "manifest.json").read_text())
    data = (path / fname).read_bytes()
    m["files"][fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(m))


def test_a_training_state_that_does_not_unpickle_is_a_one_line_error(tmp_path, capsys):
    run = _run(tmp_path, capsys, "R", 5, 5)
    path = run / "checkpoints" / "step-00000005"
    (path / "training_state.pt").write_bytes(b"not a pickle at all")
    _rehash(path, "training_state.pt")
    before = _hashes(path)
    code, _, err = _train(capsys, tmp_path / "other", "--steps", "10", "--resume", str(path))
    assert code == 2, err
    assert "training_state.pt cannot be read although it matches its manifest hash" in err, err
    assert _hashes(path) == before


def _edit_manifest(path: Path, how: str) -> None:
    m = json.loads((path / "manifest.json").read_text())
    if how == "step-missing":
        del m["step"]
    elif how == "step-not-a-number":
        m["step"] = "five"
    elif how == "files-a-list":
        m["files"] = sorted(m["files"])
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("how, words", [("step-missing", "has step None"),
                                        ("step-not-a-number", "has step 'five'"),
                                        ("files-a-list", "malformed manifest.json")])
def test_a_malformed_manifest_is_a_one_line_error(tmp_path, capsys, how, words):
    run = _run(tmp_path, capsys, "R", 5, 5)
    path = run / "checkpoints" / "step-00000005"
    _edit_manifest(path, how)
    before = _hashes(path)
    code, _, err = _train(capsys, tmp_path / "other", "--steps", "10", "--resume", str(path))
    assert code == 2 and words in err and "corrupt" in err, err
    assert _hashes(path) == before
    with pytest.raises(ck.CheckpointError, match=words):
        ck.verify(path)


def test_a_state_without_optimizer_is_a_corrupt_checkpoint_not_a_keyerror(tmp_path, capsys):
    run = _run(tmp_path, capsys, "R", 5, 5)
    path = run / "checkpoints" / "step-00000005"
    state = torch.load(path / "training_state.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, path / "training_state.pt")
    _rehash(path, "training_state.pt")
    code, _, err = _train(capsys, tmp_path / "other", "--steps", "10", "--resume", str(path))
    assert code == 2 and "training_state.pt does not hold what training needs" in err, err


# ---- 11. a second Ctrl-C during the graceful stop ----------------------------------------------------------

def test_a_second_ctrl_c_during_the_graceful_stop_exits_130_with_the_last_checkpoint_intact(
        tmp_path, capsys, monkeypatch):
    """Real SIGINTs through the real handler: the first after the checkpoint at step 5, the second while the
    graceful stop writes its checkpoint (inside ``checkpoint.save``)."""
    real_save, real_write = ck.save, ck._write_bytes
    state = {"saves": 0, "second_sent": False}

    def save(*args, **kwargs):
        state["saves"] += 1
        path = real_save(*args, **kwargs)
        if state["saves"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: stop gracefully
        return path

    def write_bytes(path, data):
        if state["saves"] == 2 and not state["second_sent"]:
            state["second_sent"] = True
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, in the middle of the stop's checkpoint
        return real_write(path, data)

    monkeypatch.setattr(ck, "save", save)
    monkeypatch.setattr(ck, "_write_bytes", write_bytes)
    run = tmp_path / "R"
    code, _, err = _train(capsys, run, "--steps", "1000", "--checkpoint-every", "5")
    assert code == 130, err
    assert state["second_sent"] and "interrupted again" in err and "step-00000005" in err and "intact" in err, err
    monkeypatch.undo()
    assert [p.name for p in ck.list_checkpoints(run / "checkpoints")] == ["step-00000005"]
    assert ck.read_latest(run / "checkpoints").name == "step-00000005"
    ck.load(run / "checkpoints" / "step-00000005")
    assert not list((run / "checkpoints").glob(".tmp-*"))
    code, _, err = _train(capsys, run, "--steps", "8")  # and the run resumes from it
    assert code == 0, err
    assert json.loads((run / "summary.json").read_text())["resumed_from"].endswith("step-00000005")


# ---- 13. what a long job is doing, and finished runs --------------------------------------------------------

PROGRESS_LINE = re.compile(r"PROGRESS step (\d+)/20 \(\d+%\), loss [0-9.e+-]+, \d+ images/s, ETA \d+:\d\d:\d\d")


def test_progress_lines_when_the_bar_is_off(tmp_path, capsys):
    capsys.readouterr()
    code = main(["train", "--out", str(tmp_path / "R"), *ARGS, "--steps", "20", "--progress-every", "1e-9"])
    err = capsys.readouterr().err
    assert code == 0, err
    steps = [int(m.group(1)) for m in PROGRESS_LINE.finditer(err)]
    assert steps == list(range(1, 21)), err
    assert len(PROGRESS_LINE.findall((tmp_path / "R" / "log.txt").read_text())) == 20


def test_progress_defaults_to_lines_every_minute_off_a_terminal_and_validates(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # like nohup, a batch scheduler or a notebook
    assert logs.progress_mode(None) == (False, logs.DEFAULT_PROGRESS_INTERVAL_S) == (False, 60.0)
    assert logs.progress_mode(False) == (False, None) and logs.progress_mode(True) == (True, None)
    assert logs.progress_mode(2) == (False, 2.0)
    cfg = config.resolve(steps=3, overrides=["data.n=256", "network.hidden=16", "run.batch_size=16",
                                             "run.sample_every=0", "run.device=cpu"])
    for bad in (0, -1.0, float("nan"), "often"):
        with pytest.raises(ValueError, match="progress must be"):
            train(cfg, tmp_path / "never", progress=bad)
    assert not (tmp_path / "never").exists()
    summary = train(cfg, tmp_path / "api", progress=1e-9)  # the Python API offers the same lines
    assert summary["step"] == 3
    assert "PROGRESS step 3/3 (100%)" in (tmp_path / "api" / "log.txt").read_text()


def test_bad_progress_every_is_a_usage_error(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "R"), *ARGS, "--steps", "2", "--progress-every", "0"])
    assert code == 2 and "--progress-every" in capsys.readouterr().err
    assert not (tmp_path / "R").exists()


def test_rerunning_a_finished_run_says_it_is_complete_and_changes_nothing(tmp_path, capsys):
    args = ["--steps", "10", "--checkpoint-every", "5", "--set", "run.sample_every=5", "--set",
            "run.num_samples=16", "--set", "run.sample_steps=4"]
    run = tmp_path / "R"
    assert _train(capsys, run, *args)[0] == 0
    before = _hashes(run, skip=("log.txt",))
    log_before = (run / "log.txt").read_text()
    code, out, err = _train(capsys, run, *args)
    assert code == 0, err
    assert "already complete at step 10" in out and "nothing was trained" in out, out
    assert _hashes(run, skip=("log.txt",)) == before  # no new samples, checkpoint, config, stats or summary
    new_log = (run / "log.txt").read_text()[len(log_before):]
    assert "already complete" in new_log and "checkpoint step-00000010 written" not in new_log, new_log
