"""KG23's study as one function: a grid of objectives × seeds under equal compute, evaluated alike.

Each grid entry is ``NAME[:key=value,...][+adaptive][+uncertainty]``: an objective preset of
:mod:`diffusion_objectives.core.objectives`, optional weighting parameters (``sigmoid:bias=-2``), the
adaptive schedule (KG23 §5) and EDM2's learned uncertainty weighting (:mod:`.uncertainty`). Every (entry,
seed) is a normal training run directory under ``OUT/runs/<entry>/seed-<seed>/``, trained by
:func:`diffusion_objectives.training.train` with the same network, data, steps, batch, optimizer and EMA, then
evaluated by :func:`diffusion_objectives.evaluation.protocol.evaluate` with one protocol; its result goes to
``eval.json``
beside it. Finished runs with an up-to-date evaluation are reused and interrupted ones resume, so
rerunning the same command continues where it stopped. :mod:`.report` turns the results into
``report.md`` and ``results.json``.
"""

from __future__ import annotations

import ctypes
import json
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pydantic
import torch
from pydantic import BeforeValidator, StrictStr

from .. import locking
from ..core import objectives, weightings
from ..errors import OptionError
from ..evaluation import protocol as evaluation
from ..training import TrainConfig, distributed, load_for_inference, phema, posthoc, train
from ..training import config as tconfig
from . import report

__all__ = ["GridEntry", "EvalProtocol", "StudyConfig", "STUDY_PRESETS", "RunTask", "LocalLauncher",
           "study_preset", "parse_entry", "validate_study", "tasks", "run_config", "config_changes",
           "check_reusable", "finished_record", "prepare", "run_study", "run_one", "write_study_report"]


@dataclass(frozen=True)
class GridEntry:
    """One objective of the grid: preset ``objective``, weighting parameters, adaptive schedule or not,
    learned uncertainty weighting or not."""

    objective: str
    weighting_params: tuple[tuple[str, float], ...] = ()
    adaptive: bool = False
    uncertainty: bool = False

    @property
    def label(self) -> str:
        params = ",".join(f"{k}={v:g}" for k, v in self.weighting_params)
        return (self.objective + (f":{params}" if params else "") + ("+adaptive" if self.adaptive else "")
                + ("+uncertainty" if self.uncertainty else ""))

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

    def overrides(self) -> dict[str, Any]:
        """The entry's training-config overrides (typed values; see :func:`.training.config.apply_overrides`)."""
        out: dict[str, Any] = {f"loss.weighting.{k}": v for k, v in self.weighting_params}
        if self.adaptive:
            out["loss.adaptive.enabled"] = True
        if self.uncertainty:
            out["loss.uncertainty.enabled"] = True
        return out


_SUFFIXES = ("adaptive", "uncertainty")


def parse_entry(text: str) -> GridEntry:
    """``"sigmoid:bias=-2+adaptive+uncertainty"`` → :class:`GridEntry` (errors name the entry and the
    choices)."""
    if not text.strip():
        raise OptionError("empty grid entry: give NAME[:key=value,...][+adaptive][+uncertainty]")
    body, *suffixes = text.strip().split("+")
    unknown = [f for f in suffixes if f not in _SUFFIXES]
    if unknown or len(set(suffixes)) != len(suffixes):
        raise OptionError(f"grid entry {text!r}: the suffixes are {', '.join('+' + f for f in _SUFFIXES)}, "
                          "each at most once")
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
        if not math.isfinite(params[-1][1]):
            raise OptionError(f"grid entry {text!r}: {key} must be a finite number, got {value!r}")
    entry = GridEntry(name, tuple(params), "adaptive" in suffixes, "uncertainty" in suffixes)
    entry.weighting()  # validates the parameters against the weighting's registry entry
    return entry


