"""The ``diffobj`` boundary (issue 10): every command exits 2 for bad input and 1 for a runtime failure with one
line ``diffobj CMD: error: <path or option>: <cause>`` (a traceback only with --debug / DIFFOBJ_DEBUG=1),
130 on Ctrl-C; outputs that cannot be written are refused up front naming the option and the path; non-finite
numbers are refused wherever a registry parameter is parsed; and the set-up leaves a consistent environment.

The commands here need no trained run (weightings, fid-ref, train's config checks); those that do are in
test_cli_eval_safety.py. Every case asserts that the files the user had are unchanged."""

import errno
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import diffusion_objectives
from _files import bad_outputs, mount_tmpfs, one_line_error, readonly_directory, snapshot
from diffusion_objectives.cli import _common, main
from diffusion_objectives.cli import weightings as cli_weightings


@pytest.fixture
def readonly_dir(tmp_path, monkeypatch):
    yield from readonly_directory(tmp_path, monkeypatch)


PY = [sys.executable, "-m", "diffusion_objectives"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ---- exit codes and the one-line message -----------------------------------------------------------------

def test_version_names_the_package_version():
    r = subprocess.run([*PY, "--version"], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0
    assert r.stdout.strip() == f"diffobj (diffusion-objectives) {diffusion_objectives.__version__}"


def test_runtime_failure_is_one_line_exit_1_traceback_only_with_debug(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("the computation failed\nacross two lines")

    monkeypatch.setattr(cli_weightings, "_show", broken)
    assert main(["weightings", "show", "sigmoid"]) == 1
    line = one_line_error(capsys.readouterr().err, "weightings")
    assert line == ("diffobj weightings: error: RuntimeError: the computation failed across two lines "
                    "(--debug for the traceback)")
    for argv, env in ((["--debug", "weightings", "show", "sigmoid"], "0"),
                      (["weightings", "show", "sigmoid", "--debug"], "0"),
                      (["weightings", "show", "sigmoid"], "1")):
        monkeypatch.setenv("DIFFOBJ_DEBUG", env)
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "in broken" in err
        assert err.rstrip().endswith("diffobj weightings: error: RuntimeError: the computation failed across two "
                                     "lines")


def test_keyboard_interrupt_exits_130_in_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_weightings, "_show", interrupted)
    assert main(["weightings", "show", "sigmoid"]) == 130
    assert capsys.readouterr().err == "diffobj weightings: interrupted\n"


def test_usage_error_through_the_console_is_exit_2_one_line():
    r = subprocess.run([*PY, "weightings", "show", "sigmoid:bias=nan"], capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert r.returncode == 2 and r.stdout == ""
    assert one_line_error(r.stderr, "weightings") == ("diffobj weightings: error: weighting 'sigmoid': parameter "
                                                      "bias must be a finite number, got nan")


# ---- non-finite numbers (item 8) ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["sigmoid:bias=nan", "sigmoid:bias=inf", "sigmoid:bias=-inf", "edm:p_mean=nan"])
def test_weightings_show_refuses_non_finite_parameters(spec, capsys):
    assert main(["weightings", "show", spec]) == 2
    line = one_line_error(capsys.readouterr().err, "weightings")
    assert "must be a finite number" in line and spec.split(":")[1].split("=")[0] in line


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_train_set_non_finite_registry_parameter_is_refused_before_anything_is_written(value, tmp_path, capsys):
    out = tmp_path / "R"
    assert main(["train", "--set", f"loss.weighting.bias={value}", "--out", str(out), "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err, "train")
    assert "weighting 'sigmoid': parameter bias must be a finite number" in line
    assert not out.exists() or snapshot(out) == {}


def test_train_non_utf8_config_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(b"\xff\xfe\x00steps: 3\n")
    before = snapshot(tmp_path)
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 2
    line = one_line_error(capsys.readouterr().err, "train")
    assert f"config file {str(cfg)!r} is not UTF-8 text" in line
    assert snapshot(tmp_path) == before


# ---- output paths (item 9) -----------------------------------------------------------------------------------

def test_weightings_plot_refuses_unusable_outputs(tmp_path, readonly_dir, capsys):
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"the user's picture")
    for out, cause in bad_outputs(tmp_path, readonly_dir, ".png"):
        before = snapshot(tmp_path)
        assert main(["weightings", "plot", "sigmoid", "--out", out]) == 2, out
        line = one_line_error(capsys.readouterr().err, "weightings")
        assert line.startswith("diffobj weightings: error: --out: ") and cause in line, (out, line)
        if out:
            assert repr(out)[:60] in line
        assert snapshot(tmp_path) == before


def test_weightings_plot_unsupported_format_lists_the_formats(tmp_path, capsys):
    out = tmp_path / "w.txt"
    assert main(["weightings", "plot", "sigmoid", "--out", str(out)]) == 2
    line = one_line_error(capsys.readouterr().err, "weightings")
    assert f"--out: cannot write {str(out)!r}: unsupported format '.txt'; use one of: .png, .pdf, .svg" in line
    assert not out.exists()
    assert main(["weightings", "plot", "sigmoid", "--out", str(tmp_path / "w.svg")]) == 0
    assert (tmp_path / "w.svg").read_text().lstrip().startswith("<?xml")


def test_fid_ref_refuses_unusable_outputs(tmp_path, readonly_dir, capsys):
    (tmp_path / "dir.npz").mkdir()
    cases = [*bad_outputs(tmp_path, readonly_dir, ".npz"), (str(tmp_path / "dir.npz"), "is a directory"),
             (str(tmp_path / "r.txt"), "unsupported format '.txt'; use one of: .npz")]
    for out, cause in cases:
        before = snapshot(tmp_path)
        assert main(["fid-ref", "digits", "--param", "limit=20", "--out", out, "--no-progress"]) == 2, out
        line = one_line_error(capsys.readouterr().err, "fid-ref")
        assert line.startswith("diffobj fid-ref: error: --out: ") and cause in line, (out, line)
        assert snapshot(tmp_path) == before


def test_fid_ref_full_disk_is_exit_1_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing (a 16 KiB tmpfs where this machine allows mounting one; otherwise the flush fails
    as a full disk would) is a runtime failure: exit 1, the path named, no partial file."""
    full = tmp_path / "full"
    full.mkdir()
    mounted = mount_tmpfs(full, "size=16k")
    if not mounted:
        def no_space(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_common.os, "fsync", no_space)
    try:
        out = full / "r.npz"
        assert main(["fid-ref", "digits", "--param", "limit=50", "--out", str(out), "--no-progress"]) == 1
        line = one_line_error(capsys.readouterr().err, "fid-ref")
        assert line.startswith(f"diffobj fid-ref: error: {out}: No space left on device"), line
        assert list(full.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(full)], timeout=30)


# ---- fid-ref inputs (items 10, 11) ---------------------------------------------------------------------------

def test_fid_ref_limit_one_is_exit_2(tmp_path, capsys):
    out = tmp_path / "r.npz"
    assert main(["fid-ref", "digits", "--param", "limit=1", "--out", str(out), "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err, "fid-ref")
    assert "dataset 'digits' with limit=1 has 1 image(s); reference statistics (a covariance) need at least 2" in line
    assert not out.exists()


@pytest.mark.parametrize("content, cause", [(b"", "is empty (0 bytes)"), (b"mu,sigma\n1,2\n", "is not an .npz"),
                                            (b"PK\x03\x04broken", "cannot read")])
def test_fid_ref_npz_dataset_that_is_not_an_npz_is_exit_2(tmp_path, capsys, content, cause):
    bad = tmp_path / "data.npz"
    bad.write_bytes(content)
    before = snapshot(tmp_path)
    code = main(["fid-ref", "npz", "--param", f"path={bad}", "--out", str(tmp_path / "r.npz"), "--no-progress"])
    assert code == 2
    one_line_error(capsys.readouterr().err, "fid-ref")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("content, cause", [(b"", "is empty (0 bytes)"), (b"\x00\x01not npz", "is not an .npz"),
                                            (b"PK\x03\x04broken", "cannot read")])
def test_reference_that_is_not_an_npz_names_the_file(tmp_path, content, cause):
    from diffusion_objectives import metrics as M
    from diffusion_objectives.errors import OptionError

    bad = tmp_path / "ref.npz"
    bad.write_bytes(content)
    with pytest.raises(OptionError, match=re.escape(cause)) as info:
        M.load_reference(bad)
    assert str(bad) in str(info.value)
    good = tmp_path / "good.npz"
    np.savez(good, mu=np.zeros(2), sigma=np.eye(2))
    assert M.load_reference(good).dim == 2


# ---- set-up (item 14) -------------------------------------------------------------------------------------------

def test_pip_check_passes_in_the_environment():
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
