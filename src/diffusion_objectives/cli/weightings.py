"""``diffobj weightings``: list, show and plot weightings and objective presets.

A SPEC is a registry name, optionally with parameters: ``sigmoid:bias=-2``, ``edm:p_mean=-0.4,p_std=1``.
Objective preset names (``iddpm``, ``flow-matching``, ...) bring their own schedule; a bare weighting is
paired with ``--schedule`` (default ``cosine``) for p(λ).
"""

from __future__ import annotations

import argparse

from ..core import objectives, schedules, weightings
from ..errors import OptionError
from ._common import PLOT_FORMATS, Resolved, check_output_path, plot, print_augmentation

EXAMPLES = """examples:
  diffobj weightings                      list every weighting and objective preset
  diffobj weightings show sigmoid:bias=-2
  diffobj weightings show debiased:target=v --schedule laplace:mu=0,b=0.5
  diffobj weightings show edm
  diffobj weightings plot sigmoid edm edm-monotonic v-cosine --out weightings.png
"""


def parse_params(text: str, option: str, strings: frozenset[str] = frozenset()) -> dict[str, float | str]:
    """``"a=1,b=-2"`` → ``{"a": 1.0, "b": -2.0}``; keys in ``strings`` keep their text; errors name ``option``."""
    params: dict[str, float | str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OptionError(f"{option}: expected KEY=VALUE, got {item!r}")
        if key.strip() in strings:
            params[key.strip()] = value.strip()
            continue
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise OptionError(f"{option}: value of {key!r} must be a number, got {value!r}") from None
    return params


def resolve(spec: str, schedule_spec: str = "cosine", logsnr_min: float = -15.0,
            logsnr_max: float = 15.0) -> Resolved:
    name, _, param_text = spec.partition(":")
    text_params = frozenset(k for k, v in weightings.REGISTRY.parameters(name).items() if isinstance(v, str)) \
        if name in weightings.REGISTRY else frozenset()
    params = parse_params(param_text, spec, text_params)
    sched_name, _, sched_params = schedule_spec.partition(":")
    schedule = schedules.get(sched_name, **{"logsnr_min": logsnr_min, "logsnr_max": logsnr_max,
                                             **parse_params(sched_params, "--schedule")})
    if name in objectives.REGISTRY and not params:  # a preset brings its own schedule
        obj = objectives.get(name)
        return Resolved(name, obj.weighting, obj.schedule, obj)
    if name not in weightings.REGISTRY:
        known = sorted(set(weightings.names()) | set(objectives.names()))
        raise OptionError(f"unknown weighting or objective {name!r}; choose from: {', '.join(known)}")
    return Resolved(spec, weightings.get(name, **params), schedule, None)


def _list(args) -> int:
    lo, hi = args.logsnr_min, args.logsnr_max
    print(f"Weightings (monotone = non-increasing on [{lo:g}, {hi:g}]):")
    for name in weightings.names():
        w = weightings.get(name)
        print(f"  {name:<15} {'monotone' if w.is_monotonic(lo, hi) else 'non-monotone':<13} {w.formula}")
    print("\nObjective presets (weighting × schedule × parameterization):")
    for name in objectives.names():
        obj = objectives.get(name)
        mono = "monotone" if obj.weighting.is_monotonic(lo, hi) else "non-monotone"
        print(f"  {name:<15} {mono:<13} {obj.weighting.name} × {obj.schedule.name} × "
              f"{obj.parameterization.name}   {objectives.REGISTRY.summary(name)}")
    print("\nSchedules p(λ) (pair with a weighting by --schedule NAME:KEY=VALUE,...):")
    for name in schedules.names():
        print(f"  {name:<20} {schedules.REGISTRY.summary(name)}")
    return 0


def _show(args) -> int:
    r = resolve(args.spec, args.schedule, args.logsnr_min, args.logsnr_max)
    lo, hi = args.logsnr_min, args.logsnr_max
    print(f"{r.label}: {r.weighting.formula}")
    print(f"  parameters: {r.weighting.params()}")
    if r.objective is not None:
        print(f"  schedule: {r.objective.schedule!r}")
        print(f"  parameterization: {r.objective.parameterization!r}")
        if r.objective.published is not None:
            print(f"  published as: {r.objective.published.citation}")
    print_augmentation(r.weighting, lo, hi)
    return 0


def _plot(args) -> int:
    out = check_output_path(args.out, formats=PLOT_FORMATS, create_parents=False)
    resolved = [resolve(s, args.schedule, args.logsnr_min, args.logsnr_max) for s in args.specs]
    plot(resolved, args.logsnr_min, args.logsnr_max, out)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weightings", help="list, show and plot weightings and objective presets",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logsnr-min", type=float, default=-15.0, help="λ range start (default -15)")
    p.add_argument("--logsnr-max", type=float, default=15.0, help="λ range end (default 15)")
    p.add_argument("--schedule", default="cosine",
                   help="schedule SPEC paired with a bare weighting (default cosine); choices: "
                   + ", ".join(schedules.names()))
    p.set_defaults(run=_list)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.add_parser("list", help="list everything (the default)").set_defaults(run=_list)
    show = actions.add_parser("show", help="parameters, monotonicity and augmentation distribution of SPEC")
    show.add_argument("spec", metavar="SPEC")
    show.set_defaults(run=_show)
    plotter = actions.add_parser("plot", help="plot w(λ), p(λ) and augmentation densities")
    plotter.add_argument("specs", metavar="SPEC", nargs="+")
    plotter.add_argument("--out", required=True, help="output image: " + ", ".join(PLOT_FORMATS)
                      + " (by its suffix; the directory must exist)")
    plotter.set_defaults(run=_plot)
    for a in (show, plotter):  # the range options are accepted after the action too
        a.add_argument("--logsnr-min", type=float, default=argparse.SUPPRESS)
        a.add_argument("--logsnr-max", type=float, default=argparse.SUPPRESS)
        a.add_argument("--schedule", default=argparse.SUPPRESS)
