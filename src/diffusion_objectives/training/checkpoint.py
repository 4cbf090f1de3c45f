"""Checkpoints: one directory per checkpoint, published atomically, verified by a manifest of hashes.

Layout of ``RUN/checkpoints/step-NNNNNNNN/``:

- ``model.safetensors``, ``ema.safetensors``: the raw and EMA weights, with the resolved config (JSON),
  the step and the format version in the safetensors metadata;
- ``training_state.pt``: optimizer state, step, images seen, adaptive-schedule state (plain tensors and
  Python containers: loadable with ``torch.load(weights_only=True)``);
- ``config.yaml``: the resolved config;
- ``manifest.json``: format version, step and the size and SHA-256 of every file above, written last.

A checkpoint is written into a temporary directory, every file and the directory are fsynced, and the
directory is renamed into place; then it is re-read and verified, ``RUN/checkpoints/latest`` (a text
file naming the directory) is replaced atomically, and only then are old checkpoints removed. A crash
at any point leaves the previous checkpoint and ``latest`` intact. Randomness needs no state here: it is
derived from (seed, step) (see :mod:`~diffusion_objectives.training.step`).

Nothing is deleted unless a newer verified checkpoint supersedes it: pruning removes only checkpoints
older than the one just published; an unreadable checkpoint is moved into ``checkpoints/corrupt/``
(:func:`quarantine`); a different, valid checkpoint already published under the step being saved is moved
into ``checkpoints/superseded-<UTC time>/`` with a warning (never silently kept under the new one's name).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import OptionError
from .build import build_dataset, build_network, build_objective
from .config import TrainConfig, from_dict

__all__ = [
    "FORMAT_VERSION",
    "CHECKPOINTS_DIR",
    "CheckpointError",
    "CheckpointStore",
    "Checkpoint",
    "LoadedModel",
    "checkpoint_name",
    "save",
    "verify",
    "load",
    "read_latest",
    "list_checkpoints",
    "find_resumable",
    "quarantine",
    "load_newest",
    "resolve_path",
    "load_for_inference",
]

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"  # a run's checkpoints: RUN/checkpoints/
MODEL_FILE, EMA_FILE, STATE_FILE = "model.safetensors", "ema.safetensors", "training_state.pt"
CONFIG_FILE, MANIFEST_FILE, LATEST_FILE = "config.yaml", "manifest.json", "latest"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
CORRUPT_DIR, SUPERSEDED_PREFIX = "corrupt", "superseded-"


class CheckpointError(OptionError):
    """A checkpoint is missing, partial, corrupt or of an unknown format version."""


@dataclass
class Checkpoint:
    """A verified checkpoint read into memory (tensors on the CPU)."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    state: dict[str, Any]
    config: dict[str, Any]
    manifest: dict[str, Any]


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _step_of(path: Path) -> int | None:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


# ---- durable writes ----------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> dict[str, Any]:
    """Write, flush and fsync ``data``; returns its manifest entry (size and SHA-256)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _sha256_file(path: Path) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return n, h.hexdigest()


def _weights_bytes(state: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    # clone: safetensors refuses tensors that share storage; contiguous CPU copies are exact.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
    return st_save(tensors, metadata=metadata)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    _write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def _write_latest(checkpoints_dir: Path, name: str) -> None:
    tmp = checkpoints_dir / f".{LATEST_FILE}.{uuid.uuid4().hex}.tmp"
    _write_bytes(tmp, (name + "\n").encode())
    os.replace(tmp, checkpoints_dir / LATEST_FILE)
    _fsync_dir(checkpoints_dir)


def _config_bytes(config: Mapping[str, Any]) -> bytes:
    return yaml.safe_dump(dict(config), sort_keys=False).encode()


def _checkpoint_files(step: int, model: Mapping[str, torch.Tensor], ema: Mapping[str, torch.Tensor],
                      state: Mapping[str, Any], config: Mapping[str, Any]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file of a checkpoint but the manifest, one at a time (bounded memory)."""
    config_json = json.dumps(dict(config), sort_keys=True)
    meta = {"format_version": str(FORMAT_VERSION), "step": str(step), "config": config_json}
    yield MODEL_FILE, _weights_bytes(model, meta | {"kind": "model"})
    yield EMA_FILE, _weights_bytes(ema, meta | {"kind": "ema"})
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    yield STATE_FILE, buf.getvalue()
    yield CONFIG_FILE, _config_bytes(config)


