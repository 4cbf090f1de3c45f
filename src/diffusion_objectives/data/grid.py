"""Show samples: a batch of images in [−1, 1] as one PNG grid (8-bit, via PIL), 2-D points as a scatter plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from .dataset import quantize

__all__ = ["image_grid", "save_image_grid", "scatter_points"]

_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def image_grid(x: Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """``x`` ``[N, C, H, W]`` in [−1, 1] → uint8 ``[rows·(H+p)+p, nrow·(W+p)+p, C]``, ``nrow`` images per
    row (default ⌈√N⌉), ``padding`` black pixels between and around them."""
    if x.ndim != 4 or x.shape[1] not in _MODES:
        raise ValueError(f"expected images [N, C, H, W] with C in 1..4, got {list(x.shape)}")
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pixels = quantize(x.detach().cpu(), 256).numpy().astype(np.uint8).transpose(0, 2, 3, 1)  # [N, H, W, C]
    p = padding
    grid = np.zeros((rows * (h + p) + p, nrow * (w + p) + p, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[p + r * (h + p): p + r * (h + p) + h, p + q * (w + p): p + q * (w + p) + w] = pixels[i]
    return grid


def save_image_grid(x: Tensor, path: str | Path, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Write :func:`image_grid` of ``x`` to ``path`` (format from its extension; PNG is lossless) and
    return the uint8 array written."""
    grid = image_grid(x, nrow, padding)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid).save(path)  # mode L, LA, RGB or RGBA
    return grid


def scatter_points(ax, x, *, reference=None, limit: float | None = None, size: float = 2.0,
                   alpha: float = 0.5) -> None:
    """2-D points ``x`` ``[N, 2]`` (and, in grey beneath them, ``reference`` points ``[M, 2]``, e.g. the data) on
    the matplotlib axes ``ax``, with equal aspect; ``limit``: show the square [−limit, limit]²."""
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=size, alpha=0.3, color="0.6", linewidths=0, label="data")
    ax.scatter(x[:, 0], x[:, 1], s=size, alpha=alpha, linewidths=0, label="samples")
    if limit is not None:
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
