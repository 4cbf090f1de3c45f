"""Named network sizes: ``preset(name, **overrides)`` → ``(network name, params)`` for :func:`get`.

Measured parameter counts and CPU timings are in docs/networks.md. ``imagenet64-kg23`` is the ADM
configuration EDM22 used for class-conditional ImageNet 64 × 64 (the ``--arch=adm`` setting of EDM's
``train.py``: 192 channels, multipliers 1-2-3-4, 3 blocks per level, attention at 32, 16, 8, heads of 64
channels, dropout 0.1) and that KG23 report reusing for their 64 × 64 experiments.
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import OptionError

__all__ = ["PRESETS", "preset", "preset_names"]

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("unet", dict(in_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attn_resolutions=(4,), resolution=8, emb_mult=2)),
    "toy-mlp": ("mlp", dict(dim=2, hidden=256, depth=4, fourier_features=64)),
    "digits": ("unet", dict(in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(4,), dropout=0.1, num_classes=10, resolution=8)),
    "fashion-mnist": ("unet", dict(in_channels=1, channels=16, channel_mult=(1, 2, 4), num_res_blocks=2,
                                   attn_resolutions=(7,), dropout=0.1, num_classes=10, resolution=28)),
    "imagenet64-kg23": ("unet", dict(in_channels=3, channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                                     attn_resolutions=(32, 16, 8), dropout=0.1, num_classes=1000,
                                     resolution=64, head_channels=64)),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset(name: str, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """``(network name, params)`` of preset ``name`` with ``overrides`` applied (checked by :func:`get`)."""
    if name not in PRESETS:
        raise OptionError(f"unknown network preset {name!r}; choose from: {', '.join(PRESETS)}")
    net, params = copy.deepcopy(PRESETS[name])
    return net, {**params, **overrides}
