"""ELBO efficiency: Monte-Carlo standard error of bits/dim per network evaluation, by estimator.

Only the diffusion term L_diff of the −ELBO (VDM21; docs/theory.md, "The ELBO") costs network
evaluations; this compares its estimators in :func:`diffusion_objectives.likelihoods.vlb.elbo`, at S evaluations per
example:

- uniform t (linear-λ schedule, i.e. λ uniform), i.i.d.: the plain estimator;
- uniform t of the cosine schedule, i.i.d. (importance sampling with a common training density);
- stratified uniform t (VDM21's antithetic grid, 2 replicates);
- importance sampling from a pilot-fitted proposal (``elbo.proposal_from``: p ∝ the pilot's ELBO per
  λ-bin, KG23 §5's adaptive density fitted once on other examples), i.i.d. and stratified.

The standard error is measured, not trusted: each estimator is repeated R times with independent seeds
on the same examples, and the per-example variance over repeats is averaged over examples. 'per-NFE
variance' = variance × S (constant in S for an i.i.d. estimator); 'NFE saving' = how many times fewer
evaluations reach the plain estimator's standard error. z checks the means agree (all are unbiased).
"""

from __future__ import annotations

import math

import _common as C
import torch

from diffusion_objectives import parameterizations, schedules
from diffusion_objectives.core import mixtures
from diffusion_objectives.likelihoods.vlb import elbo, proposal_from

SIZES = {"examples": 64, "pilot_examples": 64, "pilot_samples": 128, "repeats": 8, "samples": [8, 64]}
QUICK = {"examples": 4, "pilot_examples": 4, "pilot_samples": 16, "repeats": 2, "samples": [4]}


def models(args):
    """name -> (model, parameterization, evaluation examples, pilot examples, levels, info)."""
    n, n_pilot = (QUICK if args.quick else SIZES)["examples"], (QUICK if args.quick else SIZES)["pilot_examples"]
    ring = mixtures.ring()
    eps = parameterizations.Eps()
    g = torch.Generator().manual_seed(args.seed + 1)
    x_ring = ring.sample(n + n_pilot, g).to(torch.float32)
    out = {"toy (exact denoiser)": (ring.denoiser(eps), eps, x_ring[:n], x_ring[n:], None,
                                    {"kind": "exact Gaussian-mixture denoiser (ring)"})}
    for name, kind in (("toy (trained)", "toy"), ("digits (trained)", "digits")):
        loaded, info = C.trained_model(kind, args)
        test = loaded.dataset(split="test")
        perm = torch.randperm(len(test), generator=g)
        x = test.data[perm]
        out[name] = (loaded.model, loaded.objective.parameterization, x[:n], x[n:n + n_pilot], test.levels, info)
    return out


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    started = C.setup(args)
    size = QUICK if args.quick else SIZES
    results: dict = {"models": {}}
    tables = []
    for mname, (model, param, x, x_pilot, levels, info) in models(args).items():
        scale = 1.0 / (x[0].numel() * math.log(2.0))  # nats per example -> bits/dim
        unit = "bits/dim" if levels is not None else "bits/dim (continuous data: a density)"
        pilot = elbo(model, param, x_pilot, levels, samples=size["pilot_samples"], stratified=True, bins=60,
                     generator=torch.Generator().manual_seed(args.seed + 2))
        proposal = proposal_from(pilot)
        estimators = {
            "uniform t (λ uniform), iid": dict(schedule=None, stratified=False),
            "uniform t (cosine), iid": dict(schedule=schedules.get("cosine"), stratified=False),
            "stratified (λ uniform)": dict(schedule=None, stratified=True),
            "importance (pilot), iid": dict(schedule=proposal, stratified=False),
            "importance (pilot), stratified": dict(schedule=proposal, stratified=True),
        }
        rows, res = [], {"info": info, "levels": levels, "examples": int(x.shape[0]), "dims": int(x[0].numel()),
                         "estimators": {}}
        for S in size["samples"]:
            stats = {}
            for ename, kw in estimators.items():
                runs, reported = [], []
                for r in range(size["repeats"]):
                    gen = torch.Generator().manual_seed(10_000 * S + 100 * r + args.seed)
                    out = elbo(model, param, x, levels, samples=S, replicates=2, generator=gen,
                               reconstruction_samples=1, **kw)
                    runs.append(out.diffusion.double())
                    reported.append(out.diffusion_se.double())
                f = torch.stack(runs)  # [R, n]
                var = float(f.var(0).mean())  # per-example MC variance, averaged over examples
                mean = float(f.mean())
                se_mean = math.sqrt(var / f.shape[0] / f.shape[1])  # of the grand mean over repeats and examples
                stats[ename] = {"mean": mean * scale, "se": math.sqrt(var) * scale, "per_nfe_var": var * S * scale**2,
                                "reported_se": float(torch.stack(reported).square().mean().sqrt()) * scale,
                                "grand_mean_se": se_mean * scale}
                print(f"{mname} S={S} {ename:32s} L_diff {mean * scale:.5f} bits/dim, "
                      f"SE {math.sqrt(var) * scale:.3g}")
            base = stats["uniform t (λ uniform), iid"]
            for ename, st in stats.items():
                st["nfe_saving"] = base["se"] ** 2 / st["se"] ** 2
                st["z"] = (st["mean"] - base["mean"]) / math.hypot(st["grand_mean_se"], base["grand_mean_se"]) \
                    if st is not base else 0.0
                rows.append([S, ename, st["mean"], st["se"], st["reported_se"], st["per_nfe_var"], st["nfe_saving"],
                             f"{st['z']:+.2f}"])
                res["estimators"][f"S={S}/{ename}"] = st
        tables.append(C.Table(
            f"ELBO efficiency, {mname}: L_diff in {unit}, {x.shape[0]} examples, {size['repeats']} repeats",
            ["NFE/example", "estimator", "L_diff", "MC SE", "SE reported by elbo()", "per-NFE variance",
             "NFE saving", "z vs plain"], rows,
            notes=("MC SE: per-example standard deviation over independent repeats (RMS over examples). 'SE "
                   "reported by elbo()': the library's own estimate (replicate spread when stratified), RMS over "
                   "examples and repeats. NFE saving = (SE plain / SE)² at equal NFE.")))
        results["models"][mname] = res
    C.finish(args, "elbo_efficiency", started, tables, results)


if __name__ == "__main__":
    main()
