"""Throughput against the machine's limit: achieved FLOP/s of training and sampling at the presets, as a
fraction of the same run's single-thread 2048² sgemm, and the speed-up of channels-last, fused AdamW,
``torch.compile`` and bf16 autocast over the eager fp32 step.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions,
forward and backward; element-wise work is not counted) for one training step (the preset's objective
through ``WeightedLoss.loss_at``, backward) and for one sampling network evaluation (NFE, no gradients) at
the sampling batch. The machine's limit is measured in the same rounds: a 2048 × 2048 fp32 matrix product
(2·2048³ FLOPs) on one thread. The fraction of sgemm is the median over rounds of
(FLOPs/time of the variant) / (FLOPs/time of sgemm) *within* a round, with its IQR; so is the speed-up.

Training variants (one thread; the preset's batch, inputs and λ drawn once and shared by all variants):
``fp32`` (eager, AdamW ``foreach``), ``fused AdamW`` (``fused=True``, the training loop's optimizer since this
benchmark), ``channels-last`` (network and inputs in ``torch.channels_last``), ``compiled``
(``torch.compile(dynamic=False)`` of network + loss; the backward graph comes from AOTAutograd), ``bf16``
(CPU autocast, as ``run.precision=bf16``).
Dropout is off in every variant, so all compute one function: each variant's per-example losses at the
third step from the same weights (two optimizer steps done) are compared with the eager fp32 ones
(max |Δ| / mean loss), the float tolerance of "loss values unchanged". Sampling: DPM-Solver++(2M) network
evaluations in fp32, channels-last, compiled, bf16 and compiled bf16. Compile times are reported and excluded
from the rates.

Timed with the process's CPU time (one thread; see _common.py), so other jobs on the shared cores do not
inflate the numbers; set ``OMP_WAIT_POLICY=PASSIVE`` on a shared machine. The policy is recorded.
"""

from __future__ import annotations

import copy
import functools
import os
import statistics
import time

import _common as C
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion_objectives import samplers, training

PRESETS = {"toy2d": 4096, "digits": 256, "fashion-mnist": 64}  # preset -> sampling batch
NFE_QUOTED = 32
SIZES = {"toy2d": (10, 5, 8), "digits": (3, 5, 4), "fashion-mnist": (2, 4, 2)}  # train steps, rounds, NFE/block
QUICK = {"toy2d": (1, 1, 2), "digits": (1, 1, 2), "fashion-mnist": (1, 1, 2)}
SGEMM_N, SGEMM_N_QUICK = 2048, 256
BASE = "fp32"


