"""Shared pieces of the benchmarks: command-line flags, thread set-up, interleaved timing with medians,
provenance (date, machine, torch, threads, git commit), markdown tables and the JSON result file, and the
briefly trained models that several benchmarks share.

Timing on a shared 2-core machine is noisy, so every comparison is *interleaved*: round r runs every
variant once (A, B, C, then B, C, A, ...: the order rotates so no variant always runs first), and a ratio
is the median over rounds of the ratio measured *within* a round. Absolute times are reported too, as
medians, but only the ratios are meant to be compared across runs.

The clock: with one thread (the default), :func:`clock` is the process's CPU time
(``time.process_time``), which other jobs time-slicing the cores do not inflate (measured here: wall-time
steps varied ±50 % under a load of 4 on 2 cores, CPU-time steps ±1 %). With more threads it is wall time
(CPU time would add up the threads and their spin-waits).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_CACHE = os.environ.get("DIFFOBJ_BENCH_CACHE", "/tmp/diffobj-bench-cache")

# ---- command line and threads -------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes; scripts add their own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a smoke run of seconds (tiny sizes; numbers meaningless)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON result (default %(default)s)")
    p.add_argument("--cache", type=Path, default=Path(DEFAULT_CACHE),
                   help="where briefly trained models are kept between benchmarks (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p


def setup(args: argparse.Namespace) -> float:
    """Apply ``--threads`` and return the start time. OMP_NUM_THREADS is recorded as found; what counts
    is ``torch.set_num_threads`` (read back into the result)."""
    torch.set_num_threads(args.threads)
    return time.perf_counter()


def clock() -> float:
    """Seconds: CPU time of this process with one torch thread, wall time otherwise (see the module doc)."""
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def clock_name() -> str:
    return "process CPU time" if torch.get_num_threads() == 1 else "wall time"


# ---- interleaved timing ---------------------------------------------------------------------------------


@dataclass
class Timings:
    """Seconds per unit (a step, an image, ...) of each variant in each round, in the order they ran."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, num: str, den: str) -> dict[str, Any]:
        """Median and quartiles over rounds of time(num)/time(den) measured in the same round."""
        r = [a / b for a, b in zip(self.times[num], self.times[den], strict=True)]
        return {"median": statistics.median(r), "q25": quantile(r, 0.25), "q75": quantile(r, 0.75), "rounds": r}

    def as_dict(self) -> dict[str, Any]:
        return {k: {"median_s": self.median(k), "rounds_s": v} for k, v in self.times.items()}


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (``statistics.quantiles`` needs two values, this needs one)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def interleaved(variants: Mapping[str, Callable[[], float | None]], rounds: int, warmup: int = 1,
                log: Callable[[str], None] | None = print) -> Timings:
    """Run each variant once per round, rotating the order, after ``warmup`` untimed rounds.

    A variant returns its own measurement (seconds per unit, so it can exclude start-up) or ``None``, in
    which case the :func:`clock` time of the call is used."""
    names = list(variants)
    out = Timings({n: [] for n in names})
    for r in range(-warmup, rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = clock()
            value = variants[name]()
            seconds = clock() - t0 if value is None else float(value)
            if r >= 0:
                out.times[name].append(seconds)
        if log is not None and r >= 0:
            log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {out.times[n][-1] * 1e3:.2f} ms" for n in names))
    return out


# ---- tables and results ----------------------------------------------------------------------------------


@dataclass
class Table:
    """A result table: printed as markdown and stored in the JSON (``benchmarks/report.py`` copies it
    into the README)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    notes: str = ""

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |\n|" + "|".join("---" for _ in self.columns) + "|\n"
        body = "".join("| " + " | ".join(_cell(c) for c in row) + " |\n" for row in self.rows)
        text = f"**{self.title}**\n\n{head}{body}"
        return text + (f"\n{self.notes}\n" if self.notes else "")

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": [[_cell(c) for c in r] for r in self.rows],
                "notes": self.notes}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        a = abs(value)
        if a == 0:
            return "0"
        if a >= 1e5 or a < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}" if a < 100 else f"{value:,.0f}"
    return str(value)


def fmt_ratio(r: Mapping[str, float]) -> str:
    """``1.023 [1.01, 1.04]``: the median ratio with its interquartile range over rounds."""
    return f"{r['median']:.3f} [{r['q25']:.3f}, {r['q75']:.3f}]"


def _git(*cmd: str) -> str | None:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance(args: argparse.Namespace, name: str, started: float,
               clock_label: str | None = None) -> dict[str, Any]:
    """Date, machine, software and settings of this run (read-only git queries); ``clock_label`` names the
    clock the benchmark timed with (default: :func:`clock_name`)."""
    status = _git("status", "--porcelain")
    return {
        "benchmark": name,
        "quick": bool(args.quick),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "load_average": list(os.getloadavg()),
                    "platform": platform.platform()},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "clock": clock_label or clock_name(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_changed_files": None if status is None else len(status.splitlines()),
        "argv": sys.argv[1:],
        "wall_s": time.perf_counter() - started,
    }


def finish(args: argparse.Namespace, name: str, started: float, tables: Sequence[Table],
           results: Mapping[str, Any], clock_label: str | None = None) -> Path:
    """Print the tables and write ``OUT/NAME.json`` (``NAME-quick.json`` for ``--quick``)."""
    for t in tables:
        print("\n" + t.markdown())
    payload = provenance(args, name, started, clock_label)
    payload |= {"tables": [t.as_dict() for t in tables], "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    print(f"wrote {path}")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


# ---- briefly trained models, shared between benchmarks ----------------------------------------------------

# The digits model is the ``tiny`` U-Net (unconditional) so that gradients and 1000-step samplers stay
# within minutes on two cores; the toy model is the toy2d preset as it is.
TRAINED = {
    "toy": ("toy2d", 1500, ["run.log_every=100"]),
    "digits": ("digits", 1000, ["network.channels=8", "network.emb_mult=2", "network.dropout=0.0",
                                "network.conditional=false", "optim.warmup_images=20000", "run.log_every=100"]),
}


def trained_model(kind: str, args: argparse.Namespace, log: Callable[[str], None] = print):
    """A :class:`~diffusion_objectives.training.LoadedModel` (EMA weights) of ``kind`` (``toy``, ``digits``),
    trained with ``training.train`` on first use and cached under ``--cache`` by a hash of its config.
    Returns (loaded model, info dict)."""
    from diffusion_objectives import training

    preset, steps, overrides = TRAINED[kind]
    steps = 30 if args.quick else steps
    cfg = training.resolve(preset, steps=steps, seed=args.seed, overrides=[
        *overrides, "run.sample_every=0", "run.checkpoint_every=0", "run.device=cpu"])
    key = hashlib.sha256(json.dumps(training.to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    run_dir = args.cache / f"{kind}-{key}"
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if summary is None or summary.get("status") != "finished":
        shutil.rmtree(run_dir, ignore_errors=True)
        log(f"training the {kind} model ({steps} steps, {preset} preset) in {run_dir}")
        t0 = time.perf_counter()
        summary = training.train(cfg, run_dir, resume="none", progress=False, handle_signals=False)
        summary["train_wall_s"] = time.perf_counter() - t0
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    loaded = training.load_for_inference(run_dir)
    info = {"kind": kind, "preset": preset, "steps": loaded.step, "batch_size": cfg.run.batch_size,
            "network": {"name": cfg.network.name, **loaded.config.network.params},
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "objective": cfg.loss.objective, "final_loss": summary.get("loss"), "run_dir": str(run_dir),
            "overrides": overrides}
    return loaded, info
