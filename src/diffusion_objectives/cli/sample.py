"""``diffobj sample``: draw samples from a trained checkpoint, one seed per sample (EDM's ``--seeds``).

Sample i depends only on seed i (its initial noise and, for a stochastic sampler, its own generator), so
any ``--batch-size`` gives the same samples; a class-conditional model draws seed i with label i mod C.

Writes into --out (created if needed). The outputs of one command appear all or nothing: they are written
into a temporary sibling directory and moved into --out only when every file is complete, with
``samples.json`` last (the previous one is removed first, so it never describes new images). Files of the
same name are replaced; other files in --out are left alone.

- images: ``seed-NNNNNN.png`` per seed (8-bit: grey level k of K becomes round(255 k / (K − 1))), ``grid.png``
  (the first 256 samples) and ``samples.npz`` with ``arr_0`` uint8 ``[N, H, W, C]`` (the ADM/EDM layout;
  the same pixels as the PNGs), ``arr_1`` int64 labels ``[N]`` (conditional models) and ``seeds`` ``[N]``.
  The file is itself an ``npz`` dataset: ``data.get("npz", path=..., levels=K)`` reads the samples back.
- 2-D toy data: ``samples.npz`` with ``arr_0`` float32 ``[N, 2]`` and ``seeds``, and ``samples.png`` (scatter).
- ``samples.json``: the provenance (checkpoint, step, EMA, sampler, grid, steps, guidance, seeds; the guidance
  interval and the autoguidance checkpoint when used).

The samples are held in memory until they are written: a request whose estimated memory exceeds half of
the available memory, or whose files would not fit on the disk, is refused before anything is drawn
(exit 2, with the estimate). Seeds lie in 0 … 2^63 − 1.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import plotting
from ..data import image_grid, quantize, scatter_points
from ..errors import OptionError
from ..evaluation import protocol as E
from ..evaluation.metrics import format_seeds
from ._common import (
    add_command,
    add_sampling_arguments,
    check_output_dir,
    check_resources,
    checkpoint_info,
    flags,
    hold_run,
    load_checkpoint,
    progress_bar,
    resolve_seeds,
    sample_bytes,
    seed_ranges,
    staged_dir,
    write_atomic,
    write_json,
)

EXAMPLES = """examples:
  diffobj sample runs/digits --out samples/digits                        64 samples, seeds 0-63, Heun 32 steps
  diffobj sample runs/digits --sampler heun --steps 32 --n 64 --seeds 0-63 --out samples/d
  diffobj sample runs/digits/checkpoints/step-00002000 --no-ema --seeds 100-199 --out samples/raw
  diffobj sample runs/digits --sampler ancestral --steps 256 --grid cosine --out samples/anc
  diffobj sample runs/in64 --sampler edm-stochastic --steps 256 --out s/in64  EDM's ImageNet-64 FID sampler
  diffobj sample runs/digits --guidance 1.5 --out samples/cfg             classifier-free guidance
  diffobj sample runs/digits --autoguidance runs/digits-small --guidance 1 --out samples/ag   autoguidance, w = 2
  diffobj sample runs/digits --guidance 1.5 --guidance-interval=-1.5,4 --out samples/gi  guidance for λ in [-1.5, 4]
  diffobj sample runs/toy --n 4096 --out samples/toy                      2-D data: samples.npz + scatter
  diffobj sample runs/in64 --sampler edm-stochastic --steps 256 --out s/in64  EDM's ImageNet-64 FID sampler
"""

GRID_MAX = 256  # samples shown in grid.png


# ---- images -------------------------------------------------------------------------------------------

def to_pixels(x, levels: int | None):
    """Images ``[N, C, H, W]`` in [−1, 1] → uint8 ``[N, H, W, C]``: quantized to the K levels of the data
    (K = 256 if unknown), level k shown as round(255 k / (K − 1)), the inverse of the ``npz`` reader."""
    k = levels or 256
    pixels = torch.round(quantize(x, k).to(torch.float64) * (255.0 / (k - 1)))
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _png_bytes(pixels: np.ndarray) -> bytes:

    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue()


def _npz_writer(**arrays: np.ndarray) -> Callable[[Any], None]:
    return lambda f: np.savez(f, **arrays)


def _write_images(x, labels, seeds: list[int], levels: int | None, out: Path, per_seed: bool, bar) -> list[str]:
    pixels = to_pixels(x, levels)
    written = []
    if per_seed:
        progress = bar("writing PNGs", len(seeds)) if bar else None
        for seed, img in zip(seeds, pixels, strict=True):
            write_atomic(out / f"seed-{seed:06d}.png", _png_bytes(img), fsync=False)
            if progress:
                progress.update(1)
        if progress:
            progress.close()
        written.append(f"{len(seeds)} seed-NNNNNN.png")
    # the grid shows the same pixels: back to [−1, 1] on the 256-level scale image_grid quantizes to
    shown = torch.from_numpy(pixels[:GRID_MAX]).permute(0, 3, 1, 2).to(torch.float64) / 127.5 - 1.0
    write_atomic(out / "grid.png", _png_bytes(image_grid(shown)))
    arrays = {"arr_0": pixels, "seeds": np.asarray(seeds, dtype=np.int64)}
    if labels is not None:
        arrays["arr_1"] = labels.numpy().astype(np.int64)
    write_atomic(out / "samples.npz", _npz_writer(**arrays))
    return [*written, "grid.png", "samples.npz"]


def _write_points(x, seeds: list[int], out: Path, title: str) -> list[str]:
    points = x.numpy().astype(np.float32)
    write_atomic(out / "samples.npz", _npz_writer(arr_0=points, seeds=np.asarray(seeds, dtype=np.int64)))
    fig, ax = plotting.subplots(figsize=(5, 5))
    scatter_points(ax, points)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_atomic(out / "samples.png", buf.getvalue())
    return ["samples.npz", "samples.png"]


# ---- the command ----------------------------------------------------------------------------------------

def parse_interval(text: str | None) -> tuple[float, float] | None:
    """``--guidance-interval LO,HI`` (λ values, ``inf`` allowed) → (lo, hi) with lo ≤ hi."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise OptionError(f"--guidance-interval: expected LO,HI (two λ values), got {text!r}") from None
    if not lo <= hi:
        raise OptionError(f"--guidance-interval: need LO <= HI, got {text!r}")
    return lo, hi


