"""``diffobj compare``: KG23's study — monotone vs non-monotone weightings under equal compute — as one command.

Runs the grid of objectives × seeds (each a normal training run under OUT/runs/), evaluates every run with
the same protocol and writes OUT/report.md, OUT/results.json and the plots. Rerunning the same command
reuses finished runs and resumes interrupted ones; a run trained with other settings than the ones asked
for is refused (exit 2, naming the difference), so a report never mixes settings. The runs can be
launched on this machine, as Slurm jobs (--launcher submitit) or by any scheduler (--print-commands).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from ..errors import OptionError
from ..study import launchers as L
from ..study import runner as S
from ..training import config as tconfig
from ._common import check_output_dir, parse_seeds

EXAMPLES = """examples:
  diffobj compare --out runs/study                       the default study (about 10 minutes on 2 CPU cores)
  diffobj compare --preset fashion-mnist --out runs/fm   Fashion-MNIST (a few CPU hours)
  diffobj compare --grid edm,sigmoid:bias=2+adaptive --seeds 0-2 --steps 500 --out runs/small
  diffobj compare --config study.yaml --out runs/mine    a YAML file with StudyConfig fields
  diffobj compare --out runs/study --dry-run             print the resolved study and stop
  diffobj compare --preset digits --out /shared/digits --launcher submitit --slurm-partition gpu
      --slurm-gpus-per-run 1 --slurm-time 60           one Slurm job per (entry, seed), as a job array
  diffobj compare --preset imagenet64 --out /shared/in64 --nproc-per-run 8 --print-commands
                                                         torchrun commands for another scheduler
