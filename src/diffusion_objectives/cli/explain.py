"""``diffobj explain``: what a peer's training settings optimise, in KG23's terms.

Give one peer's settings as KEY=VALUE in its own vocabulary (the translators of
``diffusion_objectives.core.objectives``: from_diffusers, from_kohya, from_k_diffusion, from_edm). It prints the
weighting w(λ) = 2 p_π(λ) c(λ) k(λ) (its parts and values), the sampling density p(λ), the parameterization;
whether w is monotone and, if so, the noise-augmentation distribution it implies (KG23 §4); and the nearest
KG23 weightings: the sigmoid(b − λ) with the best bias b, and EDM-monotonic, by the total-variation distance
½∫|w̃₁ − w̃₂| dλ between the weightings normalised to integrate to 1 on the λ range (0: same objective up to
a constant factor; 1: disjoint). ``--out`` plots the setting against them on one λ axis.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import warnings

import torch
from scipy import optimize

from ..core import schedules, weightings
from ..core.objectives import Objective
from ..core.weightings import Weighting
from ..errors import OptionError
from ..interop.translate import (
    DIFFUSERS_SCHEDULERS,
    KD_DENSITY_KEYS,
    from_diffusers,
    from_edm,
    from_k_diffusion,
    from_kohya,
)
from ._common import PLOT_FORMATS, Resolved, add_command, check_output_path, plot, print_augmentation

EXAMPLES = """examples:
  diffobj explain --diffusers weighting_scheme=logit_normal logit_std=1 --scheduler flow shift=3
  diffobj explain --diffusers snr_gamma=5 --scheduler ddpm beta_schedule=squaredcos_cap_v2 prediction_type=epsilon
  diffobj explain --kohya timestep_sampling=sigmoid sigmoid_scale=1 min_snr_gamma=5
  diffobj explain --kohya min_snr_gamma=5 v_parameterization=true
  diffobj explain --k-diffusion type=lognormal loc=-1.2 scale=1.2 sigma_data=0.5 loss_weighting=soft-min-snr
  diffobj explain --edm kind=vp --out vp.png
"""

SHOW_AT = (-10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0)


def parse_value(text: str):
    """``true``/``false`` → bool, integers → int, other numbers → float, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_items(items: list[str], option: str) -> dict:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OptionError(f"{option}: expected KEY=VALUE, got {item!r}")
        params[key] = parse_value(value)
    return params


