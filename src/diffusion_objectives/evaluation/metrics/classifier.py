"""The small CNN classifiers this project trains (``scripts/train_classifiers.py``) and their weights.

Architecture: ``len(channels)`` blocks of a stride-2 3×3 convolution, batch norm and ReLU (each block halves
the resolution: 28 → 14 → 7 → 4, or 8 → 4 → 2 → 1), global average pooling, a ``features``-wide hidden
layer + ReLU (the *penultimate features* used for a fast FD) and a linear read-out to the class logits.
Inputs are ``[N, C, H, W]`` in [−1, 1], as :mod:`diffusion_objectives.data` provides them. Weights are
safetensors files in ``assets/``, listed in ``assets/classifiers.json`` with their sha256, test accuracy
and the command that trained them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from ...errors import OptionError
from .reference import sha256_file

__all__ = ["SmallCNN", "ASSETS", "registry_entry", "load_classifier", "init_parameters"]

ASSETS = Path(str(resources.files("diffusion_objectives") / "assets"))


class SmallCNN(nn.Module):
    """Stride-2 conv blocks → global average pool → ``features`` (ReLU) → ``num_classes`` logits."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (24, 48, 96), features: int = 128,
                 num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.hidden = nn.Linear(c_in, features)
        self.head = nn.Linear(features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[N, features]`` of images ``[N, C, H, W]``."""
        return torch.relu(self.hidden(self.body(x).mean((2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[N, num_classes]``."""
        return self.head(self.features(x))


def init_parameters(model: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every convolution and linear weight (Kaiming-uniform, PyTorch's default scale) from
    ``generator`` and zero their biases, so that training does not depend on the global RNG (batch norm
    keeps its deterministic initialisation: scale 1, shift 0)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, a=5**0.5, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def registry_entry(dataset: str) -> dict:
    """The ``assets/classifiers.json`` record of the classifier for ``dataset`` (e.g. ``digits``)."""
    table = json.loads((ASSETS / "classifiers.json").read_text())
    if dataset not in table:
        raise OptionError(f"no committed classifier for {dataset!r}; available: {', '.join(table)}")
    return table[dataset]


def load_classifier(dataset: str) -> tuple[SmallCNN, dict]:
    """The committed classifier of ``dataset`` in eval mode, and its record; the file's sha256 is verified."""
    entry = registry_entry(dataset)
    path = ASSETS / entry["file"]
    if not path.is_file():
        raise OptionError(f"classifier weights {str(path)!r} are missing; run scripts/train_classifiers.py")
    checksum = sha256_file(path)
    if checksum != entry["sha256"]:
        raise OptionError(
            f"classifier weights {str(path)!r} have sha256 {checksum}, "
            f"but classifiers.json records {entry['sha256']}"
        )
    model = SmallCNN(**entry["architecture"])
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False), entry
