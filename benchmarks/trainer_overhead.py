"""Trainer overhead: a step of ``diffobj``'s training loop vs a bare PyTorch loop (target: ≤ 3 %).

The real loop is ``training.train`` on the ``toy2d`` and ``digits`` presets as they are (loss, per-step
generators, the adaptive schedule, the step statistics (packed into one all-reduce vector with several
processes), gradient clipping, EMA, logging every ``log_every`` steps). The bare loop uses the same network,
AdamW (with the same warm-up), batch size and loss computation (``WeightedLoss.loss_at`` on a random batch of the
same dataset), and nothing else; a second bare loop adds gradient clipping (``torch.nn.utils.clip_grad_norm_``)
and the EMA, so the table separates what those two features cost from what the loop's machinery costs.

The bare loops step *inside* the real one: its ``on_step`` hook runs one step of each after every real step, so
each real step is timed beside bare steps taken at the same moment, on the same machine state (a slow spell
slows both). Start-up and the first steps are excluded. Checkpoints are timed in the same runs (the real loop
writes one every few steps here) and amortised at the preset's own cadence (``run.checkpoint_every``); so is
the logging step (every ``run.log_every``). Sample grids are off (evaluation, not training). fp32 and bf16 (CPU
autocast) are separate runs. For toy2d the real loop is also run with one piece removed at a time.
"""

from __future__ import annotations

import contextlib
import copy
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

# preset -> (measured steps per round, warm-up steps, checkpoint interval inside a round, rounds)
SIZES = {"toy2d": (150, 10, 50, 5), "digits": (30, 3, 10, 3)}
QUICK = {"toy2d": (6, 2, 3, 1), "digits": (5, 1, 3, 1)}
ABLATION_STEPS = 60  # measured steps per ablation round (toy2d fp32)


def real_config(preset: str, steps: int, ckpt_every: int, bf16: bool, adaptive: bool, quick: bool):
    overrides = ["run.sample_every=0", f"run.checkpoint_every={ckpt_every}",
                 f"run.precision={'bf16' if bf16 else 'fp32'}", "run.device=cpu", "run.keep_checkpoints=2",
                 f"loss.adaptive.enabled={str(adaptive).lower()}"]
    if quick:
        overrides += ["data.n=4096"] if preset == "toy2d" else []
    return training.resolve(preset, steps=steps, overrides=overrides)


class BareStep:
    """The bare loop, one step per call: the same network (same init), AdamW with the same learning-rate warm-up,
    batch and ``WeightedLoss``, and nothing else; with ``clip_and_ema`` also the loop's gradient clipping (as
    ``torch.nn.utils.clip_grad_norm_``) and EMA, the two features that cost a pass over the parameters. A call
    returns the step's :func:`_common.clock` time."""

    def __init__(self, cfg, clip_and_ema: bool = False):
        self.cfg, self.clip_and_ema = cfg, clip_and_ema
        self.dataset = training.build_dataset(cfg.data)
        net_cfg = training.complete_network_params(cfg.network, self.dataset, cfg.seed)
        self.conditional = net_cfg.conditional
        self.loss_fn = training.build_objective(copy.deepcopy(cfg.loss)).loss()
        self.net = training.build_network(net_cfg).train()
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.params, self.ema_params = list(self.net.parameters()), list(self.ema.parameters())
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay,
                                     fused=True)  # as the training loop
        self.gen = torch.Generator().manual_seed(0)
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.run.precision == "bf16")
        self.step = 0

    def __call__(self) -> float:
        cfg, B, o = self.cfg, self.cfg.run.batch_size, self.cfg.optim
        for group in self.opt.param_groups:  # the loop's warm-up, so both follow the same trajectory
            group["lr"] = learning_rate(cfg, self.step * B)
        t0 = C.clock()
        idx = torch.randint(len(self.dataset), (B,), generator=self.gen)
        x = self.dataset.data[idx]
        labels = self.dataset.labels[idx] if self.conditional else None
        lam = self.loss_fn.schedule.sample(B, self.gen)
        eps = torch.randn(x.shape, generator=self.gen)
        with self.autocast:
            out = self.loss_fn.loss_at(self.net, x, eps, lam, labels)
        out.loss.mean().backward()
        if self.clip_and_ema:
            torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip or float("inf"))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.clip_and_ema:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema_params, [q.detach() for q in self.params],
                                     1.0 - ema_beta(cfg, self.step * B))
        seconds = C.clock() - t0
        self.step += 1
        return seconds


