"""What a training run reports: the human-readable ``log.txt``, the ``stats.jsonl`` records (and TensorBoard
scalars), the progress bar or progress lines, and the sums over the steps between two records.

A ``stats.jsonl`` record (one JSON object per line) covers the steps since the previous one: ``step``,
``images_seen``, ``loss`` (mean per-example loss over the finite losses), ``loss_per_logsnr_bin`` (the same per
λ-bin of ``logsnr_range``, null where no example fell), ``lr``, ``grad_norm`` (mean over the updates),
``skipped_steps``, ``ema_beta``, with EDM2's uncertainty head ``logsnr_bin_centres``, ``w_eff_per_logsnr_bin``,
``w_per_logsnr_bin``, ``u_per_logsnr_bin`` (:func:`weighting_record`), and ``time`` (``step_s``, ``steps_per_s``,
``images_per_s``, ``elapsed_s``). Non-finite numbers are written as null.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..errors import OptionError
from . import distributed
from .distributed import Dist
from .step import StepResult
from .uncertainty import UncertaintyWeightedLoss

__all__ = ["DEFAULT_PROGRESS_INTERVAL_S", "RunLog", "progress_mode", "ProgressLines", "Interval", "Reports",
           "require_tensorboard", "weighting_record"]

DEFAULT_PROGRESS_INTERVAL_S = 60.0  # progress lines when no bar is shown (stderr not a terminal)


class RunLog:
    """Human-readable log: ``RUN/log.txt`` and stderr, on rank 0 only (``path`` None: a silent log)."""

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


def progress_mode(progress: bool | float | None) -> tuple[bool, float | None]:
    """(show a tqdm bar, seconds between progress lines or None) for :func:`~.loop.train`'s ``progress``."""
    if progress is None:
        return (True, None) if sys.stderr.isatty() else (False, DEFAULT_PROGRESS_INTERVAL_S)
    if isinstance(progress, bool):
        return progress, None
    if isinstance(progress, (int, float)) and math.isfinite(progress) and progress > 0:
        return False, float(progress)
    raise OptionError(f"progress must be None, True, False or a positive number of seconds, not {progress!r}")


