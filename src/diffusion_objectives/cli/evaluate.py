"""``diffobj evaluate``: sample-quality and likelihood metrics of a checkpoint, written to ``metrics.json``.

Metrics (--metrics, comma-separated):

- ``fd``, ``kid``: Fréchet distance and KID of the samples vs the training split (or the --ref statistics,
  FD only) on --extractor features (default: the dataset's classifier for digits and Fashion-MNIST, Inception
  otherwise). A classifier FD is not an FID; an Inception FID from fewer than 50k samples is labelled so.
- ``coverage``: classifier accuracy w.r.t. the conditioning labels, class histogram, missing classes.
- ``toy`` (2-D data): cross-entropy under the true density, sliced W₂ and MMD² to fresh data.
- ``bpd``: −ELBO of --n-elbo examples of --split (bits/dim, or nats for continuous data), as ``diffobj elbo``.
- ``loss-std``: relative spread of the per-example training loss (the noise of the loss estimator).

Samples are drawn with seeds (--seeds, or 0 … n−1) as ``diffobj sample`` draws them, or read from a
``diffobj sample`` output (--from-samples DIR or .npz). The result carries the provenance of every number
(checkpoint, step, EMA, sampler, seeds, extractor and its sha256, reference) and is written atomically to
--out (default RUN/eval/step-NNNNNNNN/metrics.json, with ``-raw`` after the step for --no-ema: beside the
checkpoints, never inside them, so checkpoint pruning never deletes it; an existing file is replaced). The
run's lock is held while writing into a run.

--from-samples must hold samples of this model's shape; a request for more samples or ELBO draws than half
of the available memory holds is refused up front with its estimate (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .. import data
from ..errors import OptionError
from ..evaluation import protocol as E
from ..evaluation.metrics import extractors
from ..evaluation.metrics.reference import read_npz
from . import _common as common

EXAMPLES = """examples:
  diffobj evaluate runs/digits                                    fd,kid,bpd with 1000 samples
  diffobj evaluate runs/digits --metrics fd,kid,bpd --n 10000
  diffobj evaluate runs/digits --metrics fd,coverage --sampler dpmpp-2m --steps 16 --seeds 0-1999
  diffobj evaluate runs/digits --from-samples samples/digits --metrics fd,kid
  diffobj evaluate runs/fmnist --metrics fd --extractor inception --extractor-path default_1.pt \\
      --ref refs/fmnist-inception.npz
  diffobj evaluate runs/toy --metrics toy,bpd,loss-std --out results/toy.json
"""


def parse_metrics(text: str | None, image: bool | None = None) -> list[str]:
    """``"fd,kid,bpd"`` → names, each checked against the registry
    :data:`~diffusion_objectives.evaluation.protocol.METRICS`.
    Without ``text``: fd,kid,bpd for images, toy,bpd for 2-D data."""
    if text is None:
        return ["fd", "kid", "bpd"] if image else ["toy", "bpd"]
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in E.METRICS]
    if unknown or not names:
        raise OptionError(f"--metrics: unknown metric(s) {', '.join(unknown) or repr(text)}; "
                          f"choose from: {', '.join(E.METRICS.names())}")
    return list(dict.fromkeys(names))


def read_samples(path: str | Path, levels: int | None, shape: tuple[int, ...]):
    """Samples written by ``diffobj sample``: (x ``[N, ...]`` float32, labels or None, seeds or None, the
    ``samples.json`` record or None). Images are read as the ``npz`` dataset with ``levels``; ``shape`` is the
    model's sample shape ``(C, H, W)`` or ``(D,)``, which the samples must have."""


    p = Path(path)
    if p.is_dir():
        p = p / "samples.npz"
    if not p.is_file():
        raise OptionError(f"--from-samples: {str(p)!r} not found (a `diffobj sample` directory or its samples.npz)")
    arrays = read_npz(p, f"--from-samples: {str(p)!r}", "the samples.npz written by `diffobj sample`")
    if "arr_0" not in arrays:
        raise OptionError(f"--from-samples: {str(p)!r} has no arr_0")
    x = arrays["arr_0"]
    got = tuple(x.shape[1:]) if x.dtype != np.uint8 or x.ndim != 4 else (x.shape[3], x.shape[1], x.shape[2])
    if x.ndim < 2 or got != tuple(shape):
        raise OptionError(f"--from-samples: {str(p)!r} holds samples of shape {list(x.shape)}; this model draws "
                          f"{list(shape)} (images are stored as [N, H, W, C]): samples of another model?")
    meta = _read_meta(p.parent / "samples.json")
    seeds = [int(s) for s in arrays["seeds"]] if "seeds" in arrays else None
    if x.dtype == np.uint8:
        ds = data.get("npz", path=str(p), levels=levels or 256)
        return ds.data, ds.labels, seeds, meta
    return torch.from_numpy(x.astype(np.float32)), None, seeds, meta