@tconfig.schema
class EvalProtocol:
    """The evaluation applied to every run: ``n`` samples (seeds 0 … n−1) with ``sampler``/``steps``,
    ``metrics`` (see :data:`diffusion_objectives.evaluation.protocol.METRICS`), bits/dim on ``n_elbo`` examples of
    ``split`` with ``elbo_samples`` λ-draws each."""

    metrics: list[StrictStr] = field(default_factory=lambda: ["toy", "bpd", "loss-std"])
    n: tconfig.Int = 2000
    sampler: StrictStr = "heun"
    steps: tconfig.Int = 32
    split: StrictStr = "test"
    n_elbo: tconfig.Int = 512
    elbo_samples: tconfig.Int = 32


def _override_table(value: Any) -> Any:
    """Study overrides as a table; the list of ``KEY=VALUE`` items of older study files is read as one."""
    return tconfig.parse_overrides(value) if isinstance(value, (list, tuple)) else value


@tconfig.schema
class StudyConfig:
    """A study: ``preset`` (training preset) plus ``overrides`` (``{dotted key: typed value}`` shared by every
    run, see :func:`.training.config.apply_overrides`; older study files' list of ``KEY=VALUE`` items is read),
    ``steps`` and ``batch_size`` (equal compute), the grid, the seeds, the evaluation protocol and the
    number of runs trained at once (``jobs``; each run then uses ``threads`` threads). ``ema_sweep``: relative
    EMA widths σ_rel at which every run is also evaluated without retraining: the runs track EDM2's post-hoc
    EMA at :data:`TRACKED_SIGMA_RELS` (16 snapshots per run) and each width is reconstructed from the
    snapshots (:mod:`.training.posthoc`) and evaluated with the same protocol (but the loss spread)."""

    preset: StrictStr = "toy2d"
    overrides: Annotated[dict[StrictStr, Any], BeforeValidator(_override_table)] = field(default_factory=dict)
    steps: tconfig.Int = 1500
    batch_size: tconfig.Int = 256
    grid: list[StrictStr] = field(default_factory=list)
    seeds: list[tconfig.Int] = field(default_factory=lambda: [0, 1, 2])
    evaluation: EvalProtocol = field(default_factory=EvalProtocol)
    jobs: tconfig.Int = 2
    threads: tconfig.Int = 1
    description: StrictStr = ""
    ema_sweep: list[tconfig.Float] = field(default_factory=list)


TRACKED_SIGMA_RELS = (0.05, 0.10)  # EDM2's two tracked widths


_SHOWN = 2000  # samples kept per run for the report's plots

DEFAULT_GRID = ["elbo", "iddpm", "edm", "v-cosine", "flow-matching", "sigmoid:bias=-2", "sigmoid:bias=0",
                "sigmoid:bias=2", "sigmoid:bias=4", "edm-monotonic", "elbo+adaptive", "sigmoid:bias=2+adaptive",
                "edm-monotonic+adaptive"]


# KG23's adaptive proposal against EDM2's learned weighting (issue 13, item 5): for each base weighting, neither,
# either and both; plus the Laplace (Hang et al. 2024) and logit-normal (SD3) objectives as published
ADAPTIVE_GRID = [base + variant for base in ("sigmoid:bias=2", "edm-monotonic")
                 for variant in ("", "+adaptive", "+uncertainty", "+adaptive+uncertainty")] + ["laplace", "sd3"]

_TOY_OVERRIDES = {"data.name": "anisotropic", "network.params.hidden": 128, "network.params.depth": 3,
                  "optim.lr": 2e-3, "optim.warmup_images": 50000, "ema.half_life_images": 100000,
                  "run.checkpoint_every": 0, "run.sample_every": 0, "run.log_every": 50, "run.precision": "fp32"}


