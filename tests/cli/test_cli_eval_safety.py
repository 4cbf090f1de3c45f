"""``diffobj sample``, ``elbo`` and ``evaluate`` on hostile input (issue 10): nothing a user has is changed or
lost, memory stays bounded, and every failure is one line with exit 2 (bad input) or 1 (runtime).

Each test runs the reproduction of the issue through the CLI and compares the files before and after."""

import errno
import json
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from _files import bad_outputs, mount_tmpfs, one_line_error, readonly_directory, snapshot
from _procs import reaped
from conftest import TINY_TRAIN, TINY_TRAIN_COMMON
from diffusion_objectives import locking
from diffusion_objectives.cli import _common, main
from diffusion_objectives.cli import sample as cli_sample

SAMPLE = ["--steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return tiny_runs


@pytest.fixture
def readonly_dir(tmp_path, monkeypatch):
    yield from readonly_directory(tmp_path, monkeypatch)


@pytest.fixture
def previous(runs, tmp_path):
    """A directory holding the outputs of an earlier `diffobj sample` (seeds 0-3) and a file of the user's."""
    out = tmp_path / "samples"
    assert main(["sample", str(runs / "digits"), "--seeds", "0-3", "--out", str(out), *SAMPLE]) == 0
    (out / "notes.txt").write_text("the user's notes\n")
    return out


def _no_temporaries(parent):
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".") and "tmp" in p.name]


# ---- item 8: non-finite guidance; outputs all or nothing ----------------------------------------------------

@pytest.mark.parametrize("flag", [["--guidance", "nan"], ["--guidance=inf"], ["--guidance=-inf"]])
def test_sample_non_finite_guidance_is_exit_2_and_keeps_the_previous_samples(runs, previous, capsys, flag):
    before = snapshot(previous.parent)
    with pytest.raises(SystemExit) as info:  # an argparse usage error
        main(["sample", str(runs / "digits"), "--seeds", "4-9", "--out", str(previous), *SAMPLE, *flag])
    assert info.value.code == 2
    line = one_line_error(capsys.readouterr().err, "sample")
    assert "argument --guidance: must be a finite number" in line
    assert snapshot(previous.parent) == before


def test_sample_failing_while_writing_leaves_the_previous_outputs_intact(runs, previous, monkeypatch, capsys):
    """A full disk after some PNGs were written: exit 1 naming --out; the old samples.json, images and the user's
    file are as they were, and no new image stands beside the old samples.json."""
    before = snapshot(previous.parent)
    calls = []

    def png_then_full(pixels):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(pixels)

    real = cli_sample._png_bytes
    monkeypatch.setattr(cli_sample, "_png_bytes", png_then_full)
    assert main(["sample", str(runs / "digits"), "--seeds", "10-19", "--out", str(previous), *SAMPLE]) == 1
    line = one_line_error(capsys.readouterr().err, "sample")
    assert line.startswith(f"diffobj sample: error: {previous}: No space left on device; nothing was written")
    assert snapshot(previous.parent) == before
    _no_temporaries(previous.parent)


def test_sample_non_finite_samples_are_a_runtime_error_and_write_nothing(runs, previous, monkeypatch, capsys):
    from diffusion_objectives.evaluation import protocol as E

    real = E.generate

    def diverged(*args, **kw):
        x, labels = real(*args, **kw)
        x[1] = float("nan")
        return x, labels

    monkeypatch.setattr(E, "generate", diverged)
    before = snapshot(previous.parent)
    assert main(["sample", str(runs / "digits"), "--seeds", "4-9", "--out", str(previous), *SAMPLE]) == 1
    line = one_line_error(capsys.readouterr().err, "sample")
    assert "RuntimeError: 1 of 6 samples hold non-finite values (NaN or inf); nothing was written" in line
    assert snapshot(previous.parent) == before


def test_sample_success_replaces_samples_json_and_keeps_other_files(runs, previous):
    assert main(["sample", str(runs / "digits"), "--seeds", "4-5", "--out", str(previous), *SAMPLE]) == 0
    assert json.loads((previous / "samples.json").read_text())["seeds"] == "4-5"
    with np.load(previous / "samples.npz") as f:
        assert f["seeds"].tolist() == [4, 5]
    assert (previous / "notes.txt").read_text() == "the user's notes\n" and (previous / "seed-000000.png").is_file()
    _no_temporaries(previous.parent)