def _read_meta(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OptionError(f"--from-samples: {str(path)!r} is not a samples.json of `diffobj sample` ({exc})"
                          ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sampling"), dict):
        raise OptionError(f"--from-samples: {str(path)!r} is not a samples.json of `diffobj sample`")
    return meta


def _print_table(result: dict) -> None:
    """One line per metric: its named outputs (:meth:`~diffusion_objectives.evaluation.protocol.Metric.scalars`)."""
    for name, record in result["metrics"].items():
        scalars = E.METRICS.get(name).scalars(record)
        values = ", ".join(f"{k} {v:.6g}" for k, v in scalars.items()) or "n/a"
        print(f"  {name:<9} {values}" + (f"   ({record['label']})" if record.get("label") else ""))


def _given_samples(args: argparse.Namespace, loaded, settings, image: bool):
    """(samples, labels, seeds, settings) of --from-samples, or Nones and the seeds of --n/--seeds (whose
    memory is estimated before the list is built)."""
    if not args.from_samples:
        def size(count: int) -> None:
            common.check_resources("--seeds/--n", f"{count} samples", memory=common.sample_bytes(loaded, count))

        seeds = common.resolve_seeds(args.n, args.seeds, default_n=1000, bytes_per_seed=size)
        return None, None, seeds, settings
    if args.n is not None or args.seeds is not None:
        raise OptionError("--from-samples takes the samples and seeds of the file; drop --n and --seeds")
    levels = E.dataset_split(loaded, "train").levels if image else None
    samples, labels, seeds, meta = read_samples(args.from_samples, levels, E.sample_shape(loaded))
    seeds = seeds or list(range(samples.shape[0]))
    if meta is not None:
        if meta.get("checkpoint") != str(loaded.checkpoint_dir) or meta.get("ema") != loaded.ema:
            print(f"warning: {args.from_samples} holds samples of {meta.get('checkpoint')} "
                  f"(ema={meta.get('ema')}), not of {loaded.checkpoint_dir} (ema={loaded.ema})", file=sys.stderr)
        try:
            settings = E.SampleSettings(**{k: meta["sampling"][k] for k in ("sampler", "steps", "grid", "guidance",
                                                                             "ema")})
        except KeyError as exc:
            raise OptionError(f"--from-samples: samples.json beside {args.from_samples} lacks sampling.{exc.args[0]}"
                              ) from None
    return samples, labels, seeds, settings


def run(args: argparse.Namespace) -> int:
    metrics = parse_metrics(args.metrics) if args.metrics is not None else None  # before loading anything
    settings = E.SampleSettings(args.sampler, args.steps, args.grid, args.guidance, args.ema)
    with common.flags(steps="--steps", samples="--elbo-samples"):
        E.sampling_grid(settings.resolved_grid(), settings.steps)
        for name in ("n_elbo", "elbo_samples", "batch_size"):
            if getattr(args, name) < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        E.check_elbo_samples(args.elbo_samples)
    if args.extractor_path and args.extractor not in (None, "inception"):
        raise OptionError("--extractor-path is for --extractor inception")
    if args.seeds is not None:
        common.seed_ranges(args.seeds)
    out = common.check_output_path(args.out) if args.out is not None else None
    loaded = common.load_checkpoint(args)
    out = out or common.check_output_path(common.eval_dir(loaded) / "metrics.json")
    with common.hold_run(loaded, out, "diffobj evaluate"):  # before any work: a run being trained is refused at once
        return _evaluate(args, loaded, metrics, settings, out)


def _evaluate(args: argparse.Namespace, loaded, metrics: list[str] | None, settings, out: Path) -> int:

    image = E.is_image(loaded)
    metrics = metrics or parse_metrics(None, image)
    common.check_resources("--elbo-samples", f"{args.n_elbo} examples x {args.elbo_samples} λ-draws",
                           memory=args.n_elbo * args.elbo_samples * common.ELBO_BYTES_PER_DRAW)
    samples, labels, seeds, settings = _given_samples(args, loaded, settings, image)
    extractor = None
    if image and any(E.METRICS.get(m).extractor for m in metrics):
        name = args.extractor or E.default_extractor(loaded.config.data.name)
        extractor = extractors.get(name, **({"path": args.extractor_path} if args.extractor_path else {}))
    with torch.no_grad(), common.flags(split="--split", samples="--elbo-samples", guidance="--guidance"):
        result = E.evaluate(loaded, metrics, n=len(seeds), seeds=seeds, settings=settings, split=args.split,
                            n_elbo=args.n_elbo, elbo_samples=args.elbo_samples, extractor=extractor,
                            reference=args.ref, batch_size=args.batch_size, samples=samples, sample_labels=labels,
                            progress=None if args.no_progress else (lambda msg: print(msg, file=sys.stderr)),
                            bar=common.progress_bar(args))
    if args.from_samples:
        result["sampling"]["file"] = str(args.from_samples)
    common.write_json(out, result)
    print(f"{loaded.checkpoint_dir} (step {loaded.step}, {'EMA' if loaded.ema else 'raw'} weights)")
    _print_table(result)
    print(f"wrote {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "evaluate", "FD, KID, coverage, toy metrics, bits/dim of a checkpoint → "
                           "metrics.json", sys.modules[__name__], checkpoint=True)
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated, from: {', '.join(E.METRICS.names())} (default fd,kid,bpd for images, "
                        "toy,bpd for 2-D data)")
    p.add_argument("--from-samples", default=None, metavar="DIR_OR_NPZ",
                   help="evaluate the samples written by `diffobj sample` instead of drawing new ones")
    common.add_sampling_arguments(p, "classifier-free guidance scale (conditional models)", 1000)
    p.add_argument("--split", default="test", help="split for bpd and loss-std (default test)")
    p.add_argument("--n-elbo", type=int, default=256, help="examples for bpd and loss-std (default 256)")
    p.add_argument("--elbo-samples", type=int, default=32, help="λ-draws per example for bpd, a multiple of 8 "
                                                                "(default 32)")
    p.add_argument("--extractor", default=None, choices=extractors.names(),
                   help="features for fd/kid (default: classifier-digits / classifier-fashion-mnist, else "
                        "inception)")
    p.add_argument("--extractor-path", default=None, metavar="FILE",
                   help="the Inception TorchScript file (default: $DIFFOBJ_INCEPTION, else the default_1.pt the "
                        "set-up puts in the cache directory)")
    p.add_argument("--ref", default=None, metavar="NPZ",
                   help="reference statistics (mu, sigma) from `diffobj fid-ref` for fd (default: computed from "
                        "the training split)")
    p.add_argument("--out", default=None, metavar="JSON",
                   help="output file (default RUN/eval/step-NNNNNNNN/metrics.json, beside the checkpoints)")
    p.set_defaults(run=run)
