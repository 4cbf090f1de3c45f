"""Train a diffusers UNet2DModel with KG23's sigmoid weighting and adaptive noise schedule in your own loop.

The loss (``WeightedLoss``) and the schedule (``AdaptiveSchedule``) are drop-ins: the model is a plain diffusers
``UNet2DModel`` behind the ``diffusers`` adapter (its timestep from a scheduler's ᾱ table), and the loop is an
ordinary Hugging Face ``accelerate`` loop. The one thing distributed training adds is that every process must
hold the same adaptive schedule: each step, the per-bin statistics of w(λ)‖ε̂ − ε‖² from all processes are summed
(``accelerator.reduce``) before ``update_from_statistics``, as ``diffobj train`` does with its all-reduce.

Run on 2 CPU processes (accelerate's ``--cpu`` alone starts one process unless MPI is set up; its torchrun
launcher with ``Accelerator(cpu=True)`` is the CPU multi-process mode, gloo backend)::

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        examples/accelerate_train.py --steps 100 --out runs/accelerate

or on one process: ``python examples/accelerate_train.py --steps 100``. Each process writes
``OUT/state-rank{R}.pt`` (its parameters and adaptive-schedule state) so the processes can be compared.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DModel

from diffusion_objectives import AdaptiveSchedule, WeightedLoss, adapters, data, weightings
from diffusion_objectives.networks.diffusers_unet import scheduler_config


def build_model(seed: int) -> torch.nn.Module:
    """A small UNet2DModel for 8 × 8 digits, called as ``model(z, logsnr)`` through the ``diffusers`` adapter on
    a table linear in λ over [−15, 13] (any diffusers VP scheduler works; this one covers the schedule below)."""
    torch.manual_seed(seed)  # the same initial weights in every process
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    config = scheduler_config(-15.0, 13.0, 1000)
    scheduler = DDPMScheduler(num_train_timesteps=config["num_train_timesteps"], trained_betas=config["trained_betas"])
    return adapters.wrap(unet, "diffusers", scheduler=scheduler)  # prediction_type epsilon


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=32, help="global batch (split over the processes)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/accelerate")
    args = p.parse_args()

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by {world} processes")
    dataset = data.get("digits")  # 1438 training images, [1, 8, 8] in [−1, 1]
    model = build_model(args.seed)
    schedule = AdaptiveSchedule(-15.0, 15.0, bins=50, decay=0.9)
    loss_fn = WeightedLoss(weightings.get("sigmoid", bias=-2.0), schedule, model.parameterization)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    model, opt = accelerator.prepare(model, opt)
    local = args.batch_size // world
    for step in range(args.steps):
        # the global batch from a generator every process seeds alike; this process takes its slice
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        idx = torch.randint(len(dataset), (args.batch_size,), generator=g)[rank * local:(rank + 1) * local]
        x = dataset.data[idx]
        noise_gen = torch.Generator().manual_seed((args.seed + 1) * 1_000_000_007 + step * 1024 + rank)  # per process
        out = loss_fn(model, x, generator=noise_gen)
        accelerator.backward(out.loss.mean())  # DDP averages the gradients over the processes
        opt.step()
        opt.zero_grad(set_to_none=True)
        # the adaptive schedule: per-bin sums and counts of w(λ)‖ε̂ − ε‖², summed over all processes
        sums, counts = schedule.statistics(out.logsnr, out.weighted_eps_mse)
        total = accelerator.reduce(torch.cat([sums, counts]), reduction="sum")
        schedule.update_from_statistics(total[:schedule.bins], total[schedule.bins:])
        if accelerator.is_main_process and (step + 1) % 25 == 0:
            print(f"step {step + 1}: loss {float(out.loss.detach().mean()):.4f}", flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = torch.cat([q.detach().reshape(-1) for q in accelerator.unwrap_model(model).parameters()])
    torch.save({"params": params, "adaptive": schedule.state_dict(), "world": world}, out_dir / f"state-rank{rank}.pt")
    accelerator.wait_for_everyone()
    # DDP's reducer sits in reference cycles that keep gloo's threads alive past the end of the process group:
    # collect them first, or a process can hang or abort at exit
    del model, opt
    gc.collect()
    accelerator.end_training()  # also ends the process group (after a barrier)


if __name__ == "__main__":
    main()