def _default() -> StudyConfig:
    # fp32 on every machine: the 75k-parameter MLP gains nothing from bf16 autocast (measured 122 vs 129
    # steps/s on an avx512_bf16 CPU), and the study compares objectives to a hundredth of a nat.
    return StudyConfig(
        preset="toy2d",
        overrides=dict(_TOY_OVERRIDES),
        steps=1500, batch_size=256, grid=list(DEFAULT_GRID), seeds=[0, 1, 2],
        evaluation=EvalProtocol(metrics=["toy", "bpd", "loss-std"], n=2000, sampler="heun", steps=32,
                                n_elbo=512, elbo_samples=32),
        jobs=2, threads=1,
        description="2-D anisotropic two-Gaussian mixture, 3 × 128 residual MLP, 1500 steps of 256: "
                    "about 10 minutes on 2 CPU cores")


DIGITS_GRID = ["elbo", "iddpm", "edm", "edm-monotonic", "v-cosine", "flow-matching", "sigmoid:bias=2",
               "sigmoid:bias=2+adaptive"]


def _digits() -> StudyConfig:
    return StudyConfig(
        preset="digits", overrides={"run.checkpoint_every": 250, "run.sample_every": 0}, steps=500,
        batch_size=128, grid=list(DIGITS_GRID), seeds=[0, 1, 2],
        evaluation=EvalProtocol(metrics=["fd", "kid", "coverage", "bpd", "loss-std"], n=1000, sampler="heun",
                                steps=32, n_elbo=256, elbo_samples=32),
        jobs=2, threads=1, description="8×8 digits, the digits U-Net (0.83 M parameters), 500 steps of 128 "
                                       "(64k images, 44 epochs), 8 objectives × 3 seeds")


def _adaptive() -> StudyConfig:
    study = _default()
    study.overrides["loss.log_bins"] = 30  # the effective weighting is logged on these bins
    study.grid = list(ADAPTIVE_GRID)
    study.description = ("KG23's adaptive schedule (`+adaptive`) vs EDM2's learned uncertainty weighting "
                         "(`+uncertainty`) on the 2-D anisotropic two-Gaussian mixture, 3 × 128 residual MLP, "
                         "1500 steps of 256, 3 seeds")
    return study


def _adaptive_digits() -> StudyConfig:
    study = _digits()
    study.overrides = {"run.checkpoint_every": 250, "run.sample_every": 0, "run.precision": "fp32",
                       "loss.log_bins": 30}
    study.steps, study.batch_size, study.seeds = ADAPTIVE_DIGITS_STEPS, 128, [0, 1, 2]
    study.grid = list(ADAPTIVE_GRID)
    study.evaluation = EvalProtocol(metrics=["fd", "kid", "coverage", "bpd", "loss-std"], n=500, sampler="heun",
                                    steps=32, n_elbo=256, elbo_samples=16)
    study.description = ("KG23's adaptive schedule (`+adaptive`) vs EDM2's learned uncertainty weighting "
                         f"(`+uncertainty`) on 8×8 digits, the digits U-Net, {ADAPTIVE_DIGITS_STEPS} steps of 128, "
                         "3 seeds (sized for about 25 minutes on 2 CPU cores)")
    return study


ADAPTIVE_DIGITS_STEPS = 500


FASHION_GRID = ["edm", "edm-monotonic", "v-cosine", "sigmoid:bias=2+adaptive"]

# The preset's lr 5e-4 with a 200k-image warm-up suits its 20k-step (1.3 M-image) run; at this study's 128k
# images it would keep the lr near zero for most of the run, so the study warms up over 20k images to 1e-3
# (the digits preset's lr).
_FASHION_OVERRIDES = {"optim.lr": 1e-3, "optim.warmup_images": 20000, "run.precision": "auto",
                      "run.checkpoint_every": 250, "run.sample_every": 0}


def _fashion() -> StudyConfig:
    return StudyConfig(
        preset="fashion-mnist", overrides=dict(_FASHION_OVERRIDES), steps=2000, batch_size=64,
        grid=list(FASHION_GRID), seeds=[0, 1, 2],
        evaluation=EvalProtocol(metrics=["fd", "kid", "coverage", "bpd", "loss-std"], n=1000, sampler="heun",
                                steps=32, n_elbo=128, elbo_samples=16),
        jobs=2, threads=1,
        description="Fashion-MNIST 28×28, the fashion-mnist U-Net (1.1 M parameters), 2000 steps of 64 (128k "
                    "images, 2.1 epochs), 4 objectives × 3 seeds")


