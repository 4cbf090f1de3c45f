"""``diffobj train``: train a denoiser with any objective (a preset plus overrides; see docs/training.md).

The config is resolved as: --preset (default toy2d) → --config YAML → flags → --set KEY=VALUE, in that
order. Rerunning the same command in the same --out resumes from the newest complete checkpoint. Under
``torchrun --nproc_per_node=N -m diffusion_objectives train ...`` it trains with DDP (gloo on CPU, NCCL
on CUDA); --batch-size is the global batch.

--out must be new, empty or a run directory (anything else is refused, untouched), and is locked while
training: a second writer exits 2 naming the holder. --resume PATH with a checkpoint older than the newest
one in --out is refused; branch into a new run with --resume PATH --out NEW. Unreadable checkpoints are
moved into RUN/checkpoints/corrupt/, never deleted. Outside a terminal a progress line (step/total, loss,
images/s, ETA) is printed every 60 s (--progress-every). Rerunning a finished run says so and changes nothing.

Exit codes: 0 finished, already complete, or stopped by SIGTERM/SIGINT after saving a checkpoint; 1 training
failed (non-finite loss); 2 bad option, config, dataset, checkpoint or --out, or --out in use; 130 a second
Ctrl-C during the graceful stop (no new checkpoint; the last one is intact).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from ..errors import OptionError
from ..training import build, config, distributed, loop, precision, rundir
from ..training.config import preset_names
from ._common import check_output_dir

EXAMPLES = """examples:
  diffobj train --preset toy2d --out runs/toy                       2-D mixture, minutes on a CPU
  diffobj train --preset digits --objective sigmoid --out runs/digits
  diffobj train --preset digits --objective sigmoid --set loss.weighting.bias=-2 --out runs/digits-b-2
  diffobj train --preset digits --objective edm-monotonic --set loss.adaptive.enabled=true --out runs/x
  diffobj train --preset fashion-mnist --steps 20000 --out runs/fmnist   bf16 autocast where native
  diffobj train --preset digits --dry-run                             print the resolved config
  diffobj train --config my.yaml --out runs/y --resume runs/x/checkpoints/step-00001000
  torchrun --nproc_per_node=2 -m diffusion_objectives train --preset toy2d --out runs/ddp

  --set takes any config key (see --dry-run); below data, network and loss.{weighting,schedule,
  parameterization} other keys are registry parameters: --set network.hidden=64 --set data.n=10000.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser("train", help="train a model (presets, YAML configs, --set overrides, resume, DDP)",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, metavar="NAME",
                   help=f"named preset: {', '.join(preset_names())} (default: toy2d)")
    p.add_argument("--config", default=None, metavar="YAML", help="YAML config applied on top of the preset")
    p.add_argument("--objective", default=None, metavar="NAME",
                   help="objective preset (sigmoid, edm-monotonic, elbo, edm, v-cosine, ...; see "
                        "`diffobj weightings`)")
    p.add_argument("--out", default=None, metavar="RUN", help="run directory (required unless --dry-run)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size in images")
    p.add_argument("--seed", type=int, default=None, help="seed of initialisation, data order and noise")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="STEPS",
                   help="checkpoint interval in steps (0: only at the end)")
    p.add_argument("--resume", default="auto", metavar="{auto,none,PATH}",
                   help="auto (default): continue from the newest complete checkpoint in --out; none: start "
                        "fresh (refused if --out has checkpoints); PATH: a checkpoint or run directory")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even if data, network, loss or batch size changed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. loss.weighting.bias=2 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--no-progress", action="store_true", help="no progress bar and no progress lines")
    shown.add_argument("--progress-every", type=float, default=None, metavar="SECONDS",
                       help="a progress line (step/total, loss, images/s, ETA) every SECONDS instead of the bar "
                            "(default: the bar on a terminal, else a line every 60 s)")
    p.set_defaults(run=run)


def _resolve_precision_here(cfg) -> None:
    """Print how ``run.precision`` resolves on this machine and put the result into ``cfg`` (as training does)."""

    where = ""
    try:
        device = distributed.pick_device(cfg.run.device)
    except OptionError:
        device, where = distributed.pick_device("cpu"), f"; run.device={cfg.run.device} is not available here"
    p = precision.resolve_precision(cfg.run.precision, device)
    print(f"# precision on {device}: {p.name} (run.precision={p.requested}: {p.reason}{where})")
    if p.warning:
        print(f"# warning: {p.warning}")
    cfg.run.precision = p.name


def run(args: argparse.Namespace) -> int:

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    try:
        overrides = config.parse_overrides(args.overrides)
    except OptionError as exc:
        raise OptionError(f"--set: {exc}") from None
    cfg = config.resolve(args.preset or "toy2d", args.config, objective=args.objective, steps=args.steps,
                         batch_size=args.batch_size, seed=args.seed, checkpoint_every=args.checkpoint_every,
                         overrides=overrides, world_size=world)
    build.check_names(cfg)
    if args.dry_run:
        obj = build.build_objective(cfg.loss)
        print(f"# objective: {obj.name}: w = {obj.weighting!r}, p = {obj.schedule!r}, "
              f"{obj.parameterization.name}-prediction; monotone: {obj.is_monotonic()}")
        _resolve_precision_here(cfg)
        print(config.dump_yaml(cfg), end="")
        return 0
    if args.out is None:
        raise OptionError("--out RUN is required (the run directory), unless --dry-run")
    if args.out.strip():  # a folder that is not a run is refused before anything (even a probe) touches it
        rundir.check_writable_run_dir(args.out)
    check_output_dir(args.out, "--out")
    if args.progress_every is not None and not (math.isfinite(args.progress_every) and args.progress_every > 0):
        raise OptionError(f"--progress-every: {args.progress_every} is not a positive number of seconds")
    if args.resume not in ("auto", "none") and not os.path.exists(args.resume):
        raise OptionError(f"--resume: {args.resume!r} does not exist (use auto, none or a checkpoint path)")
    try:
        with distributed.session(cfg.run.device) as d:
            summary = loop.train(cfg, args.out, resume=args.resume,
                                 override_resume_check=args.allow_config_change, dist=d,
                                 progress=False if args.no_progress else args.progress_every,
                                 echo=not sys.stderr.isatty())
    except loop.TrainingError as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"diffobj train: error: {exc}", file=sys.stderr)
        return 1
    except loop.TrainingInterrupted as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"diffobj train: {exc}", file=sys.stderr)
        return 130
    if not d.is_main:
        return 0
    if summary.get("already_complete"):
        print(f"already complete at step {summary['step']}: nothing was trained and nothing written "
              f"(checkpoint {summary['checkpoint']}); raise --steps to train longer")
    else:
        print(f"{summary['status']} at step {summary['step']}; checkpoint {summary['checkpoint']}")
    return 0
