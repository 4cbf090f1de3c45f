"""Estimator variance: the schedule p(λ) changes the variance of the loss and gradient, not the objective.

KG23 §3 (docs/theory.md, "The weighted loss"): L_w = ½ E_{λ~p, ε}[(w(λ)/p(λ)) ‖ε̂ − ε‖²] has the
same value for every p with the same endpoints. For a fixed model and each weighting (sigmoid(2 − λ),
EDM, ELBO) × schedule (cosine, linear-logsnr, EDM log-normal, adaptive fitted to that weighting), this measures
over many batches

- the mean of the batch-mean loss and its per-batch standard deviation,
- the per-batch standard deviation of the gradient, sqrt(E‖g − ḡ‖²), relative to ‖ḡ‖,
- z-scores of the means against the pooled mean of the other schedules (loss, and the gradient projected
  on a fixed random direction): |z| ≲ 2–3 is "the same objective".

Models: the exact denoiser of the toy ring mixture (closed form, loss only), and ``training.train``-ed toy
(toy2d preset) and digits (tiny U-Net) models, evaluated in their own parameterization (ε).
"""

from __future__ import annotations

import math

import _common as C
import torch

from diffusion_objectives import AdaptiveSchedule, WeightedLoss, parameterizations, schedules, weightings
from diffusion_objectives.core import mixtures

WEIGHTINGS = {"sigmoid": lambda: weightings.Sigmoid(2.0), "edm": weightings.EDMWeighting, "elbo": weightings.Elbo}
SCHEDULES = {"cosine": lambda: schedules.get("cosine"), "linear-logsnr": lambda: schedules.get("linear-logsnr"),
             "edm": lambda: schedules.get("edm")}

# model -> (batch size, loss batches, gradient batches, adaptive-fit batches)
SIZES = {"toy (exact denoiser)": (256, 400, 0, 300), "toy (trained)": (256, 200, 60, 300),
         "digits (trained)": (128, 100, 40, 300)}
QUICK = {"toy (exact denoiser)": (32, 8, 0, 5), "toy (trained)": (32, 8, 4, 5), "digits (trained)": (16, 6, 3, 5)}


def models(args):
    """name -> (model, parameterization, draw(n, generator) -> x, info)."""
    ring = mixtures.ring()
    eps = parameterizations.Eps()
    out = {"toy (exact denoiser)": (ring.denoiser(eps), eps,
                                    lambda n, g: ring.sample(n, g).to(torch.float32),
                                    {"kind": "exact Gaussian-mixture denoiser (ring)"})}
    for name, kind in (("toy (trained)", "toy"), ("digits (trained)", "digits")):
        loaded, info = C.trained_model(kind, args)
        data = loaded.dataset(split="train").data

        def draw(n, g, data=data):
            return data[torch.randint(len(data), (n,), generator=g)]

        out[name] = (loaded.model, loaded.objective.parameterization, draw, info)
    return out


def fit_adaptive(model, param, draw, weighting, batch: int, steps: int, gen) -> AdaptiveSchedule:
    """KG23's adaptive schedule (docs/theory.md, "The adaptive schedule") fitted to this model and
    weighting: ``steps`` updates."""
    schedule = AdaptiveSchedule(-15.0, 15.0)
    loss = WeightedLoss(weighting, schedule, param)
    with torch.no_grad():
        for _ in range(steps):
            out = loss(model, draw(batch, gen), gen)
            schedule.update(out.logsnr, out.weighted_eps_mse)
    return schedule


def loss_batches(model, loss: WeightedLoss, draw, batch: int, batches: int, gen, chunk: int = 4096) -> torch.Tensor:
    """Per-example losses of ``batches`` independent batches, ``[batches, batch]`` (float64, no graph)."""
    vals = []
    n = batch * batches
    with torch.no_grad():
        for s in range(0, n, chunk):
            vals.append(loss(model, draw(min(chunk, n - s), gen), gen).loss.double())
    return torch.cat(vals).reshape(batches, batch)


def gradient_batches(model, loss: WeightedLoss, draw, batch: int, batches: int, gen, direction) -> dict:
    """Per-batch gradients of the batch-mean loss: total std sqrt(E‖g − ḡ‖²), ‖ḡ‖, and the projections
    on ``direction`` (one per batch)."""
    params = list(model.parameters())
    s1 = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    s2 = 0.0
    proj = []
    for _ in range(batches):
        model.zero_grad(set_to_none=True)
        loss(model, draw(batch, gen), gen).loss.mean().backward()
        g = torch.cat([p.grad.reshape(-1) for p in params]).double()
        s1 += g
        s2 += float(g @ g)
        proj.append(float(g @ direction))
    mean = s1 / batches
    var = (s2 - batches * float(mean @ mean)) / (batches - 1)
    return {"std": math.sqrt(max(var, 0.0)), "mean_norm": float(mean.norm()), "proj": proj}