def _imagenet64() -> StudyConfig:
    return StudyConfig(
        preset="imagenet64-kg23", overrides={}, steps=1_220_000, batch_size=2048,
        grid=["edm", "iddpm", "v-cosine", "sigmoid:bias=-2+adaptive", "sigmoid:bias=2+adaptive",
              "edm-monotonic+adaptive"], seeds=[0],
        evaluation=EvalProtocol(metrics=["fd", "kid", "bpd"], n=50_000, sampler="heun", steps=32,
                                n_elbo=10_000, elbo_samples=32),
        jobs=1, threads=8,
        description="ImageNet 64×64 at KG23/EDM scale (GPU cluster; train each run under torchrun, see docs)")


STUDY_PRESETS: dict[str, Callable[[], StudyConfig]] = {
    "default": _default, "digits": _digits, "fashion-mnist": _fashion, "imagenet64": _imagenet64,
    "adaptive": _adaptive, "adaptive-digits": _adaptive_digits,
}


def study_preset(name: str) -> StudyConfig:
    if name not in STUDY_PRESETS:
        raise OptionError(f"unknown study preset {name!r}; choose from: {', '.join(STUDY_PRESETS)}")
    return STUDY_PRESETS[name]()


# ---- running ------------------------------------------------------------------------------------------------

# Network parameters that training fills in from the data and the seed (``training.complete_network_params``);
# a saved config has them although the requested one leaves them out, and they follow from keys both have.
_DERIVED_NETWORK_PARAMS = ("dim", "in_channels", "resolution", "num_classes", "seed")


@dataclass(frozen=True)
class RunTask:
    """One (entry, seed) of a study and its run directory ``OUT/runs/<entry slug>/seed-<seed>``."""

    entry: GridEntry
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        """``ENTRY@SEED``, as ``diffobj compare --run-one`` takes it."""
        return f"{self.entry.label}@{self.seed}"


