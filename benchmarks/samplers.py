"""Samplers: sample quality against the number of network evaluations (NFE), and the NFE each sampler
needs to come within 5 % of the 1000-step ancestral sampler's quality.

Samplers (docs/theory.md, "Samplers"; :mod:`diffusion_objectives.sampling.samplers`): ancestral (DDPM), DDIM, Heun
(EDM22
Algorithm 2, deterministic) and DPM-Solver++(2M). ``--grid edm`` (default) runs all of them, and the
reference, on EDM's ρ = 7 λ-grid (σ from 80 to 0.002), so a column differs only by the solver;
``--grid default`` gives each sampler the library's default grid for it (EDM's for Heun and DPM-Solver++,
uniform t of the cosine schedule on [−15, 15] for ancestral and DDIM; ``evaluation.SampleSettings``) and
writes ``samplers-default-grids.json``. NFE: N grid points cost N evaluations, Heun's cost 2N − 1, so the
sweep uses NFE = 2^k + 1 and gives Heun (NFE + 1)/2 points: every column compares equal NFE exactly.

Quality: toy ring: the exact cross-entropy −E log p(x) of the samples under the true mixture (nats; its
standard error is printed); digits: the Fréchet distance on ``classifier-digits`` features against the
training split (samples quantised to the 17 grey levels, as ``evaluation.evaluate`` does). Models: the
exact denoiser of the toy mixture (closed form), and briefly ``training.train``-ed toy and digits models
(EMA weights). Every sampler starts from the same noise; the ancestral sampler's extra noise comes from
the global RNG seeded per run.
"""

from __future__ import annotations

import math

import _common as C
import torch

from diffusion_objectives import metrics, parameterizations, samplers
from diffusion_objectives.core import mixtures
from diffusion_objectives.data import dequantize, quantize
from diffusion_objectives.evaluation import protocol as evaluation

SAMPLERS = ["ancestral", "ddim", "heun", "dpmpp-2m"]
SWEEP = [3, 5, 9, 17, 33, 65, 129]
SIZES = {"toy (exact denoiser)": 16384, "toy (trained)": 4096, "digits (trained)": 512, "reference_steps": 1000}
QUICK = {"toy (exact denoiser)": 64, "toy (trained)": 64, "digits (trained)": 32, "reference_steps": 20}
QUICK_SWEEP = [3]


def grid_points(sampler: str, nfe: int) -> int:
    return (nfe + 1) // 2 if sampler == "heun" else nfe


def grid_name(sampler: str, choice: str) -> str:
    return evaluation.SampleSettings(sampler=sampler).resolved_grid() if choice == "default" else choice


def sample(sampler: str, model, param, noise, points: int, seed: int, grid: str) -> tuple[torch.Tensor, float]:
    grid = evaluation.sampling_grid(grid_name(sampler, grid), points)
    torch.manual_seed(seed)  # the ancestral sampler's fresh noise (generators=None: the global RNG)
    t0 = C.clock()
    with torch.no_grad():
        x = samplers.get(sampler)(model, param, noise, grid)
    return x.float(), C.clock() - t0


def toy_quality(mixture):
    def quality(x):
        lp = mixture.log_prob(x.double())
        return float(-lp.mean()), float(lp.std()) / math.sqrt(x.shape[0])

    return quality


def digits_quality(train_images, levels: int):
    ext = metrics.get_extractor("classifier-digits")
    mu_ref, sigma_ref = metrics.feature_statistics(ext(train_images))

    def quality(x):
        x = dequantize(quantize(x.clamp(-1, 1), levels), levels)
        mu, sigma = metrics.feature_statistics(ext(x))
        return metrics.frechet_distance(mu, sigma, mu_ref, sigma_ref), float("nan")

    return quality, ext