def _same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].detach().cpu()) for k in a)


def _same_checkpoint(path: Path, model: Mapping[str, torch.Tensor], ema: Mapping[str, torch.Tensor],
                     config_bytes: bytes) -> bool:
    """Whether the published checkpoint ``path`` holds the same weights and config (:class:`CheckpointError`
    if it is unreadable). Compared by content: safetensors files are not byte-reproducible."""
    old = load(path)
    return ((path / CONFIG_FILE).read_bytes() == config_bytes and _same_tensors(old.model, model)
            and _same_tensors(old.ema, ema))


def _utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _move_into(path: Path, folder: Path) -> Path:
    """Move directory ``path`` into ``folder`` (created), under a free name; returns the new path."""
    folder.mkdir(parents=True, exist_ok=True)
    dest, n = folder / path.name, 1
    while dest.exists():
        dest, n = folder / f"{path.name}.{n}", n + 1
    os.replace(path, dest)
    _fsync_dir(folder)
    _fsync_dir(path.parent)
    return dest


def quarantine(path: str | Path) -> Path:
    """Move the unreadable checkpoint ``path`` into ``checkpoints/corrupt/`` (never deleted); returns where."""
    path = Path(path)
    return _move_into(path, path.parent / CORRUPT_DIR)


def save(checkpoints_dir: str | Path, step: int, *, model: Mapping[str, torch.Tensor],
         ema: Mapping[str, torch.Tensor], state: Mapping[str, Any], config: Mapping[str, Any],
         keep: int = 2, images_seen: int | None = None, warn: Callable[[str], None] | None = None) -> Path:
    """Publish checkpoint ``step`` atomically and return its directory.

    ``model``/``ema`` are state dicts, ``state`` the training state (tensors, numbers, strings, lists,
    dicts only), ``config`` the resolved config as a plain dict. Afterwards ``latest`` names the new
    checkpoint and at most ``keep`` checkpoints up to it remain (it and the newest older ones; newer ones are
    never removed). A checkpoint already published under this step is kept if it holds the same weights and
    config; otherwise it is moved into ``superseded-<UTC time>/`` (valid) or ``corrupt/`` (unreadable) with a
    message to ``warn`` (default: :func:`warnings.warn`)."""
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    root = Path(checkpoints_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = root / name
    aside = None
    if final.exists():
        try:
            if _same_checkpoint(final, model, ema, _config_bytes(config)):
                _write_latest(root, name)  # already published (e.g. the final save right after a periodic one)
                _prune(root, keep, name)
                return final
            aside = (root / f"{SUPERSEDED_PREFIX}{_utc_stamp()}", "holds different weights or config")
        except CheckpointError as exc:
            aside = (root / CORRUPT_DIR, f"is unreadable ({exc})")
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = {fname: _write_bytes(tmp / fname, data)
                 for fname, data in _checkpoint_files(step, model, ema, state, config)}
        _write_manifest(tmp / MANIFEST_FILE, {"format_version": FORMAT_VERSION, "step": step,
                                              "images_seen": images_seen, "files": files})
        _fsync_dir(tmp)
        if aside is not None:  # never overwrite a published checkpoint: move it out of the way, then publish
            dest = _move_into(final, aside[0])
            warn(f"the existing checkpoint {name} {aside[1]}; moved it to {dest} before writing the new {name}")
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    verify(final)  # re-read from disk before anything old is touched
    _write_latest(root, name)
    _prune(root, keep, name)
    return final


def _prune(root: Path, keep: int, newest: str) -> None:
    """Keep ``newest`` and the ``keep - 1`` highest-step checkpoints older than it; checkpoints with a higher
    step than ``newest`` are not superseded by it and stay. Drop stale temporary files."""
    newest_step = _step_of(root / newest) or 0
    older = sorted((p for p in list_checkpoints(root) if (_step_of(p) or 0) < newest_step),
                   key=lambda p: _step_of(p) or 0, reverse=True)
    for p in older[max(keep - 1, 0):]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".{LATEST_FILE}.*.tmp"):
        p.unlink(missing_ok=True)