def _check_keys(params: dict, allowed: list[str], option: str) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise OptionError(f"{option}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def _keywords(fn, skip: tuple[str, ...] = ()) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in skip]


def translate(args) -> Objective:
    """The Objective of the peer settings given on the command line."""
    if args.scheduler is not None and args.diffusers is None:
        raise OptionError("--scheduler goes with --diffusers")
    if args.diffusers is not None:
        params = parse_items(args.diffusers, "--diffusers")
        _check_keys(params, _keywords(from_diffusers, ("scheduler",)), "--diffusers")
        scheduler = None
        if args.scheduler:
            name, *items = args.scheduler
            scheduler = {**DIFFUSERS_SCHEDULERS.get(name), **parse_items(items, "--scheduler")}
        return from_diffusers(scheduler, **params)
    if args.kohya is not None:
        params = parse_items(args.kohya, "--kohya")
        _check_keys(params, _keywords(from_kohya), "--kohya")
        return from_kohya(**params)
    if args.k_diffusion is not None:
        params = parse_items(args.k_diffusion, "--k-diffusion")
        allowed = list(KD_DENSITY_KEYS) + _keywords(from_k_diffusion, ("sigma_sample_density",))
        _check_keys(params, allowed, "--k-diffusion")
        density = {k: params.pop(k) for k in KD_DENSITY_KEYS if k in params}
        return from_k_diffusion(density, **params)
    params = parse_items(args.edm, "--edm")
    _check_keys(params, _keywords(from_edm), "--edm")
    return from_edm(**params)


def _normalised(weighting: Weighting, grid: torch.Tensor) -> torch.Tensor:
    w = weighting(grid)
    return w / torch.trapezoid(w, grid)


def distance(a: Weighting, b: Weighting, grid: torch.Tensor) -> float:
    """½∫|w̃_a − w̃_b| dλ with w̃ = w/∫w on ``grid`` (total variation between normalised weightings)."""
    return 0.5 * float(torch.trapezoid((_normalised(a, grid) - _normalised(b, grid)).abs(), grid))


def nearest_sigmoid(weighting: Weighting, grid: torch.Tensor) -> tuple[float, float]:
    """(b, distance) of the sigmoid(b − λ) weighting nearest to ``weighting``: a 0.25-spaced scan of b over the
    λ range widened by 10, refined by a bounded scalar search."""
    lo, hi = float(grid[0]) - 10, float(grid[-1]) + 10
    scan = [lo + 0.25 * i for i in range(int((hi - lo) / 0.25) + 1)]
    best = min(scan, key=lambda b: distance(weighting, weightings.Sigmoid(b), grid))
    res = optimize.minimize_scalar(lambda b: distance(weighting, weightings.Sigmoid(b), grid),
                                   bounds=(best - 0.25, best + 0.25), method="bounded", options={"xatol": 1e-4})
    return float(res.x), float(res.fun)


def _describe(obj: Objective, lo: float, hi: float) -> None:
    form = obj.published
    print(f"objective: {obj.name}" + (f"  (from {form.citation})" if form is not None and form.citation else ""))
    param = obj.parameterization
    print(f"  parameterization: {param!r}: the loss's target; k(λ) = {param.k_formula}")
    if form is not None:
        c = "1" if form.loss_weight is None else getattr(form.loss_weight, "formula", "c(λ)")
        print(f"  sampling density p_π(λ): {form.density!r}")
        print(f"  per-example loss weight c = {c}")
        print("  weighting w(λ) = 2 p_π(λ) c(λ) k(λ)  (KG23 Eq. (7) with the loss written on ε)")
    else:
        print(f"  weighting: {obj.weighting.formula}")
    print(f"  training schedule p(λ): {obj.schedule!r}  (importance sampling only: variance, not the objective)")
    lam = torch.tensor([v for v in SHOW_AT if lo <= v <= hi], dtype=torch.float64)
    print("    λ     " + "".join(f"{v:>11g}" for v in lam.tolist()))
    print("    w(λ)  " + "".join(f"{v:>11.4g}" for v in obj.weighting(lam).tolist()))
    print("    p(λ)  " + "".join(f"{v:>11.4g}" for v in obj.schedule.density(lam).tolist()))


def _run(args) -> int:
    out = check_output_path(args.out, formats=PLOT_FORMATS, create_parents=False) if args.out is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = translate(args)
    lo, hi = max(args.logsnr_min, obj.schedule.logsnr_min), min(args.logsnr_max, obj.schedule.logsnr_max)
    if not lo < hi:
        raise OptionError(f"the setting's λ range [{obj.schedule.logsnr_min:g}, {obj.schedule.logsnr_max:g}] "
                          f"misses --logsnr-min/--logsnr-max [{args.logsnr_min:g}, {args.logsnr_max:g}]")
    _describe(obj, lo, hi)
    print_augmentation(obj.weighting, lo, hi)
    grid = torch.linspace(lo, hi, 4001, dtype=torch.float64)
    bias, d_sigmoid = nearest_sigmoid(obj.weighting, grid)
    edm_monotonic = weightings.get("edm-monotonic")
    print(f"  nearest KG23 weightings on [{lo:.4g}, {hi:.4g}] (total variation between normalised w, 0 = same):")
    print(f"    sigmoid(b − λ) with b = {bias:.3f}: distance {d_sigmoid:.4f}")
    print(f"    edm-monotonic: distance {distance(obj.weighting, edm_monotonic, grid):.4f}")
    for w in caught:
        print(f"  note: {w.message}")
    if out is not None:
        cosine = schedules.get("cosine", logsnr_min=lo, logsnr_max=hi)
        plot([Resolved("this setting", obj.weighting, obj.schedule, obj),
              Resolved(f"sigmoid:bias={bias:.2f}", weightings.Sigmoid(bias), cosine, None),
              Resolved("edm-monotonic", edm_monotonic, schedules.get("edm", logsnr_min=lo, logsnr_max=hi), None)],
             lo, hi, out)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "explain", "what a diffusers / kohya / k-diffusion / EDM setting optimises",
                    sys.modules[__name__])
    peer = p.add_mutually_exclusive_group(required=True)
    peer.add_argument("--diffusers", nargs="*", metavar="KEY=VALUE",
                      help="diffusers training-script flags: " + ", ".join(
                          _keywords(from_diffusers, ("scheduler",))))
    peer.add_argument("--kohya", nargs="*", metavar="KEY=VALUE",
                      help="kohya sd-scripts flags: " + ", ".join(_keywords(from_kohya)))
    peer.add_argument("--k-diffusion", nargs="*", metavar="KEY=VALUE",
                      help="k-diffusion model config: sigma_sample_density keys (" + ", ".join(KD_DENSITY_KEYS)
                      + ") and " + ", ".join(_keywords(from_k_diffusion, ("sigma_sample_density",))))
    peer.add_argument("--edm", nargs="*", metavar="KEY=VALUE",
                      help="EDM/EDM2 loss: " + ", ".join(_keywords(from_edm)))
    p.add_argument("--scheduler", nargs="+", metavar=("NAME", "KEY=VALUE"),
                   help="with --diffusers: the scheduler (" + ", ".join(DIFFUSERS_SCHEDULERS.names())
                   + ") and its config keys")
    p.add_argument("--out", help="plot the setting against KG23's weightings: " + ", ".join(PLOT_FORMATS))
    p.add_argument("--logsnr-min", type=float, default=-15.0, help="λ range start (default -15)")
    p.add_argument("--logsnr-max", type=float, default=15.0, help="λ range end (default 15)")
    p.set_defaults(run=_run)


__all__ = ["add_parser", "translate", "distance", "nearest_sigmoid", "parse_value"]