# ---- item 9: output paths --------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["sample", "elbo", "evaluate"])
def test_unusable_out_is_exit_2_naming_the_path(runs, tmp_path, readonly_dir, capsys, command):
    suffix = ".json" if command == "evaluate" else ""
    extra = {"sample": ["--n", "2", "--steps", "3"], "elbo": ["--n", "4", "--samples", "8"],
             "evaluate": ["--metrics", "bpd", "--n-elbo", "4", "--elbo-samples", "8"]}[command]
    cases = bad_outputs(tmp_path, readonly_dir, suffix)
    if command == "evaluate":
        (tmp_path / "dir.json").mkdir()
        cases.append((str(tmp_path / "dir.json"), "is a directory"))
    for out, cause in cases:
        before = snapshot(tmp_path, runs / "digits")
        assert main([command, str(runs / "digits"), "--out", out, "--no-progress", *extra]) == 2, out
        line = one_line_error(capsys.readouterr().err, command)
        assert line.startswith(f"diffobj {command}: error: --out: ") and cause in line, (out, line)
        assert snapshot(tmp_path, runs / "digits") == before


@pytest.mark.parametrize("command", ["sample", "elbo"])
def test_full_disk_while_writing_is_exit_1_and_writes_nothing(runs, tmp_path, monkeypatch, capsys, command):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_common.os, "fsync", no_space)
    out = tmp_path / "out"
    extra = ["--n", "2", "--steps", "3"] if command == "sample" else ["--n", "4", "--samples", "8"]
    assert main([command, str(runs / "digits"), "--out", str(out), "--no-progress", *extra]) == 1
    line = one_line_error(capsys.readouterr().err, command)
    assert line.startswith(f"diffobj {command}: error: {out}: No space left on device")
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---- item 7: bounded memory ------------------------------------------------------------------------------

def _run_measured(argv, tmp_path):
    """Run ``diffobj argv`` in a child and return (returncode, stderr, the child's peak RSS in MiB)."""
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stderr.write(r.stderr); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "diffusion_objectives", *argv],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return r.returncode, r.stderr, int(r.stdout.split()[-1]) / 1024


def test_sample_a_billion_seeds_is_refused_up_front_with_its_size(runs, tmp_path):
    out = tmp_path / "big"
    code, err, peak_mib = _run_measured(["sample", str(runs / "digits"), "--seeds", "0-1000000000",
                                         "--out", str(out), "--no-progress"], tmp_path)
    assert code == 2
    line = one_line_error(err, "sample")
    assert "--seeds/--n: 1000000001 samples of shape [1, 8, 8] needs about" in line and "GiB" in line
    assert peak_mib < 1500 and not out.exists()


def test_elbo_800_million_draws_is_refused_up_front_with_its_size(runs, tmp_path):
    before = snapshot(runs / "digits")
    code, err, peak_mib = _run_measured(["elbo", str(runs / "digits"), "--samples", "800000000", "--no-progress"],
                                        tmp_path)
    assert code == 2
    line = one_line_error(err, "elbo")
    assert "--samples: 359 examples x 800000000 λ-draws needs about" in line and "GiB of memory" in line
    assert peak_mib < 1500 and snapshot(runs / "digits") == before


def test_evaluate_oversized_requests_are_refused_up_front(runs, tmp_path, capsys):
    for extra, message in ((["--n", "4000000000"], "--seeds/--n: 4000000000 samples needs about"),
                           (["--elbo-samples", "800000000"], "--elbo-samples: 256 examples x 800000000 λ-draws")):
        assert main(["evaluate", str(runs / "digits"), "--out", str(tmp_path / "m.json"), "--no-progress",
                     *extra]) == 2
        assert message in one_line_error(capsys.readouterr().err, "evaluate")
    assert not (tmp_path / "m.json").exists()


# ---- item 11: seeds overflow ---------------------------------------------------------------------------------

def test_sample_seed_overflow_is_exit_2(runs, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(runs / "digits"), "--seeds", "99999999999999999999", "--out", str(out), *SAMPLE]) == 2
    line = one_line_error(capsys.readouterr().err, "sample")
    assert "--seeds: seed 99999999999999999999 in '99999999999999999999' is too large; seeds lie in 0 … " in line
    assert not out.exists()


# ---- item 10: input files ------------------------------------------------------------------------------------

def _toy_samples(runs, tmp_path):
    out = tmp_path / "toy-samples"
    assert main(["sample", str(runs / "toy"), "--n", "8", "--out", str(out), *SAMPLE]) == 0
    return out


def _empty_file(runs, tmp_path):
    (tmp_path / "s.npz").write_bytes(b"")
    return tmp_path / "s.npz"


def _csv_file(runs, tmp_path):
    (tmp_path / "s.npz").write_text("seed,x\n0,1\n")
    return tmp_path / "s.npz"