# ---- reading -------------------------------------------------------------------------------------------

def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Checkpoint directories (complete or not) sorted by step, oldest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None]
    return sorted(dirs, key=lambda p: _step_of(p) or 0)


def read_latest(checkpoints_dir: str | Path) -> Path | None:
    """The directory named by ``checkpoints/latest`` (not verified), or None."""
    try:
        name = (Path(checkpoints_dir) / LATEST_FILE).read_text().strip()
    except OSError:
        return None
    return Path(checkpoints_dir) / name if _STEP_DIR.match(name) else None


def verify(path: str | Path) -> dict[str, Any]:
    """Check that every file listed in the manifest exists with the recorded size and SHA-256.
    Returns the manifest; raises :class:`CheckpointError` saying what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} is partial: no {MANIFEST_FILE}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r}: unreadable {MANIFEST_FILE} ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: malformed {MANIFEST_FILE} (no mapping 'files')")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {version!r}; this version of "
                              f"diffusion_objectives reads format {FORMAT_VERSION}")
    step = manifest.get("step")
    if type(step) is not int or step < 0 or (_step_of(path) is not None and step != _step_of(path)):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {MANIFEST_FILE} has step {step!r}, "
                              f"not the step in the directory's name")
    for fname in (MODEL_FILE, EMA_FILE, STATE_FILE, CONFIG_FILE):
        entry = manifest["files"].get(fname)
        if not isinstance(entry, dict):
            raise CheckpointError(f"checkpoint {str(path)!r}: manifest does not list {fname}")
    for fname, entry in manifest["files"].items():
        if not isinstance(entry, dict) or not isinstance(fname, str) or "/" in fname:
            raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: malformed {MANIFEST_FILE} entry {fname!r}")
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} is partial: {fname} is missing")
        size, digest = _sha256_file(f)
        if size != entry.get("bytes"):
            raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {fname} has {size} bytes, "
                                  f"manifest says {entry.get('bytes')} (truncated?)")
        if digest != entry.get("sha256"):
            raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {fname} fails its SHA-256 check")
    return manifest


def _read(path: Path, fname: str, reader: Callable[[Path], Any]) -> Any:
    try:
        return reader(path / fname)
    except Exception as exc:  # any failure to decode a file whose hash matched: corrupt at write time
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: {fname} cannot be read although it matches "
                              f"its manifest hash ({type(exc).__name__}: {exc})") from None


def load(path: str | Path) -> Checkpoint:
    """Verify and read a checkpoint directory (CPU tensors); :class:`CheckpointError` if it is bad."""
    path = Path(path)
    manifest = verify(path)
    model = _read(path, MODEL_FILE, lambda f: st_load(f.read_bytes()))
    ema = _read(path, EMA_FILE, lambda f: st_load(f.read_bytes()))
    state = _read(path, STATE_FILE, lambda f: torch.load(f, map_location="cpu", weights_only=True))
    config = _read(path, CONFIG_FILE, lambda f: yaml.safe_load(f.read_text()))
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: malformed config or training state")
    return Checkpoint(path, manifest["step"], model, ema, state, config, manifest)


def find_resumable(checkpoints_dir: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that verifies, or None. Corrupt or partial ones are skipped with a warning
    (``latest`` is a hint: a complete checkpoint newer than it is used too)."""
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=2))
    latest = read_latest(checkpoints_dir)
    for path in reversed(list_checkpoints(checkpoints_dir)):
        try:
            verify(path)
        except CheckpointError as exc:
            warn(f"skipping {exc}")
            continue
        if latest is not None and latest.name != path.name and (_step_of(latest) or 0) > (_step_of(path) or 0):
            warn(f"'latest' names {latest.name}, which is not usable; resuming from {path.name}")
        return path
    if latest is not None:
        held = latest.parent / CORRUPT_DIR / latest.name
        state = ("is not usable (see above)" if latest.exists() else
                 f"is corrupt and was moved to {str(held)!r}" if held.exists() else "does not exist")
        warn(f"'latest' names {latest.name}, which {state}; no usable checkpoint")
    return None


