"""Preview samples written during training: fixed-noise samples of the EMA model, as an image grid (images) or
a scatter plot over the data (2-D data), in ``RUN/samples/step-NNNNNNNN.png``.

The noise is drawn once per run from a generator seeded by the run's seed (:func:`preview_noise`), so the
previews of successive steps show the same samples as the model trains. A sampler failure never stops
training: it is a warning and no file.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import plotting
from ..data import save_image_grid, scatter_points
from ..sampling import samplers
from .build import derive_seed

__all__ = ["preview_noise", "write_preview"]


def preview_noise(seed: int, num_samples: int, shape: tuple[int, ...]) -> Tensor:
    """The fixed noise ``[num_samples, *shape]`` of a run's previews (a function of the run's ``seed``)."""
    g = torch.Generator().manual_seed(derive_seed("samples", seed))
    return torch.randn((num_samples, *shape), generator=g)


def write_preview(ema: torch.nn.Module, objective: Any, dataset: Any, noise: Tensor, steps: int,
                  conditional: bool, path: Path, device: torch.device, warn: Callable[[str], None]) -> None:
    """Fixed-noise samples of the EMA model (DPM-Solver++(2M), ``steps`` evaluations, no guidance; labels
    0, 1, 2, ... for a conditional model): an image grid, or a scatter plot for 2-D data, written to ``path``."""
    s = objective.schedule
    labels = None
    if conditional:
        labels = torch.arange(noise.shape[0], device=device) % max(int(dataset.num_classes), 1)
    try:
        with torch.no_grad():
            # DPM-Solver++(2M) on EDM's σ-grid if it fits inside the trained λ-range, else uniform in λ
            grid = samplers.grid_edm(steps)
            if grid[0] < s.logsnr_min or grid[-1] > s.logsnr_max:
                grid = samplers.grid_uniform_logsnr(steps, s.logsnr_min, s.logsnr_max)
            x = samplers.dpmpp_2m(ema, objective.parameterization, noise.to(device), grid, labels=labels)
    except Exception as exc:  # a sampler problem must not kill a training run
        warn(f"no sample grid at {path.name}: sampling failed ({type(exc).__name__}: {exc})")
        return
    x = x.detach().float().cpu()
    if x.ndim == 2 and x.shape[1] == 2:
        _scatter(x, dataset, path)
    elif x.ndim == 4:
        save_image_grid(x.clamp(-1, 1), path, nrow=int(math.ceil(math.sqrt(x.shape[0]))))
    else:
        warnings.warn(f"no sample plot for data of shape {list(x.shape[1:])}", stacklevel=2)


def _scatter(x: Tensor, dataset: Any, path: Path) -> None:
    """Samples [n, 2] over the first n data points, on equal axes."""
    fig, ax = plotting.subplots(figsize=(5, 5))
    ref = dataset.data[: x.shape[0]]
    scatter_points(ax, x, reference=ref, limit=float(ref.abs().max()) * 1.3, alpha=0.6)
    ax.legend(loc="upper right", fontsize=8, markerscale=4)
    ax.set_title(path.stem)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
