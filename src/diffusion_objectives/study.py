"""KG23's study as one function: a grid of objectives × seeds under equal compute, evaluated alike.

Each grid entry is ``NAME[:key=value,...][+adaptive]``: an objective preset of
:mod:`diffusion_objectives.objectives`, optional weighting parameters (``sigmoid:bias=-2``) and the
adaptive schedule (KG23 §5). Every (entry, seed) is a normal training run directory under
``OUT/runs/<entry>/seed-<seed>/``, trained by :func:`diffusion_objectives.training.train` with the same
network, data, steps, batch, optimizer and EMA, then evaluated by
:func:`diffusion_objectives.evaluation.evaluate` with one protocol; its result goes to ``eval.json``
beside it. Finished runs with an up-to-date evaluation are reused and interrupted ones resume, so
rerunning the same command continues where it stopped. :mod:`.report` turns the results into
``report.md`` and ``results.json``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import objectives, weightings
from .errors import OptionError

__all__ = ["GridEntry", "EvalProtocol", "StudyConfig", "STUDY_PRESETS", "study_preset", "parse_entry",
           "run_study", "run_one"]


@dataclass(frozen=True)
class GridEntry:
    """One objective of the grid: preset ``objective``, weighting parameters, adaptive schedule or not."""

    objective: str
    weighting_params: tuple[tuple[str, float], ...] = ()
    adaptive: bool = False

    @property
    def label(self) -> str:
        params = ",".join(f"{k}={v:g}" for k, v in self.weighting_params)
        return self.objective + (f":{params}" if params else "") + ("+adaptive" if self.adaptive else "")

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label.replace(":", "_").replace("+", "_"))

    def weighting(self) -> weightings.Weighting:
        obj = objectives.get(self.objective)
        if not self.weighting_params:
            return obj.weighting
        return weightings.get(obj.weighting.name, **dict(self.weighting_params))

    def is_monotonic(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> bool:
        return self.weighting().is_monotonic(logsnr_min, logsnr_max)

    def overrides(self) -> list[str]:
        out = [f"loss.weighting.{k}={v!r}" for k, v in self.weighting_params]
        if self.adaptive:
            out.append("loss.adaptive.enabled=true")
        return out


def parse_entry(text: str) -> GridEntry:
    """``"sigmoid:bias=-2+adaptive"`` → :class:`GridEntry` (errors name the entry and the choices)."""
    body, plus, suffix = text.strip().partition("+")
    if plus and suffix != "adaptive":
        raise OptionError(f"grid entry {text!r}: the only suffix is '+adaptive'")
    name, _, params_text = body.partition(":")
    if name not in objectives.REGISTRY:
        raise OptionError(f"grid entry {text!r}: unknown objective {name!r}; choose from: "
                          f"{', '.join(objectives.names())}")
    params: list[tuple[str, float]] = []
    for item in filter(None, params_text.split(",")):
        key, sep, value = item.partition("=")
        try:
            params.append((key, float(value)))
        except ValueError:
            raise OptionError(f"grid entry {text!r}: expected KEY=NUMBER, got {item!r}") from None
        if not sep:
            raise OptionError(f"grid entry {text!r}: expected KEY=NUMBER, got {item!r}")
    entry = GridEntry(name, tuple(params), bool(plus))
    entry.weighting()  # validates the parameters against the weighting's registry entry
    return entry


@dataclass
class EvalProtocol:
    """The evaluation applied to every run: ``n`` samples (seeds 0 … n−1) with ``sampler``/``steps``,
    ``metrics`` (see :data:`diffusion_objectives.evaluation.METRICS`), bits/dim on ``n_elbo`` examples of
    ``split`` with ``elbo_samples`` λ-draws each."""

    metrics: list[str] = field(default_factory=lambda: ["toy", "bpd", "loss-std"])
    n: int = 2000
    sampler: str = "heun"
    steps: int = 32
    split: str = "test"
    n_elbo: int = 512
    elbo_samples: int = 32


@dataclass
class StudyConfig:
    """A study: ``preset`` (training preset) plus ``overrides`` (``--set`` strings shared by every run),
    ``steps`` and ``batch_size`` (equal compute), the grid, the seeds, the evaluation protocol and the
    number of runs trained at once (``jobs``; each run then uses ``threads`` threads)."""

    preset: str = "toy2d"
    overrides: list[str] = field(default_factory=list)
    steps: int = 1500
    batch_size: int = 256
    grid: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    evaluation: EvalProtocol = field(default_factory=EvalProtocol)
    jobs: int = 2
    threads: int = 1
    description: str = ""


_SHOWN = 2000  # samples kept per run for the report's plots

DEFAULT_GRID = ["elbo", "iddpm", "edm", "v-cosine", "flow-matching", "sigmoid:bias=-2", "sigmoid:bias=0",
                "sigmoid:bias=2", "sigmoid:bias=4", "edm-monotonic", "elbo+adaptive", "sigmoid:bias=2+adaptive",
                "edm-monotonic+adaptive"]


def _default() -> StudyConfig:
    return StudyConfig(
        preset="toy2d",
        overrides=["data.name=anisotropic", "network.params.hidden=128", "network.params.depth=3",
                   "optim.lr=2e-3", "optim.warmup_images=50000", "ema.half_life_images=100000",
                   "run.checkpoint_every=0", "run.sample_every=0", "run.log_every=50"],
        steps=1500, batch_size=256, grid=list(DEFAULT_GRID), seeds=[0, 1, 2],
        evaluation=EvalProtocol(metrics=["toy", "bpd", "loss-std"], n=2000, sampler="heun", steps=32,
                                n_elbo=512, elbo_samples=32),
        jobs=2, threads=1,
        description="2-D anisotropic two-Gaussian mixture, 3 × 128 residual MLP, 1500 steps of 256: "
                    "about 10 minutes on 2 CPU cores")


def _digits() -> StudyConfig:
    return StudyConfig(
        preset="digits", overrides=["run.checkpoint_every=1000", "run.sample_every=0"], steps=3000,
        batch_size=128, grid=list(DEFAULT_GRID), seeds=[0, 1],
        evaluation=EvalProtocol(metrics=["fd", "kid", "coverage", "bpd", "loss-std"], n=1000, sampler="heun",
                                steps=32, n_elbo=256, elbo_samples=32),
        jobs=2, threads=1, description="8×8 digits, the digits U-Net, 3000 steps of 128 (about an hour on 2 CPU cores)")


def _fashion() -> StudyConfig:
    return StudyConfig(
        preset="fashion-mnist", overrides=["run.precision=auto", "run.checkpoint_every=250", "run.sample_every=0"],
        steps=2000, batch_size=64, grid=["elbo", "iddpm", "edm", "v-cosine", "flow-matching", "sigmoid:bias=-2",
                                         "sigmoid:bias=2", "edm-monotonic"], seeds=[0],
        evaluation=EvalProtocol(metrics=["fd", "kid", "coverage", "bpd", "loss-std"], n=1000, sampler="heun",
                                steps=32, n_elbo=128, elbo_samples=16),
        jobs=2, threads=1,
        description="Fashion-MNIST 28×28, the fashion-mnist U-Net (1.1 M parameters), 2000 steps of 64 with bf16 "
                    "autocast: about 3.5 CPU-hours (under 2 hours on 2 cores)")


def _imagenet64() -> StudyConfig:
    return StudyConfig(
        preset="imagenet64-kg23", overrides=[], steps=1_220_000, batch_size=2048,
        grid=["edm", "iddpm", "v-cosine", "sigmoid:bias=-2+adaptive", "sigmoid:bias=2+adaptive",
              "edm-monotonic+adaptive"], seeds=[0],
        evaluation=EvalProtocol(metrics=["fd", "kid", "bpd"], n=50_000, sampler="heun", steps=32,
                                n_elbo=10_000, elbo_samples=32),
        jobs=1, threads=8,
        description="ImageNet 64×64 at KG23/EDM scale (GPU cluster; train each run under torchrun, see docs)")


STUDY_PRESETS: dict[str, Callable[[], StudyConfig]] = {
    "default": _default, "digits": _digits, "fashion-mnist": _fashion, "imagenet64": _imagenet64,
}


def study_preset(name: str) -> StudyConfig:
    if name not in STUDY_PRESETS:
        raise OptionError(f"unknown study preset {name!r}; choose from: {', '.join(STUDY_PRESETS)}")
    return STUDY_PRESETS[name]()


# ---- running ------------------------------------------------------------------------------------------------

def run_config(study: StudyConfig, entry: GridEntry, seed: int):
    """The training config of one run: the study's preset and overrides, the entry's objective, the seed."""
    from .training import resolve

    return resolve(study.preset, objective=entry.objective, steps=study.steps, batch_size=study.batch_size,
                   seed=seed, overrides=[*study.overrides, *entry.overrides()])


def _protocol_key(study: StudyConfig) -> dict[str, Any]:
    return asdict(study.evaluation)


def run_one(study: StudyConfig, entry: GridEntry, seed: int, run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume, or reuse) one run and evaluate it; returns the run's record (also ``eval.json``)."""
    import torch

    from . import evaluation
    from .training import load_for_inference, train

    torch.set_num_threads(max(1, study.threads))
    run_dir = Path(run_dir)
    record_path = run_dir / "eval.json"
    cfg = run_config(study, entry, seed)
    summary_path = run_dir / "summary.json"
    t0 = time.perf_counter()
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    finished = summary.get("status") == "finished" and summary.get("step") == cfg.run.steps
    trained_now = not finished
    if trained_now:
        summary = train(cfg, run_dir, resume="auto", progress=False, handle_signals=False)
        if summary.get("status") != "finished":
            raise RuntimeError(f"run {run_dir} stopped at step {summary.get('step')}")
    train_s = time.perf_counter() - t0
    if record_path.is_file() and not trained_now:
        old = json.loads(record_path.read_text())
        if old.get("protocol") == _protocol_key(study) and old.get("checkpoint") == summary.get("checkpoint"):
            return old
    t1 = time.perf_counter()
    loaded = load_for_inference(run_dir)
    p = study.evaluation
    settings = evaluation.SampleSettings(p.sampler, p.steps)
    samples, labels = evaluation.generate(loaded, range(p.n), settings)
    result = evaluation.evaluate(loaded, p.metrics, n=p.n, settings=settings, split=p.split, n_elbo=p.n_elbo,
                                 elbo_samples=p.elbo_samples, samples=samples, sample_labels=labels)
    np.savez_compressed(run_dir / "samples.npz", samples=samples[:_SHOWN].numpy())
    record = {
        "entry": entry.label, "objective": entry.objective, "weighting_params": dict(entry.weighting_params),
        "adaptive": entry.adaptive, "monotone": entry.is_monotonic(), "seed": seed, "run_dir": str(run_dir),
        "checkpoint": summary.get("checkpoint"), "protocol": _protocol_key(study),
        "network": f"{cfg.network.name} {cfg.network.params} "
                   f"({sum(p.numel() for p in loaded.model.parameters()) / 1e6:.3f}M parameters)",
        "train_seconds": train_s if trained_now else summary.get("elapsed_s"),
        "steps_per_s": summary.get("steps_per_s"), "eval_seconds": time.perf_counter() - t1,
        "final_loss": summary.get("loss"), "result": result,
    }
    tmp = record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_path)
    return record


