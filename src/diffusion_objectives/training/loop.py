r"""The training loop: one explicit function, :func:`train` (after EDM2's ``training_loop``).

:func:`train` sets up the run (the run directory and its lock, resuming, the config check), then repeats
:func:`~.step.train_step` (draw the batch → forward/backward → reduce across ranks → update, EMA, adaptive
schedule; :mod:`.step` says what each step computes and how its randomness depends on (seed, step) only), and
between steps records statistics (:mod:`.logs`), writes preview samples (:mod:`.previews`), post-hoc EMA
snapshots and checkpoints (:class:`~.checkpoint.CheckpointStore`; the run's layout: :class:`~.rundir.RunDir`).

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
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import locking
from ..core.adaptive import AdaptiveSchedule
from ..errors import OptionError
from . import checkpoint as ckpt_io
from . import distributed, phema, rundir
from .build import build_dataset, build_network, build_objective, complete_network_params, derive_seed
from .config import GUARDED_KEYS, TrainConfig, diff, dump_yaml, format_diff, from_dict, to_dict, validate
from .distributed import Dist
from .logs import (
    DEFAULT_PROGRESS_INTERVAL_S,
    Interval,
    Reports,
    RunLog,
    progress_mode,
    require_tensorboard,
    weighting_record,
)
from .precision import resolve_precision
from .previews import preview_noise, write_preview
from .rundir import RunDir
from .step import (
    NonFiniteError,
    StepContext,
    StepResult,
    StepStatistics,
    TrainingError,
    TrainState,
    ema_beta,
    learning_rate,
    step_generator,
    train_step,
)
from .uncertainty import LogVarianceHead, UncertaintyWeightedLoss

__all__ = ["train", "TrainingError", "NonFiniteError", "TrainingInterrupted", "DEFAULT_PROGRESS_INTERVAL_S",
           "learning_rate", "ema_beta", "step_generator", "TrainState", "StepStatistics"]


class TrainingInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt during training (with ``handle_signals``: a second SIGINT during the graceful stop):
    training ended at once, without a new checkpoint; the message names the last checkpoint, which is intact."""


# ---- small helpers ----------------------------------------------------------------------------------------

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
    rd = RunDir(rundir.check_writable_run_dir(run_dir))
    progress_mode(progress)  # validated before anything is written
    if cfg.run.tensorboard:  # checked on every rank, before anything is written
        require_tensorboard()
    dataset = build_dataset(cfg.data)  # before touching the run directory: a bad dataset leaves no trace
    with contextlib.ExitStack() as stack:
        _on_main(d, lambda: stack.enter_context(locking.hold(rd.path, _command_line())))
        if d.is_main:
            for p in (rd.checkpoints.root, rd.samples_dir):
                p.mkdir(parents=True, exist_ok=True)
        distributed.barrier(d)
        log = stack.enter_context(contextlib.closing(RunLog(rd.log_file if d.is_main else None, echo)))
        return _train(cfg, dataset, rd, resume, override_resume_check, d, log, progress, handle_signals, on_step)


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


