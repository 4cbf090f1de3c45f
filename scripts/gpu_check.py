"""GPU check: the CUDA, bf16 and NCCL paths of diffusion_objectives on one GPU, in under 5 minutes.

Checks (each a row of the printed table; exit status 1 if any fails, 2 without a CUDA device):

1. ``cpu-vs-cuda-loss``: per-example losses of the ``fashion-mnist`` preset (its U-Net and objective) on one
   fixed batch, fp32 with TF32 off, on the CPU and on the GPU: max |Δ| / mean loss ≤ ``LOSS_RTOL`` (1e-4);
   also the gradient norms.
2. ``bf16-train``: ``--steps`` (300) steps of the ``fashion-mnist`` preset through ``training.train`` with
   ``run.precision=auto`` (which must resolve to bf16 on a bf16 GPU): finite loss, images/s and achieved
   FLOP/s (FLOPs of one step from ``torch.utils.flop_counter.FlopCounterMode``, as benchmarks/throughput.py).
3. ``resume-after-kill``: the ``digits`` preset in a worker process with deterministic algorithms: train to
   step k (past a checkpoint), SIGKILL, resume with the same command to N steps; the parameters (sha256 of
   the state dict) and every logged loss must equal those of an uninterrupted run bit for bit.
4. ``sample`` and 5. ``elbo``: the run of check 3 loaded on the GPU and on the CPU: Heun samples for the same
   seeds agree within ``SAMPLE_ATOL`` (1e-3, images in [−1, 1]); the −ELBO (bits/dim) of the same test
   examples agrees within 4 combined standard errors (the λ draws differ between devices).
6. ``torchrun-nccl``: ``torchrun --standalone --nproc_per_node=1 -m diffusion_objectives train`` on the GPU
   (the NCCL process group) finishes with world size 1.

``--device cpu`` runs the same checks on the CPU with tiny sizes (gloo instead of NCCL): a dry run of the
script's logic for tests and machines without a GPU. Run it as ``scripts/gpu-check`` (``--json PATH`` also
writes the table as JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion_objectives import training
from diffusion_objectives.evaluation import protocol as evaluation

LOSS_RTOL = 1e-4
SAMPLE_ATOL = 1e-3
ELBO_Z = 4.0
CHECKS = ("cpu-vs-cuda-loss", "bf16-train", "resume-after-kill", "sample", "elbo", "torchrun-nccl")
NO_DEVICE_EXIT = 2

# tiny sizes of the --device cpu dry run (numbers meaningless, logic exercised)
TINY_FASHION = ["data.limit=256", "network.channels=4", "network.channel_mult=[1]", "network.num_res_blocks=1",
                "network.attn_resolutions=[]"]
TINY_DIGITS = ["network.channels=4", "network.channel_mult=[1]", "network.attn_resolutions=[]"]
COMMON = ["run.sample_every=0", "optim.warmup_images=0"]


@dataclass
class Row:
    check: str
    ok: bool
    measured: str
    criterion: str
    seconds: float = 0.0


@dataclass
class Sizes:
    batch: int
    train_steps: int
    resume_steps: int
    resume_every: int
    kill_after: int
    samples: int
    sample_steps: int
    elbo_examples: int
    elbo_samples: int


FULL = Sizes(batch=64, train_steps=300, resume_steps=60, resume_every=20, kill_after=30, samples=64,
             sample_steps=16, elbo_examples=64, elbo_samples=32)
TINY = Sizes(batch=8, train_steps=3, resume_steps=6, resume_every=2, kill_after=3, samples=4, sample_steps=4,
             elbo_examples=8, elbo_samples=8)


def _fashion_cfg(device: str, tiny: bool, extra: list[str]) -> training.TrainConfig:
    return training.resolve("fashion-mnist", overrides=[f"run.device={device}", *COMMON,
                                                        *(TINY_FASHION if tiny else []), *extra])


# ---- 1. CPU vs CUDA loss ---------------------------------------------------------------------------------

def _loss_and_grad(net, loss_fn, batch, device) -> tuple[torch.Tensor, float]:
    net = net.to(device)
    x, eps, lam, labels = (t.to(device) for t in batch)
    loss = loss_fn.loss_at(net, x, eps, lam, labels).loss
    net.zero_grad(set_to_none=True)
    loss.mean().backward()
    grad = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in net.parameters() if p.grad is not None))
    return loss.detach().double().cpu(), float(grad)


def check_loss(device: str, sizes: Sizes, tiny: bool) -> Row:
    cfg = _fashion_cfg(device, tiny, [])
    dataset = training.build_dataset(cfg.data)
    net_cfg = training.complete_network_params(cfg.network, dataset, cfg.seed)
    net = training.build_network(net_cfg).eval()  # eval: no dropout, so both devices compute one function
    loss_fn = training.build_objective(cfg.loss).loss()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(len(dataset), (sizes.batch,), generator=g)
    batch = (dataset.data[idx], torch.randn((sizes.batch, *dataset.shape), generator=g),
             loss_fn.schedule.sample(sizes.batch, g), dataset.labels[idx])
    cpu_loss, cpu_grad = _loss_and_grad(net, loss_fn, batch, "cpu")
    dev_loss, dev_grad = _loss_and_grad(net, loss_fn, batch, device)
    rel = float((dev_loss - cpu_loss).abs().max() / cpu_loss.abs().mean())
    grad_rel = abs(dev_grad - cpu_grad) / cpu_grad
    ok = rel <= LOSS_RTOL and grad_rel <= LOSS_RTOL
    return Row("cpu-vs-cuda-loss", ok, f"loss max rel diff {rel:.2e}, grad-norm rel diff {grad_rel:.2e}",
               f"both <= {LOSS_RTOL:g} (fp32, TF32 off)")


# ---- 2. bf16 training throughput ---------------------------------------------------------------------------

def train_step_flops(cfg: training.TrainConfig, device: str) -> int:
    """FLOPs of one training step (forward + backward) of ``cfg`` at its batch, counted by FlopCounterMode."""
    dataset = training.build_dataset(cfg.data)
    net = training.build_network(training.complete_network_params(cfg.network, dataset, cfg.seed)).to(device)
    loss_fn = training.build_objective(cfg.loss).loss()
    B = cfg.run.batch_size
    x = dataset.data[:B].to(device)
    lam = loss_fn.schedule.sample(B, torch.Generator().manual_seed(0)).to(device)
    with FlopCounterMode(display=False) as counter:
        loss_fn.loss_at(net, x, torch.randn_like(x), lam, dataset.labels[:B].to(device)).loss.mean().backward()
    return int(counter.get_total_flops())


def check_bf16_train(device: str, sizes: Sizes, tiny: bool, work: Path) -> Row:
    log_every = max(1, sizes.train_steps // 3)
    cfg = _fashion_cfg(device, tiny, [f"run.steps={sizes.train_steps}", f"run.batch_size={sizes.batch}",
                                      "run.checkpoint_every=0", f"run.log_every={log_every}", "run.precision=auto"])
    summary = training.train(cfg, work / "bf16-train", resume="none", progress=False, handle_signals=False)
    flops = train_step_flops(cfg, device)
    steps_per_s = summary.get("steps_per_s") or float("nan")
    want_bf16 = device.startswith("cuda")
    precision = summary["precision"]["name"]
    loss = summary.get("loss")
    ok = (summary["status"] == "finished" and loss is not None and math.isfinite(loss)
          and (precision == "bf16" or not want_bf16))
    return Row("bf16-train", ok,
               f"{summary['step']} steps, precision {precision}, loss {loss:.4g}, "
               f"{summary.get('images_per_s') or float('nan'):.0f} images/s, "
               f"{flops * steps_per_s / 1e12:.2f} TFLOP/s achieved ({flops / 1e9:.1f} GFLOP/step)",
               "finished, finite loss" + (", auto -> bf16" if want_bf16 else ""))


# ---- 3. resume after SIGKILL ---------------------------------------------------------------------------------

def _worker_cmd(run_dir: Path, device: str, tiny: bool, sizes: Sizes, pause_after: int | None) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(run_dir), "--device", device]
    if tiny:
        cmd.append("--tiny")
    if pause_after is not None:
        cmd += ["--pause-after", str(pause_after)]
    return cmd


def worker(run_dir: str, device: str, tiny: bool, pause_after: int | None) -> int:
    """Train the resume check's run in this process (deterministic algorithms); with ``pause_after`` k, write
    RUN/paused after step k and wait to be killed."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    sizes = TINY if tiny else FULL
    cfg = training.resolve("digits", overrides=[
        f"run.device={device}", *COMMON, *(TINY_DIGITS if tiny else []), f"run.steps={sizes.resume_steps}",
        f"run.batch_size={sizes.batch}", f"run.checkpoint_every={sizes.resume_every}", "run.log_every=1"])

    def on_step(step: int) -> None:
        if step == pause_after:
            (Path(run_dir) / "paused").write_text(str(step))
            time.sleep(3600)

    summary = training.train(cfg, run_dir, resume="auto", progress=False, handle_signals=False, on_step=on_step)
    print(json.dumps(summary))
    return 0