def _worker(args: tuple[StudyConfig, GridEntry, int, str]) -> dict[str, Any]:
    os.environ.setdefault("OMP_NUM_THREADS", str(args[0].threads))
    return run_one(*args)


def _die_with_parent() -> None:
    """Pool initializer: on Linux, have the kernel send SIGTERM to this worker when the study process dies,
    so an interrupted ``compare`` leaves no training behind (the run resumes on the next invocation)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


def run_study(study: StudyConfig, out: str | Path, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (entry, seed) of ``study`` under ``out`` and write the report; returns the results."""
    from . import report

    entries = [parse_entry(e) for e in study.grid]
    if len({e.label for e in entries}) != len(entries):
        raise OptionError("the grid lists an objective twice")
    if not study.seeds:
        raise OptionError("a study needs at least one seed")
    for entry in entries:  # validate every config before training anything
        run_config(study, entry, study.seeds[0])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(asdict(study), indent=1))
    tasks = [(study, e, s, str(out / "runs" / e.slug / f"seed-{s}")) for e in entries for s in study.seeds]
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    if study.jobs <= 1:
        for i, task in enumerate(tasks):
            records.append(run_one(*task))
            say(f"[{i + 1}/{len(tasks)}] {task[1].label} seed {task[2]} done")
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=study.jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_die_with_parent) as pool:
            futures = {pool.submit(_worker, t): t for t in tasks}
            for i, fut in enumerate(as_completed(futures)):
                task = futures[fut]
                records.append(fut.result())
                say(f"[{i + 1}/{len(tasks)}] {task[1].label} seed {task[2]} done")
    order = {(t[1].label, t[2]): i for i, t in enumerate(tasks)}
    records.sort(key=lambda r: order[(r["entry"], r["seed"])])
    wall = time.perf_counter() - t0
    return report.write_report(study, entries, records, out, wall_seconds=wall)


def replace_fields(study: StudyConfig, **changes: Any) -> StudyConfig:
    """A copy of ``study`` with top-level fields replaced (``None`` values are ignored)."""
    return replace(study, **{k: v for k, v in changes.items() if v is not None})

