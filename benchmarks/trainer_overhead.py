"""Trainer overhead: a step of ``diffobj``'s training loop vs a bare PyTorch loop (target: ≤ 3 %).

The real loop is ``training.train`` on the ``toy2d`` and ``digits`` presets as they are (loss, per-step
generators, the adaptive schedule, the step statistics (packed into one all-reduce vector with several
processes), gradient clipping, EMA, logging every ``log_every`` steps), timed by ``on_step`` timestamps after
a warm-up, so start-up is excluded. The bare loop uses the same network, AdamW (with the same warm-up), batch
size and loss computation (``WeightedLoss.loss_at`` on a random batch of the same dataset), and nothing else; a second
bare loop adds the loop's gradient clipping and EMA, so the table separates what those two features
cost from what the loop's machinery costs.

Checkpoints are timed in the same run (the real loop writes one every few steps here) and amortised at
the preset's own cadence (``run.checkpoint_every``); so is the logging step (every ``run.log_every``).
Sample grids are off (evaluation, not training). fp32 and bf16 (CPU autocast) get separate interleaved
rounds. For toy2d, the case above 3 %, the real loop is also run with one piece removed at a time.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import _common as C
import torch

from diffusion_objectives import data as data_module
from diffusion_objectives import training
from diffusion_objectives.training import step as step_module
from diffusion_objectives.training.step import ema_beta, learning_rate

# preset -> (measured steps, warm-up steps, checkpoint interval inside a block, rounds)
SIZES = {"toy2d": (40, 10, 20, 5), "digits": (10, 2, 5, 3)}
QUICK = {"toy2d": (6, 2, 3, 1), "digits": (5, 1, 3, 1)}


def real_config(preset: str, steps: int, ckpt_every: int, bf16: bool, adaptive: bool, quick: bool):
    overrides = ["run.sample_every=0", f"run.checkpoint_every={ckpt_every}",
                 f"run.precision={'bf16' if bf16 else 'fp32'}", "run.device=cpu", "run.keep_checkpoints=2",
                 f"loss.adaptive.enabled={str(adaptive).lower()}"]
    if quick:
        overrides += ["data.n=4096"] if preset == "toy2d" else []
    return training.resolve(preset, steps=steps, overrides=overrides)


def run_real(cfg, warm: int, workdir: Path) -> dict:
    """One ``train`` run, timed by ``on_step`` stamps after ``warm`` steps. Interval k is the work between
    the stamps of steps k − 1 and k: step k itself, the stats record when step k logs (every
    ``log_every`` steps and at checkpoints), and the checkpoint written after step k − 1 if there was one.
    Returns the median plain step and the extra time of a logging step (:func:`_common.clock`), and the
    extra *wall* time of a checkpoint save (it waits on fsync, which CPU time does not see)."""
    stamps: list[tuple[float, float]] = []
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    training.train(cfg, run_dir, resume="none", progress=False, handle_signals=False,
                   on_step=lambda step: stamps.append((C.clock(), time.perf_counter())))
    r = cfg.run
    kinds: dict[str, list[tuple[float, float]]] = {"plain": [], "log": [], "ckpt": []}
    for k in range(warm + 1, len(stamps) + 1):
        dtk = (stamps[k - 1][0] - stamps[k - 2][0], stamps[k - 1][1] - stamps[k - 2][1])
        if (k - 1) % r.checkpoint_every == 0:
            kinds["ckpt"].append(dtk)
        elif k % r.log_every == 0 or k % r.checkpoint_every == 0:
            kinds["log"].append(dtk)
        else:
            kinds["plain"].append(dtk)
    plain = statistics.median(v[0] for v in kinds["plain"])
    plain_wall = statistics.median(v[1] for v in kinds["plain"])

    def extra(kind: str, i: int, base: float) -> float:
        return statistics.median(v[i] for v in kinds[kind]) - base if kinds[kind] else 0.0

    return {"plain": plain, "log_extra": extra("log", 0, plain), "ckpt_extra": extra("ckpt", 1, plain_wall)}


def per_step(cfg, warm: int, workdir: Path, extras: dict[str, list[float]] | None) -> float:
    """Seconds per step of the real loop: a plain step plus the logging step's extra time amortised over
    ``log_every``; the extras are appended to ``extras`` (checkpoint saves are amortised by the caller)."""
    r = run_real(cfg, warm, workdir)
    if extras is not None:
        extras["log"].append(r["log_extra"])
        extras["ckpt"].append(r["ckpt_extra"])
    return r["plain"] + r["log_extra"] / cfg.run.log_every


def make_bare(cfg, warm: int, steps: int, clip_and_ema: bool = False):
    """The bare loop: same network (same init), AdamW with the same learning-rate warm-up, batch and
    ``WeightedLoss``, and nothing else; with ``clip_and_ema`` also the loop's gradient clipping and EMA
    (the two features that cost a pass over the parameters). Returns a callable giving the median seconds
    per step."""
    dataset = training.build_dataset(cfg.data)
    net_cfg = training.complete_network_params(cfg.network, dataset, cfg.seed)
    loss_fn = training.build_objective(copy.deepcopy(cfg.loss)).loss()
    o = cfg.optim
    B = cfg.run.batch_size
    conditional = net_cfg.conditional

    def run() -> float:
        net = training.build_network(net_cfg).train()
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        params, ema_params = list(net.parameters()), list(ema.parameters())
        opt = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                fused=True)  # as the training loop
        gen = torch.Generator().manual_seed(0)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.run.precision == "bf16")
        times = []
        for step in range(warm + steps):
            for group in opt.param_groups:  # the loop's warm-up, so both follow the same trajectory
                group["lr"] = learning_rate(cfg, step * B)
            t0 = C.clock()
            idx = torch.randint(len(dataset), (B,), generator=gen)
            x = dataset.data[idx]
            labels = dataset.labels[idx] if conditional else None
            lam = loss_fn.schedule.sample(B, gen)
            eps = torch.randn(x.shape, generator=gen)
            with autocast:
                out = loss_fn.loss_at(net, x, eps, lam, labels)
            out.loss.mean().backward()
            if clip_and_ema:
                torch.nn.utils.clip_grad_norm_(params, o.grad_clip or float("inf"))
            opt.step()
            opt.zero_grad(set_to_none=True)
            if clip_and_ema:
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, [q.detach() for q in params], 1.0 - ema_beta(cfg, step * B))
            if step >= warm:
                times.append(C.clock() - t0)
        return statistics.median(times)

    return run


# In-situ ablations of the real loop: each removes one piece while ``train`` runs (monkeypatching torch
# or the loop's module attributes), so the saving is measured where it happens (cold caches included).
def _no_clip():
    return mock.patch("torch.nn.utils.clip_grad_norm_", lambda *a, **k: torch.zeros(()))


def _no_ema():
    return mock.patch("torch._foreach_lerp_", lambda *a, **k: None)


@contextlib.contextmanager
def _no_dropout_seeding():
    with mock.patch("torch.random.fork_rng", lambda *a, **k: contextlib.nullcontext()), \
            mock.patch("torch.manual_seed", lambda seed: None):
        yield


@contextlib.contextmanager
def _no_step_streams():
    gen = torch.Generator().manual_seed(0)
    with mock.patch.object(step_module, "step_generator", lambda *a, **k: gen), \
            mock.patch.object(data_module, "batch_indices", lambda n, b, s, st, *a: torch.randint(n, (b,))):
        yield


ABLATIONS = {"− gradient clipping": [_no_clip], "− EMA": [_no_ema],
             "− dropout RNG fork + torch.manual_seed": [_no_dropout_seeding],
             "− per-step generators + data.batch_indices": [_no_step_streams]}
ABLATIONS["− all four"] = [f for fs in ABLATIONS.values() for f in fs]


def ablated(cfg, warm: int, workdir: Path, patches) -> float:
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch())
        return per_step(cfg, warm, workdir, None)


def seeding_cost(calls: int = 200) -> dict[str, float]:
    """Seconds per call: the loop's dropout seeding vs seeding only the CPU generator fork_rng saves."""
    out = {}
    for name, seed in (("torch.manual_seed", torch.manual_seed),
                       ("torch.default_generator.manual_seed", torch.default_generator.manual_seed)):
        seed(0)
        t0 = C.clock()
        for i in range(calls):
            with torch.random.fork_rng(devices=[]):
                seed(i)
        out[name] = (C.clock() - t0) / calls
    return out


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = p.parse_args()
    started = C.setup(args)
    sizes = QUICK if args.quick else SIZES
    results: dict = {"presets": {}, "seeding_s": seeding_cost(10 if args.quick else 200)}
    rows, ablation_rows = [], []
    with tempfile.TemporaryDirectory(prefix="diffobj-bench-") as tmp:
        work = Path(tmp)
        for preset in args.presets:
            steps, warm, ckpt_every, rounds = sizes[preset]
            preset_ckpt_every = training.preset(preset).run.checkpoint_every
            for bf16 in (False,) if args.quick else (False, True):
                dtype = "bf16" if bf16 else "fp32"
                print(f"{preset} {dtype}: {rounds} rounds of {steps} steps after {warm} warm-up steps")
                cfg = real_config(preset, warm + steps, ckpt_every, bf16, adaptive=False, quick=args.quick)
                cfg_adaptive = real_config(preset, warm + steps, ckpt_every, bf16, adaptive=True, quick=args.quick)
                extras: dict[str, list[float]] = {"log": [], "ckpt": []}
                timings = C.interleaved({
                    "bare": make_bare(cfg, warm, steps),
                    "bare + clip + EMA": make_bare(cfg, warm, steps, clip_and_ema=True),
                    "diffobj": functools.partial(per_step, cfg, warm, work, extras),
                    "diffobj + adaptive": functools.partial(per_step, cfg_adaptive, warm, work, None),
                }, rounds, warmup=0)
                r_bare = timings.ratio("diffobj", "bare")
                r_feat = timings.ratio("diffobj", "bare + clip + EMA")
                r_adaptive = timings.ratio("diffobj + adaptive", "bare")
                ckpt_s = statistics.median(extras["ckpt"])
                amortised = ckpt_s / preset_ckpt_every / timings.median("bare")
                total = r_bare["median"] - 1 + amortised
                machinery = r_feat["median"] - 1 + amortised
                results["presets"][f"{preset}/{dtype}"] = {
                    "batch_size": cfg.run.batch_size, "steps_per_round": steps, "warmup_steps": warm,
                    "rounds": rounds, "timings": timings.as_dict(), "ratio_vs_bare": r_bare,
                    "ratio_vs_bare_clip_ema": r_feat, "ratio_adaptive_vs_bare": r_adaptive,
                    "checkpoint_wall_s": ckpt_s, "log_record_s": statistics.median(extras["log"]),
                    "log_every": cfg.run.log_every, "preset_checkpoint_every": preset_ckpt_every,
                    "checkpoint_amortised": amortised, "overhead": total, "overhead_machinery": machinery,
                    "overhead_adaptive": r_adaptive["median"] - 1 + amortised}
                rows.append([preset, dtype, cfg.run.batch_size, timings.median("bare") * 1e3,
                             timings.median("diffobj") * 1e3, C.fmt_ratio(r_bare), C.fmt_ratio(r_feat),
                             C.fmt_ratio(r_adaptive), ckpt_s * 1e3, preset_ckpt_every, f"{100 * total:+.1f} %",
                             f"{100 * machinery:+.1f} %"])
            if preset == "toy2d":  # the case above 3 %: where does the time go?
                cfg = real_config(preset, warm + steps, ckpt_every, False, adaptive=False, quick=args.quick)
                ablation_rounds = rounds if args.quick else 2 * rounds
                print(f"{preset} fp32 ablations: {ablation_rounds} rounds")
                variants = {"bare": make_bare(cfg, warm, steps),
                            "diffobj": functools.partial(per_step, cfg, warm, work, None)}
                variants |= {f"diffobj {k}": functools.partial(ablated, cfg, warm, work, v)
                             for k, v in ABLATIONS.items()}
                ab = C.interleaved(variants, ablation_rounds, warmup=0)
                full = ab.times["diffobj"]
                saved = {k: [(f - v) / b for f, v, b in zip(full, ab.times[k], ab.times["bare"], strict=True)]
                         for k in variants}
                results["presets"]["toy2d/fp32"]["ablation"] = {
                    "timings": ab.as_dict(), "ratios_vs_bare": {k: ab.ratio(k, "bare") for k in variants},
                    "saved_fraction_of_bare": saved}
                for k in variants:
                    sv = saved[k]
                    ablation_rows.append([k, ab.median(k) * 1e3, C.fmt_ratio(ab.ratio(k, "bare")),
                                          f"{100 * statistics.median(sv):+.1f} % [{100 * C.quantile(sv, 0.25):+.1f}, "
                                          f"{100 * C.quantile(sv, 0.75):+.1f}]"])
    seeding = results["seeding_s"]
    tables = [
        C.Table(
            "Trainer overhead: diffobj's loop vs a bare loop (same network, AdamW, batch, loss)",
            ["preset", "dtype", "batch", "bare ms/step", "diffobj ms/step", "ratio vs bare [IQR]",
             "ratio vs bare + clip + EMA [IQR]", "ratio + adaptive vs bare [IQR]", "checkpoint ms (wall)",
             "ckpt every", "overhead vs bare", "overhead vs bare + clip + EMA"],
            rows,
            notes=("Ratios: median over interleaved rounds of the per-round ratio, with the interquartile range. "
                   "ms/step: medians of process CPU time with 1 thread (insensitive to the other jobs on the "
                   "shared cores; see benchmarks/README.md). 'diffobj' is `training.train` on the preset as it "
                   "is (cosine schedule), '+ adaptive' with `loss.adaptive.enabled=true`. Overhead = ratio − 1 + "
                   "one checkpoint save (wall time, it waits on fsync) amortised over the preset's "
                   "`checkpoint_every`; logging steps (every `log_every`) are amortised the same way.")),
    ]
    if ablation_rows:
        tables.append(C.Table(
            "Where toy2d's overhead goes (fp32): the real loop with one piece removed at a time",
            ["variant", "ms/step", "ratio vs bare [IQR]", "saved vs full loop, % of a bare step [IQR]"],
            ablation_rows,
            notes=("Pieces removed by patching while `training.train` runs; 'saved' is the per-round difference "
                   "(full − variant)/bare, median and quartiles over rounds (the savings are not exactly additive: "
                   "round-to-round noise is a few %). Dropout seeding, isolated: "
                   f"fork_rng + torch.manual_seed {seeding['torch.manual_seed'] * 1e3:.3f} ms per call vs "
                   f"fork_rng + torch.default_generator.manual_seed "
                   f"{seeding['torch.default_generator.manual_seed'] * 1e3:.3f} ms (torch.manual_seed also "
                   "seeds the CUDA/XPU/MPS backends lazily).")))
    C.finish(args, "trainer_overhead", started, tables, results)


if __name__ == "__main__":
    main()
