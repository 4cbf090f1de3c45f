r"""The training loop: one explicit function, :func:`train` (after EDM2's ``training_loop``).

Per optimizer step (all counts in images unless they say steps):

1. global batch ``step``: indices ``data.batch_indices(N, B, seed, step)`` (a function of (seed, step)
   only); this process takes the rank-th contiguous B/W of it, in ``grad_accum`` micro-batches;
2. randomness: λ ~ p(λ) for the global batch, ε, flips and label drops, each drawn from a
   ``torch.Generator`` seeded by (seed, step, stream) and sliced like the data; dropout draws from the
   global RNG reseeded by (seed, step, rank, micro-batch) inside ``fork_rng``. So the numbers depend on
   (seed, step) only: resuming needs no RNG state, and W processes see the same ε and λ as one;
3. the loss ½ (w(λ)/p(λ)) ‖ε̂ − ε‖² (KG23 Eq. 8, :class:`~diffusion_objectives.WeightedLoss`), averaged
   over the global batch (DDP averages the per-rank means); with ``loss.uncertainty.enabled`` EDM2's
   ℓ_w e^{−u(λ)} + D u(λ) (:class:`~diffusion_objectives.uncertainty.UncertaintyWeightedLoss`), the head u
   trained in its own AdamW group, its gradients averaged over the ranks like the network's;
4. one all-reduce of :class:`StepStatistics` (non-finite counts, stop request, loss sums per λ-bin,
   adaptive-schedule sums and counts, packed into one vector), so every rank takes the same decision
   (update, skip, stop) and the adaptive schedule (docs/theory.md, "The adaptive schedule") holds the same
   state everywhere;
5. AdamW with linear warm-up over ``warmup_images`` (and optional 1/√ decay), gradient clipping, and an
   EMA of the weights with β = 0.5^(B / half-life) (half-life in images); with ``ema.posthoc_sigma_rels``
   EDM2's power-function EMAs too (:class:`~diffusion_objectives.phema.PowerEMA`, snapshots in ``RUN/phema/``).

Non-finite loss or gradient: stop with :class:`NonFiniteError` (default; the last checkpoint is left
untouched) or skip the update (``run.nonfinite=skip``, at most ``max_consecutive_skips`` in a row).
SIGTERM/SIGINT: finish the current step, save a checkpoint, return ``status="interrupted"``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import data as data_module
from .. import locking, phema
from ..adaptive import AdaptiveSchedule
from ..errors import OptionError
from ..uncertainty import LogVarianceHead, UncertaintyWeightedLoss
from . import checkpoint as ckpt_io
from . import distributed, rundir
from .build import build_dataset, build_network, build_objective, complete_network_params, derive_seed
from .config import GUARDED_KEYS, TrainConfig, diff, dump_yaml, format_diff, from_dict, to_dict, validate
from .distributed import Dist
from .posthoc import PHEMA_DIR
from .precision import autocast as precision_autocast
from .precision import resolve_precision

__all__ = ["train", "TrainingError", "NonFiniteError", "TrainingInterrupted", "DEFAULT_PROGRESS_INTERVAL_S",
           "learning_rate", "ema_beta", "step_generator", "TrainState", "StepStatistics"]

DEFAULT_PROGRESS_INTERVAL_S = 60.0  # progress lines when no bar is shown (stderr not a terminal)


class TrainingError(RuntimeError):
    """Training could not continue. ``all_ranks``: every process raised it at the same step."""

    all_ranks = False


class NonFiniteError(TrainingError):
    """A non-finite loss or gradient (agreed across ranks); the last good checkpoint is kept."""

    all_ranks = True


class TrainingInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt during training (with ``handle_signals``: a second SIGINT during the graceful stop):
    training ended at once, without a new checkpoint; the message names the last checkpoint, which is intact."""


# ---- schedules of the optimizer and the EMA (pure functions of the images seen) --------------------------

def learning_rate(cfg: TrainConfig, images_seen: int) -> float:
    """lr · min(1, n/warmup_images) · (1/√max(1, n/decay_images) if ``decay_images``), with n the images
    seen *including* the current batch (so step 0 trains)."""
    o = cfg.optim
    n = images_seen + cfg.run.batch_size
    lr = o.lr
    if o.warmup_images > 0:
        lr *= min(1.0, n / o.warmup_images)
    if o.decay_images:
        lr /= math.sqrt(max(1.0, n / o.decay_images))
    return lr


def ema_beta(cfg: TrainConfig, images_seen: int) -> float:
    """β = 0.5^(B/h), h = min(half_life_images, rampup_ratio · images_seen) (EDM22's ramp-up); after the
    update that brought the count to ``images_seen``. h = 0 copies the weights."""
    h = cfg.ema.half_life_images
    if cfg.ema.rampup_ratio is not None:
        h = min(h, cfg.ema.rampup_ratio * images_seen)
    return 0.5 ** (cfg.run.batch_size / h) if h > 0 else 0.0


def _seed_dropout(seed: int, device: torch.device) -> None:
    """Seed the generators dropout draws from. Not ``torch.manual_seed``: on a CPU-only machine it also queues
    lazy CUDA/XPU seeding and records a stack trace every call (benchmarks/trainer_overhead.py: 1.6 % of a
    toy step)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def step_generator(seed: int, step: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one random stream (``"logsnr"``, ``"eps"``, ``"flip"``, ``"labels"``) of one
    step: a fixed function of (seed, step, stream)."""
    return torch.Generator(device=device).manual_seed(derive_seed("train", seed, step, stream))


# ---- small helpers ----------------------------------------------------------------------------------------