@pytest.mark.parametrize("make, cause", [
    (_empty_file, "is empty (0 bytes)"),
    (_csv_file, "is not an .npz (zip) archive"),
    (_toy_samples, "holds samples of shape [8, 2]; this model draws [1, 8, 8]"),
])
def test_evaluate_from_samples_that_are_not_samples_of_this_model_is_exit_2(runs, tmp_path, capsys, make, cause):
    src = make(runs, tmp_path)
    before = snapshot(tmp_path, runs / "digits")
    assert main(["evaluate", str(runs / "digits"), "--from-samples", str(src), "--metrics", "fd",
                 "--out", str(tmp_path / "m.json"), "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err, "evaluate")
    assert line.startswith("diffobj evaluate: error: --from-samples: ") and cause in line
    assert snapshot(tmp_path, runs / "digits") == before


@pytest.mark.parametrize("content, cause", [(b"", "is empty (0 bytes)"), (b"mu sigma", "is not an .npz")])
def test_evaluate_ref_that_is_not_an_npz_is_exit_2(runs, tmp_path, capsys, content, cause):
    ref = tmp_path / "ref.npz"
    ref.write_bytes(content)
    before = snapshot(tmp_path, runs / "digits")
    assert main(["evaluate", str(runs / "digits"), "--metrics", "fd", "--ref", str(ref), "--n", "8", "--steps", "3",
                 "--out", str(tmp_path / "m.json"), "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err, "evaluate")
    assert f"reference statistics {str(ref)!r} {cause}" in line
    assert snapshot(tmp_path, runs / "digits") == before


# ---- item 6 and 2: results beside the checkpoints, never pruned; the run's lock ----------------------------

def test_elbo_and_evaluate_results_survive_continued_training(runs, tmp_path, capsys):
    run = runs / "digits"
    assert main(["elbo", str(run), "--n", "8", "--samples", "8", "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--metrics", "bpd", "--n-elbo", "8", "--elbo-samples", "8",
                 "--no-progress"]) == 0
    first = sorted((run / "checkpoints").glob("step-*"))[-1]
    results = run / "eval" / first.name
    assert sorted(p.name for p in results.rglob("*") if p.is_file()) == [
        "elbo.json", "metrics.json", "per_logsnr.csv", "per_logsnr.png"]
    assert not (first / "metrics.json").exists() and not (first / "elbo-test").exists()
    kept = snapshot(results)
    args = [a if a != "6" else "12" for a in TINY_TRAIN["digits"]]  # continue from step 6 to 12
    assert main(["train", "--out", str(run), *args, "--checkpoint-every", "2", *TINY_TRAIN_COMMON]) == 0
    capsys.readouterr()
    assert not first.exists()  # pruned by the continued training ...
    assert snapshot(results) == kept  # ... which left the results alone


def test_writing_into_a_run_while_another_process_holds_it_is_exit_2(runs, tmp_path, capsys):
    run = runs / "digits"
    before = snapshot(run)
    with locking.hold(run, "diffobj train --out digits"):
        held = snapshot(run)
        assert main(["elbo", str(run), "--n", "4", "--samples", "8", "--no-progress"]) == 2
        line = one_line_error(capsys.readouterr().err, "elbo")
        assert f"{run} is in use by pid" in line and "diffobj train --out digits" in line
        assert snapshot(run) == held
    assert {k: v for k, v in snapshot(run).items() if not k.endswith(".lock")} == {
        k: v for k, v in before.items() if not k.endswith(".lock")}


def test_ctrl_c_while_sampling_exits_130_in_one_line_and_writes_nothing(runs, tmp_path):
    """A real SIGINT to `diffobj sample` writing into a run: exit 130, one line, no output, the lock released."""
    run = runs / "digits"
    out = run / "samples-interrupted"
    before = {k: v for k, v in snapshot(run).items() if not k.endswith(".lock")}
    cmd = [sys.executable, "-m", "diffusion_objectives", "sample", str(run), "--n", "200000", "--batch-size", "16",
           "--no-png", "--out", str(out), "--no-progress"]
    with reaped(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})) as child:
        deadline = time.monotonic() + 120
        while (locking.holder(run) or {}).get("pid") != child.pid:  # it holds the run: imports and loading done
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.1)
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err == "diffobj sample: interrupted\n"
    assert not out.exists() and {k: v for k, v in snapshot(run).items() if not k.endswith(".lock")} == before
    _no_temporaries(run)
    with locking.hold(run, "test"):  # released
        pass


def test_sample_onto_a_nearly_full_file_system_is_refused_up_front(runs, tmp_path, monkeypatch, capsys):
    """64 PNGs and an npz do not fit in 64 KiB (a tmpfs where this machine allows mounting one; otherwise the
    file system reports 64 KiB free): exit 2 with the estimate, before anything is drawn or written."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = mount_tmpfs(small, "size=64k")
    if not mounted:
        monkeypatch.setattr(_common.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=64 << 10))
    try:
        out = small / "s"
        assert main(["sample", str(runs / "digits"), "--n", "64", "--out", str(out), *SAMPLE]) == 2
        line = one_line_error(capsys.readouterr().err, "sample")
        assert "--seeds/--n: 64 samples of shape [1, 8, 8] needs about" in line and f"of disk at {str(out)!r}" in line
        assert list(small.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], timeout=30)
