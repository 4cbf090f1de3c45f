"""The run directory as a whole (:class:`RunDir`: where each file of a run lives), which directories training
may write into, atomic small files, and the ``stats.jsonl`` log kept readable across resumes.

Layout of ``RUN/``: ``checkpoints/`` (:class:`~.checkpoint.CheckpointStore`), ``config.yaml`` (the resolved
config), ``log.txt``, ``stats.jsonl`` (:mod:`~.logs`), ``summary.json``, ``samples/step-NNNNNNNN.png``
(:mod:`~.previews`), ``phema/`` (post-hoc EMA snapshots), ``tensorboard/`` (with ``run.tensorboard``) and the
lock file of :mod:`~diffusion_objectives.locking`.

A run directory is recognised by its ``checkpoints/`` folder holding nothing but what
:mod:`~diffusion_objectives.training.checkpoint` writes. Training writes only into a new or empty directory
(a lone ``.lock`` file counts as empty) or into a run directory; anything else is refused before a byte is
written, so a user's folder is never overwritten.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionError
from ..locking import LOCK_NAME
from .checkpoint import CheckpointStore, checkpoint_name

__all__ = ["PHEMA_DIR", "RunDir", "is_run_dir", "check_writable_run_dir", "write_text_atomic", "rewrite_stats"]

PHEMA_DIR = "phema"


@dataclass(frozen=True)
class RunDir:
    """The files of one training run under ``path`` (see the module docstring)."""

    path: Path

    @property
    def checkpoints(self) -> CheckpointStore:
        return CheckpointStore.of_run(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def log_file(self) -> Path:
        return self.path / "log.txt"

    @property
    def stats_file(self) -> Path:
        return self.path / "stats.jsonl"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    @property
    def phema_dir(self) -> Path:
        return self.path / PHEMA_DIR

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    def preview_path(self, step: int) -> Path:
        """The preview samples after ``step``: ``samples/step-NNNNNNNN.png`` (named like the checkpoint)."""
        return self.samples_dir / f"{checkpoint_name(step)}.png"


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run directory: it has a ``checkpoints/`` folder holding only
    checkpoints, ``latest``, temporary files and the ``corrupt``/``superseded-*`` folders."""
    return RunDir(Path(path)).checkpoints.holds_only_ours()


def check_writable_run_dir(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` as a Path if training may write into it: absent, empty (but for a lock file) or a run
    directory. Otherwise :class:`~diffusion_objectives.errors.OptionError` naming it; nothing is written."""
    if str(run_dir).strip() == "":
        raise OptionError("the run directory is an empty path; give a directory name")
    path = Path(run_dir)
    if not path.exists():
        return path
    if not path.is_dir():
        raise OptionError(f"run directory {str(path)!r} exists and is not a directory")
    if is_run_dir(path) or all(p.name == LOCK_NAME for p in path.iterdir()):
        return path
    raise OptionError(f"{str(path)!r} is not empty and is not a training run directory (no checkpoints/ of "
                      "ours); refusing to write into it, nothing in it was changed. Choose a new or empty "
                      "directory")


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one rename: a reader (or a crash) sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _record_step(line: bytes) -> int | None:
    """The ``step`` of one ``stats.jsonl`` line, or None if the line is not a readable record."""
    try:
        rec = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    step = rec.get("step") if isinstance(rec, dict) else None
    return step if type(step) is int else None


def rewrite_stats(path: Path, upto_step: int, warn: Callable[[str], None]) -> None:
    """Keep the records of ``stats.jsonl`` with ``step <= upto_step`` (on resume, later records belong to
    steps about to be recomputed). Damaged lines (not UTF-8 JSON with an integer ``step``, e.g. a line cut
    by a crash) never stop training: they are moved, byte for byte, into ``stats.jsonl.damaged-<UTC time>``
    next to it, with a message to ``warn``."""
    if not path.exists():
        return
    kept, damaged = [], []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        step = _record_step(line)
        if step is None:
            damaged.append(line)
        elif step <= upto_step:
            kept.append(line)
    if damaged:
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        with open(aside, "ab") as f:
            f.write(b"".join(line + b"\n" for line in damaged))
        warn(f"{path}: {len(damaged)} damaged line(s) (not readable JSON records) moved to {aside.name}; "
             "training goes on")
    write_text_atomic(path, "".join(line.decode("utf-8") + "\n" for line in kept))