def load_newest(checkpoints_dir: str | Path, warn: Callable[[str], None]) -> Checkpoint | None:
    """Load the newest checkpoint that verifies and reads, for resuming a run; None if there is none.

    Every newer checkpoint that fails is moved into ``checkpoints/corrupt/`` (:func:`quarantine`) with a
    message to ``warn`` naming the file and the cause. Raises :class:`CheckpointError` instead of returning
    None when the run has checkpoints but none is usable (including ones quarantined earlier): the caller
    must not silently start over from step 0."""
    root = Path(checkpoints_dir)
    failed = []
    for path in reversed(list_checkpoints(root)):
        try:
            ckpt = load(path)
        except CheckpointError as exc:
            dest = quarantine(path)
            failed.append(path.name)
            warn(f"skipping {exc}; moved it to {dest} (nothing deleted)")
            continue
        return ckpt
    held = sorted(p.name for p in (root / CORRUPT_DIR).iterdir()) if (root / CORRUPT_DIR).is_dir() else []
    if failed or held:
        raise CheckpointError(
            f"no usable checkpoint in {str(root)!r}: every checkpoint is corrupt and is kept in "
            f"{str(root / CORRUPT_DIR)!r} ({', '.join(held)}); training was not restarted from step 0. To recover, "
            f"put an intact copy of a checkpoint (e.g. from a backup) back into {str(root)!r} and rerun; to start "
            f"over instead, rerun with resume='none' (diffobj train --resume none); the quarantined checkpoints "
            f"are kept")
    return None


def resolve_path(path: str | Path, warn: Callable[[str], None] | None = None) -> Path:
    """A checkpoint directory from a run directory, a ``checkpoints`` directory or a checkpoint itself.
    A run or checkpoints directory resolves to its newest complete checkpoint (skipping broken ones with
    a warning); a named checkpoint is not checked here (:func:`load` does)."""
    p = Path(path)
    if not p.exists():
        raise OptionError(f"checkpoint path {str(p)!r} does not exist")
    if _step_of(p) is not None or (p / MANIFEST_FILE).exists():
        return p
    for root in (p / CHECKPOINTS_DIR, p):
        if (root / LATEST_FILE).exists() or list_checkpoints(root):
            found = find_resumable(root, warn)
            if found is None:
                held = root / CORRUPT_DIR
                where = f" (unreadable ones are kept in {str(held)!r})" if held.is_dir() else ""
                raise CheckpointError(f"no complete checkpoint in {str(root)!r}{where}")
            return found
    raise OptionError(f"{str(p)!r} is neither a run directory, a checkpoints directory nor a checkpoint")


# ---- the checkpoints of one run ----------------------------------------------------------------------------

_OURS = re.compile(rf"^(step-\d{{8,}}|{LATEST_FILE}|\.{LATEST_FILE}\..*\.tmp|\.tmp-.*|{CORRUPT_DIR}"
                   rf"|{SUPERSEDED_PREFIX}.*)$")


