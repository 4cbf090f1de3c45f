"""``diffobj elbo``: the negative ELBO of held-out data under a checkpoint (VDM21 Eq. 11), with its terms.

Prints −ELBO ± standard error in bits/dim (discrete data with K levels: an upper bound on −log₂ P(x)/D) or
in nats per example (continuous data: a bound on −log density), and the prior, reconstruction and
diffusion terms. The diffusion term is also given per λ-bin: where along the noise levels the ELBO is
spent. It is :func:`diffusion_objectives.evaluation.protocol.elbo_summary` of the same examples that
``diffobj evaluate``'s ``bpd`` uses (a fixed permutation of the split, seed 0), so the two agree for the
same --n, --samples and --seed. Class-conditional models give the conditional ELBO, −log p(x | label).

Writes into --out (default RUN/eval/step-NNNNNNNN/elbo-SPLIT/, with ``-raw`` after the step for --no-ema:
beside the checkpoints, never inside them, so checkpoint pruning never deletes results):
``elbo.json`` (the numbers and their provenance), ``per_logsnr.csv`` (λ-bins and the mean diffusion term
in each, in the unit above) and ``per_logsnr.png``. The three files appear together or not at all
(``elbo.json`` last), and the run's lock is held while writing into a run.

The estimator holds about 48 bytes per (example, λ-draw) pair in memory: a request (--n × --samples) that
needs more than half of the available memory is refused up front with its estimate (exit 2).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import io
import sys
from pathlib import Path

import numpy as np
import torch

from .. import plotting
from ..errors import OptionError
from ..evaluation import protocol as E
from ._common import (
    ELBO_BYTES_PER_DRAW,
    add_command,
    check_output_dir,
    check_resources,
    checkpoint_info,
    eval_dir,
    flags,
    hold_run,
    load_checkpoint,
    progress_bar,
    staged_dir,
    write_atomic,
    write_json,
)

EXAMPLES = """examples:
  diffobj elbo runs/digits                                   test split, 1000 examples, 32 λ-draws each
  diffobj elbo runs/digits --split test --n 359 --samples 64 --seed 1
  diffobj elbo runs/digits/checkpoints/step-00002000 --no-ema --out results/elbo-raw
  diffobj elbo runs/toy --split test                         2-D data: nats per example
"""


def csv_text(summary: dict) -> str:
    """``per_logsnr.csv``: one row per λ-bin with its edges, its mean diffusion term and the running sum."""
    unit = "bits_per_dim" if summary["unit"] == "bits/dim" else "nats"
    edges, values = summary["per_logsnr_bin"]["edges"], summary["per_logsnr_bin"]["diffusion"]
    rows, total = [f"logsnr_lo,logsnr_hi,diffusion_{unit},cumulative_{unit}"], 0.0
    for lo, hi, v in zip(edges[:-1], edges[1:], values, strict=True):
        total += v
        rows.append(f"{lo:.6g},{hi:.6g},{v:.9g},{total:.9g}")
    return "\n".join(rows) + "\n"


def plot_png(summary: dict, title: str) -> bytes:
    edges = np.asarray(summary["per_logsnr_bin"]["edges"])
    values = np.asarray(summary["per_logsnr_bin"]["diffusion"])
    unit = summary["unit"]
    fig, ax = plotting.subplots(figsize=(8, 4))
    ax.bar(edges[:-1], values, width=np.diff(edges), align="edge", alpha=0.7, label="diffusion term per bin")
    ax.set_xlabel("log-SNR λ  (noise ←  → data)")
    ax.set_ylabel(f"−ELBO per bin [{unit}]")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(edges[1:], np.cumsum(values), color="C1", label="cumulative")
    twin.set_ylabel(f"cumulative [{unit}]")
    ax.set_title(title, fontsize=9)
    fig.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise OptionError(f"--n must be a positive number of examples, got {args.n}")
    with flags(samples="--samples"):
        E.check_elbo_samples(args.samples)
    if args.batch_size < 1:
        raise OptionError(f"--batch-size must be positive, got {args.batch_size}")
    out = check_output_dir(args.out) if args.out is not None else None
    loaded = load_checkpoint(args)
    out = out or check_output_dir(eval_dir(loaded) / f"elbo-{args.split}")
    with hold_run(loaded, out, "diffobj elbo"):  # before any work: a run being trained is refused at once
        return _elbo(args, loaded, out)


def _elbo(args: argparse.Namespace, loaded, out: Path) -> int:

    with flags(n="--n"):
        x, labels, levels = E.elbo_examples(loaded, args.split, args.n)
    check_resources("--samples", f"{x.shape[0]} examples x {args.samples} λ-draws",
                    memory=x.shape[0] * args.samples * ELBO_BYTES_PER_DRAW)
    with torch.no_grad():
        summary, _ = E.elbo_summary(loaded, x, levels, samples=args.samples, seed=args.seed, labels=labels,
                                    batch_size=args.batch_size, bar=progress_bar(args))
    record = {**checkpoint_info(loaded), "split": args.split,
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "elbo": summary}
    unit = summary["unit"] if levels is not None else "nats per example"
    title = (f"{loaded.checkpoint_dir.parent.parent.name}/{loaded.checkpoint_dir.name}: −ELBO "
             f"{summary['value']:.4f} ± {summary['se']:.4f} {summary['unit']} ({args.split}, n = {x.shape[0]})")
    with staged_dir(out, last=("elbo.json",)) as stage:
        write_atomic(stage / "per_logsnr.csv", csv_text(summary))
        write_atomic(stage / "per_logsnr.png", plot_png(summary, title))
        write_json(stage / "elbo.json", record)
    print(f"{loaded.checkpoint_dir} (step {loaded.step}, {'EMA' if loaded.ema else 'raw'} weights)")
    print(f"−ELBO on {x.shape[0]} {args.split} examples ({args.samples} λ-draws each, seed {args.seed}):"
          f" {summary['value']:.6f} ± {summary['se']:.6f} {unit}")
    print(f"  prior          {summary['prior']:.6f}")
    print(f"  reconstruction {summary['reconstruction']:.6f}")
    print(f"  diffusion      {summary['diffusion']:.6f}")
    print(f"  (Monte-Carlo part of the standard error {summary['mc_se']:.6f}; {summary['nfe_per_example']} "
          f"network evaluations per example)")
    print(f"wrote elbo.json, per_logsnr.csv, per_logsnr.png to {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "elbo", "bits/dim (−ELBO) of held-out data with its terms and its split over λ",
                    sys.modules[__name__], checkpoint=True)
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--n", type=int, default=1000, help="examples (default 1000, capped at the split's size)")
    p.add_argument("--samples", type=int, default=32,
                   help="λ-draws per example, a multiple of 8 (8 antithetic replicates; default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the λ and noise draws (default 0)")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per network call (default 4096)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default RUN/eval/step-NNNNNNNN/elbo-SPLIT, beside the checkpoints)")
    p.set_defaults(run=run)