def run_config(study: StudyConfig, entry: GridEntry, seed: int) -> TrainConfig:
    """The training config of one run: the study's preset and overrides, the entry's objective, the seed."""
    tracking = ({"ema.posthoc_sigma_rels": list(TRACKED_SIGMA_RELS), "ema.snapshot_every": max(1, study.steps // 16)}
                if study.ema_sweep else {})
    return tconfig.resolve(study.preset, objective=entry.objective, steps=study.steps, batch_size=study.batch_size,
                           seed=seed, overrides=tconfig.merge_overrides(study.overrides, tracking, entry.overrides()))


def validate_study(study: StudyConfig) -> list[GridEntry]:
    """The parsed grid, after checking everything a run would check before training anything: entries,
    duplicate entries, seeds, and that every run's training config resolves (overrides name real keys)."""
    if not study.grid:
        raise OptionError("the grid is empty: give at least one objective")
    sweep = list(study.ema_sweep)
    if len(set(sweep)) != len(sweep) or not all(0.0 < float(s) < phema.SIGMA_REL_MAX for s in sweep):
        raise OptionError(f"ema_sweep must list distinct relative EMA widths in (0, {phema.SIGMA_REL_MAX:.4f}), "
                          f"got {sweep}")
    entries = [parse_entry(e) for e in study.grid]
    labels = [e.label for e in entries]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise OptionError(f"the grid lists {', '.join(twice)} more than once")
    if not study.seeds:
        raise OptionError("a study needs at least one seed")
    if len(set(study.seeds)) != len(study.seeds):
        raise OptionError(f"seeds listed more than once: {study.seeds}")
    for entry in entries:
        run_config(study, entry, study.seeds[0])
    return entries


def tasks(study: StudyConfig, out: str | Path) -> list[RunTask]:
    """Every (entry, seed) of the validated study, in report order."""
    return [RunTask(e, s, Path(out) / "runs" / e.slug / f"seed-{s}") for e in validate_study(study)
            for s in study.seeds]


def config_changes(study: StudyConfig, task: RunTask) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, requested)}`` between the run directory's ``config.yaml`` (absent: nothing to
    compare) and the config the study requests for it; empty when the run may be reused or resumed."""
    saved_path = task.run_dir / "config.yaml"
    if not saved_path.is_file():
        return {}
    changes = tconfig.diff(tconfig.load_yaml(saved_path), run_config(study, task.entry, task.seed))
    return {k: v for k, v in changes.items() if not _resolved_by_training(k, v[1])}


def _resolved_by_training(key: str, requested: Any) -> bool:
    """A value the request leaves to training to fill in: a network parameter from the data and the seed, or
    ``run.precision: auto`` (the saved config holds the precision that ``auto`` chose on the run's machine)."""
    section, _, name = key.rpartition(".")
    if key == "run.precision":
        return requested == "auto"
    return requested == "<unset>" and section == "network.params" and name in _DERIVED_NETWORK_PARAMS


def check_reusable(study: StudyConfig, run_tasks: list[RunTask]) -> None:
    """Refuse (OptionError naming every run and key) if any run directory holds a run trained with a
    different config than the study now requests: reusing or resuming it would mix settings in one report."""
    bad = [(t, c) for t in run_tasks if (c := config_changes(study, t))]
    if not bad:
        return
    lines = [f"  {t.run_dir}:\n" + "\n".join(f"    {k}: {old!r} (saved) -> {new!r} (requested)"
                                              for k, (old, new) in c.items()) for t, c in bad[:5]]
    more = f"\n  … and {len(bad) - 5} more run(s)" if len(bad) > 5 else ""
    raise OptionError(f"{len(bad)} run(s) in this study directory were trained with other settings than "
                      "requested; a report must not mix them. Use another study directory, or delete "
                      "those run directories to retrain them:\n" + "\n".join(lines) + more)


# Bumped whenever a metric's definition changes, so that older ``eval.json`` files are re-evaluated
# (2: the toy metrics gained the reverse KL, the primary metric of toy studies).
_METRICS_VERSION = 2


def _protocol_key(study: StudyConfig) -> dict[str, Any]:
    sweep = {"ema_sweep": list(study.ema_sweep)} if study.ema_sweep else {}
    return {**asdict(study.evaluation), "metrics_version": _METRICS_VERSION, **sweep}


def finished_record(study: StudyConfig, task: RunTask) -> dict[str, Any] | None:
    """The run's ``eval.json`` if the run finished at the requested steps with the requested config and
    was evaluated with this protocol on its final checkpoint; else ``None`` (train and/or evaluate it)."""
    summary, record = _read_json(task.run_dir / "summary.json"), _read_json(task.run_dir / "eval.json")
    if summary is None or record is None or not _finished(summary, study.steps) or config_changes(study, task):
        return None
    if record.get("protocol") != _protocol_key(study) or record.get("checkpoint") != summary.get("checkpoint"):
        return None
    return record


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _finished(summary: dict[str, Any], steps: int) -> bool:
    return summary.get("status") == "finished" and summary.get("step") == steps


def run_one(study: StudyConfig, entry: GridEntry, seed: int, run_dir: str | Path) -> dict[str, Any] | None:
    """Train (or resume, or reuse) one run and evaluate it; returns the run's record (also ``eval.json``).

    Under torchrun (``WORLD_SIZE`` > 1) every process trains its share (DDP) and only rank 0 evaluates;
    the other ranks return ``None``. Raises OptionError if ``run_dir`` holds a run with another config."""
    task = RunTask(entry, seed, Path(run_dir))
    check_reusable(study, [task])
    reuse = finished_record(study, task)
    if reuse is not None:
        return reuse
    torch.set_num_threads(max(1, study.threads))
    cfg = run_config(study, entry, seed)
    t0 = time.perf_counter()
    summary = _read_json(task.run_dir / "summary.json") or {}
    trained_now = not _finished(summary, cfg.run.steps)
    if trained_now:
        with distributed.session(cfg.run.device) as d:
            summary = train(cfg, task.run_dir, resume="auto", progress=False, handle_signals=False, dist=d)
        if not d.is_main:
            return None
        if summary.get("status") != "finished":
            raise RuntimeError(f"run {task.run_dir} stopped at step {summary.get('step')}")
    train_s = time.perf_counter() - t0
    with locking.hold(task.run_dir, "diffobj compare (evaluating the run)"):  # training held it until now
        return _evaluate(study, task, cfg, summary, train_s if trained_now else summary.get("elapsed_s"))


def _evaluate(study: StudyConfig, task: RunTask, cfg: TrainConfig, summary: dict[str, Any],
              train_s: float | None) -> dict[str, Any]:
    """Evaluate the finished run with the study's protocol; write ``eval.json`` (atomically) and the samples
    kept for the plots; return the record."""
    t1 = time.perf_counter()
    loaded = load_for_inference(task.run_dir)
    p = study.evaluation
    settings = evaluation.SampleSettings(p.sampler, p.steps)
    samples, labels = evaluation.generate(loaded, range(p.n), settings)
    result = evaluation.evaluate(loaded, p.metrics, n=p.n, settings=settings, split=p.split, n_elbo=p.n_elbo,
                                 elbo_samples=p.elbo_samples, samples=samples, sample_labels=labels)
    np.savez_compressed(task.run_dir / "samples.npz", samples=samples[:_SHOWN].numpy())
    entry = task.entry
    record = {
        "entry": entry.label, "objective": entry.objective, "weighting_params": dict(entry.weighting_params),
        "adaptive": entry.adaptive, "uncertainty": entry.uncertainty, "monotone": entry.is_monotonic(),
        "seed": task.seed,
        "run_dir": str(task.run_dir), "checkpoint": summary.get("checkpoint"), "protocol": _protocol_key(study),
        "network": f"{cfg.network.name} {cfg.network.params} "
                   f"({sum(q.numel() for q in loaded.model.parameters()) / 1e6:.3f}M parameters)",
        "precision": summary.get("precision"), "train_seconds": train_s, "steps_per_s": summary.get("steps_per_s"),
        "eval_seconds": time.perf_counter() - t1, "final_loss": summary.get("loss"), "result": result,
    }
    if study.ema_sweep:
        record["ema_sweep"] = _ema_sweep(study, task, settings)
    record_path = task.run_dir / "eval.json"
    tmp = record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, record_path)
    return record


