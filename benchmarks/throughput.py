"""Throughput: training and sampling images/s at the presets, fp32 vs bf16, 1 vs 2 threads, and
``torch.compile`` for sampling.

Training: one step of the preset (its objective through ``WeightedLoss``, backward, AdamW) at the preset's
batch size; bf16 is CPU autocast, as ``run.bf16`` does. Sampling: network evaluations inside
DPM-Solver++(2M) (``samplers.dpmpp_2m``, EMA-free network in eval mode, no gradients) at a sampling batch;
images/s is quoted at 32 evaluations per image. ``torch.compile`` wraps the network (inductor, default
mode, ``dynamic=False``); its compile time is reported separately and excluded from the rates. Every variant of a preset
runs interleaved in the same rounds; the thread count is set with ``torch.set_num_threads`` before each
block (the machine has 2 cores, shared with other jobs).

OpenMP's wait policy matters on a shared machine: with the default (threads spin before sleeping), two
threads on cores that other jobs also use stall each other; ``OMP_WAIT_POLICY=PASSIVE`` (set before the
process starts) avoids that. The result file is ``throughput.json`` under the default policy and
``throughput-omp-passive.json`` (etc.) when the variable is set. A training block stops after ``--block-s``
seconds once it has timed one step, so a pathological variant cannot stall the run.
"""

from __future__ import annotations

import copy
import functools
import os
import statistics
import time

import _common as C
import torch

from diffusion_objectives import samplers, training

PRESETS = {"toy2d": 4096, "digits": 256, "fashion-mnist": 64}  # preset -> sampling batch
NFE_QUOTED = 32
SIZES = {"toy2d": (10, 4, 8), "digits": (3, 3, 4), "fashion-mnist": (2, 3, 2)}  # train steps, rounds, grid pts
QUICK = {"toy2d": (1, 1, 2), "digits": (1, 1, 2), "fashion-mnist": (1, 1, 2)}


def build(preset: str):
    cfg = training.resolve(preset, overrides=["run.device=cpu"])
    dataset = training.build_dataset(cfg.data, **({"limit": 512} if preset != "toy2d" else {"n": 4096}))
    net_cfg = training.complete_network_params(cfg.network, dataset, cfg.seed)
    return cfg, dataset, net_cfg