def run_round(cfg, warm: int, workdir: Path, bares: dict[str, BareStep]) -> dict:
    """One ``train`` run with the bare loops stepping *inside* it: after every step of the real loop, its
    ``on_step`` hook runs one step of each bare loop (in alternating order). So every real step is timed next
    to bare steps taken at the same moment, and a slow spell of the machine slows both.

    Interval k of the real loop is the work between the hooks of steps k − 1 and k: step k itself, the stats
    record when step k logs (every ``log_every`` steps and at checkpoints), and the checkpoint written after step
    k − 1 if there was one. Returns medians after ``warm`` steps (seconds): the plain real step, each bare step,
    the extra time of a logging step (:func:`_common.clock`) and the extra *wall* time of a checkpoint save (it
    waits on fsync, which CPU time does not see)."""
    stamps: list[tuple[float, float, float, float]] = []  # (clock, wall) entering and leaving the hook
    bare_times: dict[str, list[float]] = {name: [] for name in bares}

    def hook(step: int) -> None:
        t_in, w_in = C.clock(), time.perf_counter()
        order = list(bares) if step % 2 else list(bares)[::-1]
        for name in order:
            seconds = bares[name]()
            if step > warm:
                bare_times[name].append(seconds)
        stamps.append((t_in, w_in, C.clock(), time.perf_counter()))

    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    training.train(cfg, run_dir, resume="none", progress=False, handle_signals=False, on_step=hook)
    r = cfg.run
    kinds: dict[str, list[tuple[float, float]]] = {"plain": [], "log": [], "ckpt": []}
    for k in range(warm + 1, len(stamps) + 1):
        dtk = (stamps[k - 1][0] - stamps[k - 2][2], stamps[k - 1][1] - stamps[k - 2][3])
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

    log_extra = extra("log", 0, plain)
    return {"real": plain + log_extra / r.log_every, "plain": plain, "log_extra": log_extra,
            "ckpt_extra": extra("ckpt", 1, plain_wall),
            "bare": {name: statistics.median(v) for name, v in bare_times.items()}}


def rounds_of(variants: dict[str, tuple], rounds: int, warm: int, workdir: Path) -> dict[str, list[dict]]:
    """``rounds`` rounds of each variant ``name -> (config, patches, bares)``, the order rotating per round."""
    names = list(variants)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            cfg, patches, bares = variants[name]
            with contextlib.ExitStack() as stack:
                for patch in patches:
                    stack.enter_context(patch())
                out[name].append(run_round(cfg, warm, workdir, bares))
        print(f"  round {i + 1}/{rounds}: " + ", ".join(
            f"{n} {out[n][-1]['real'] / out[n][-1]['bare']['bare']:.3f}× bare" for n in names))
    return out


def ratio(rs: list[dict], of: str = "bare") -> dict:
    """Median and quartiles over rounds of (real step)/(bare step ``of``), both measured in the same round."""
    r = [x["real"] / x["bare"][of] for x in rs]
    return {"median": statistics.median(r), "q25": C.quantile(r, 0.25), "q75": C.quantile(r, 0.75), "rounds": r}


# In-situ ablations of the real loop: each removes one piece while ``train`` runs (monkeypatching the step's
# module attributes), so the saving is measured where it happens (cold caches included).
def _no_clip():
    return mock.patch.object(step_module, "clip_gradients", lambda *a, **k: torch.zeros(()))


def _no_ema():
    return mock.patch("torch._foreach_lerp_", lambda *a, **k: None)  # the bare loop here has no EMA