def _ema_sweep(study: StudyConfig, task: RunTask, settings: evaluation.SampleSettings) -> dict[str, Any]:
    """``{σ_rel: {profile_error, result}}``: the run evaluated at each width of ``study.ema_sweep``, reconstructed
    at the last snapshot into a temporary checkpoint (removed afterwards)."""
    snapshots = phema.read_snapshots(task.run_dir / posthoc.PHEMA_DIR)
    p = study.evaluation
    metrics = [m for m in p.metrics if m != "loss-std"]  # the loss spread is the training objective's, not the EMA's
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=".ema-sweep-", dir=task.run_dir) as tmp:
        for sigma_rel in study.ema_sweep:
            path, rec, _ = posthoc.write_checkpoint(task.run_dir, snapshots, sigma_rel, snapshots[-1].step,
                                                    Path(tmp) / f"{sigma_rel:g}", warn=lambda msg: None)
            result = evaluation.evaluate(load_for_inference(path), metrics, n=p.n, settings=settings, split=p.split,
                                         n_elbo=p.n_elbo, elbo_samples=p.elbo_samples)
            out[f"{sigma_rel:g}"] = {"profile_error": rec.profile_error, "result": result}
    return out


def _worker(study: StudyConfig, task: RunTask) -> dict[str, Any] | None:
    return run_one(study, task.entry, task.seed, task.run_dir)