def require_tensorboard() -> None:
    """OptionError unless the optional tensorboard package is importable (``run.tensorboard=true``)."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (optional dependency)
    except ImportError:
        raise OptionError("run.tensorboard=true needs the tensorboard package (pip install tensorboard)") from None


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


class ProgressLines:
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


class Interval:
    """Sums over the steps since the last ``stats.jsonl`` record (every rank keeps them: the summary of each
    rank reports the last record). The logged losses and their λ are kept as the steps left them and binned
    when the record is written (:meth:`per_bin`): one λ-binning, and with several processes one all-reduce, per
    record instead of per step. Once ``fold_examples`` losses are waiting they are binned at once into running
    sums, so a long interval (a large ``run.log_every``) keeps memory bounded."""

    def __init__(self, bins: int, logsnr_range: tuple[float, float], d: Dist, fold_examples: int = 1 << 22):
        self.bins, self.logsnr_range, self.d, self.fold_examples = bins, logsnr_range, d, fold_examples
        self.reset()

    def reset(self) -> None:
        self.steps = self.skipped = 0
        self.loss_sum = self.count = 0.0
        self.losses: list[torch.Tensor] = []
        self.logsnrs: list[torch.Tensor] = []
        self.waiting = 0  # examples in self.losses
        self.sums: torch.Tensor | None = None  # [2, bins] this rank's folded per-bin sums and counts
        self.grad_norm_sum = 0.0
        self.time = 0.0

    def add(self, result: StepResult, seconds: float) -> None:
        """Add one step's statistics (summed over the ranks), this rank's losses and λ, and the step's duration."""
        stats = result.stats
        self.steps += 1
        if result.skipped:
            self.skipped += 1
        else:
            self.grad_norm_sum += result.grad_norm
        self.loss_sum += float(stats.loss_sum)
        self.count += float(stats.count)
        self.losses.append(result.loss)
        self.logsnrs.append(result.logsnr)
        self.waiting += result.loss.numel()
        if self.waiting >= self.fold_examples:
            self._fold()
        self.time += seconds

    def _fold(self) -> None:
        """Bin the waiting losses (this rank's) into :attr:`sums`: finite losses summed per λ-bin, and counted."""
        if not self.losses:
            return
        lo, hi = self.logsnr_range
        loss, logsnr = torch.cat(self.losses), torch.cat(self.logsnrs)
        finite = torch.isfinite(loss)
        idx = ((logsnr.double() - lo) / (hi - lo) * self.bins).floor_().long().clamp_(0, self.bins - 1)
        sums = torch.zeros(2, self.bins, dtype=torch.float64, device=loss.device)
        sums[0].index_add_(0, idx, torch.where(finite, loss.double(), 0.0))
        sums[1].index_add_(0, idx, finite.double())
        self.sums = sums if self.sums is None else self.sums + sums
        self.losses, self.logsnrs, self.waiting = [], [], 0

    def per_bin(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums and counts [bins] (float64, on the CPU) of the interval's finite losses, summed over the ranks, in
        ``bins`` equal-width bins of ``logsnr_range`` (λ outside it: the end bins)."""
        self._fold()
        sums = torch.zeros(2, self.bins, dtype=torch.float64, device=self.d.device) if self.sums is None \
            else self.sums.clone()
        sums = distributed.all_reduce_sum(sums, self.d).cpu()
        return sums[0], sums[1]

    def record(self, *, step: int, images_seen: int, batch_size: int, lr: float, ema_beta: float, elapsed_s: float,
               extra: dict[str, Any]) -> dict[str, Any]:
        """The ``stats.jsonl`` record of the interval (see the module docstring), ending at ``step``."""
        bin_sum, bin_count = self.per_bin()
        per_bin = [_json_float(s / c) if c > 0 else None for s, c in zip(bin_sum.tolist(), bin_count.tolist(),
                                                                          strict=True)]
        loss = self.loss_sum / self.count if self.count else float("nan")
        return {
            "step": step,
            "images_seen": images_seen,
            "loss": _json_float(loss),
            "loss_per_logsnr_bin": per_bin,
            "logsnr_range": list(self.logsnr_range),
            "lr": lr,
            "grad_norm": _json_float(self.grad_norm_sum / max(self.steps - self.skipped, 1)),
            "skipped_steps": self.skipped,
            "ema_beta": ema_beta,
            **extra,
            "time": {"step_s": self.time / self.steps,
                     "steps_per_s": self.steps / self.time if self.time > 0 else None,
                     "images_per_s": self.steps * batch_size / self.time if self.time > 0 else None,
                     "elapsed_s": elapsed_s},
        }


@dataclasses.dataclass
class Reports:
    """Where a run reports (main rank only; every sink None elsewhere): ``stats.jsonl``, TensorBoard, the
    progress bar or progress lines."""

    stats_file: Any = None
    tb: Any = None
    bar: Any = None
    lines: ProgressLines | None = None

    @classmethod
    def open(cls, stats_path: Path, tensorboard_dir: Path | None, progress: bool | float | None, *, total: int,
             step: int, batch: int, log: RunLog) -> Reports:
        """Open the sinks: ``stats_path`` for appending, TensorBoard in ``tensorboard_dir`` (None: none), and the
        bar or lines that ``progress`` asks for (:func:`progress_mode`)."""
        out = cls()
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency

            out.tb = SummaryWriter(str(tensorboard_dir))
        out.stats_file = open(stats_path, "a", buffering=1)  # noqa: SIM115
        show_bar, line_every_s = progress_mode(progress)
        if show_bar:
            out.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr)
        elif line_every_s is not None:
            out.lines = ProgressLines(line_every_s, total, step, batch, lambda msg: log(msg, "progress"))
        return out

    def step_done(self, step: int, result: StepResult) -> None:
        """Advance the bar, or feed the progress lines the step's loss sum and count."""
        if self.bar is not None:
            self.bar.update(1)
        if self.lines is not None:
            self.lines.update(step, float(result.stats.loss_sum), float(result.stats.count))

    def write(self, rec: dict[str, Any]) -> None:
        """One ``stats.jsonl`` line (flushed), the TensorBoard scalars ``loss`` and ``lr``, the bar's loss."""
        loss = float("nan") if rec["loss"] is None else rec["loss"]
        if self.stats_file is not None:
            self.stats_file.write(json.dumps(rec) + "\n")
            self.stats_file.flush()
        if self.tb is not None:
            self.tb.add_scalar("loss", loss, rec["step"])
            self.tb.add_scalar("lr", rec["lr"], rec["step"])
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}")

    def close(self) -> None:
        for sink in (self.bar, self.stats_file, self.tb):
            if sink is not None:
                sink.close()


def weighting_record(loss_fn: UncertaintyWeightedLoss, lo: float, hi: float, bins: int) -> dict[str, Any]:
    """stats.jsonl fields at the centres λ_k of the ``bins`` logged λ-bins: the effective weighting
    w(λ) e^{−u(λ)} and the base w, each normalised to unit trapezoid integral over the centres
    (:meth:`~diffusion_objectives.training.uncertainty.UncertaintyWeightedLoss.effective_weighting`), and u(λ_k)."""
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