def build(preset: str):
    cfg = training.resolve(preset, overrides=["run.device=cpu"])
    dataset = training.build_dataset(cfg.data, **({"limit": 512} if preset != "toy2d" else {"n": 4096}))
    net_cfg = training.complete_network_params(cfg.network, dataset, cfg.seed)
    return cfg, dataset, net_cfg


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` as counted by FlopCounterMode (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---- the machine's limit: single-thread sgemm ---------------------------------------------------------------

def sgemm_block(a: torch.Tensor, b: torch.Tensor, reps: int = 3) -> float:
    """Seconds per ``a @ b`` (median of ``reps``; the :func:`_common.clock`)."""
    times = []
    for _ in range(reps):
        t0 = C.clock()
        torch.mm(a, b)
        times.append(C.clock() - t0)
    return statistics.median(times)


# ---- training ------------------------------------------------------------------------------------------

def _batches(cfg, dataset, n: int, gen: torch.Generator, image: bool):
    """``n`` fixed training inputs (x, ε, λ, labels) at the preset's batch, shared by every variant."""
    loss_fn = training.build_objective(cfg.loss).loss()
    B = cfg.run.batch_size
    out = []
    for _ in range(n):
        idx = torch.randint(len(dataset), (B,), generator=gen)
        x = dataset.data[idx]
        labels = dataset.labels[idx] if cfg.network.conditional and dataset.labels is not None else None
        lam = loss_fn.schedule.sample(B, gen)
        out.append((x, torch.randn(x.shape, generator=gen), lam, labels))
    return out


class TrainVariant:
    """One way of running the training step: a network copy, its optimizer, a (possibly compiled) loss."""

    def __init__(self, base, loss_fn, *, fused: bool = False, channels_last: bool = False, compiled: bool = False,
                 bf16: bool = False):
        self.net = copy.deepcopy(base).train()
        for m in self.net.modules():  # dropout off: every variant computes the same function
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4, fused=fused)
        self.bf16 = bf16

        def loss(x, eps, lam, labels):
            return loss_fn.loss_at(self.net, x, eps, lam, labels).loss

        self.loss = torch.compile(loss, dynamic=False) if compiled else loss

    def step(self, batch) -> torch.Tensor:
        x, eps, lam, labels = batch
        if self.channels_last:
            x, eps = x.contiguous(memory_format=torch.channels_last), eps.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(x, eps, lam, labels)
        loss.mean().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def block(self, batches, steps: int) -> float:
        """Seconds per step (median over ``steps``)."""
        times = []
        for i in range(steps):
            t0 = C.clock()
            self.step(batches[i % len(batches)])
            times.append(C.clock() - t0)
        return statistics.median(times)


def train_variants(image: bool, quick: bool) -> dict[str, dict]:
    v = {BASE: {}, "fused AdamW": {"fused": True}}
    if image:
        v["channels-last"] = {"channels_last": True}
    if not quick:
        v["compiled"] = {"compiled": True}
    v["bf16"] = {"bf16": True}
    return v


# ---- sampling -------------------------------------------------------------------------------------------

def sample_block(model, param, noise, points: int, bf16: bool) -> float:
    """Seconds per network evaluation of DPM-Solver++(2M) with ``points`` grid points (= evaluations)."""
    grid = samplers.grid_edm(points)
    t0 = C.clock()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        samplers.dpmpp_2m(model, param, noise, grid)
    return (C.clock() - t0) / points


def sample_variants(base, param, noise, points: int, image: bool, quick: bool):
    """name -> block function, and the compile times (excluded from the rates)."""
    model = copy.deepcopy(base).eval().requires_grad_(False)
    out = {BASE: functools.partial(sample_block, model, param, noise, points, False),
           "bf16": functools.partial(sample_block, model, param, noise, points, True)}
    if image:
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out["channels-last"] = functools.partial(sample_block, cl, param,
                                                 noise.contiguous(memory_format=torch.channels_last), points, False)
    compile_s = {}
    if not quick:
        compiled = torch.compile(model, dynamic=False)
        for bf16 in (False, True):
            name = "compiled" + (" bf16" if bf16 else "")
            t0 = time.perf_counter()
            sample_block(compiled, param, noise, 2, bf16)
            compile_s[name] = time.perf_counter() - t0
            out[name] = functools.partial(sample_block, compiled, param, noise, points, bf16)
    return out, compile_s


# ---- one preset -------------------------------------------------------------------------------------------

def fractions(t: C.Timings, name: str, flops: float, sgemm_flops: float) -> dict:
    """Per round: (flops / t_variant) / (sgemm_flops / t_sgemm); median and quartiles over rounds."""
    r = [(flops / a) / (sgemm_flops / b) for a, b in zip(t.times[name], t.times["sgemm"], strict=True)]
    return {"median": statistics.median(r), "q25": C.quantile(r, 0.25), "q75": C.quantile(r, 0.75), "rounds": r}


def measure_training(preset, cfg, dataset, base, loss_fn, sgemm, steps, rounds, quick):
    image = len(dataset.shape) == 3
    gen = torch.Generator().manual_seed(0)
    batches = _batches(cfg, dataset, 3, gen, image)
    B = cfg.run.batch_size
    probe = TrainVariant(base, loss_fn)
    flops = count_flops(lambda: probe.step(batches[0]))
    variants, compile_s, losses = {}, {}, {}
    for name, kw in train_variants(image, quick).items():
        v = TrainVariant(base, loss_fn, **kw)
        t0 = time.perf_counter()
        v.step(batches[0])  # first call compiles (compiled variants)
        if kw.get("compiled"):
            compile_s[name] = time.perf_counter() - t0
        v.step(batches[1])
        losses[name] = v.step(batches[2]).float()  # third step from the same weights: the agreement check
        variants[name] = functools.partial(v.block, batches, steps)
    variants["sgemm"] = sgemm
    ref = losses[BASE]
    agree = {k: float((v - ref).abs().max() / ref.abs().mean()) for k, v in losses.items()}
    print(f"{preset}: training, {rounds} rounds of {steps} steps at batch {B} ({flops / 1e9:.3f} GFLOP/step)",
          flush=True)
    t = C.interleaved(variants, rounds, warmup=1)
    return t, flops, compile_s, agree


def run_preset(preset: str, sample_batch: int, sizes, sgemm, sgemm_flops: float, quick: bool, seed: int):
    steps, rounds, points = sizes[preset]
    cfg, dataset, net_cfg = build(preset)
    B = cfg.run.batch_size
    loss_fn = training.build_objective(cfg.loss).loss()
    base = training.build_network(net_cfg)
    image = len(dataset.shape) == 3
    tt, train_flops, train_compile, agree = measure_training(preset, cfg, dataset, base, loss_fn, sgemm, steps,
                                                             rounds, quick)
    res = {"batch": B, "sample_batch": sample_batch, "parameters": sum(q.numel() for q in base.parameters()),
           "train": {"flops_per_step": train_flops, "timings": tt.as_dict(), "compile_s": train_compile,
                     "loss_max_rel_diff_vs_fp32": agree, "variants": {}}}
    rows = []
    for k in tt.times:
        if k == "sgemm":
            continue
        frac = fractions(tt, k, train_flops, sgemm_flops)
        res["train"]["variants"][k] = {"images_per_s": B / tt.median(k), "gflops": train_flops / tt.median(k) / 1e9,
                                       "sgemm_fraction": frac, "speedup_vs_fp32": tt.ratio(BASE, k)}
        rows.append([preset, B, k, B / tt.median(k), train_flops / tt.median(k) / 1e9, C.fmt_ratio(frac),
                     C.fmt_ratio(tt.ratio(BASE, k)), f"{agree[k]:.1e}"])

    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((sample_batch, *dataset.shape), generator=gen)
    model = copy.deepcopy(base).eval().requires_grad_(False)
    lam = torch.zeros(sample_batch)
    with torch.no_grad():
        nfe_flops = count_flops(lambda: model(noise, lam))
    sv, sample_compile = sample_variants(base, loss_fn.parameterization, noise, points, image, quick)
    sv["sgemm"] = sgemm
    print(f"{preset}: sampling, {rounds} rounds of {points} evaluations at batch {sample_batch}", flush=True)
    st = C.interleaved(sv, rounds, warmup=1)
    res["sample"] = {"flops_per_nfe": nfe_flops, "timings": st.as_dict(), "compile_s": sample_compile,
                     "variants": {}}
    srows = []
    for k in st.times:
        if k == "sgemm":
            continue
        frac = fractions(st, k, nfe_flops, sgemm_flops)
        evals = sample_batch / st.median(k)
        res["sample"]["variants"][k] = {"image_evaluations_per_s": evals, "gflops": nfe_flops / st.median(k) / 1e9,
                                        "sgemm_fraction": frac, "speedup_vs_fp32": st.ratio(BASE, k)}
        srows.append([preset, sample_batch, k, evals, evals / NFE_QUOTED, nfe_flops / st.median(k) / 1e9,
                      C.fmt_ratio(frac), C.fmt_ratio(st.ratio(BASE, k))])
    res["sgemm_gflops_median_train_rounds"] = sgemm_flops / tt.median("sgemm") / 1e9
    return res, rows, srows


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    args = p.parse_args()
    started = C.setup(args)
    sizes = QUICK if args.quick else SIZES
    torch._dynamo.config.cache_size_limit = 64
    policy = os.environ.get("OMP_WAIT_POLICY") or "default"
    n = SGEMM_N_QUICK if args.quick else SGEMM_N
    g = torch.Generator().manual_seed(args.seed)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    sgemm_flops = 2.0 * n**3
    sgemm = functools.partial(sgemm_block, a, b)
    results: dict = {"presets": {}, "nfe_quoted": NFE_QUOTED, "omp_wait_policy": policy, "sgemm_n": n,
                     "sgemm_flops": sgemm_flops}
    train_rows, sample_rows = [], []
    for preset, sample_batch in PRESETS.items():
        if preset in args.presets:
            res, rows, srows = run_preset(preset, sample_batch, sizes, sgemm, sgemm_flops,
                                          args.quick or args.no_compile, args.seed)
            results["presets"][preset] = res
            train_rows += rows
            sample_rows += srows
    sg = ", ".join(f"{k} {r['sgemm_gflops_median_train_rounds']:.1f}" for k, r in results["presets"].items())
    tables = [
        C.Table(f"Training step (loss + backward + AdamW) at the preset batch: achieved FLOP/s and fraction of "
                f"single-thread {n}² sgemm, OpenMP wait policy {policy}",
                ["preset", "batch", "variant", "images/s", "GFLOP/s", "fraction of sgemm [IQR]",
                 "speed-up vs fp32 [IQR]", "loss max rel. diff vs fp32"], train_rows,
                notes=f"sgemm GFLOP/s (median of the training rounds): {sg}. Fractions and speed-ups: median over "
                      "interleaved rounds of the within-round ratio. Loss difference: per-example losses at "
                      "the third step from the same weights, dropout off in every variant. Compile times: in the "
                      "JSON."),
        C.Table(f"Sampling (DPM-Solver++(2M) network evaluations): achieved FLOP/s and fraction of sgemm, "
                f"OpenMP wait policy {policy}",
                ["preset", "batch", "variant", "image-evaluations/s", f"images/s at {NFE_QUOTED} NFE", "GFLOP/s",
                 "fraction of sgemm [IQR]", "speed-up vs fp32 [IQR]"], sample_rows),
    ]
    C.finish(args, "throughput", started, tables, results)


if __name__ == "__main__":
    main()