def models(args, notes: list[str]):
    """name -> (model, parameterization, per-example shape, quality(x) -> (value, se), metric name, info)."""
    ring = mixtures.ring()
    eps = parameterizations.Eps()
    fresh = ring.sample(20_000 if args.quick else 400_000, torch.Generator().manual_seed(args.seed + 7))
    entropy = float(-ring.log_prob(fresh).mean())  # H(p): the cross-entropy of perfect samples
    out = {"toy (exact denoiser)": (ring.denoiser(eps), eps, (2,), toy_quality(ring), "cross-entropy (nats)",
                                    {"kind": "exact Gaussian-mixture denoiser (ring)", "entropy_nats": entropy})}
    loaded, info = C.trained_model("toy", args)
    out["toy (trained)"] = (loaded.model, loaded.objective.parameterization, (2,),
                            toy_quality(loaded.dataset(n=16).mixture), "cross-entropy (nats)",
                            info | {"entropy_nats": entropy})
    loaded, info = C.trained_model("digits", args)
    train = loaded.dataset(split="train")
    try:
        quality, ext = digits_quality(train.data, train.levels)
    except Exception as exc:  # the classifier weights are an asset that may be missing in a checkout
        notes.append(f"digits skipped: the classifier-digits extractor is not available ({type(exc).__name__}: "
                     f"{exc})")
        return out
    test = loaded.dataset(split="test")
    info = info | {"extractor": ext.name, "extractor_checksum": ext.checksum,
                   "fd_test_split_vs_train": quality(test.data)[0], "n_test": len(test)}
    out["digits (trained)"] = (loaded.model, loaded.objective.parameterization, tuple(train.shape), quality,
                               f"FD ({ext.name})", info)
    return out


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--grid", choices=["edm", "default", "cosine", "uniform-logsnr"], default="edm",
                   help="λ-grid for every sampler and the reference, or each sampler's library default")
    args = p.parse_args()
    started = C.setup(args)
    size, sweep = (QUICK, QUICK_SWEEP) if args.quick else (SIZES, SWEEP)
    ref_steps = size["reference_steps"]
    notes: list[str] = []
    grids = {s: grid_name(s, args.grid) for s in SAMPLERS}
    grid_text = ("each sampler's default grid: " + ", ".join(f"{k} {v}" for k, v in grids.items())
                 if args.grid == "default" else f"all samplers on the {args.grid} grid")
    results: dict = {"sweep_nfe": sweep, "reference_steps": ref_steps, "grid": args.grid, "grids": grids,
                     "models": {}}
    tables, need_rows = [], []
    for mname, (model, param, shape, quality, metric, info) in models(args, notes).items():
        n = size[mname]
        noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(args.seed))
        x_ref, t_ref = sample("ancestral", model, param, noise, ref_steps, args.seed + 1, args.grid)
        q_ref, se_ref = quality(x_ref)
        print(f"{mname}: {ref_steps}-step ancestral {metric} {q_ref:.4g} ({t_ref:.0f} s)")
        res = {"info": info, "n_samples": n, "metric": metric, "reference": {"value": q_ref, "se": se_ref},
               "samplers": {}}
        grid: dict[str, dict[int, float]] = {}
        for sname in SAMPLERS:
            grid[sname] = {}
            for nfe in sweep:
                pts = grid_points(sname, nfe)
                x, secs = sample(sname, model, param, noise, pts, args.seed + 1, args.grid)
                q, se = quality(x)
                grid[sname][nfe] = q
                res["samplers"].setdefault(sname, []).append({
                    "nfe": 2 * pts - 1 if sname == "heun" else pts, "grid_points": pts, "value": q, "se": se,
                    "seconds": secs})
                print(f"  {sname:10s} NFE {nfe:4d}: {q:.4g}")
        targets = {"ref": q_ref}
        if info.get("entropy_nats") is not None and info["kind"].startswith("exact"):
            targets["H(p)"] = info["entropy_nats"]  # the exact denoiser's ideal: the data's own entropy
        need = {}
        for tname, target in targets.items():
            need[tname] = {}
            for sname in SAMPLERS:
                ok = [abs(grid[sname][nfe] - target) <= 0.05 * abs(target) for nfe in sweep]
                # the smallest NFE from which every larger NFE of the sweep stays within 5 %
                need[tname][sname] = next((nfe for i, nfe in enumerate(sweep) if all(ok[i:])), None)
        res["nfe_within_5pct"] = need["ref"]
        if "H(p)" in need:
            res["nfe_within_5pct_of_entropy"] = need["H(p)"]
        se_note = f" ± {se_ref:.2g}" if math.isfinite(se_ref) else ""
        rows = [[nfe] + [f"{grid[s][nfe]:.4g} ({100 * (grid[s][nfe] - q_ref) / abs(q_ref):+.1f} %)" for s in SAMPLERS]
                for nfe in sweep]

        def fmt(v):
            return str(v) if v else f"> {sweep[-1]}"

        rows.append(["NFE within 5 % of reference"] + [fmt(need["ref"][s]) for s in SAMPLERS])
        if "H(p)" in need:
            rows.append(["NFE within 5 % of H(p)"] + [fmt(need["H(p)"][s]) for s in SAMPLERS])
        extra = ""
        if info.get("entropy_nats") is not None:
            extra = (f" The entropy H(p) (cross-entropy of exact samples) is {info['entropy_nats']:.4g} nats; "
                     "values below it mean samples collapsed towards the modes.")
        if "fd_test_split_vs_train" in info:
            extra = f" FD of the {info['n_test']} real test images vs train: {info['fd_test_split_vs_train']:.4g}."
        tables.append(C.Table(
            f"Samplers, {mname}: {metric} of {n} samples vs NFE ({ref_steps}-step ancestral: {q_ref:.4g}{se_note}; "
            f"{grid_text})",
            ["NFE"] + SAMPLERS, rows,
            notes=(f"Cells: quality (relative difference to the {ref_steps}-step ancestral reference). Heun uses "
                   "(NFE + 1)/2 grid points. 'NFE within 5 %': smallest NFE of the sweep from which all larger "
                   "ones are within 5 % of the reference (same noise for every sampler); for the exact denoiser "
                   f"also of the true entropy H(p), the exact target.{extra}")))
        need_rows.append([mname] + [fmt(need["ref"][s]) for s in SAMPLERS])
        if "H(p)" in need:
            need_rows.append([f"{mname}, vs H(p)"] + [fmt(need["H(p)"][s]) for s in SAMPLERS])
        results["models"][mname] = res
    tables.append(C.Table(f"Samplers: NFE needed to come within 5 % of {ref_steps}-step ancestral quality "
                          f"({grid_text})", ["model"] + SAMPLERS, need_rows, notes=" ".join(notes)))
    results["notes"] = notes
    C.finish(args, "samplers" if args.grid == "edm" else f"samplers-{args.grid}-grid", started, tables, results)


if __name__ == "__main__":
    main()