def _no_dropout_seeding():
    return mock.patch.object(step_module, "DropoutRNG", lambda *a, **k: contextlib.nullcontext())


@contextlib.contextmanager
def _no_step_streams():
    gen = torch.Generator().manual_seed(0)
    with mock.patch.object(step_module, "step_generator", lambda *a, **k: gen), \
            mock.patch.object(data_module, "batch_indices", lambda n, b, s, st, *a: torch.randint(n, (b,))):
        yield


def _no_statistics():
    """reduce_statistics replaced by a constant: no finite check, no loss sum."""
    zeros = [torch.zeros((), dtype=torch.float64)] * 5
    return mock.patch.object(step_module, "reduce_statistics", lambda *a, **k: step_module.StepStatistics(*zeros))


ABLATIONS = {"− gradient clipping": [_no_clip], "− EMA": [_no_ema],
             "− dropout RNG seeding": [_no_dropout_seeding],
             "− per-step generators + data.batch_indices": [_no_step_streams],
             "− step statistics": [_no_statistics]}
ABLATIONS["− all five"] = [f for fs in ABLATIONS.values() for f in fs]


def ablate(cfg, dtype: str, rounds: int, warm: int, work: Path) -> tuple[dict, list[list]]:
    """The real loop with each of :data:`ABLATIONS` removed, each run with a bare loop stepping inside it: the
    result and the table rows."""
    bares = {"bare": BareStep(cfg)}
    variants = {"diffobj": (cfg, [], bares)} | {f"diffobj {k}": (cfg, v, bares) for k, v in ABLATIONS.items()}
    ab = rounds_of(variants, rounds, warm, work)
    ratios = {k: ratio(v) for k, v in ab.items()}
    saved = {k: [f - v for f, v in zip(ratios["diffobj"]["rounds"], ratios[k]["rounds"], strict=True)]
             for k in variants}
    rows = []
    for k, sv in saved.items():
        q25, q75 = C.quantile(sv, 0.25), C.quantile(sv, 0.75)
        rows.append([dtype, k, statistics.median(x["real"] for x in ab[k]) * 1e3, C.fmt_ratio(ratios[k]),
                     f"{100 * statistics.median(sv):+.1f} % [{100 * q25:+.1f}, {100 * q75:+.1f}]"])
    return {"rounds_detail": ab, "ratios_vs_bare": ratios, "saved_fraction_of_bare": saved}, rows


