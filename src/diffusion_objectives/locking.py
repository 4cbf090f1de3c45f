"""An exclusive lock on a run or study directory, held for the life of any command that writes into it.

Two writers in one directory interleave their files (a ``config.yaml`` of one run next to the checkpoints of
another, lost ``stats.jsonl`` records). Every writer therefore holds the directory's lock::

    from diffusion_objectives import locking

    with locking.hold(run_dir, "diffobj train --out runs/x"):
        ...  # write into run_dir

``hold(directory, command)`` creates ``directory`` if needed, opens ``<directory>/.lock`` and takes
``fcntl.flock(LOCK_EX | LOCK_NB)`` on it. On success it writes the holder (pid, host, start time, command) as
one JSON line into the file and yields a :class:`Lock`. If another process holds the lock it raises
:class:`LockedError` (an :class:`~diffusion_objectives.errors.OptionError`, so ``diffobj`` exits 2) whose message
names the holder. The kernel releases a ``flock`` when its process dies, so a lock left by a killed process
(SIGKILL, OOM) never blocks the next writer; the stale holder line in ``.lock`` is simply overwritten.

The lock is per open file description: a second ``hold`` on the same directory inside the same process is
also refused, which catches a command that would write into one directory twice. ``holder(directory)`` reads
the recorded holder (or ``None``) without taking the lock. Locks need a local file system or one with
working ``flock`` (NFSv4, Lustre with ``flock``); on a file system without it ``hold`` raises ``OSError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .errors import OptionError

__all__ = ["LOCK_NAME", "Lock", "LockedError", "hold", "holder"]

LOCK_NAME = ".lock"


class LockedError(OptionError):
    """Another process holds the directory's lock; the message names it (pid, host, start time, command)."""


@dataclasses.dataclass(frozen=True)
class Lock:
    """The lock held on ``directory`` (file ``path``) by this process."""

    directory: Path
    path: Path
    pid: int
    host: str
    started: str
    command: str


def _describe(info: dict | None) -> str:
    if not info:
        return "another process (no holder recorded)"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"
            f" ({info.get('command', '?')})")


def holder(directory: str | os.PathLike) -> dict | None:
    """The holder recorded in ``<directory>/.lock`` (keys pid, host, started, command), or None.

    The record may be stale (its process has died); only :func:`hold` tells whether the lock is held.
    """
    try:
        text = (Path(directory) / LOCK_NAME).read_text(encoding="utf-8", errors="replace").strip()
        info = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


@contextlib.contextmanager
def hold(directory: str | os.PathLike, command: str) -> Iterator[Lock]:
    """Hold the exclusive lock on ``directory`` for the ``with`` block; :class:`LockedError` if it is held.

    ``command`` is recorded for the message another writer sees (e.g. ``"diffobj train"``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OSError(exc.errno, f"cannot lock {path}: {exc.strerror}") from exc
            raise LockedError(f"{directory} is in use by {_describe(holder(directory))}; wait for it to "
                              f"finish or stop it (a killed process releases the lock)") from None
        lock = Lock(directory=directory, path=path, pid=os.getpid(), host=socket.gethostname(),
                    started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    command=command)
        record = {"pid": lock.pid, "host": lock.host, "started": lock.started, "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        try:
            yield lock
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