@dataclass(frozen=True)
class CheckpointStore:
    """The checkpoints of one run, ``root`` = ``RUN/checkpoints/`` (layout in the module docstring): the one
    place that names their paths, writes, prunes and quarantines them and finds the newest usable one."""

    root: Path

    @classmethod
    def of_run(cls, run_dir: str | Path) -> CheckpointStore:
        return cls(Path(run_dir) / CHECKPOINTS_DIR)

    def path(self, step: int) -> Path:
        """Where checkpoint ``step`` is (or would be) published."""
        return self.root / checkpoint_name(step)

    def all(self) -> list[Path]:
        """Checkpoint directories (complete or not), oldest first."""
        return list_checkpoints(self.root)

    def newer_than(self, step: int) -> list[Path]:
        """Checkpoint directories with a step above ``step``, oldest first."""
        return [p for p in self.all() if (_step_of(p) or 0) > step]

    def newest_published(self) -> Path | None:
        """The newest checkpoint with a manifest: complete, since a checkpoint is renamed into place only after
        all its files are written and fsynced (no hashing: cheap enough for a Ctrl-C handler)."""
        done = [p for p in self.all() if (p / MANIFEST_FILE).is_file()]
        return done[-1] if done else None

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` names (not verified)."""
        return read_latest(self.root)

    def holds_only_ours(self) -> bool:
        """Whether ``root`` exists and holds nothing but checkpoints, ``latest``, temporary files and the
        ``corrupt``/``superseded-*`` folders (what :func:`save` and :func:`quarantine` leave)."""
        return self.root.is_dir() and all(_OURS.match(p.name) for p in self.root.iterdir())

    def save(self, step: int, *, model: Mapping[str, torch.Tensor], ema: Mapping[str, torch.Tensor],
             state: Mapping[str, Any], config: Mapping[str, Any], keep: int = 2, images_seen: int | None = None,
             warn: Callable[[str], None] | None = None) -> Path:
        """Publish checkpoint ``step`` and prune the older ones beyond ``keep`` (:func:`save`)."""
        return save(self.root, step, model=model, ema=ema, state=state, config=config, keep=keep,
                    images_seen=images_seen, warn=warn)

    def load_newest(self, warn: Callable[[str], None]) -> Checkpoint | None:
        """The newest usable checkpoint, quarantining newer unreadable ones (:func:`load_newest`)."""
        return load_newest(self.root, warn)


# ---- inference ---------------------------------------------------------------------------------------------

@dataclass
class LoadedModel:
    """A trained model ready for sampling or evaluation.

    ``model``: the network (EMA weights unless ``ema=False``) in eval mode, called as
    ``model(z, logsnr, labels=None)``; ``objective``: the :class:`~diffusion_objectives.Objective` it was
    trained with (its parameterization converts outputs to ε̂/x̂; with the adaptive schedule, the schedule
    holds the learned state); ``config``: the resolved :class:`TrainConfig`; ``dataset(**overrides)``
    rebuilds the training dataset (e.g. ``dataset(split="test")``); ``step`` and ``images_seen`` say how
    long it was trained."""

    model: torch.nn.Module
    objective: Any
    config: Any
    dataset: Callable[..., Any]
    step: int
    images_seen: int
    checkpoint_dir: Path
    ema: bool


def load_for_inference(path: str | Path, ema: bool = True, device: str | torch.device = "cpu",
                       warn: Callable[[str], None] | None = None) -> LoadedModel:
    """Load a model from a run directory, its ``checkpoints`` directory or one checkpoint directory.

    Raises :class:`~diffusion_objectives.errors.OptionError` (a :class:`CheckpointError` for a corrupt
    checkpoint or an unknown format version) with a message naming the path."""

    ckpt = load(resolve_path(path, warn))
    cfg = from_dict(TrainConfig, ckpt.config)
    model = build_network(cfg.network)
    try:
        model.load_state_dict(ckpt.ema if ema else ckpt.model)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {str(ckpt.path)!r} does not match its network config: {exc}") from None
    model.to(device).eval().requires_grad_(False)
    objective = build_objective(cfg.loss)
    adaptive = ckpt.state.get("adaptive")
    if adaptive is not None and hasattr(objective.schedule, "load_state_dict"):
        objective.schedule.load_state_dict(adaptive)

    def dataset(**overrides: Any) -> Any:
        return build_dataset(cfg.data, **overrides)

    return LoadedModel(model, objective, cfg, dataset, ckpt.step, int(ckpt.state.get("images_seen", 0)),
                       ckpt.path, ema)
