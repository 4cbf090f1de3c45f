"""Test helpers: the content of a directory tree, to assert that a failed command changed or lost nothing."""

import hashlib
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
