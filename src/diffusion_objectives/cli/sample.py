"""``diffobj sample``: draw samples from a trained checkpoint, one seed per sample (EDM's ``--seeds``).

Sample i depends only on seed i (its initial noise and, for a stochastic sampler, its own generator), so
any ``--batch-size`` gives the same samples; a class-conditional model draws seed i with label i mod C.

Writes into --out (created if needed; files of the same name are replaced atomically, other files are
left alone; samples.json and samples.npz always describe the latest command):

- images: ``seed-NNNNNN.png`` per seed (8-bit: grey level k of K becomes round(255 k / (K − 1))), ``grid.png``
  (the first 256 samples) and ``samples.npz`` with ``arr_0`` uint8 ``[N, H, W, C]`` (the ADM/EDM layout;
  the same pixels as the PNGs), ``arr_1`` int64 labels ``[N]`` (conditional models) and ``seeds`` ``[N]``.
  The file is itself an ``npz`` dataset: ``data.get("npz", path=..., levels=K)`` reads the samples back.
- 2-D toy data: ``samples.npz`` with ``arr_0`` float32 ``[N, 2]`` and ``seeds``, and ``samples.png`` (scatter).
- ``samples.json``: the provenance (checkpoint, step, EMA, sampler, grid, steps, guidance, seeds).

The helpers below (checkpoint argument, seeds, progress bars, atomic writes) are shared by ``diffobj elbo``
and ``diffobj evaluate``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError

EXAMPLES = """examples:
  diffobj sample runs/digits --out samples/digits                        64 samples, seeds 0-63, Heun 32 steps
  diffobj sample runs/digits --sampler heun --steps 32 --n 64 --seeds 0-63 --out samples/d
  diffobj sample runs/digits/checkpoints/step-00002000 --no-ema --seeds 100-199 --out samples/raw
  diffobj sample runs/digits --sampler ancestral --steps 256 --grid cosine --out samples/anc
  diffobj sample runs/in64 --sampler edm-stochastic --steps 256 --out s/in64  EDM's ImageNet-64 FID sampler
  diffobj sample runs/digits --guidance 1.5 --out samples/cfg             classifier-free guidance
  diffobj sample runs/toy --n 4096 --out samples/toy                      2-D data: samples.npz + scatter
"""

GRID_MAX = 256  # samples shown in grid.png


# ---- shared by sample / elbo / evaluate ---------------------------------------------------------------

def add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """The positional RUN_OR_CHECKPOINT, --ema/--no-ema, --device and --no-progress."""
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory (its newest complete checkpoint), its checkpoints/ directory or one "
                        "checkpoint directory (checkpoints/step-NNNNNNNN)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="use the EMA weights (default) or the raw weights (--no-ema)")
    p.add_argument("--device", default="cpu", metavar="{cpu,cuda,auto}",
                   help="device for the model (default cpu; auto: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_checkpoint(args: argparse.Namespace):
    """:func:`~diffusion_objectives.training.load_for_inference` of ``args.checkpoint`` (warnings on stderr)."""
    import torch

    from ..training.checkpoint import load_for_inference

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise OptionError(f"--device: expected cpu, cuda, cuda:N or auto, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError("--device cuda: no CUDA device is available")
    return load_for_inference(args.checkpoint, ema=args.ema, device=device,
                              warn=lambda msg: print(f"warning: {msg}", file=sys.stderr))


def resolve_seeds(n: int | None, seeds: str | None, default_n: int) -> list[int]:
    """Seeds from ``--seeds`` and/or ``--n`` (``--n`` alone: 0 … n−1); both given must agree."""
    from ..evaluation import parse_seeds

    if n is not None and n < 1:
        raise OptionError(f"--n must be a positive number of samples, got {n}")
    if seeds is None:
        return list(range(default_n if n is None else n))
    out = parse_seeds(seeds)
    if n is not None and n != len(out):
        raise OptionError(f"--n {n} disagrees with --seeds {seeds!r}, which names {len(out)} seeds")
    return out


def progress_bar(args: argparse.Namespace) -> Callable[[str, int], Any] | None:
    """A tqdm factory ``bar(description, total)`` on stderr (shown on terminals), or None with --no-progress."""
    if args.no_progress:
        return None
    from tqdm import tqdm

    return lambda desc, total: tqdm(desc=desc, total=total, file=sys.stderr, dynamic_ncols=True, disable=None,
                                    leave=False)


def write_atomic(path: str | Path, data: bytes | str | Callable[[Any], None], fsync: bool = True) -> Path:
    """Write ``path`` atomically: into a temporary file in the same directory, then ``os.replace``.
    ``data``: bytes, text, or a function that writes to a binary file object. ``fsync=False`` skips the
    flush to disk (for many small files that can be rewritten)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OptionError(f"cannot write {str(path)!r}: {exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def checkpoint_info(loaded) -> dict[str, Any]:
    """Provenance of a loaded model: checkpoint directory, step, images seen, EMA, objective, dataset."""
    return {"checkpoint": str(loaded.checkpoint_dir), "step": loaded.step, "images_seen": loaded.images_seen,
            "ema": loaded.ema, "objective": loaded.config.loss.objective, "dataset": loaded.config.data.name}


# ---- images -------------------------------------------------------------------------------------------

def to_pixels(x, levels: int | None):
    """Images ``[N, C, H, W]`` in [−1, 1] → uint8 ``[N, H, W, C]``: quantized to the K levels of the data
    (K = 256 if unknown), level k shown as round(255 k / (K − 1)), the inverse of the ``npz`` reader."""
    import torch

    from ..data import quantize

    k = levels or 256
    pixels = torch.round(quantize(x, k).to(torch.float64) * (255.0 / (k - 1)))
    return pixels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
    return buf.getvalue()


def _npz_writer(**arrays: np.ndarray) -> Callable[[Any], None]:
    return lambda f: np.savez(f, **arrays)


def _write_images(x, labels, seeds: list[int], levels: int | None, out: Path, per_seed: bool, bar) -> list[str]:
    import torch

    from ..data import image_grid

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = x.numpy().astype(np.float32)
    write_atomic(out / "samples.npz", _npz_writer(arr_0=points, seeds=np.asarray(seeds, dtype=np.int64)))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, linewidths=0)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_atomic(out / "samples.png", buf.getvalue())
    return ["samples.npz", "samples.png"]