def _die_with_parent() -> None:
    """Pool initializer: on Linux, have the kernel send SIGTERM to this worker when the study process dies,
    so an interrupted ``compare`` leaves no training behind (the run resumes on the next invocation)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass


class LocalLauncher:
    """Run the study's runs on this machine, ``jobs`` at a time (separate processes when ``jobs`` > 1)."""

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = jobs

    def run(self, study: StudyConfig, pending: list[RunTask], study_file: Path,
            say: Callable[[str], None]) -> None:
        if self.jobs <= 1:
            for i, task in enumerate(pending):
                run_one(study, task.entry, task.seed, task.run_dir)
                say(f"[{i + 1}/{len(pending)}] {task.name} done")
            return
        os.environ.setdefault("OMP_NUM_THREADS", str(study.threads))  # inherited by the spawned workers
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_die_with_parent) as pool:
            futures = {pool.submit(_worker, study, t): t for t in pending}
            for i, fut in enumerate(as_completed(futures)):
                fut.result()
                say(f"[{i + 1}/{len(pending)}] {futures[fut].name} done")


def prepare(study: StudyConfig, out: str | Path, run_tasks: list[RunTask]) -> tuple[list[RunTask], Path]:
    """Refuse runs trained with other settings, write ``OUT/study.json`` (the file the per-run commands of
    :mod:`.launchers` read); return the tasks not yet finished and evaluated, and the study file."""
    check_reusable(study, run_tasks)
    study_file = Path(out) / "study.json"
    tmp = study_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(study), indent=1))
    os.replace(tmp, study_file)
    return [t for t in run_tasks if finished_record(study, t) is None], study_file


def run_study(study: StudyConfig, out: str | Path, *, launcher: Any = None,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (entry, seed) of ``study`` under ``out`` with ``launcher`` (default: :class:`LocalLauncher`
    with ``study.jobs``; :mod:`.launchers` has Slurm) and write the report; returns the results. Finished
    runs are reused and interrupted ones resume, whatever the launcher. Holds ``out``'s lock
    (:func:`~diffusion_objectives.locking.hold`) throughout: a second ``run_study`` on ``out`` is refused."""
    t0 = time.perf_counter()
    run_tasks = tasks(study, out)  # validates before anything is written
    with locking.hold(out, "diffobj compare"):
        pending, study_file = prepare(study, out, run_tasks)
        if pending:
            say(f"{len(run_tasks) - len(pending)} of {len(run_tasks)} runs already finished; "
                f"running {len(pending)}")
            (launcher or LocalLauncher(study.jobs)).run(study, pending, study_file, say)
        return _report(study, out, run_tasks, time.perf_counter() - t0)


def write_study_report(study: StudyConfig, out: str | Path) -> dict[str, Any]:
    """The report from the finished runs alone (after a cluster launch); OptionError while any run is
    unfinished. Holds ``out``'s lock."""
    run_tasks = tasks(study, out)
    with locking.hold(out, "diffobj compare --report-only"):
        return _report(study, out, run_tasks, 0.0)


def _report(study: StudyConfig, out: str | Path, run_tasks: list[RunTask], wall_seconds: float) -> dict[str, Any]:
    records = [finished_record(study, t) for t in run_tasks]
    missing = [t.name for t, r in zip(run_tasks, records, strict=True) if r is None]
    if missing:
        raise OptionError(f"{len(missing)} run(s) are not finished and evaluated yet: "
                          f"{', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    entries = list(dict.fromkeys(t.entry for t in run_tasks))
    return report.write_report(study, entries, records, out, wall_seconds=wall_seconds)


def replace_fields(study: StudyConfig, **changes: Any) -> StudyConfig:
    """A copy of ``study`` with top-level fields replaced (``None`` values are ignored) and validated: a wrong
    type is an OptionError naming the key."""
    try:
        return replace(study, **{k: v for k, v in changes.items() if v is not None})
    except pydantic.ValidationError as exc:
        raise tconfig.option_error(exc, StudyConfig, "study key") from None
