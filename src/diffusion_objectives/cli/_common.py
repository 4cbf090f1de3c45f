"""What the ``diffobj`` commands share: output-path checks, atomic and all-or-nothing writes, number parsing.

Every command that writes checks its output up front with :func:`check_output_dir` (a directory it
creates or writes into) or :func:`check_output_path` (one file), before any work is done, so a bad path is a
usage error (exit 2) naming the option and the path rather than a traceback after minutes of work:

- an empty path; a path component longer than the file system allows (usually 255 bytes);
- a directory given where a file is meant and vice versa, or something that is not a regular file
  (``/dev/null``, a FIFO);
- a parent that is a file, or a directory that cannot be written (read-only mount, permissions: probed by
  creating and removing a temporary file, which is also right for root);
- a file name whose suffix is not one of the supported formats (the message lists them).

A failure while writing (a full file system) is a runtime error: the ``OSError`` carries the path, and
``diffobj`` exits 1 with one line naming it. :func:`staged_dir` makes the outputs of one command appear all
or nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import OptionError

__all__ = ["check_output_dir", "check_output_path", "write_atomic", "write_json", "staged_dir", "finite_float",
           "NAME_MAX"]

NAME_MAX = 255  # bytes per path component on Linux, macOS and Windows file systems


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest existing ancestor (``.`` for a relative path none of whose parts exist)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _name_max(where: Path) -> int:
    try:
        return int(os.pathconf(where, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def _check_components(path: Path, option: str) -> None:
    limit = _name_max(_nearest_existing(path.parent if path.parent != path else path))
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise OptionError(f"{option} {str(path)!r}: path component {part[:40]!r}… is {len(os.fsencode(part))}"
                              f" bytes; the file system allows at most {limit}")


def _check_writable_dir(directory: Path, option: str, shown: Path) -> None:
    """``directory`` exists and is a directory this process can create files in (probed, not os.access)."""
    if not directory.is_dir():
        raise OptionError(f"{option} {str(shown)!r}: {str(directory)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".diffobj-probe-", dir=directory)
    except OSError as exc:
        reason = "is read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else exc.strerror
        raise OptionError(f"{option} {str(shown)!r}: {str(directory)!r} {reason} (cannot create files there)"
                          ) from None
    os.close(fd)
    os.unlink(probe)


def _as_path(path: str | os.PathLike, option: str) -> Path:
    if path is None or str(path).strip() == "":
        raise OptionError(f"{option}: an empty path is not allowed")
    return Path(path)


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``path`` can be used as an output directory (existing or to be created); return it.

    Raises :class:`OptionError` naming ``option`` and the path: empty, over-long component, an existing
    non-directory (a file, ``/dev/null``), or no writable directory to create it in."""
    path = _as_path(path, option)
    _check_components(path, option)
    if path.exists() and not path.is_dir():
        raise OptionError(f"{option} {str(path)!r}: exists and is not a directory")
    _check_writable_dir(_nearest_existing(path), option, path)
    return path


def check_output_path(path: str | os.PathLike, option: str = "--out", formats: Sequence[str] = ()) -> Path:
    """Check that ``path`` can be written as one output file; return it.

    ``formats``: the allowed suffixes (``(".png", ".pdf")``); any other suffix is refused with the list.
    Also refused: empty, over-long component, an existing directory or non-regular file (``/dev/null``), a
    parent that is a file or is not writable."""
    path = _as_path(path, option)
    _check_components(path, option)
    if formats and path.suffix.lower() not in formats:
        raise OptionError(f"{option} {str(path)!r}: unsupported format {path.suffix or '(no suffix)'!r}; "
                          f"use one of: {', '.join(formats)}")
    if path.is_dir():
        raise OptionError(f"{option} {str(path)!r}: is a directory; give a file name")
    if os.path.lexists(path) and not path.is_file():
        raise OptionError(f"{option} {str(path)!r}: exists and is not a regular file")
    _check_writable_dir(_nearest_existing(path.parent), option, path)
    return path


def write_atomic(path: str | Path, data: bytes | str | Callable[[Any], None], fsync: bool = True) -> Path:
    """Write ``path`` atomically: into a temporary file in the same directory, then ``os.replace``.

    ``data``: bytes, text, or a function that writes to a binary file object. ``fsync=False`` skips the
    flush to disk (for many small files that can be rewritten). A failed write leaves ``path`` as it was
    and raises ``OSError`` with ``filename=path`` (``diffobj`` exits 1 naming it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


@contextlib.contextmanager
def staged_dir(out: Path, last: Sequence[str] = ()) -> Iterator[Path]:
    """Write the outputs of one command all or nothing: yield a temporary sibling of ``out``; when the block
    succeeds, move its files into ``out``.

    Files in ``out`` that the command does not write are left alone. The names in ``last`` (the record that
    describes the outputs, e.g. ``samples.json``) are removed from ``out`` before anything is moved and
    moved in after everything else, so an old record never stands beside new files. If the block fails
    (an error, a full disk, Ctrl-C), ``out`` is untouched and the temporary directory is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name[:200]}.tmp-", dir=out.parent))
    try:
        yield stage
        out.mkdir(exist_ok=True)
        for name in last:
            (out / name).unlink(missing_ok=True)
        names = sorted(p.name for p in stage.iterdir())
        for name in [n for n in names if n not in last] + [n for n in last if n in names]:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def finite_float(text: str) -> float:
    """argparse ``type=`` for a finite number: ``nan``, ``inf`` and non-numbers are usage errors (exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value