def seeding_cost(calls: int = 200) -> dict[str, float]:
    """Seconds per call: seeding and restoring the generators dropout draws from, three ways."""
    gen = torch.default_generator

    def fork(seed_fn):
        def call(i: int) -> None:
            with torch.random.fork_rng(devices=[]):
                seed_fn(i)
        return call

    def dropout_rng(i: int) -> None:
        with step_module.DropoutRNG(i, torch.device("cpu")):
            pass

    out = {}
    for name, call in (("fork_rng + torch.manual_seed", fork(torch.manual_seed)),
                       ("fork_rng + default_generator.manual_seed", fork(gen.manual_seed)),
                       ("DropoutRNG", dropout_rng)):
        call(0)
        t0 = C.clock()
        for i in range(calls):
            call(i)
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
                bares = {"bare": BareStep(cfg), "bare + clip + EMA": BareStep(cfg, clip_and_ema=True)}
                out = rounds_of({"diffobj": (cfg, [], bares), "diffobj + adaptive": (cfg_adaptive, [], bares)},
                                rounds, warm, work)
                real = out["diffobj"]
                r_bare, r_feat = ratio(real), ratio(real, "bare + clip + EMA")
                r_adaptive = ratio(out["diffobj + adaptive"])
                bare_s = statistics.median(x["bare"]["bare"] for x in real)
                ckpt_s = statistics.median(x["ckpt_extra"] for x in real)
                amortised = ckpt_s / preset_ckpt_every / bare_s
                total, machinery = r_bare["median"] - 1 + amortised, r_feat["median"] - 1 + amortised
                results["presets"][f"{preset}/{dtype}"] = {
                    "batch_size": cfg.run.batch_size, "steps_per_round": steps, "warmup_steps": warm,
                    "rounds": rounds, "rounds_detail": out, "ratio_vs_bare": r_bare,
                    "ratio_vs_bare_clip_ema": r_feat, "ratio_adaptive_vs_bare": r_adaptive,
                    "checkpoint_wall_s": ckpt_s, "log_record_s": statistics.median(x["log_extra"] for x in real),
                    "log_every": cfg.run.log_every, "preset_checkpoint_every": preset_ckpt_every,
                    "checkpoint_amortised": amortised, "overhead": total, "overhead_machinery": machinery,
                    "overhead_adaptive": r_adaptive["median"] - 1 + amortised}
                rows.append([preset, dtype, cfg.run.batch_size, bare_s * 1e3,
                             statistics.median(x["real"] for x in real) * 1e3, C.fmt_ratio(r_bare),
                             C.fmt_ratio(r_feat), C.fmt_ratio(r_adaptive), ckpt_s * 1e3, preset_ckpt_every,
                             f"{100 * total:+.1f} %", f"{100 * machinery:+.1f} %"])
            if preset == "toy2d":  # where does the time go?
                ab_steps = 4 if args.quick else ABLATION_STEPS
                for bf16 in (False,) if args.quick else (False, True):
                    dtype = "bf16" if bf16 else "fp32"
                    cfg = real_config(preset, warm + ab_steps, ckpt_every, bf16, adaptive=False, quick=args.quick)
                    print(f"{preset} {dtype} ablations: {rounds} rounds of {ab_steps} steps")
                    results["presets"][f"toy2d/{dtype}"]["ablation"], more = ablate(cfg, dtype, rounds, warm, work)
                    ablation_rows += more
    seeding = results["seeding_s"]
    tables = [
        C.Table(
            "Trainer overhead: diffobj's loop vs a bare loop (same network, AdamW, batch, loss)",
            ["preset", "dtype", "batch", "bare ms/step", "diffobj ms/step", "ratio vs bare [IQR]",
             "ratio vs bare + clip + EMA [IQR]", "ratio + adaptive vs bare [IQR]", "checkpoint ms (wall)",
             "ckpt every", "overhead vs bare", "overhead vs bare + clip + EMA"],
            rows,
            notes=("Ratios: the real step over the bare step timed in the same run (the bare loops step inside "
                   "the real loop's `on_step` hook, one step each after every real step), median over rounds "
                   "with the interquartile range. ms/step: medians of process CPU time with 1 thread "
                   "(insensitive to the other jobs on the shared cores; see benchmarks/README.md). 'diffobj' is "
                   "`training.train` on the preset as it is (cosine schedule), '+ adaptive' with "
                   "`loss.adaptive.enabled=true`. Overhead = ratio − 1 + one checkpoint save (wall time, it waits "
                   "on fsync) amortised over the preset's `checkpoint_every`; logging steps (every `log_every`) "
                   "are amortised the same way.")),
    ]
    if ablation_rows:
        tables.append(C.Table(
            "Where toy2d's overhead goes: the real loop with one piece removed at a time",
            ["dtype", "variant", "ms/step", "ratio vs bare [IQR]", "saved vs full loop, % of a bare step [IQR]"],
            ablation_rows,
            notes=("Pieces removed by patching while `training.train` runs (each run with its own bare loop "
                   "stepping inside it); 'saved' is the per-round difference of the ratios vs bare (full − "
                   "variant), median and quartiles over rounds. Seeding and restoring the dropout generators, "
                   "isolated, ms per call: " + ", ".join(f"{k} {v * 1e3:.4f}" for k, v in seeding.items()) +
                   " (torch.manual_seed also seeds the CUDA/XPU/MPS backends lazily; the loop uses DropoutRNG).")))
    C.finish(args, "trainer_overhead", started, tables, results)


if __name__ == "__main__":
    main()