def _resume_source(resume: str, rd: RunDir, warn: Callable[[str], None]) -> ckpt_io.Checkpoint | None:
    """The checkpoint to start from, loaded (main rank; see :func:`train` for ``resume``)."""
    store = rd.checkpoints
    if resume == "auto":
        return store.load_newest(warn)
    if resume == "none":
        if store.all():
            raise OptionError(f"--resume none: {str(rd.path)!r} already has checkpoints; use --resume auto to "
                              "continue it or choose a new --out")
        return None
    source = ckpt_io.resolve_path(resume, warn)
    start = ckpt_io.load(source)
    step = start.step
    newer = [p.name for p in store.newer_than(step)]
    if newer:
        raise OptionError(
            f"cannot resume {str(rd.path)!r} from {str(source)!r} (step {step}): the run already has newer "
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


def _already_complete(start: ckpt_io.Checkpoint, rd: RunDir, steps: int, world: int,
                      log: RunLog) -> dict[str, Any]:
    """The summary of a run whose newest checkpoint is at ``steps`` or beyond; nothing is written."""
    log(f"already complete: {start.path.name} is at step {start.step} (run.steps = {steps}); nothing was "
        "trained, sampled or written (raise run.steps to train longer)")
    try:
        previous = json.loads(rd.summary_file.read_text())
    except (OSError, ValueError):
        previous = None
    summary = previous if isinstance(previous, dict) and previous.get("step") == start.step else {}
    return summary | {"status": "finished", "already_complete": True, "run_dir": str(rd.path),
                      "step": start.step, "images_seen": int(start.state.get("images_seen", 0)),
                      "checkpoint": str(start.path), "resumed_from": str(start.path), "world_size": world}


@dataclasses.dataclass
class _Run:
    """What stays fixed during a run: what a step reads (``ctx``), the run directory and its log, the config as
    recorded, the checkpoint resumed from, and the statistics of the steps since the last record."""

    ctx: StepContext
    log: RunLog
    rd: RunDir
    resolved: dict[str, Any]  # the config as recorded (precision resolved)
    source: Path | None  # the checkpoint resumed from
    t_start: float
    interval: Interval = dataclasses.field(init=False)
    run_id: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.interval = Interval(self.cfg.loss.log_bins, self.ctx.logsnr_range, self.ctx.d)
        self.run_id = derive_seed("run", str(self.rd.path.resolve()), self.cfg.seed).to_bytes(8, "little").hex()

    @property
    def cfg(self) -> TrainConfig:
        return self.ctx.cfg

    @property
    def d(self) -> Dist:
        return self.ctx.d


def _train(cfg: TrainConfig, dataset: Any, rd: RunDir, resume: str, override: bool, d: Dist, log: RunLog,
           progress: bool | float | None, handle_signals: bool,
           on_step: Callable[[int], None] | None) -> dict[str, Any]:
    """:func:`train` inside the locked run directory: resume or start, the steps, the final record, snapshot,
    checkpoint and previews, the summary."""
    t_start = time.perf_counter()
    cfg.network = complete_network_params(cfg.network, dataset, cfg.seed)  # network shape from the data
    precision = resolve_precision(cfg.run.precision, d.device)
    cfg.run.precision = precision.name  # the run's config records what it ran with (auto resolved)
    resolved = to_dict(cfg)
    start = _start_from(cfg, resolved, rd, resume, override, d, log)
    if start is not None and start.step >= cfg.run.steps:
        return _already_complete(start, rd, cfg.run.steps, d.world_size, log)
    ts, objective = _build_state(cfg, d, start)
    ctx = StepContext(cfg, dataset, d, objective, precision, getattr(ts.net, "null_label", None))
    run = _Run(ctx, log, rd, resolved, None if start is None else start.path, t_start)
    out = _open_outputs(run, ts, resumed=start is not None, progress=progress)
    status = "finished"
    try:
        with _stop_on_signals(handle_signals) as stop:
            while ts.step < cfg.run.steps:
                stop_req = _step(run, ts, out, stop["signal"] is not None)
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
        newest = rd.checkpoints.newest_published() if d.is_main else ts.last_ckpt
        msg = (f"{how} at step {ts.step}; the last complete checkpoint {str(newest) if newest else '(none)'} is "
               "intact (one being written is discarded whole); rerun the same command to resume from it")
        log.warn(msg)
        raise TrainingInterrupted(msg) from None
    finally:
        out.close()
    return _summarize(run, ts, status)


def _main_warn(d: Dist, log: RunLog) -> Callable[[str], None]:
    return log.warn if d.is_main else (lambda msg: None)


def _start_from(cfg: TrainConfig, resolved: dict[str, Any], rd: RunDir, resume: str, override: bool, d: Dist,
                log: RunLog) -> ckpt_io.Checkpoint | None:
    """The checkpoint to resume from (None: start afresh), checked against the config."""
    warn = _main_warn(d, log)
    picked: dict[str, ckpt_io.Checkpoint | None] = {}

    def pick() -> str | None:
        picked["start"] = _resume_source(resume, rd, warn)
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
    if start.step >= cfg.run.steps and source.parent.resolve() != rd.checkpoints.root.resolve():
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


def _open_outputs(run: _Run, ts: TrainState, resumed: bool, progress: bool | float | None) -> Reports:
    """Write config.yaml, trim stats.jsonl to the resumed step, log the run's header; open the report sinks."""
    cfg, d, log, r, rd = run.cfg, run.d, run.log, run.cfg.run, run.rd
    if not d.is_main:
        return Reports()
    rundir.write_text_atomic(rd.config_file, dump_yaml(from_dict(TrainConfig, run.resolved)))
    rundir.rewrite_stats(rd.stats_file, ts.step if resumed else -1, _main_warn(d, log))
    n_params = sum(p.numel() for p in ts.net.parameters())
    ctx = run.ctx
    objective, dataset, precision = ctx.objective, ctx.dataset, ctx.precision
    log(f"{'resuming from ' + str(run.source) if run.source else 'starting'} at step {ts.step}/{r.steps}: "
        f"dataset {dataset.name} {list(dataset.shape)} × {len(dataset)}, network {cfg.network.name} "
        f"({n_params / 1e6:.3f}M parameters), objective {objective.name} "
        f"(w={objective.weighting.name}, p={objective.schedule.name}, {objective.parameterization.name}-prediction), "
        f"batch {r.batch_size} = {d.world_size} process(es) × {r.grad_accum} × {ctx.micro}, device {ctx.device}, "
        f"seed {cfg.seed}")
    log(f"precision {precision.name} (run.precision={precision.requested}: {precision.reason})")
    if precision.warning:
        log.warn(precision.warning)
    return Reports.open(rd.stats_file, rd.tensorboard_dir if r.tensorboard else None, progress, total=r.steps,
                        step=ts.step, batch=r.batch_size, log=log)


def _step(run: _Run, ts: TrainState, out: Reports, stop_requested: bool) -> bool:
    """One optimizer step (:func:`~.step.train_step`) and its bookkeeping: the interval sums, a warning for a
    skipped update, the progress bar or lines. Returns whether any rank asked to stop."""
    t0 = time.perf_counter()
    result: StepResult = train_step(run.ctx, ts, stop_requested)
    if result.skipped and run.d.is_main:
        what = "loss" if float(result.stats.bad_loss) > 0 else "gradient"
        run.log.warn(f"step {ts.step}: non-finite {what}, update skipped ({ts.skips} in a row)")
    run.interval.add(result, time.perf_counter() - t0)
    out.step_done(ts.step, result)
    return result.stop


def _after_step(run: _Run, ts: TrainState, out: Reports, stop_req: bool, stop: dict[str, Any],
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


def _record(run: _Run, ts: TrainState, out: Reports) -> None:
    """One stats.jsonl line (and TensorBoard scalars) for the interval since the last one."""
    interval, cfg, B = run.interval, run.cfg, run.cfg.run.batch_size
    if interval.steps == 0:
        return
    lo, hi = run.ctx.logsnr_range
    extra = weighting_record(ts.loss_fn, lo, hi, cfg.loss.log_bins) if ts.head is not None else {}
    rec = interval.record(step=ts.step, images_seen=ts.images_seen, batch_size=B,
                          lr=learning_rate(cfg, ts.images_seen - B), ema_beta=ema_beta(cfg, ts.images_seen),
                          elapsed_s=time.perf_counter() - run.t_start, extra=extra)
    ts.last_record = rec
    out.write(rec)
    interval.reset()


def _save(run: _Run, ts: TrainState) -> None:
    """A checkpoint at the current step (written by the main rank; every rank waits for it)."""
    if run.d.is_main:
        st = {"step": ts.step, "images_seen": ts.images_seen, "optimizer": ts.opt.state_dict(),
              "adaptive": ts.adaptive.state_dict() if ts.adaptive is not None else None,
              "consecutive_skips": ts.skips,
              "uncertainty_head": ts.head.state_dict() if ts.head is not None else None,
              "posthoc_ema": ts.tracker.state_dict() if ts.tracker is not None else None}
        ts.last_ckpt = run.rd.checkpoints.save(ts.step, model=ts.net.state_dict(), ema=ts.ema.state_dict(),
                                               state=st, config=run.resolved, keep=run.cfg.run.keep_checkpoints,
                                               images_seen=ts.images_seen, warn=run.log.warn)
        run.log(f"checkpoint {ts.last_ckpt.name} written")
    distributed.barrier(run.d)


def _snapshot(run: _Run, ts: TrainState) -> None:
    if run.d.is_main and ts.tracker.step > 0:
        phema.save_snapshots(ts.tracker, run.rd.phema_dir, run=run.run_id, extra={"config": run.resolved})


def _samples(run: _Run, ts: TrainState) -> None:
    """The preview samples after the current step (main rank)."""
    if not run.d.is_main:
        return
    cfg, ctx = run.cfg, run.ctx
    if ts.sample_noise is None:
        ts.sample_noise = preview_noise(cfg.seed, cfg.run.num_samples, tuple(ctx.dataset.shape))
    write_preview(ts.ema, ctx.objective, ctx.dataset, ts.sample_noise, cfg.run.sample_steps, cfg.network.conditional,
                  run.rd.preview_path(ts.step), ctx.device, run.log.warn)


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
        "run_dir": str(run.rd.path),
        "step": ts.step,
        "images_seen": ts.images_seen,
        "checkpoint": str(ts.last_ckpt) if ts.last_ckpt else None,
        "resumed_from": str(run.source) if run.source else None,
        "loss": last.get("loss"),
        "steps_per_s": (last.get("time") or {}).get("steps_per_s"),
        "images_per_s": (last.get("time") or {}).get("images_per_s"),
        "elapsed_s": elapsed,
        "world_size": d.world_size,
        "precision": run.ctx.precision.as_dict(),
        "param_digests": digests,
    }
    if d.is_main:
        rundir.write_text_atomic(run.rd.summary_file, json.dumps(summary, indent=2) + "\n")
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