def train_block(net, opt, loss_fn, images, batch: int, steps: int, bf16: bool, threads: int, gen,
                max_s: float) -> float:
    """Seconds per training step (median over ``steps``, or over those done within ``max_s``)."""
    torch.set_num_threads(threads)
    times = []
    for _ in range(steps):
        if sum(times) > max_s:
            break
        x = images[torch.randint(len(images), (batch,), generator=gen)]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = loss_fn(net, x, gen)
        out.loss.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sample_block(model, param, noise, points: int, bf16: bool, threads: int) -> float:
    """Seconds per network evaluation of DPM-Solver++(2M) with ``points`` grid points (= evaluations)."""
    torch.set_num_threads(threads)
    grid = samplers.grid_edm(points)
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        samplers.dpmpp_2m(model, param, noise, grid)
    return (time.perf_counter() - t0) / points


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--block-s", type=float, default=20.0, help="time cap of a training block (default 20 s)")
    args = p.parse_args()
    started = C.setup(args)
    sizes = QUICK if args.quick else SIZES
    torch._dynamo.config.cache_size_limit = 64  # one compiled graph per (preset, dtype)
    policy = os.environ.get("OMP_WAIT_POLICY")
    results: dict = {"presets": {}, "nfe_quoted": NFE_QUOTED, "omp_wait_policy": policy or "default"}
    train_rows, sample_rows = [], []
    variants_tb = [(bf16, t) for bf16 in (False, True) for t in (1, 2)]
    for preset, sample_batch in PRESETS.items():
        if preset not in args.presets:
            continue
        steps, rounds, points = sizes[preset]
        cfg, dataset, net_cfg = build(preset)
        B = cfg.run.batch_size
        loss_fn = training.build_objective(cfg.loss).loss()
        param = loss_fn.parameterization
        gen = torch.Generator().manual_seed(args.seed)
        base = training.build_network(net_cfg)
        res = {"batch": B, "sample_batch": sample_batch, "parameters": sum(q.numel() for q in base.parameters())}

        # -- training --------------------------------------------------------------------------------------
        train_v = {}
        for bf16, t in variants_tb:
            net = copy.deepcopy(base).train()
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            train_v[f"{'bf16' if bf16 else 'fp32'}, {t} thr"] = functools.partial(
                train_block, net, opt, loss_fn, dataset.data, B, steps, bf16, t, gen, args.block_s)
        print(f"{preset}: training, {rounds} rounds of {steps} steps at batch {B}")
        tt = C.interleaved(train_v, rounds, warmup=1)
        ref = "fp32, 1 thr"
        res["train"] = {"timings": tt.as_dict(), "ratios_vs_fp32_1thr": {k: tt.ratio(ref, k) for k in train_v}}
        for k in train_v:
            train_rows.append([preset, B, k, B / tt.median(k), C.fmt_ratio(tt.ratio(ref, k))])

        # -- sampling ----------------------------------------------------------------------------------------
        model = copy.deepcopy(base).eval().requires_grad_(False)
        noise = torch.randn((sample_batch, *dataset.shape), generator=gen)
        sample_v = {f"{'bf16' if bf16 else 'fp32'}, {t} thr": functools.partial(
            sample_block, model, param, noise, points, bf16, t) for bf16, t in variants_tb}
        compile_info = {}
        if not args.no_compile:
            try:
                # dynamic=False: after the same U-Net class ran at another resolution, dynamo's automatic
                # dynamic shapes recompile it with symbolic H, W, which inductor fails to lower here
                # (fashion-mnist after digits: LoweringException: ValueRangeError: Invalid ranges [0:-1])
                compiled = torch.compile(model, dynamic=False)
                for bf16 in (False, True):
                    t0 = time.perf_counter()
                    sample_block(compiled, param, noise, 2, bf16, args.threads)  # compiles (both λ-shapes alike)
                    compile_info[f"{'bf16' if bf16 else 'fp32'}_compile_s"] = time.perf_counter() - t0
                for bf16, t in variants_tb:
                    sample_v[f"compiled {'bf16' if bf16 else 'fp32'}, {t} thr"] = functools.partial(
                        sample_block, compiled, param, noise, points, bf16, t)
            except Exception as exc:  # report, do not fail: the error is the result
                compile_info["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                print(f"torch.compile failed: {compile_info['error']}")
        print(f"{preset}: sampling, {rounds} rounds of {points} evaluations at batch {sample_batch}")
        st = C.interleaved(sample_v, rounds, warmup=1)
        res["sample"] = {"timings": st.as_dict(), "compile": compile_info,
                         "ratios_vs_fp32_1thr": {k: st.ratio(ref, k) for k in sample_v}}
        for k in sample_v:
            evals = sample_batch / st.median(k)
            sample_rows.append([preset, sample_batch, k, evals, evals / NFE_QUOTED, C.fmt_ratio(st.ratio(ref, k))])
        if "error" in compile_info:
            sample_rows.append([preset, sample_batch, "compiled", "failed", compile_info["error"], ""])
        results["presets"][preset] = res
    torch.set_num_threads(args.threads)
    compile_note = "; ".join(
        f"{k}: " + ", ".join(f"{n} {v:.0f} s" if isinstance(v, float) else f"{n} {v}"
                             for n, v in r["sample"]["compile"].items())
        for k, r in results["presets"].items() if r["sample"]["compile"])
    tables = [
        C.Table(f"Throughput: training (loss + backward + AdamW) at the preset batch, OpenMP wait policy "
                f"{policy or 'default'}",
                ["preset", "batch", "variant", "images/s", "speed-up vs fp32, 1 thread [IQR]"], train_rows,
                notes="Speed-up: median over interleaved rounds of time(fp32, 1 thread)/time(variant). images/s: "
                      "medians, noisy (shared machine)."),
        C.Table(f"Throughput: sampling (DPM-Solver++(2M) network evaluations), images/s at {NFE_QUOTED} NFE, "
                f"OpenMP wait policy {policy or 'default'}",
                ["preset", "batch", "variant", "image-evaluations/s", f"images/s at {NFE_QUOTED} NFE",
                 "speed-up vs fp32, 1 thread [IQR]"], sample_rows,
                notes=f"torch.compile (inductor) compile times, excluded from the rates: {compile_note or 'n/a'}."),
    ]
    C.finish(args, "throughput" + (f"-omp-{policy.lower()}" if policy else ""), started, tables, results,
             clock_label="wall time")


if __name__ == "__main__":
    main()
