"""What the ``diffobj`` commands share: output-path checks, atomic and all-or-nothing writes, number and seed
parsing, the translation of library errors (which name the library's parameters) into messages that name
the command-line flags (:func:`flags`), the shared arguments, and the weighting plots of ``weightings`` and
``explain``. Commands import this module, never each other.

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
import io
import json
import math
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import locking, plotting
from ..core import objectives
from ..core.schedules import Schedule
from ..core.theory import augmentation_density
from ..core.weightings import Weighting
from ..errors import OptionError
from ..evaluation.protocol import sample_shape
from ..interop import pipelines
from ..sampling import samplers
from ..training.checkpoint import load_for_inference

__all__ = ["check_output_dir", "check_output_path", "write_atomic", "write_json", "staged_dir", "finite_float",
           "NAME_MAX", "add_checkpoint_argument", "add_checkpoint_arguments", "load_checkpoint", "checkpoint_info",
           "progress_bar", "resolve_seeds", "check_resources", "sample_bytes", "ELBO_BYTES_PER_DRAW", "run_dir",
           "eval_dir", "hold_run", "SEED_MAX", "seed_ranges", "parse_seeds", "flags", "add_command",
           "add_sampling_arguments", "PLOT_FORMATS", "Resolved", "plot", "print_augmentation"]

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
            raise _refused(option, path, f"the path component {part[:40]!r}… is {len(os.fsencode(part))} "
                                         f"bytes; the file system allows at most {limit}")


def _check_writable_dir(directory: Path, option: str, shown: Path) -> None:
    """``directory`` exists and is a directory this process can create files in (probed, not os.access)."""
    if not directory.is_dir():
        raise _refused(option, shown, f"{str(directory)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".diffobj-probe-", dir=directory)
    except OSError as exc:
        reason = "is read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else exc.strerror
        raise _refused(option, shown, f"{str(directory)!r} {reason} (cannot create files there)") from None
    os.close(fd)
    os.unlink(probe)


def _refused(option: str, path: str | os.PathLike, cause: str) -> OptionError:
    """The one-line message of every refused output: ``--out: cannot write 'PATH': CAUSE``."""
    return OptionError(f"{option}: cannot write {str(path)!r}: {cause}")


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
        raise _refused(option, path, "it exists and is not a directory")
    _check_writable_dir(_nearest_existing(path), option, path)
    return path


def check_output_path(path: str | os.PathLike, option: str = "--out", formats: Sequence[str] = (),
                      create_parents: bool = True) -> Path:
    """Check that ``path`` can be written as one output file; return it.

    ``formats``: the allowed suffixes (``(".png", ".pdf")``); any other suffix is refused with the list.
    Also refused: empty, over-long component, an existing directory or non-regular file (``/dev/null``), a
    parent that is a file or is not writable, or (``create_parents=False``) does not exist."""
    path = _as_path(path, option)
    _check_components(path, option)
    if path.is_dir():
        raise _refused(option, path, "it is a directory; give a file name")
    if os.path.lexists(path) and not path.is_file():
        raise _refused(option, path, "it exists and is not a regular file")
    if formats and path.suffix.lower() not in formats:
        raise _refused(option, path, f"unsupported format {path.suffix or '(no suffix)'!r}; use one of: "
                                     f"{', '.join(formats)}")
    if not create_parents and not path.parent.is_dir():
        missing = "is not a directory" if path.parent.exists() else "does not exist"
        raise _refused(option, path, f"the directory {str(path.parent)!r} {missing}")
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
    except OSError as exc:  # name the user's directory, not the temporary one
        raise OSError(exc.errno, f"{exc.strerror or exc}; nothing was written", str(out)) from None
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


# ---- commands that read a checkpoint: sample, elbo, evaluate ---------------------------------------------

def add_checkpoint_argument(p: argparse.ArgumentParser, verb: str = "use") -> None:
    """The positional RUN_OR_CHECKPOINT and --ema/--no-ema (``verb`` the EMA weights or the raw ones)."""
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory (its newest complete checkpoint), its checkpoints/ directory or one "
                        "checkpoint directory (checkpoints/step-NNNNNNNN)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help=f"{verb} the EMA weights (default) or the raw weights (--no-ema)")


def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """The positional RUN_OR_CHECKPOINT, --ema/--no-ema, --device, --no-progress and --data."""
    add_checkpoint_argument(p)
    p.add_argument("--device", default="cpu", metavar="{cpu,cuda,auto}",
                   help="device for the model (default cpu; auto: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--data", default=None, metavar="NAME",
                   help="dataset of a diffusers pipeline directory given as RUN_OR_CHECKPOINT (one with "
                        "model_index.json); needed when it has no diffobj.json run record")


def load_checkpoint(args: argparse.Namespace, path: str | None = None):
    """:func:`~diffusion_objectives.training.load_for_inference` of ``path`` (default ``args.checkpoint``) with
    ``args.ema`` and ``args.device`` (warnings on stderr), or :func:`~diffusion_objectives.interop.pipelines.
    load_diffusers_pipeline` of a diffusers pipeline directory (``--data``)."""


    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise OptionError(f"--device: expected cpu, cuda, cuda:N or auto, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("--device cuda: no CUDA device is available")
    path = args.checkpoint if path is None else path
    data = getattr(args, "data", None)
    if pipelines.is_pipeline_dir(path):  # a diffusers pipeline directory (docs/adapters.md)
        if data is None and not pipelines.has_run_record(path):
            raise OptionError(f"{path!r} is a diffusers pipeline without a diffobj.json run record: "
                              "name its dataset with --data NAME")
        return pipelines.load_diffusers_pipeline(path, data=data, device=device)
    if data is not None:
        raise OptionError(f"--data applies to a diffusers pipeline directory; {path!r} has no "
                          "model_index.json (a run's dataset is in its config)")
    return load_for_inference(path, ema=args.ema, device=device,
                              warn=lambda msg: print(f"warning: {msg}", file=sys.stderr))


def checkpoint_info(loaded) -> dict[str, Any]:
    """Provenance of a loaded model: checkpoint directory, step, images seen, EMA, objective, dataset."""
    return {"checkpoint": str(loaded.checkpoint_dir), "step": loaded.step, "images_seen": loaded.images_seen,
            "ema": loaded.ema, "objective": loaded.config.loss.objective, "dataset": loaded.config.data.name}


def progress_bar(args: argparse.Namespace) -> Callable[[str, int], Any] | None:
    """A tqdm factory ``bar(description, total)`` on stderr (shown on terminals), or None with --no-progress."""
    if args.no_progress:
        return None

    return lambda desc, total: tqdm(desc=desc, total=total, file=sys.stderr, dynamic_ncols=True, disable=None,
                                    leave=False)


# ---- the library/command-line boundary ----------------------------------------------------------------------

@contextlib.contextmanager
def flags(**options: str) -> Iterator[None]:
    """Translate the library's errors raised inside the block: a ``ValueError`` whose message begins with a
    library parameter ``name`` (``samples (λ-draws per example) must be …``) becomes an :class:`OptionError`
    beginning with its flag ``options[name]`` (``--samples (λ-draws …``); other errors pass unchanged.

    ``with flags(samples="--samples"): check_elbo_samples(args.samples)``."""
    try:
        yield
    except ValueError as exc:
        text = str(exc)
        for name, option in options.items():
            if text.startswith(name) and not text[len(name):len(name) + 1].isidentifier():
                raise OptionError(option + text[len(name):]) from None
        raise


def add_command(sub: argparse._SubParsersAction, name: str, help: str, module,
                checkpoint: bool = False) -> argparse.ArgumentParser:
    """The sub-command ``name`` whose ``--help`` shows ``module``'s docstring and its ``EXAMPLES``; with
    ``checkpoint``, it reads a checkpoint (:func:`add_checkpoint_arguments`)."""
    p = sub.add_parser(name, help=help, description=module.__doc__, epilog=module.EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if checkpoint:
        add_checkpoint_arguments(p)
    return p


def add_sampling_arguments(p: argparse.ArgumentParser, guidance_help: str, default_n: int) -> None:
    """--n, --seeds, --sampler, --steps, --grid, --guidance and --batch-size (``diffobj sample`` and
    ``evaluate``; ``default_n`` samples without --n and --seeds)."""
    p.add_argument("--n", type=int, default=None, help=f"number of samples, seeds 0 … n−1 (default {default_n})")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0-63 or 1,5,9-11 (must agree with --n)")
    p.add_argument("--sampler", default="heun", choices=samplers.names(), help="sampler (default heun)")
    p.add_argument("--steps", type=int, default=32, help="grid points (default 32; Heun makes 2·steps − 1 "
                                                         "network evaluations)")
    p.add_argument("--grid", default=None, choices=samplers.GRIDS.names(),
                   help="λ-grid (default: edm for every sampler)")
    p.add_argument("--guidance", type=finite_float, default=0.0, help=guidance_help)
    p.add_argument("--batch-size", type=int, default=256, help="samples per network batch (default 256; "
                                                               "does not change the samples)")


# ---- seeds: EDM's syntax -------------------------------------------------------------------------------------

SEED_MAX = 2**63 - 1  # seeds are int64 in samples.npz and torch.Generator.manual_seed


def seed_ranges(text: str, option: str = "--seeds") -> list[range]:
    """EDM's seed syntax as ranges, without building the list: ``"1,5,9-11"`` → ``[range(1, 2), range(5, 6),
    range(9, 12)]``. Each seed must lie in 0 … :data:`SEED_MAX`; errors name ``option``. The inverse of
    :func:`diffusion_objectives.evaluation.metrics.format_seeds`, which writes the seeds of results in this syntax."""
    ranges: list[range] = []
    for part in filter(None, str(text).split(",")):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise OptionError(f"{option}: expected ranges like 0-63 or 1,5,9-11, got {text!r}") from None
        if b < a or a < 0:
            raise OptionError(f"{option}: bad range {part!r} in {text!r}")
        if b > SEED_MAX:
            raise OptionError(f"{option}: seed {b} in {text!r} is too large; seeds lie in 0 … {SEED_MAX} (2^63 − 1)")
        ranges.append(range(a, b + 1))
    if not ranges:
        raise OptionError(f"{option}: no seeds in {text!r}")
    return ranges


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    """EDM's seed syntax: ``"0-63"``, ``"1,5,9-11"`` → list of ints (errors name ``option``); see
    :func:`seed_ranges`, which counts a request without building it."""
    return [s for r in seed_ranges(text, option) for s in r]


def resolve_seeds(n: int | None, seeds: str | None, default_n: int,
                  bytes_per_seed: Callable[[int], None] | None = None) -> list[int]:
    """Seeds from ``--seeds`` and/or ``--n`` (``--n`` alone: 0 … n−1); both given must agree.

    The request is counted before the list is built; ``bytes_per_seed(count)`` may refuse it (see
    :func:`check_resources`), so ``--seeds 0-1000000000`` never allocates a billion integers."""
    if n is not None and not 1 <= n <= SEED_MAX + 1:
        raise OptionError(f"--n must be a positive number of samples (at most 2^63), got {n}")
    ranges = [range(default_n if n is None else n)] if seeds is None else seed_ranges(seeds)
    count = sum(len(r) for r in ranges)
    if seeds is not None and n is not None and n != count:
        raise OptionError(f"--n {n} disagrees with --seeds {seeds!r}, which names {count} seeds")
    if bytes_per_seed is not None:
        bytes_per_seed(count)
    return [s for r in ranges for s in r]


def _available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable on Linux)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 1 << 34


def _gib(n: float) -> str:
    """``1.5 GiB``, ``1,362 GiB``, ``12 MiB``."""
    value, unit = (n / 2**30, "GiB") if n >= 2**27 else (n / 2**20, "MiB")
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


def check_resources(option: str, what: str, *, memory: float = 0, disk: float = 0,
                    where: Path | None = None) -> None:
    """Refuse a request up front (exit 2) whose estimated ``memory`` exceeds half the available memory or whose
    estimated ``disk`` use exceeds the free space at ``where``; the message names ``option`` and the estimate."""
    budget = _available_memory() // 2
    if memory > budget:
        raise OptionError(f"{option}: {what} needs about {_gib(memory)} of memory, more than half of the "
                          f"{_gib(2 * budget)} available; ask for less (or split the request)")
    if disk and where is not None:
        free = shutil.disk_usage(_nearest_existing(where)).free
        if disk > free:
            raise OptionError(f"{option}: {what} needs about {_gib(disk)} of disk at {str(where)!r}, more than "
                              f"the {_gib(free)} free")


# bytes per (example, λ-draw) pair of the ELBO estimator: t (float64), its antithetic copy, the per-draw
# terms f, the example index (int64) and their reshapes
ELBO_BYTES_PER_DRAW = 48


def sample_bytes(loaded, count: int) -> int:
    """Estimated memory of ``count`` samples held until they are written: the float32 batches and their
    concatenation, the float64 quantization, the uint8 pixels, and the seed list."""

    return count * (math.prod(sample_shape(loaded)) * 21 + 120)


def run_dir(loaded) -> Path | None:
    """The run directory of a checkpoint ``RUN/checkpoints/step-N``, or None for a checkpoint outside a run."""
    ckpt = Path(loaded.checkpoint_dir)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def eval_dir(loaded) -> Path:
    """Where results about a checkpoint go by default: ``RUN/eval/step-NNNNNNNN/``, beside (not inside)
    ``RUN/checkpoints/``, so that checkpoint pruning never deletes them; ``raw`` is appended for --no-ema.
    A checkpoint outside a run: ``<its parent>/eval/<its name>/``."""
    ckpt = Path(loaded.checkpoint_dir)
    name = ckpt.name if loaded.ema else f"{ckpt.name}-raw"
    return (run_dir(loaded) or ckpt.parent) / "eval" / name


def hold_run(loaded, out: Path, command: str) -> contextlib.AbstractContextManager:
    """The run's lock (:func:`~diffusion_objectives.locking.hold`) when ``out`` lies inside the run directory,
    so results are not written while ``diffobj train`` rewrites the run; otherwise nothing."""
    run = run_dir(loaded)
    if run is None:
        return contextlib.nullcontext()
    if not Path(os.path.abspath(out)).is_relative_to(os.path.abspath(run)):
        return contextlib.nullcontext()
    return locking.hold(run, command)


# ---- weighting plots and the augmentation printout: ``diffobj weightings`` and ``diffobj explain`` -----------

PLOT_FORMATS = (".png", ".pdf", ".svg")


@dataclass
class Resolved:
    """A weighting as plotted: its label, the weighting, the schedule p(λ) and its objective preset, if any."""

    label: str
    weighting: Weighting
    schedule: Schedule
    objective: objectives.Objective | None


def print_augmentation(weighting: Weighting, lo: float, hi: float) -> None:
    """Print whether ``weighting`` is monotone on [lo, hi] and, if so, its augmentation distribution p_w."""
    monotone = weighting.is_monotonic(lo, hi)
    print(f"  monotone on [{lo:g}, {hi:g}]: {'yes' if monotone else 'no'}")
    grid = torch.linspace(lo, hi, 30001, dtype=torch.float64)
    if not monotone:
        w = weighting(grid)
        print(f"  peak at λ = {float(grid[w.argmax()]):.4f}: not an ELBO of augmented data "
              "(a signed combination of ELBOs, KG23 §4)")
        return
    aug = augmentation_density(weighting, grid, lo, hi)
    mass = torch.cumsum(aug.density, 0) * (grid[1] - grid[0])
    cont = float(mass[-1])
    print("  augmentation distribution p_w(λ) = −w'(λ)/w(λ_min), plus a point mass at λ_max:")
    print(f"    continuous part mass {cont:.6f}, point mass at λ_max = {aug.point_mass:.6f}")
    if cont > 1e-9:
        quant = [float(grid[torch.searchsorted(mass, q * mass[-1])]) for q in (0.05, 0.25, 0.5, 0.75, 0.95)]
        mean = float((grid * aug.density).sum() * (grid[1] - grid[0])) / cont
        print(f"    continuous part: mean λ {mean:.4f}; quantiles 5/25/50/75/95%: "
              + ", ".join(f"{q:.3f}" for q in quant))


def plot(resolved: list[Resolved], lo: float, hi: float, out: Path) -> None:
    """w(λ)/max w, p(λ) and (monotone ones) the augmentation density p_w of each entry, on one λ axis, written
    atomically to ``out`` (already checked with ``check_output_path(..., formats=PLOT_FORMATS)``)."""
    grid = torch.linspace(lo, hi, 2001, dtype=torch.float64)
    fig, axes = plotting.subplots(3, 1, figsize=(8, 9), sharex=True)
    for r in resolved:
        w = r.weighting(grid)
        axes[0].plot(grid, w / w.max(), label=r.label)
        axes[1].plot(grid, r.schedule.density(grid), label=f"{r.label} ({r.schedule.name})")
        if r.weighting.is_monotonic(lo, hi):
            aug = augmentation_density(r.weighting, grid, lo, hi)
            axes[2].plot(grid, aug.density, label=f"{r.label} (+ mass {aug.point_mass:.2g} at λ_max)")
    axes[0].set_ylabel("w(λ) / max w")
    axes[1].set_ylabel("schedule p(λ)")
    axes[2].set_ylabel("augmentation p_w(λ)")
    axes[2].set_xlabel("log-SNR λ  (noise ←  → data)")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    axes[2].set_title("monotone weightings only", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=out.suffix.lower()[1:], dpi=120)
    write_atomic(out, buf.getvalue())
    print(f"wrote {out}")