class _RunLog:
    """Human-readable log: ``RUN/log.txt`` and stderr, on rank 0 only."""

    def __init__(self, path: Path | None, echo: bool):
        self.path, self.echo = path, echo
        self._file = open(path, "a", buffering=1) if path is not None else None  # noqa: SIM115

    def __call__(self, msg: str, level: str = "info") -> None:
        if self._file is None:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {level.upper():<7} {msg}"
        self._file.write(line + "\n")
        if self.echo or level != "info":
            print(line, file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        self(msg, "warning")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@contextlib.contextmanager
def _stop_on_signals(enabled: bool) -> Iterator[dict[str, Any]]:
    """SIGTERM/SIGINT set ``flag["signal"]`` (a second SIGINT raises KeyboardInterrupt as usual)."""
    flag: dict[str, Any] = {"signal": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _param_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


class _Interval:
    """Sums over the steps since the last stats record."""

    def __init__(self, bins: int):
        self.bins = bins
        self.reset()

    def reset(self) -> None:
        self.steps = self.skipped = 0
        self.loss_sum = self.count = 0.0
        self.bin_sum = torch.zeros(self.bins, dtype=torch.float64)
        self.bin_count = torch.zeros(self.bins, dtype=torch.float64)
        self.grad_norm_sum = 0.0
        self.time = 0.0


def _progress_mode(progress: bool | float | None) -> tuple[bool, float | None]:
    """(show a tqdm bar, seconds between progress lines or None) for :func:`train`'s ``progress``."""
    if progress is None:
        return (True, None) if sys.stderr.isatty() else (False, DEFAULT_PROGRESS_INTERVAL_S)
    if isinstance(progress, bool):
        return progress, None
    if isinstance(progress, (int, float)) and math.isfinite(progress) and progress > 0:
        return False, float(progress)
    raise OptionError(f"progress must be None, True, False or a positive number of seconds, not {progress!r}")


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class _ProgressLines:
    """A progress line every ``interval_s`` seconds of wall-clock time (for logs, when no bar is shown):
    step/total, mean per-example loss since the previous line, images/s and ETA (both from the rate since
    this process started training)."""

    def __init__(self, interval_s: float, total: int, step: int, batch: int, emit: Callable[[str], None]):
        self.interval_s, self.total, self.batch, self.emit = interval_s, total, batch, emit
        self.t0 = self.t_last = time.monotonic()
        self.step0 = step
        self.loss_sum = self.count = 0.0

    def update(self, step: int, loss_sum: float, count: float) -> None:
        self.loss_sum += loss_sum
        self.count += count
        now = time.monotonic()
        if now - self.t_last < self.interval_s:
            return
        rate = (step - self.step0) / max(now - self.t0, 1e-9)
        loss = self.loss_sum / self.count if self.count else float("nan")
        eta = (self.total - step) / rate if rate > 0 else math.inf
        self.emit(f"step {step}/{self.total} ({100 * step / self.total:.0f}%), loss {loss:.4g}, "
                  f"{rate * self.batch:.0f} images/s, ETA {_hms(eta)}")
        self.t_last, self.loss_sum, self.count = now, 0.0, 0.0


# ---- the loop -------------------------------------------------------------------------------------------------

def train(config: TrainConfig, run_dir: str | Path, resume: str = "auto", override_resume_check: bool = False,
          *, dist: Dist | None = None, progress: bool | float | None = None, handle_signals: bool = True,
          echo: bool = False, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train ``config`` in ``run_dir`` and return a summary dict.

    ``run_dir`` must be new, empty or a run directory (:func:`.rundir.check_writable_run_dir`: anything else
    is refused before a byte is written); it is locked for the whole call (:func:`diffusion_objectives.locking.hold`:
    a second writer gets :class:`~diffusion_objectives.locking.LockedError` naming this process).
    ``resume``: ``"auto"`` continues from the newest checkpoint in ``run_dir`` that reads back (unreadable
    ones are moved into ``checkpoints/corrupt/`` with a warning; if there are checkpoints but none is usable
    it raises :class:`~.checkpoint.CheckpointError` rather than start over) or starts fresh; ``"none"``
    starts fresh and refuses a directory that already has checkpoints; any other value is a checkpoint (or
    run) path, which must be valid and not older than a checkpoint already in ``run_dir`` (to branch from an
    older checkpoint, train into a new ``run_dir``). Resuming with different ``data``, ``network``, ``loss`` or
    ``run.batch_size`` raises OptionError with the diff unless ``override_resume_check``. A run already at
    ``run.steps`` is left untouched (summary key ``already_complete``). ``dist``: the process layout
    (default: one process on ``config.run.device``). ``progress``: ``True`` a tqdm bar, ``False`` nothing,
    a number of seconds: a line (step/total, loss, images/s, ETA) on stderr and in ``log.txt`` that often;
    default (None): the bar when stderr is a terminal, else a line every
    :data:`DEFAULT_PROGRESS_INTERVAL_S` seconds. ``echo``: copy the log to stderr. ``on_step(step)`` is
    called after every step (tests). Never calls ``sys.exit``. A second SIGINT during the graceful stop
    raises :class:`TrainingInterrupted` (the last checkpoint is intact).

    Summary keys: ``status`` (``finished`` or ``interrupted``), ``step``, ``images_seen``, ``checkpoint``,
    ``resumed_from``, ``loss`` (mean of the last logged interval), ``steps_per_s``, ``images_per_s``,
    ``precision`` (``name``, ``requested``, ``reason``: see :mod:`.precision`), ``param_digests`` (one per rank:
    equal when the ranks agree), ``already_complete``."""
    d = dist if dist is not None else Dist(device=distributed.pick_device(config.run.device))
    cfg = validate(copy.deepcopy(config), d.world_size)
    run_dir = rundir.check_writable_run_dir(run_dir)
    ck_dir = run_dir / "checkpoints"
    _progress_mode(progress)  # validated before anything is written
    if cfg.run.tensorboard:  # checked on every rank, before anything is written
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise OptionError("run.tensorboard=true needs the tensorboard package (pip install tensorboard)") from None
    dataset = build_dataset(cfg.data)  # before touching the run directory: a bad dataset leaves no trace
    with contextlib.ExitStack() as stack:
        _on_main(d, lambda: stack.enter_context(locking.hold(run_dir, _command_line())))
        if d.is_main:
            for p in (ck_dir, run_dir / "samples"):
                p.mkdir(parents=True, exist_ok=True)
        distributed.barrier(d)
        log = stack.enter_context(contextlib.closing(_RunLog(run_dir / "log.txt" if d.is_main else None, echo)))
        return _train(cfg, dataset, run_dir, ck_dir, resume, override_resume_check, d, log, progress,
                      handle_signals, on_step)


def _on_main(d: Dist, fn: Callable[[], Any]) -> Any:
    """``fn()`` run on the main rank; its result, or the exception it raised, on every rank."""
    result = error = None
    if d.is_main:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    if d.enabled:
        result, error = distributed.broadcast_object((result, error), d)
    if error is not None:
        raise error
    return result


def _command_line() -> str:
    """This process's command, recorded in the run lock for the message a second writer sees."""
    argv = sys.argv or ["python"]
    return " ".join([Path(argv[0]).name, *argv[1:]])[:500]


def _resume_source(resume: str, run_dir: Path, ck_dir: Path,
                   warn: Callable[[str], None]) -> ckpt_io.Checkpoint | None:
    """The checkpoint to start from, loaded (main rank; see :func:`train` for ``resume``)."""
    if resume == "auto":
        return ckpt_io.load_newest(ck_dir, warn)
    existing = ckpt_io.list_checkpoints(ck_dir)
    if resume == "none":
        if existing:
            raise OptionError(f"--resume none: {str(run_dir)!r} already has checkpoints; use --resume auto to "
                              "continue it or choose a new --out")
        return None
    source = ckpt_io.resolve_path(resume, warn)
    start = ckpt_io.load(source)
    step = start.step
    newer = [p.name for p in existing if int(p.name.split("-")[1]) > step]
    if newer:
        raise OptionError(
            f"cannot resume {str(run_dir)!r} from {str(source)!r} (step {step}): the run already has newer "
            f"checkpoints ({', '.join(newer)}), which training from step {step} would replace. To branch from "
            f"step {step}, train into a new directory (diffobj train --resume {source} --out NEW_RUN); to "
            "continue this run from its newest checkpoint, use --resume auto")
    return start


def _restore(source: Path | None, fname: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, which restores something from checkpoint ``source``; a malformed ``fname`` is a
    :class:`~.checkpoint.CheckpointError` naming it, not a traceback."""
    try:
        return fn()
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ckpt_io.CheckpointError(f"checkpoint {str(source)!r} is corrupt: {fname} does not hold what "
                                      f"training needs ({type(exc).__name__}: {exc})") from None


def _newest_published(ck_dir: Path) -> Path | None:
    """The newest checkpoint directory in ``ck_dir`` with a manifest: complete, since a checkpoint is renamed
    into place only after all its files are written and fsynced (no hashing: this runs on Ctrl-C)."""
    done = [p for p in ckpt_io.list_checkpoints(ck_dir) if (p / ckpt_io.MANIFEST_FILE).is_file()]
    return done[-1] if done else None


def _already_complete(start: ckpt_io.Checkpoint, run_dir: Path, steps: int, world: int,
                      log: _RunLog) -> dict[str, Any]:
    """The summary of a run whose newest checkpoint is at ``steps`` or beyond; nothing is written."""
    log(f"already complete: {start.path.name} is at step {start.step} (run.steps = {steps}); nothing was "
        "trained, sampled or written (raise run.steps to train longer)")
    try:
        previous = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        previous = None
    summary = previous if isinstance(previous, dict) and previous.get("step") == start.step else {}
    return summary | {"status": "finished", "already_complete": True, "run_dir": str(run_dir),
                      "step": start.step, "images_seen": int(start.state.get("images_seen", 0)),
                      "checkpoint": str(start.path), "resumed_from": str(start.path), "world_size": world}


@dataclasses.dataclass
class TrainState:
    """What the optimizer steps read and change: the counters, the trained modules and their optimizer state.

    ``model`` is ``net`` or its DDP wrapper; ``ema`` the EMA of ``net``'s weights; ``head`` EDM2's log-variance
    head u(λ) (with ``loss.uncertainty.enabled``); ``tracker`` the post-hoc power-function EMAs; ``adaptive``
    the adaptive schedule (docs/theory.md, "The adaptive schedule") when the objective uses one.
    """

    step: int
    images_seen: int
    skips: int  # consecutive skipped (non-finite) updates
    net: torch.nn.Module
    model: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    loss_fn: Any
    adaptive: AdaptiveSchedule | None
    head: LogVarianceHead | None
    tracker: phema.PowerEMA | None
    last_ckpt: Path | None
    sample_noise: Tensor | None = None
    last_record: dict[str, Any] = dataclasses.field(default_factory=dict)
    net_params: list[torch.nn.Parameter] = dataclasses.field(init=False)
    ema_params: list[torch.nn.Parameter] = dataclasses.field(init=False)
    head_params: list[torch.nn.Parameter] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.net_params = list(self.net.parameters())
        self.ema_params = list(self.ema.parameters())
        self.head_params = list(self.head.parameters()) if self.head is not None else []


@dataclasses.dataclass
class _Run:
    """What stays fixed during a run: its config, data, process group, objective, files and interval statistics."""

    cfg: TrainConfig
    dataset: Any
    d: Dist
    log: _RunLog
    run_dir: Path
    ck_dir: Path
    resolved: dict[str, Any]  # the config as recorded (precision resolved)
    objective: Any
    source: Path | None  # the checkpoint resumed from
    precision: Any
    t_start: float
    null_label: int | None
    interval: _Interval = dataclasses.field(init=False)
    run_id: str = dataclasses.field(init=False)
    autocast: Any = dataclasses.field(init=False)
    fork_devices: list[torch.device] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.interval = _Interval(self.cfg.loss.log_bins)
        self.run_id = derive_seed("run", str(self.run_dir.resolve()), self.cfg.seed).to_bytes(8, "little").hex()
        self.autocast = precision_autocast(self.precision, self.device)
        self.fork_devices = [self.device] if self.device.type == "cuda" else []

    @property
    def device(self) -> torch.device:
        return self.d.device

    @property
    def local(self) -> int:
        """Examples per rank and step: B / W."""
        return self.cfg.run.batch_size // self.d.world_size

    @property
    def micro(self) -> int:
        """Examples per micro-batch: B / (W · grad_accum)."""
        return self.local // self.cfg.run.grad_accum

    @property
    def logsnr_range(self) -> tuple[float, float]:
        return self.objective.schedule.logsnr_min, self.objective.schedule.logsnr_max


@dataclasses.dataclass
class _Outputs:
    """Where a run reports (main rank only; None elsewhere): stats.jsonl, TensorBoard, progress bar or lines."""

    stats_file: Any = None
    tb: Any = None
    bar: Any = None
    lines: _ProgressLines | None = None

    def close(self) -> None:
        for sink in (self.bar, self.stats_file, self.tb):
            if sink is not None:
                sink.close()


@dataclasses.dataclass
class _Batch:
    """This rank's slice of the step's global batch: x [b, *shape], ε [b, *shape], λ [b], labels [b] or None."""

    x: Tensor
    eps: Tensor
    logsnr: Tensor
    labels: Tensor | None


@dataclasses.dataclass
class _Backward:
    """One rank's forward/backward: logged loss [b], its λ [b], w(λ)‖ε̂ − ε‖² per micro-batch, gradient norm."""

    loss: Tensor
    logsnr: Tensor
    weighted_eps_mse: list[Tensor]
    grad_norm: Tensor


@dataclasses.dataclass
class StepStatistics:
    """The per-step statistics every rank needs, summed over the ranks in a single all-reduce.

    All float64. Scalars []: non-finite losses, non-finite gradient norm (0/1), stop requested (0/1), sum and
    count of the finite losses; per λ-bin [K]: loss sums and counts; with the adaptive schedule, its sums and
    counts per bin [bins]. :meth:`pack` lays them out in this order in one vector, :meth:`unpack` reads it back.
    """

    bad_loss: Tensor
    bad_grad: Tensor
    stop: Tensor
    loss_sum: Tensor
    count: Tensor
    bin_sum: Tensor
    bin_count: Tensor
    adaptive_sum: Tensor | None = None
    adaptive_count: Tensor | None = None

    def pack(self) -> Tensor:
        parts = [torch.stack([self.bad_loss, self.bad_grad, self.stop, self.loss_sum, self.count]),
                 self.bin_sum, self.bin_count]
        if self.adaptive_sum is not None:
            parts += [self.adaptive_sum, self.adaptive_count]
        return torch.cat(parts)

    @classmethod
    def unpack(cls, vec: Tensor, bins: int, adaptive_bins: int | None) -> StepStatistics:
        a0 = 5 + 2 * bins
        adaptive = (None, None) if adaptive_bins is None else (
            vec[a0:a0 + adaptive_bins], vec[a0 + adaptive_bins:a0 + 2 * adaptive_bins])
        return cls(vec[0], vec[1], vec[2], vec[3], vec[4], vec[5:5 + bins], vec[5 + bins:a0], *adaptive)

    def all_reduce(self, d: Dist) -> StepStatistics:
        """The sums over the ranks (on the CPU)."""
        vec = distributed.all_reduce_sum(self.pack(), d).cpu()
        return self.unpack(vec, len(self.bin_sum), None if self.adaptive_sum is None else len(self.adaptive_sum))


def _train(cfg: TrainConfig, dataset: Any, run_dir: Path, ck_dir: Path, resume: str, override: bool, d: Dist,
           log: _RunLog, progress: bool | None, handle_signals: bool,
           on_step: Callable[[int], None] | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    cfg.network = complete_network_params(cfg.network, dataset, cfg.seed)  # network shape from the data
    precision = resolve_precision(cfg.run.precision, d.device)
    cfg.run.precision = precision.name  # the run's config records what it ran with (auto resolved)
    resolved = to_dict(cfg)
    start = _start_from(cfg, resolved, run_dir, ck_dir, resume, override, d, log)
    if start is not None and start.step >= cfg.run.steps:
        return _already_complete(start, run_dir, cfg.run.steps, d.world_size, log)
    ts, objective = _build_state(cfg, d, start)
    run = _Run(cfg, dataset, d, log, run_dir, ck_dir, resolved, objective, None if start is None else start.path,
               precision, t_start, getattr(ts.net, "null_label", None))
    out = _open_outputs(run, ts, resumed=start is not None, progress=progress)
    status = "finished"
    try:
        with _stop_on_signals(handle_signals) as stop:
            while ts.step < cfg.run.steps:
                stop_req = _train_step(run, ts, out, stop["signal"] is not None)
                if _after_step(run, ts, out, stop_req, stop, on_step):
                    status = "interrupted"
                    break
            if status == "finished":
                _record(run, ts, out)
                if ts.tracker is not None:
                    _snapshot(run, ts)
                _save(run, ts)
                if cfg.run.sample_every > 0:
                    _samples(run, ts)
    except KeyboardInterrupt:  # a second Ctrl-C during the graceful stop: leave at once, nothing half-written
        how = "interrupted again" if handle_signals else "interrupted"
        newest = _newest_published(ck_dir) if d.is_main else ts.last_ckpt
        msg = (f"{how} at step {ts.step}; the last complete checkpoint {str(newest) if newest else '(none)'} is "
               "intact (one being written is discarded whole); rerun the same command to resume from it")
        log.warn(msg)
        raise TrainingInterrupted(msg) from None
    finally:
        out.close()
    return _summarize(run, ts, status)


def _main_warn(d: Dist, log: _RunLog) -> Callable[[str], None]:
    return log.warn if d.is_main else (lambda msg: None)


def _start_from(cfg: TrainConfig, resolved: dict[str, Any], run_dir: Path, ck_dir: Path, resume: str,
                override: bool, d: Dist, log: _RunLog) -> ckpt_io.Checkpoint | None:
    """The checkpoint to resume from (None: start afresh), checked against the config."""
    warn = _main_warn(d, log)
    picked: dict[str, ckpt_io.Checkpoint | None] = {}

    def pick() -> str | None:
        picked["start"] = _resume_source(resume, run_dir, ck_dir, warn)
        return None if picked["start"] is None else str(picked["start"].path)

    chosen = _on_main(d, pick)  # the main rank decides (and quarantines); the others load what it chose
    start = picked["start"] if d.is_main else (ckpt_io.load(chosen) if chosen is not None else None)
    if start is None:
        return None
    source = start.path
    changed = diff(start.config, resolved, GUARDED_KEYS)
    if changed and not override:
        raise OptionError(f"cannot resume from {str(source)!r}: the config changed\n{format_diff(changed)}\n"
                          "(pass --allow-config-change to resume anyway, or use a new --out)")
    if changed:
        warn(f"resuming despite config changes:\n{format_diff(changed)}")
    other = diff(start.config, resolved)
    if other and not changed:
        log(f"config changes on resume (allowed):\n{format_diff(other)}")
    if start.state.get("format_version") != ckpt_io.FORMAT_VERSION:
        raise ckpt_io.CheckpointError(f"checkpoint {str(source)!r}: unknown training-state format")
    if start.step >= cfg.run.steps and source.parent.resolve() != ck_dir.resolve():
        raise OptionError(f"checkpoint {str(source)!r} is at step {start.step}, not before run.steps = "
                          f"{cfg.run.steps}: nothing to train (raise run.steps)")
    return start


def _build_state(cfg: TrainConfig, d: Dist, start: ckpt_io.Checkpoint | None) -> tuple[TrainState, Any]:
    """The network, its EMA, the objective, the optimizer and the counters, restored from ``start`` if given."""
    device, B = d.device, cfg.run.batch_size
    source = None if start is None else start.path
    state: dict[str, Any] = {} if start is None else start.state
    net = build_network(cfg.network)
    if start is not None:
        try:
            net.load_state_dict(start.model)
        except RuntimeError as exc:
            raise OptionError(f"checkpoint {str(source)!r} does not fit the network: {exc}") from None
    net.to(device).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    if start is not None:
        _restore(source, "ema.safetensors", lambda: ema.load_state_dict(start.ema))
    objective = build_objective(cfg.loss)
    loss_fn = objective.loss()
    head = _uncertainty_head(cfg, device, source, state)
    if head is not None:
        loss_fn = UncertaintyWeightedLoss(loss_fn, head)
    adaptive = objective.schedule if isinstance(objective.schedule, AdaptiveSchedule) else None
    if adaptive is not None and state.get("adaptive") is not None:
        adaptive.load_state_dict(state["adaptive"])
    if cfg.network.conditional and getattr(net, "null_label", None) is None:
        raise OptionError(f"network {cfg.network.name!r} is not class-conditional (no null_label)")

    # fused AdamW (one kernel for all parameters): 4-6 % faster training steps on the CPU presets, losses equal
    # to 3e-7 relative (benchmarks/README.md, throughput)
    groups: list[dict[str, Any]] = [{"params": list(net.parameters())}]
    if head is not None:  # the log-variance head: its own group, no weight decay
        groups.append({"params": list(head.parameters()), "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay, fused=device.type in ("cpu", "cuda"))
    if start is not None:
        _restore(source, "training_state.pt", lambda: opt.load_state_dict(state["optimizer"]))
    model: torch.nn.Module = net
    if d.enabled:
        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)

    step = start.step if start is not None else 0
    images_seen, skips = _restore(source, "training_state.pt", lambda: (
        int(state.get("images_seen", step * B)), int(state.get("consecutive_skips", 0))))
    tracker = _posthoc_tracker(cfg, net, source, state)
    ts = TrainState(step=step, images_seen=images_seen, skips=skips, net=net, model=model, ema=ema, opt=opt,
                    loss_fn=loss_fn, adaptive=adaptive, head=head, tracker=tracker, last_ckpt=source)
    return ts, objective


def _open_outputs(run: _Run, ts: TrainState, resumed: bool, progress: bool | None) -> _Outputs:
    """Write config.yaml, trim stats.jsonl to the resumed step, log the run's header; open the report sinks."""
    cfg, d, log, r = run.cfg, run.d, run.log, run.cfg.run
    out = _Outputs()
    if not d.is_main:
        return out
    stats_path = run.run_dir / "stats.jsonl"
    rundir.write_text_atomic(run.run_dir / "config.yaml", dump_yaml(from_dict(TrainConfig, run.resolved)))
    rundir.rewrite_stats(stats_path, ts.step if resumed else -1, _main_warn(d, log))
    n_params = sum(p.numel() for p in ts.net.parameters())
    objective, dataset, precision = run.objective, run.dataset, run.precision
    log(f"{'resuming from ' + str(run.source) if run.source else 'starting'} at step {ts.step}/{r.steps}: "
        f"dataset {dataset.name} {list(dataset.shape)} × {len(dataset)}, network {cfg.network.name} "
        f"({n_params / 1e6:.3f}M parameters), objective {objective.name} "
        f"(w={objective.weighting.name}, p={objective.schedule.name}, {objective.parameterization.name}-prediction), "
        f"batch {r.batch_size} = {d.world_size} process(es) × {r.grad_accum} × {run.micro}, device {run.device}, "
        f"seed {cfg.seed}")
    log(f"precision {precision.name} (run.precision={precision.requested}: {precision.reason})")
    if precision.warning:
        log.warn(precision.warning)
    if r.tensorboard:
        from torch.utils.tensorboard import SummaryWriter  # optional dependency

        out.tb = SummaryWriter(str(run.run_dir / "tensorboard"))
    out.stats_file = open(stats_path, "a", buffering=1)  # noqa: SIM115
    show_bar, line_every_s = _progress_mode(progress)
    if show_bar:
        out.bar = tqdm(total=r.steps, initial=ts.step, unit="step", dynamic_ncols=True, file=sys.stderr)
    elif line_every_s is not None:
        out.lines = _ProgressLines(line_every_s, r.steps, ts.step, r.batch_size, lambda msg: log(msg, "progress"))
    return out


def _train_step(run: _Run, ts: TrainState, out: _Outputs, stop_requested: bool) -> bool:
    """One optimizer step: draw the batch, forward/backward, reduce across ranks, update (or skip).

    Returns whether any rank asked to stop."""
    t0 = time.perf_counter()
    lr = learning_rate(run.cfg, ts.images_seen)
    for group in ts.opt.param_groups:
        group["lr"] = lr
    batch = _draw_batch(run, ts.step)
    bw = _forward_backward(run, ts, batch)
    stats = _reduce(run, ts, batch, bw, stop_requested)
    n_bad_loss = int(stats.bad_loss)
    if n_bad_loss > 0 or bool(stats.bad_grad > 0):
        _skip_update(run, ts, bw, n_bad_loss, lr)
    else:
        _update(run, ts, bw, stats)
    B, interval = run.cfg.run.batch_size, run.interval
    ts.step += 1
    ts.images_seen += B
    interval.steps += 1
    interval.loss_sum += float(stats.loss_sum)
    interval.count += float(stats.count)
    interval.bin_sum += stats.bin_sum
    interval.bin_count += stats.bin_count
    interval.time += time.perf_counter() - t0
    if out.bar is not None:
        out.bar.update(1)
    if out.lines is not None:
        out.lines.update(ts.step, float(stats.loss_sum), float(stats.count))
    return bool(stats.stop > 0)


def _draw_batch(run: _Run, step: int) -> _Batch:
    """This step's randomness and data: the global batch drawn from (seed, step), then this rank's slice."""
    cfg, dataset, device, d = run.cfg, run.dataset, run.device, run.d
    B, local = cfg.run.batch_size, run.local
    idx = data_module.batch_indices(len(dataset), B, cfg.seed, step)
    lam_all = run.objective.schedule.sample(B, step_generator(cfg.seed, step, "logsnr", device),
                                            stratified=cfg.loss.stratified, device=device)
    eps_all = torch.randn((B, *dataset.shape), generator=step_generator(cfg.seed, step, "eps", device),
                          device=device)
    flip_all = (torch.rand(B, generator=step_generator(cfg.seed, step, "flip", device), device=device)
                < 0.5) if dataset.hflip else None
    drop_all = (torch.rand(B, generator=step_generator(cfg.seed, step, "labels", device),
                           device=device) < cfg.network.label_dropout) if cfg.network.conditional else None
    mine = slice(d.rank * local, (d.rank + 1) * local)
    idx, lam_all, eps_all = idx[mine], lam_all[mine], eps_all[mine]
    x_all = dataset.data[idx].to(device, non_blocking=True)
    if flip_all is not None:
        f = flip_all[mine].reshape((-1,) + (1,) * (x_all.ndim - 1))
        x_all = torch.where(f, x_all.flip(-1), x_all)
    labels_all = None
    if cfg.network.conditional:
        labels_all = dataset.labels[idx].to(device)
        labels_all = torch.where(drop_all[mine], torch.full_like(labels_all, run.null_label), labels_all)
    return _Batch(x_all, eps_all, lam_all, labels_all)


def _forward_backward(run: _Run, ts: TrainState, batch: _Batch) -> _Backward:
    """Forward/backward over the micro-batches (DDP syncs on the last), then clip the gradients."""
    cfg, d, step, micro = run.cfg, run.d, ts.step, run.micro
    A = cfg.run.grad_accum
    losses, lams, wmse = [], [], []
    for m in range(A):
        sl = slice(m * micro, (m + 1) * micro)
        sync = contextlib.nullcontext() if (m == A - 1 or not d.enabled) else ts.model.no_sync()
        with sync, torch.random.fork_rng(devices=run.fork_devices):
            _seed_dropout(derive_seed("dropout", cfg.seed, step, d.rank, m), run.device)
            with run.autocast:
                out = ts.loss_fn.loss_at(ts.model, batch.x[sl], batch.eps[sl], batch.logsnr[sl],
                                         None if batch.labels is None else batch.labels[sl])
            loss = out.loss
            (loss.sum() / run.local).backward()
        # logged: the base loss ℓ_w (with the uncertainty head a non-finite ℓ_u shows in the gradient)
        losses.append((loss if ts.head is None else out.weighted).detach().float())
        lams.append(out.logsnr.detach().float())
        wmse.append(out.weighted_eps_mse.detach())
    if ts.head_params and d.enabled:  # DDP averages the network's gradients; the head's likewise
        _average_gradients(ts.head_params, d)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        ts.net_params + ts.head_params, cfg.optim.grad_clip if cfg.optim.grad_clip is not None else float("inf"))
    return _Backward(torch.cat(losses), torch.cat(lams), wmse, grad_norm)


def _reduce(run: _Run, ts: TrainState, batch: _Batch, bw: _Backward, stop_requested: bool) -> StepStatistics:
    """One all-reduce: agreement on the decision, logged losses per λ-bin, adaptive-schedule statistics."""
    device, K = run.device, run.cfg.loss.log_bins
    lo, hi = run.logsnr_range
    finite = torch.isfinite(bw.loss)
    bin_idx = ((bw.logsnr.double() - lo) / (hi - lo) * K).floor().long().clamp(0, K - 1)
    lv = torch.where(finite, bw.loss, torch.zeros_like(bw.loss)).double()
    fin = finite.double()
    stats = StepStatistics(
        bad_loss=(~finite).sum().double(), bad_grad=(~torch.isfinite(bw.grad_norm)).double(),
        stop=torch.tensor(float(stop_requested), device=device, dtype=torch.float64),
        loss_sum=lv.sum(), count=fin.sum(),
        bin_sum=torch.zeros(K, dtype=torch.float64, device=device).index_add_(0, bin_idx, lv),
        bin_count=torch.zeros(K, dtype=torch.float64, device=device).index_add_(0, bin_idx, fin))
    if ts.adaptive is not None:  # w(λ)‖ε̂ − ε‖² per bin (non-finite values: never used, see _skip_update)
        wm = torch.cat(bw.weighted_eps_mse)
        a_sum, a_cnt = ts.adaptive.statistics(batch.logsnr, torch.where(torch.isfinite(wm), wm,
                                                                        torch.zeros_like(wm)))
        stats.adaptive_sum, stats.adaptive_count = a_sum.to(device), a_cnt.to(device)
    return stats.all_reduce(run.d)


def _skip_update(run: _Run, ts: TrainState, bw: _Backward, n_bad_loss: int, lr: float) -> None:
    """A non-finite loss or gradient on some rank: skip the update, or stop with :class:`NonFiniteError`."""
    r, d, step = run.cfg.run, run.d, ts.step
    ts.skips += 1
    if r.nonfinite == "stop" or ts.skips > r.max_consecutive_skips:
        finite, lam_v = torch.isfinite(bw.loss), bw.logsnr
        bad = ~finite if n_bad_loss else torch.ones_like(finite)
        ext = torch.tensor([-float(lam_v[bad].min()) if bad.any() else -math.inf,
                            float(lam_v[bad].max()) if bad.any() else -math.inf],
                           dtype=torch.float64, device=run.device)
        ext = distributed.all_reduce_max(ext, d).cpu()
        what = "loss" if n_bad_loss else "gradient"
        why = ("" if r.nonfinite == "stop"
               else f" ({ts.skips} consecutive non-finite steps > run.max_consecutive_skips)")
        raise NonFiniteError(
            f"non-finite {what} at step {step + 1} (computing step {step} -> {step + 1}){why}; "
            f"λ of the affected examples in [{-float(ext[0]):.4g}, {float(ext[1]):.4g}], "
            f"seed {run.cfg.seed}, lr {lr:.3g}. The last good checkpoint "
            f"{str(ts.last_ckpt) if ts.last_ckpt else '(none)'} is intact. Lower optim.lr, set "
            "optim.grad_clip, try run.precision=fp32, or --set run.nonfinite=skip")
    ts.opt.zero_grad(set_to_none=True)
    run.interval.skipped += 1
    if d.is_main:
        run.log.warn(f"step {step + 1}: non-finite {'loss' if n_bad_loss else 'gradient'}, update "
                     f"skipped ({ts.skips} in a row)")


def _update(run: _Run, ts: TrainState, bw: _Backward, stats: StepStatistics) -> None:
    """The optimizer step, the EMA (β = 0.5^(B / half-life)), the post-hoc EMAs and the adaptive schedule."""
    ts.skips = 0
    ts.opt.step()
    ts.opt.zero_grad(set_to_none=True)
    beta = ema_beta(run.cfg, ts.images_seen + run.cfg.run.batch_size)
    with torch.no_grad():
        torch._foreach_lerp_(ts.ema_params, [p.detach() for p in ts.net_params], 1.0 - beta)
        for be, b in zip(ts.ema.buffers(), ts.net.buffers(), strict=True):
            be.copy_(b)
    if ts.tracker is not None:
        ts.tracker.update(ts.net.state_dict(), ts.step + 1)
    if ts.adaptive is not None:
        ts.adaptive.update_from_statistics(stats.adaptive_sum, stats.adaptive_count)
    run.interval.grad_norm_sum += float(bw.grad_norm)


def _after_step(run: _Run, ts: TrainState, out: _Outputs, stop_req: bool, stop: dict[str, Any],
                on_step: Callable[[int], None] | None) -> bool:
    """Log, sample, snapshot and checkpoint as scheduled; returns True when stopping on a signal."""
    r, step = run.cfg.run, ts.step
    at_ckpt = r.checkpoint_every > 0 and step % r.checkpoint_every == 0
    if step % r.log_every == 0 or at_ckpt or stop_req or step == r.steps:
        _record(run, ts, out)
    if on_step is not None:
        on_step(step)
    if r.sample_every > 0 and step % r.sample_every == 0 and step < r.steps:
        _samples(run, ts)
    if ts.tracker is not None and run.cfg.ema.snapshot_every > 0 and step % run.cfg.ema.snapshot_every == 0:
        _snapshot(run, ts)
    if stop_req and step < r.steps:
        _save(run, ts)
        if run.d.is_main:
            run.log(f"stopping at step {step} on {stop['signal'] or 'a signal on another rank'}; "
                    "checkpoint saved, rerun the same command to resume")
        return True
    if at_ckpt and step < r.steps:
        _save(run, ts)
    return False


def _record(run: _Run, ts: TrainState, out: _Outputs) -> None:
    """One stats.jsonl line (and TensorBoard scalars) for the interval since the last one."""
    interval, cfg, B = run.interval, run.cfg, run.cfg.run.batch_size
    if interval.steps == 0:
        return
    lo, hi = run.logsnr_range
    per_bin = torch.where(interval.bin_count > 0, interval.bin_sum / interval.bin_count.clamp_min(1),
                          torch.full_like(interval.bin_sum, float("nan")))
    loss = interval.loss_sum / interval.count if interval.count else float("nan")
    rec = {
        "step": ts.step,
        "images_seen": ts.images_seen,
        "loss": _json_float(loss),
        "loss_per_logsnr_bin": [_json_float(float(v)) for v in per_bin],
        "logsnr_range": [lo, hi],
        "lr": learning_rate(cfg, ts.images_seen - B),
        "grad_norm": _json_float(interval.grad_norm_sum / max(interval.steps - interval.skipped, 1)),
        "skipped_steps": interval.skipped,
        "ema_beta": ema_beta(cfg, ts.images_seen),
        **(_weighting_record(ts.loss_fn, lo, hi, cfg.loss.log_bins) if ts.head is not None else {}),
        "time": {"step_s": interval.time / interval.steps,
                 "steps_per_s": interval.steps / interval.time if interval.time > 0 else None,
                 "images_per_s": interval.steps * B / interval.time if interval.time > 0 else None,
                 "elapsed_s": time.perf_counter() - run.t_start},
    }
    ts.last_record = rec
    if out.stats_file is not None:
        out.stats_file.write(json.dumps(rec) + "\n")
        out.stats_file.flush()
    if out.tb is not None:
        out.tb.add_scalar("loss", loss, ts.step)
        out.tb.add_scalar("lr", rec["lr"], ts.step)
    if out.bar is not None:
        out.bar.set_postfix(loss=f"{loss:.4g}")
    interval.reset()


def _save(run: _Run, ts: TrainState) -> None:
    """A checkpoint at the current step (written by the main rank; every rank waits for it)."""
    if run.d.is_main:
        st = {"step": ts.step, "images_seen": ts.images_seen, "optimizer": ts.opt.state_dict(),
              "adaptive": ts.adaptive.state_dict() if ts.adaptive is not None else None,
              "consecutive_skips": ts.skips,
              "uncertainty_head": ts.head.state_dict() if ts.head is not None else None,
              "posthoc_ema": ts.tracker.state_dict() if ts.tracker is not None else None}
        ts.last_ckpt = ckpt_io.save(run.ck_dir, ts.step, model=ts.net.state_dict(), ema=ts.ema.state_dict(),
                                    state=st, config=run.resolved, keep=run.cfg.run.keep_checkpoints,
                                    images_seen=ts.images_seen, warn=run.log.warn)
        run.log(f"checkpoint {ts.last_ckpt.name} written")
    distributed.barrier(run.d)


def _snapshot(run: _Run, ts: TrainState) -> None:
    if run.d.is_main and ts.tracker.step > 0:
        phema.save_snapshots(ts.tracker, run.run_dir / PHEMA_DIR, run=run.run_id, extra={"config": run.resolved})


def _samples(run: _Run, ts: TrainState) -> None:
    if not run.d.is_main:
        return
    cfg = run.cfg
    if ts.sample_noise is None:
        g = torch.Generator().manual_seed(derive_seed("samples", cfg.seed))
        ts.sample_noise = torch.randn((cfg.run.num_samples, *run.dataset.shape), generator=g)
    _write_samples(ts.ema, run.objective, run.dataset, ts.sample_noise, cfg.run.sample_steps,
                   cfg.network.conditional, run.run_dir / "samples" / f"step-{ts.step:08d}.png", run.device,
                   run.log)


def _summarize(run: _Run, ts: TrainState, status: str) -> dict[str, Any]:
    """summary.json: status, counters, the last interval's loss and speed, parameter digests of every rank."""
    d = run.d
    digests = distributed.all_gather_object(_param_digest(ts.net), d)
    if len(set(digests)) > 1 and d.is_main:
        run.log.warn(f"parameters differ across ranks: {digests}")
    elapsed = time.perf_counter() - run.t_start
    last = ts.last_record
    summary = {
        "status": status,
        "run_dir": str(run.run_dir),
        "step": ts.step,
        "images_seen": ts.images_seen,
        "checkpoint": str(ts.last_ckpt) if ts.last_ckpt else None,
        "resumed_from": str(run.source) if run.source else None,
        "loss": last.get("loss"),
        "steps_per_s": (last.get("time") or {}).get("steps_per_s"),
        "images_per_s": (last.get("time") or {}).get("images_per_s"),
        "elapsed_s": elapsed,
        "world_size": d.world_size,
        "precision": run.precision.as_dict(),
        "param_digests": digests,
    }
    if d.is_main:
        rundir.write_text_atomic(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        run.log(f"{status} at step {ts.step} ({ts.images_seen} images) in {elapsed:.1f} s")
    return summary


# ---- the learned uncertainty weighting and the post-hoc EMA ---------------------------------------------------

def _uncertainty_head(cfg: TrainConfig, device: torch.device, source: Path | None,
                      state: dict[str, Any]) -> LogVarianceHead | None:
    """EDM2's log-variance head u(λ) if ``loss.uncertainty.enabled`` (the same random features on every rank:
    drawn from a generator seeded by the run's seed), restored from the training state when resuming."""
    u = cfg.loss.uncertainty
    if not u.enabled:
        return None
    g = torch.Generator().manual_seed(derive_seed("uncertainty-head", cfg.seed))
    head = LogVarianceHead(u.channels, bandwidth=u.bandwidth, generator=g)
    _restore_part(source, state, "uncertainty_head", "uncertainty head", "loss.uncertainty.enabled is true",
                  head.load_state_dict)
    return head.to(device).train()


def _posthoc_tracker(cfg: TrainConfig, net: torch.nn.Module, source: Path | None,
                     state: dict[str, Any]) -> phema.PowerEMA | None:
    """EDM2's power-function EMAs at ``ema.posthoc_sigma_rels`` (None if empty), restored when resuming."""
    if not cfg.ema.posthoc_sigma_rels:
        return None
    tracker = phema.PowerEMA(net.state_dict(), cfg.ema.posthoc_sigma_rels)
    _restore_part(source, state, "posthoc_ema", "post-hoc EMA state", "ema.posthoc_sigma_rels is set",
                  tracker.load_state_dict)
    return tracker


def _restore_part(source: Path | None, state: dict[str, Any], key: str, what: str, because: str,
                  load: Callable[[Any], Any]) -> None:
    """When resuming from ``source``, load ``state[key]`` (an optional part of the training state) with
    ``load``; a checkpoint without it is a CheckpointError naming the setting that needs it."""
    if source is None:
        return
    saved = state.get(key)
    if saved is None:
        raise ckpt_io.CheckpointError(f"checkpoint {str(source)!r} has no {what}, but {because}")
    _restore(source, "training_state.pt", lambda: load(saved))


def _average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Replace each gradient by its mean over the ranks (what DDP does for the network's)."""
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    distributed.all_reduce_sum(flat, d)
    flat /= d.world_size
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _weighting_record(loss_fn: UncertaintyWeightedLoss, lo: float, hi: float, bins: int) -> dict[str, Any]:
    """stats.jsonl fields at the centres λ_k of the ``bins`` logged λ-bins: the effective weighting
    w(λ) e^{−u(λ)} and the base w, each normalised to unit trapezoid integral over the centres
    (:meth:`~diffusion_objectives.uncertainty.UncertaintyWeightedLoss.effective_weighting`), and u(λ_k)."""
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    if bins < 2:
        return {}
    w_eff = loss_fn.effective_weighting(centres)
    w = loss_fn.weighting(centres).to(torch.float64)
    w = w / torch.trapezoid(w, centres)
    with torch.no_grad():
        u = loss_fn.head(centres.to(next(loss_fn.head.parameters()).device)).double().cpu()
    return {"logsnr_bin_centres": centres.tolist(),
            "w_eff_per_logsnr_bin": [_json_float(float(v)) for v in w_eff],
            "w_per_logsnr_bin": [_json_float(float(v)) for v in w],
            "u_per_logsnr_bin": [_json_float(float(v)) for v in u]}


# ---- sample grids -------------------------------------------------------------------------------------------------

def _write_samples(ema: torch.nn.Module, objective: Any, dataset: Any, noise: Tensor, steps: int,
                   conditional: bool, path: Path, device: torch.device, log: _RunLog) -> None:
    """Fixed-noise samples of the EMA model (DPM-Solver++(2M), ``steps`` evaluations, no guidance; labels
    0, 1, 2, ... for a conditional model): an image grid, or a scatter plot for 2-D data."""
    try:
        from .. import samplers
    except ImportError as exc:
        log.warn(f"no sample grid: diffusion_objectives.samplers is not available ({exc})")
        return
    s = objective.schedule
    labels = None
    if conditional:
        labels = torch.arange(noise.shape[0], device=device) % max(int(dataset.num_classes), 1)
    try:
        with torch.no_grad():
            # DPM-Solver++(2M) on EDM's σ-grid if it fits inside the trained λ-range, else uniform in λ
            grid = samplers.grid_edm(steps)
            if grid[0] < s.logsnr_min or grid[-1] > s.logsnr_max:
                grid = samplers.grid_uniform_logsnr(steps, s.logsnr_min, s.logsnr_max)
            x = samplers.dpmpp_2m(ema, objective.parameterization, noise.to(device), grid, labels=labels)
    except Exception as exc:  # a sampler problem must not kill a training run
        log.warn(f"no sample grid at {path.name}: sampling failed ({type(exc).__name__}: {exc})")
        return
    x = x.detach().float().cpu()
    if x.ndim == 2 and x.shape[1] == 2:
        _scatter(x, dataset, path)
    elif x.ndim == 4:
        from ..data import save_image_grid

        save_image_grid(x.clamp(-1, 1), path, nrow=int(math.ceil(math.sqrt(x.shape[0]))))
    else:
        warnings.warn(f"no sample plot for data of shape {list(x.shape[1:])}", stacklevel=2)


def _scatter(x: Tensor, dataset: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ref = dataset.data[: x.shape[0]]
    ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.3, color="0.6", label="data")
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, color="C0", label="samples (EMA)")
    lim = float(ref.abs().max()) * 1.3
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8, markerscale=4)
    ax.set_title(path.stem)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