def z_scores(means: dict[str, float], ses: dict[str, float]) -> dict[str, float]:
    """z of each mean against the inverse-variance pooled mean of the others (independent samples)."""
    out = {}
    for k in means:
        others = [j for j in means if j != k and ses[j] > 0]
        if not others or ses[k] <= 0:
            out[k] = float("nan")
            continue
        w = {j: 1 / ses[j] ** 2 for j in others}
        pooled = sum(w[j] * means[j] for j in others) / sum(w.values())
        out[k] = (means[k] - pooled) / math.sqrt(ses[k] ** 2 + 1 / sum(w.values()))
    return out


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    started = C.setup(args)
    sizes = QUICK if args.quick else SIZES
    results: dict = {"models": {}}
    tables = []
    for mname, (model, param, draw, info) in models(args).items():
        batch, n_loss, n_grad, n_fit = sizes[mname]
        if n_grad:
            model.requires_grad_(True)
            size = sum(q.numel() for q in model.parameters())
            u = torch.randn(size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            u /= u.norm()
        rows, res = [], {"info": info, "batch": batch, "loss_batches": n_loss, "gradient_batches": n_grad,
                         "configs": {}}
        for wname, wfactory in WEIGHTINGS.items():
            w = wfactory()
            gen = torch.Generator().manual_seed(args.seed)
            sched = {k: f() for k, f in SCHEDULES.items()}
            print(f"{mname} / {wname}: fitting the adaptive schedule ({n_fit} batches of {batch})")
            sched["adaptive"] = fit_adaptive(model, param, draw, w, batch, n_fit, gen)
            stats = {}
            for sname, s in sched.items():
                loss = WeightedLoss(w, s, param)
                lb = loss_batches(model, loss, draw, batch, n_loss, gen)
                bm = lb.mean(1)
                st = {"mean": float(bm.mean()), "batch_std": float(bm.std()), "se": float(bm.std()) / math.sqrt(n_loss),
                      "max_over_mean": float(lb.max() / lb.mean())}
                if n_grad:
                    gr = gradient_batches(model, loss, draw, batch, n_grad, gen, u)
                    pr = torch.tensor(gr["proj"], dtype=torch.float64)
                    st |= {"grad_std": gr["std"], "grad_mean_norm": gr["mean_norm"],
                           "grad_proj_mean": float(pr.mean()), "grad_proj_se": float(pr.std()) / math.sqrt(n_grad)}
                stats[sname] = st
                print(f"  {sname:14s} mean {st['mean']:.5g} ± {st['se']:.2g}, batch std {st['batch_std']:.4g}"
                      + (f", grad std {st['grad_std']:.4g}" if n_grad else ""))
            z = z_scores({k: v["mean"] for k, v in stats.items()}, {k: v["se"] for k, v in stats.items()})
            best = min(v["batch_std"] for v in stats.values())
            if n_grad:
                zg = z_scores({k: v["grad_proj_mean"] for k, v in stats.items()},
                              {k: v["grad_proj_se"] for k, v in stats.items()})
                best_g = min(v["grad_std"] for v in stats.values())
            for sname, st in stats.items():
                st["z_loss"] = z[sname]
                row = [wname, sname, st["mean"], st["batch_std"], st["batch_std"] / best, f"{z[sname]:+.2f}",
                       st["max_over_mean"]]
                if n_grad:
                    st["z_grad"] = zg[sname]
                    row += [st["grad_std"] / st["grad_mean_norm"], st["grad_std"] / best_g, f"{zg[sname]:+.2f}"]
                rows.append(row)
                res["configs"][f"{wname}/{sname}"] = st
        if n_grad:
            model.requires_grad_(False)
        cols = ["weighting", "schedule", "mean loss", "batch std", "× best", "z (mean)", "max/mean"]
        if n_grad:
            cols += ["grad std / ‖ḡ‖", "grad × best", "z (grad·u)"]
        tables.append(C.Table(
            f"Estimator variance, {mname}: batch {batch}, {n_loss} loss batches"
            + (f", {n_grad} gradient batches" if n_grad else ""), cols, rows,
            notes=("'batch std': standard deviation over batches of the batch-mean loss; '× best': relative to "
                   "the lowest of the four schedules for that weighting; 'z': the schedule's mean against the "
                   "pooled mean of the other three (same objective ⇒ |z| ≲ 2–3); 'max/mean': largest single "
                   "example over the mean (heavy tails make the sample std unreliable). Gradients: "
                   "sqrt(E‖g − ḡ‖²)/‖ḡ‖ per batch; z of the projection on a fixed random direction u.")))
        results["models"][mname] = res
    C.finish(args, "estimator_variance", started, tables, results)


if __name__ == "__main__":
    main()