def _request_size(loaded, count: int, png: bool, out: Path) -> None:
    """Refuse ``count`` samples up front if they would not fit in memory or on the disk (exit 2)."""
    shape = E.sample_shape(loaded)
    disk = count * (math.prod(shape) + 16 + (4096 if png and E.is_image(loaded) else 0))
    check_resources("--seeds/--n", f"{count} samples of shape {list(shape)}", memory=sample_bytes(loaded, count),
                    disk=disk, where=out)


def _draw(loaded, seeds: list[int], settings, args: argparse.Namespace, guide=None):
    bar = progress_bar(args)
    progress = bar(f"sampling ({settings.sampler}, {settings.steps} steps)", len(seeds)) if bar else None
    done = [0]

    def hook(k: int, total: int) -> None:
        if progress:
            progress.update(k - done[0])
        done[0] = k

    with flags(guidance="--guidance", guide="--autoguidance"):
        x, labels = E.generate(loaded, seeds, settings, batch_size=args.batch_size, progress=hook, guide=guide)
    if progress:
        progress.close()
    if not bool(x.isfinite().all()):
        bad = int((~x.isfinite()).flatten(1).any(1).sum())
        raise RuntimeError(f"{bad} of {len(seeds)} samples hold non-finite values (NaN or inf); nothing was "
                           "written (is the checkpoint diverged?)")
    return x, labels


def run(args: argparse.Namespace) -> int:
    settings = E.SampleSettings(args.sampler, args.steps, args.grid, args.guidance, args.ema,
                                parse_interval(args.guidance_interval), args.autoguidance)
    with flags(steps="--steps"):  # validates --steps before loading anything
        E.sampling_grid(settings.resolved_grid(), settings.steps)
    if args.seeds is not None:
        seed_ranges(args.seeds)  # syntax and range, before loading anything
    if args.batch_size < 1:
        raise OptionError(f"--batch-size must be positive, got {args.batch_size}")
    out = check_output_dir(args.out)
    loaded = load_checkpoint(args)
    guide = None if args.autoguidance is None else load_checkpoint(args, args.autoguidance)
    with hold_run(loaded, out, "diffobj sample"):  # before any work: a run being trained is refused at once
        return _sample(args, loaded, settings, out, guide)


def _sample(args: argparse.Namespace, loaded, settings, out: Path, guide=None) -> int:
    seeds = resolve_seeds(args.n, args.seeds, default_n=64,
                          bytes_per_seed=lambda count: _request_size(loaded, count, args.png, out))
    x, labels = _draw(loaded, seeds, settings, args, guide)
    image = E.is_image(loaded)
    levels = E.dataset_split(loaded, "train").levels if image else None
    with staged_dir(out, last=("samples.json",)) as stage:
        if image:
            written = _write_images(x, labels, seeds, levels, stage, args.png, progress_bar(args))
        else:
            written = _write_points(x, seeds, stage, f"{loaded.checkpoint_dir.name}: {len(seeds)} samples, "
                                                     f"{settings.sampler} {settings.steps} steps")
        meta = {**checkpoint_info(loaded), "sampling": {**settings.as_dict(), "ema": loaded.ema},
                "n": len(seeds), "seeds": format_seeds(seeds), "levels": levels,
                "layout": "arr_0 uint8 [N, H, W, C]" if image else "arr_0 float32 [N, D]",
                "labels": "arr_1 = seed mod num_classes" if labels is not None else None}
        if guide is not None:
            meta["autoguidance"] = checkpoint_info(guide)
        write_json(stage / "samples.json", meta)
    print(f"{len(seeds)} samples from {loaded.checkpoint_dir} (step {loaded.step}, "
          f"{'EMA' if loaded.ema else 'raw'} weights), {settings.sampler} {settings.steps} steps on the "
          f"{settings.resolved_grid()} grid; wrote {', '.join(written)}, samples.json to {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "sample", "draw samples from a checkpoint (PNG per seed, grid, .npz)", sys.modules[__name__],
                    checkpoint=True)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_sampling_arguments(p, "guidance scale g: classifier-free ε̂ = (1+g) ε̂(z, c) − g ε̂(z, ∅) (conditional "
                              "models); with --autoguidance x̂ = x̂_bad + (1+g)(x̂ − x̂_bad), i.e. Karras et al.'s "
                              "w = 1 + g", 64)
    p.add_argument("--autoguidance", default=None, metavar="RUN_OR_CKPT",
                   help="guide with this (smaller or earlier) model instead of the unconditional one (autoguidance, "
                        "Karras et al. 2024); loaded with the same --ema/--device")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="apply guidance only at λ in [LO, HI] (Kynkäänniemi et al. 2024), e.g. "
                        "--guidance-interval=-1.5,4; default everywhere")
    p.add_argument("--png", action=argparse.BooleanOptionalAction, default=True,
                   help="write one PNG per seed (default); --no-png writes only grid.png and samples.npz")
    p.set_defaults(run=run)