"""


_SLURM_FLAGS = ("slurm_partition", "slurm_gpus_per_run", "slurm_time", "slurm_cpus_per_run", "slurm_mem_gb",
                "slurm_account", "slurm_qos")


def _load_config(path: str, base: S.StudyConfig) -> S.StudyConfig:
    """``base`` with the fields of the YAML (or JSON: ``OUT/study.json``) study file ``path``; its ``overrides``
    are a mapping ``{key: value}`` or, as in older study files, a list of ``KEY=VALUE`` items."""
    try:
        data = tconfig.load_yaml(path)
    except OptionError as exc:
        raise OptionError(f"--config: {exc}") from None
    top = {f.name for f in fields(S.StudyConfig)}
    unknown = sorted(set(data) - top)
    if unknown:
        raise OptionError(f"--config {path!r}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(top))}")
    ev = data.pop("evaluation", None)
    changes = dict(data)
    if ev is not None:
        allowed = {f.name for f in fields(S.EvalProtocol)}
        if not isinstance(ev, dict) or set(ev) - allowed:
            raise OptionError(f"--config {path!r}: unknown evaluation key(s) "
                              f"{', '.join(sorted(set(ev) - allowed)) if isinstance(ev, dict) else ev}; "
                              f"allowed: {', '.join(sorted(allowed))}")
        changes["evaluation"] = {**asdict(base.evaluation), **ev}
    try:
        return S.replace_fields(base, **changes)
    except OptionError as exc:
        raise OptionError(f"--config {path!r}: {exc}") from None


def _seeds(text: str) -> list[int]:

    return parse_seeds(text)


def _grid(text: str | None) -> list[str] | None:
    if text is None:
        return None
    grid = [g.strip() for g in text.split(",")]
    if not any(grid):
        raise OptionError(f"--grid {text!r} names no objective; give entries like edm,sigmoid:bias=2+adaptive "
                          "(omit --grid for the preset's grid)")
    if not all(grid):
        raise OptionError(f"--grid {text!r} has an empty entry")
    return grid


def _ema_sweep(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise OptionError(f"--ema-sweep: expected comma-separated relative widths, got {text!r}") from None


def _set(items: list[str]) -> dict:
    try:
        return tconfig.parse_overrides(items)
    except OptionError as exc:
        raise OptionError(f"--set: {exc}") from None


def resolve(args) -> S.StudyConfig:
    """The study from the preset, ``--config`` and the flags, validated as a real run validates it."""
    study = S.study_preset(args.preset)
    if args.config:
        study = _load_config(args.config, study)
    changes = {
        "grid": _grid(args.grid),
        "seeds": _seeds(args.seeds) if args.seeds else None,
        "steps": args.steps, "batch_size": args.batch_size, "jobs": args.jobs,
        "ema_sweep": _ema_sweep(args.ema_sweep) if args.ema_sweep else None,
        "overrides": tconfig.merge_overrides(study.overrides, _set(args.set)) if args.set else None,
    }
    study = S.replace_fields(study, **changes)
    if args.n is not None:
        study.evaluation.n = args.n
    for name, value in (("--steps", study.steps), ("--batch-size", study.batch_size), ("--jobs", study.jobs)):
        if int(value) < 1:
            raise OptionError(f"{name} must be a positive integer, got {value}")
    if study.evaluation.n < 2:
        raise OptionError(f"--n must be at least 2, got {study.evaluation.n}")
    S.validate_study(study)
    return study


def _run_one(study: S.StudyConfig, out: str, name: str) -> int:
    """``--run-one ENTRY@SEED``: train and evaluate that one run (what each cluster job runs)."""
    by_name = {t.name: t for t in S.tasks(study, out)}
    if name not in by_name:
        raise OptionError(f"--run-one {name!r} is not a run of this study; choose from: {', '.join(by_name)}")
    task = by_name[name]
    record = S.run_one(study, task.entry, task.seed, task.run_dir)
    if record is not None:  # rank 0
        print(f"{task.name} done: {task.run_dir / 'eval.json'}")
    return 0


def _launcher(args, study: S.StudyConfig):
    """The launcher the flags ask for (``None``: the study's default, a local process pool)."""
    if args.launcher == "submitit":
        given = {"partition": args.slurm_partition, "gpus_per_run": args.slurm_gpus_per_run,
                 "time_min": args.slurm_time, "cpus_per_run": args.slurm_cpus_per_run, "mem_gb": args.slurm_mem_gb,
                 "account": args.slurm_account, "qos": args.slurm_qos}
        slurm = L.SlurmOptions(**{k: v for k, v in given.items() if v is not None})
        try:
            return L.SubmititLauncher(slurm, nproc=args.nproc_per_run)
        except OptionError as exc:
            raise OptionError(f"--launcher submitit: {exc} (--print-commands)") from None
    return L.CommandLauncher(study.jobs, args.nproc_per_run) if args.nproc_per_run > 1 else None


def _check_launch_flags(args) -> None:
    positive = {"--nproc-per-run": args.nproc_per_run, "--slurm-time": args.slurm_time,
                "--slurm-cpus-per-run": args.slurm_cpus_per_run, "--slurm-mem-gb": args.slurm_mem_gb}
    for flag, value in [*positive.items(), ("--slurm-gpus-per-run", args.slurm_gpus_per_run)]:
        if value is not None and value < (0 if flag == "--slurm-gpus-per-run" else 1):
            kind = "a non-negative" if flag == "--slurm-gpus-per-run" else "a positive"
            raise OptionError(f"{flag} must be {kind} integer, got {value}")
    if args.launcher == "local" and any(getattr(args, n) is not None for n in _SLURM_FLAGS):
        raise OptionError("the --slurm-* flags need --launcher submitit")


def _print_commands(study: S.StudyConfig, out: str, nproc: int) -> int:
    runs, report_cmd, total = L.commands(study, out, nproc=nproc)
    print(f"# {len(runs)} of {total} runs still to train and/or evaluate: one command per run, in any order or "
          "all at once (each resumes if interrupted)")
    print("\n".join(runs))
    print("# then, when they have all finished, the report:")
    print(report_cmd)
    return 0


def run(args) -> int:
    study = resolve(args)
    _check_launch_flags(args)
    if args.dry_run:
        print(yaml.safe_dump(asdict(study), sort_keys=False))
        return 0
    if args.out is None:
        raise OptionError("--out is required (the study directory)")
    check_output_dir(args.out, "--out")
    if args.run_one is not None:
        return _run_one(study, args.out, args.run_one)
    if args.print_commands:
        return _print_commands(study, args.out, args.nproc_per_run)
    if args.report_only:
        results = S.write_study_report(study, args.out)
    else:
        results = S.run_study(study, args.out, launcher=_launcher(args, study))
    print(f"wrote {Path(args.out) / 'report.md'} and results.json")
    print(f"verdict: {results['verdict'].get('statement', '')}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="the KG23 study: monotone vs non-monotone weightings, with a report",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="study directory (runs/, report.md, results.json)")
    p.add_argument("--preset", default="default", help="study preset: " + ", ".join(S.STUDY_PRESETS)
                   + " (default: default)")
    p.add_argument("--config", help="YAML file with StudyConfig fields (preset, overrides, steps, batch_size, "
                   "grid, seeds, evaluation, jobs, threads); overrides: a mapping {key: value} of training-config "
                   "keys, or a list of KEY=VALUE items")
    p.add_argument("--grid", help="comma-separated entries NAME[:key=value...][+adaptive][+uncertainty]")
    p.add_argument("--ema-sweep", metavar="LIST",
                   help="also evaluate every run at these relative EMA widths σ_rel (e.g. 0.05,0.1,0.15), "
                        "reconstructed after training from post-hoc EMA snapshots (EDM2): no retraining per width")
    p.add_argument("--seeds", help="seeds, e.g. 0-2 or 0,3")
    p.add_argument("--steps", type=int, help="training steps per run")
    p.add_argument("--batch-size", type=int, help="batch size per run")
    p.add_argument("--jobs", type=int, help="runs trained at once (default 2)")
    p.add_argument("--n", type=int, help="samples per run for the sample-quality metrics")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training-config override for every run (repeatable), e.g. network.params.hidden=64")
    p.add_argument("--dry-run", action="store_true", help="print the resolved study and stop")
    p.add_argument("--run-one", metavar="ENTRY@SEED",
                   help="train and evaluate only this run (e.g. 'edm@0'), without the report: what each job of "
                        "a cluster launch runs")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the finished runs; refuse if any run is unfinished")
    launch = p.add_argument_group("launching the runs (resuming, reuse and the report are the same for all)")
    launch.add_argument("--launcher", choices=("local", "submitit"), default="local",
                        help="local: this machine, --jobs runs at a time (default); submitit: one Slurm job per "
                             "(entry, seed), submitted as a job array, waiting for them (needs the [cluster] extra)")
    launch.add_argument("--nproc-per-run", type=int, default=1, metavar="N",
                        help="processes per run: each run is a torchrun job with N processes (default 1)")
    launch.add_argument("--print-commands", action="store_true",
                        help="print one shell command per unfinished run, for any other scheduler, and the "
                             "command that writes the report afterwards; run nothing")
    launch.add_argument("--slurm-partition", help="Slurm partition of each run's job")
    launch.add_argument("--slurm-gpus-per-run", type=int, metavar="G", help="GPUs per run (default 0)")
    launch.add_argument("--slurm-time", type=int, metavar="MINUTES",
                        help="wall-clock limit of each run's job in minutes (default 240)")
    launch.add_argument("--slurm-cpus-per-run", type=int, metavar="C",
                        help="CPUs per run (default: N × the study's threads)")
    launch.add_argument("--slurm-mem-gb", type=int, metavar="GB", help="memory per run in GB")
    launch.add_argument("--slurm-account", help="Slurm account to charge")
    launch.add_argument("--slurm-qos", help="Slurm quality of service")
    p.set_defaults(run=run)
