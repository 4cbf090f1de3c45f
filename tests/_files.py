"""Test helpers: the content of a directory tree, to assert that a failed command changed or lost nothing."""

import errno
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path


def snapshot(*roots: Path) -> dict[str, str]:
    """``{path: sha256}`` of every file under ``roots`` (a file root is hashed itself)."""
    out = {}
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def one_line_error(err: str, command: str) -> str:
    """The single line of ``err`` (stderr of a failed command); asserts it is ``diffobj COMMAND: error: ...``
    and that no traceback was printed."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # argparse prints its usage lines before
    assert errors[0].startswith(f"diffobj {command}: error: "), err
    return errors[0]


def mount_tmpfs(where: Path, options: str) -> bool:
    """Mount a tmpfs at ``where`` (root only); False if this machine does not allow it."""
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                       timeout=30)
    return r.returncode == 0


def readonly_directory(tmp_path, monkeypatch):
    """(A generator for a fixture: ``yield from readonly_directory(tmp_path, monkeypatch)``.)
    A directory nobody can create files in: a read-only tmpfs (root), mode 0555 (others), or, where
    neither is possible (root without mount rights), one whose file creation fails with EROFS."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if mount_tmpfs(d, "ro,size=64k"):
        yield d
        subprocess.run(["umount", str(d)], timeout=30)
        return
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir) == d:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    yield d


def bad_outputs(tmp_path: Path, readonly: Path, suffix: str) -> list[tuple[str, str]]:
    """(--out value, the cause the message must give) for every unusable output path of issue 10 item 9."""
    plain = tmp_path / "plain"
    if not plain.exists():
        plain.write_text("the user's file\n")
    long_name = "x" * 300 + suffix
    return [
        ("/dev/null", "not a"),
        (str(readonly / f"out{suffix}"), "is read-only"),
        (str(tmp_path / long_name), f"is {len(long_name)} bytes"),
        (str(plain / f"below{suffix}"), "is not a directory"),
        ("", "an empty path is not allowed"),
    ] + ([(str(plain), "not a directory")] if not suffix else [])
