"""``diffobj export``: write a trained run as a standard diffusers pipeline directory.

``--to diffusers`` writes ``model_index.json``, ``unet/`` and ``scheduler/`` (a ``DDIMPipeline``) that diffusers
alone loads with ``DiffusionPipeline.from_pretrained(DIR)``, and ``diffobj.json`` (the run's config, step and null
label, which ``diffobj sample``/``elbo``/``evaluate DIR`` read back). The scheduler is DDIM on the network's own
noise table, without clipping, with trailing timestep spacing: N inference steps are the library's DDIM on the
λ-grid of the timesteps T − 1 − k·T/N (see docs/adapters.md, "Export to diffusers").

Exported exactly: runs trained with ``network.name=diffusers-unet2d`` and an eps, v or x parameterization
(prediction_type epsilon, v_prediction, sample). Other runs exit 2 saying why: the library's own ``unet`` and
``mlp`` have no diffusers model class; flow, edm and score outputs are no diffusers prediction_type of a network
fed the VP latent. A class-conditional export keeps ``num_class_embeds`` = classes + 1, the last index the null
label; diffusers' DDIMPipeline passes no class labels, so call its ``unet(z, t, class_labels=...)`` in a loop.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import OptionError
from ..interop import pipelines
from ._common import add_checkpoint_argument, add_command, check_output_dir, load_checkpoint, staged_dir

EXAMPLES = """examples:
  diffobj train --preset digits --set network.name=diffusers-unet2d --out runs/dd
  diffobj export runs/dd --to diffusers --out exported/dd
  python -c "from diffusers import DiffusionPipeline; p = DiffusionPipeline.from_pretrained('exported/dd')"
  diffobj elbo exported/dd                                         bits/dim of the exported pipeline
"""

TARGETS = ("diffusers",)


def run(args: argparse.Namespace) -> int:

    if args.to not in TARGETS:
        raise OptionError(f"--to: unknown target {args.to!r}; choose from: {', '.join(TARGETS)}")
    if pipelines.is_pipeline_dir(args.checkpoint):
        raise OptionError(f"{args.checkpoint!r} is already a diffusers pipeline directory")
    out = check_output_dir(args.out)
    if out.exists() and any(out.iterdir()):
        raise OptionError(f"--out {str(out)!r}: exists and is not empty; give a new directory")
    args.device = "cpu"
    loaded = load_checkpoint(args)
    pipelines.prediction_type(loaded)  # refuse before writing anything
    with staged_dir(out) as stage:
        record = pipelines.export_diffusers(loaded, stage)
    print(f"exported {loaded.checkpoint_dir} (step {loaded.step}, {'EMA' if loaded.ema else 'raw'} weights) to "
          f"{out}: DDIMPipeline, prediction_type {record['prediction_type']}, "
          f"{loaded.config.network.params['num_train_timesteps']} timesteps on λ ∈ "
          f"[{loaded.config.network.params['logsnr_min']:g}, {loaded.config.network.params['logsnr_max']:g}]")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "export", "write a trained run as a diffusers pipeline directory", sys.modules[__name__])
    add_checkpoint_argument(p, "export")
    p.add_argument("--to", required=True, metavar="FORMAT", help=f"target format: {', '.join(TARGETS)}")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) output directory")
    p.set_defaults(run=run)
