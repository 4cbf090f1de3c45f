"""Subprocesses in tests: a child still running when a test leaves (by an assertion or a timeout) is killed
and reaped, so no trainer or sampler outlives the test that started it."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """``with reaped(subprocess.Popen(...)) as proc:`` the process, killed and waited for on leaving if it
    still runs."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