def _run_worker(cmd: list[str], timeout: float) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "stats.jsonl").read_text().splitlines())}


def check_resume(device: str, sizes: Sizes, tiny: bool, work: Path) -> Row:
    killed, whole = work / "resume-killed", work / "resume-whole"
    proc = subprocess.Popen(_worker_cmd(killed, device, tiny, sizes, sizes.kill_after), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (killed / "paused").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            return Row("resume-after-kill", False, f"worker did not reach step {sizes.kill_after}: "
                       f"{(proc.stderr.read() if proc.stderr else '')[-500:]}", "")
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (killed / "paused").unlink()
    resumed = _run_worker(_worker_cmd(killed, device, tiny, sizes, None), timeout=240)
    reference = _run_worker(_worker_cmd(whole, device, tiny, sizes, None), timeout=240)
    same_params = resumed["param_digests"] == reference["param_digests"]
    a, b = _losses(killed), _losses(whole)
    same_losses = a == b
    ok = same_params and same_losses and resumed["resumed_from"] is not None and resumed["step"] == sizes.resume_steps
    return Row("resume-after-kill", ok,
               f"killed after step {sizes.kill_after}, resumed from {Path(resumed['resumed_from'] or '-').name} "
               f"to {resumed['step']}: parameters {'equal' if same_params else 'DIFFER'}, "
               f"{len(a)} logged losses {'equal' if same_losses else 'DIFFER'}",
               "bit-exact vs an uninterrupted run (deterministic algorithms)")


# ---- 4./5. sampling and ELBO -----------------------------------------------------------------------------------

def check_sample(device: str, sizes: Sizes, work: Path) -> Row:
    settings = evaluation.SampleSettings("heun", sizes.sample_steps)
    seeds = range(sizes.samples)
    x_dev, _ = evaluation.generate(training.load_for_inference(work / "resume-whole", device=device), seeds, settings)
    x_cpu, _ = evaluation.generate(training.load_for_inference(work / "resume-whole", device="cpu"), seeds, settings)
    diff = float((x_dev - x_cpu).abs().max())
    ok = bool(torch.isfinite(x_dev).all()) and diff <= SAMPLE_ATOL
    return Row("sample", ok, f"{sizes.samples} Heun samples ({2 * sizes.sample_steps - 1} NFE): max abs. "
               f"difference from the CPU {diff:.2e}", f"finite, <= {SAMPLE_ATOL:g}")


def check_elbo(device: str, sizes: Sizes, work: Path) -> Row:
    out = {}
    for dev in (device, "cpu"):
        loaded = training.load_for_inference(work / "resume-whole", device=dev)
        x, labels, levels = evaluation.elbo_examples(loaded, "test", sizes.elbo_examples)
        out[dev] = evaluation.elbo_summary(loaded, x, levels, samples=sizes.elbo_samples, labels=labels)[0]
    a, b = out[device], out["cpu"]
    z = abs(a["value"] - b["value"]) / math.sqrt(a["mc_se"] ** 2 + b["mc_se"] ** 2)
    ok = math.isfinite(a["value"]) and z <= ELBO_Z
    return Row("elbo", ok, f"{a['value']:.4f} ± {a['mc_se']:.4f} vs CPU {b['value']:.4f} ± {b['mc_se']:.4f} "
               f"{a['unit']} ({z:.2f} SE)", f"<= {ELBO_Z:g} combined Monte-Carlo SE")


# ---- 6. torchrun ------------------------------------------------------------------------------------------------

def check_torchrun(device: str, tiny: bool, work: Path) -> Row:
    out = work / "torchrun"
    sets = [f"run.device={device}", *COMMON, *(TINY_DIGITS if tiny else []), "run.checkpoint_every=0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
           "diffusion_objectives", "train", "--preset", "digits", "--steps", "3" if tiny else "20", "--batch-size",
           "8" if tiny else "128", "--out", str(out), "--no-progress", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    backend = "nccl" if device.startswith("cuda") else "gloo"
    ok = proc.returncode == 0 and summary.get("status") == "finished" and summary.get("world_size") == 1
    detail = (f"exit {proc.returncode}, {summary.get('status')}, world size {summary.get('world_size')}"
              + ("" if ok else f": {proc.stderr[-400:]}"))
    return Row("torchrun-nccl", ok, detail, f"finished ({backend} process group)")


# ---- driver -------------------------------------------------------------------------------------------------------

def run_checks(device: str, only: list[str], work: Path, tiny: bool) -> list[Row]:
    sizes = TINY if tiny else FULL
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons with the CPU (bf16 autocast unaffected)
    torch.backends.cudnn.allow_tf32 = False
    table: dict[str, Callable[[], Row]] = {
        "cpu-vs-cuda-loss": lambda: check_loss(device, sizes, tiny),
        "bf16-train": lambda: check_bf16_train(device, sizes, tiny, work),
        "resume-after-kill": lambda: check_resume(device, sizes, tiny, work),
        "sample": lambda: check_sample(device, sizes, work),
        "elbo": lambda: check_elbo(device, sizes, work),
        "torchrun-nccl": lambda: check_torchrun(device, tiny, work),
    }
    rows = []
    for name in only:
        if name in ("sample", "elbo") and not (work / "resume-whole" / "summary.json").exists():
            rows.append(Row(name, False, "needs the run of resume-after-kill", "run resume-after-kill first"))
            continue
        t0 = time.perf_counter()
        try:
            row = table[name]()
        except Exception as exc:  # a crash is a failed check, reported in the table
            row = Row(name, False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}", "")
        row.seconds = time.perf_counter() - t0
        rows.append(row)
        print(f"  {name}: {'ok' if row.ok else 'FAILED'} ({row.seconds:.0f} s)", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| check | result | measured | criterion | s |", "|---|---|---|---|---|"]
    lines += [f"| {r.check} | {'ok' if r.ok else 'FAILED'} | {r.measured} | {r.criterion} | {r.seconds:.0f} |"
              for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="checks: " + ", ".join(CHECKS))
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (a tiny dry run, gloo)")
    p.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks to run (default: all)")
    p.add_argument("--work", type=Path, default=None, help="directory for the runs (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: the resume check's trainer
    p.add_argument("--pause-after", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in only if c not in CHECKS]
    if unknown:
        p.error(f"unknown check(s) {', '.join(unknown)}; choose from: {', '.join(CHECKS)}")
    if args.device != "cpu" and not (args.device == "cuda" or args.device.startswith("cuda:")):
        p.error(f"--device must be cuda, cuda:N or cpu, got {args.device!r}")
    args.only = only
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.device, args.tiny, args.pause_after)
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); nothing "
              "checked. Run it on a machine with a GPU and a CUDA build of torch, or --device cpu for a dry run.",
              file=sys.stderr)
        return NO_DEVICE_EXIT
    tiny = args.device == "cpu"
    name = torch.cuda.get_device_name(args.device) if not tiny else "cpu (dry run, tiny sizes)"
    print(f"gpu-check on {name}, torch {torch.__version__}", file=sys.stderr)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run_checks(args.device, args.only, work, tiny)
    print(markdown(rows))
    total = time.perf_counter() - t0
    print(f"\n{sum(r.ok for r in rows)}/{len(rows)} checks passed in {total:.0f} s on {name}")
    if args.json is not None:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "seconds": total,
                                         "rows": [asdict(r) for r in rows]}, indent=1) + "\n")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