# ---- the command ----------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    from .. import evaluation as E

    seeds = resolve_seeds(args.n, args.seeds, default_n=64)
    settings = E.SampleSettings(args.sampler, args.steps, args.grid, args.guidance, args.ema)
    E.sampling_grid(settings.resolved_grid(), settings.steps)  # validates --steps before loading anything
    if args.batch_size < 1:
        raise OptionError(f"--batch-size must be positive, got {args.batch_size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {str(out)!r} exists and is not a directory")
    loaded = load_checkpoint(args)
    bar = progress_bar(args)
    progress = bar(f"sampling ({settings.sampler}, {settings.steps} steps)", len(seeds)) if bar else None
    done = [0]

    def hook(k: int, total: int) -> None:
        if progress:
            progress.update(k - done[0])
        done[0] = k

    x, labels = E.generate(loaded, seeds, settings, batch_size=args.batch_size, progress=hook)
    if progress:
        progress.close()
    out.mkdir(parents=True, exist_ok=True)
    image = loaded.config.data.name not in ("ring", "grid", "anisotropic")
    levels = E.dataset_split(loaded, "train").levels if image else None
    if image:
        written = _write_images(x, labels, seeds, levels, out, args.png, bar)
    else:
        written = _write_points(x, seeds, out, f"{loaded.checkpoint_dir.name}: {len(seeds)} samples, "
                                               f"{settings.sampler} {settings.steps} steps")
    from ..metrics.results import format_seeds

    meta = {**checkpoint_info(loaded), "sampling": {**settings.as_dict(), "ema": loaded.ema},
            "n": len(seeds), "seeds": format_seeds(seeds), "levels": levels,
            "layout": "arr_0 uint8 [N, H, W, C]" if image else "arr_0 float32 [N, D]",
            "labels": "arr_1 = seed mod num_classes" if labels is not None else None}
    write_json(out / "samples.json", meta)
    print(f"{len(seeds)} samples from {loaded.checkpoint_dir} (step {loaded.step}, "
          f"{'EMA' if loaded.ema else 'raw'} weights), {settings.sampler} {settings.steps} steps on the "
          f"{settings.resolved_grid()} grid; wrote {', '.join(written)}, samples.json to {out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .. import samplers
    from ..evaluation import GRIDS

    p = sub.add_parser("sample", help="draw samples from a checkpoint (PNG per seed, grid, .npz)",
                       description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--sampler", default="heun", choices=samplers.names(), help="sampler (default heun)")
    p.add_argument("--steps", type=int, default=32, help="grid points (default 32; Heun makes 2·steps − 1 "
                                                         "network evaluations)")
    p.add_argument("--grid", default=None, choices=GRIDS.names(),
                   help="λ-grid (default: edm for every sampler)")
    p.add_argument("--n", type=int, default=None, help="number of samples, seeds 0 … n−1 (default 64)")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0-63 or 1,5,9-11 (must agree with --n)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per network batch (default 256; "
                                                               "does not change the samples)")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance scale g: ε̂ = (1+g) ε̂(z, c) − g ε̂(z, ∅) (conditional models)")
    p.add_argument("--png", action=argparse.BooleanOptionalAction, default=True,
                   help="write one PNG per seed (default); --no-png writes only grid.png and samples.npz")
    p.set_defaults(run=run)
