"""Denoising networks: ``net(z, logsnr, labels=None)`` → a tensor of z's shape.

A network gets the noisy latent z and the embedding of c_noise = −λ/8 (:mod:`.embedding`), never a
schedule or weighting, and its output means whatever the parameterization says. Names: ``mlp`` (toy
data), ``unet`` (images). Size presets: :func:`preset` (``tiny``, ``toy-mlp``, ``digits``,
``fashion-mnist``, ``imagenet64-kg23``); see docs/networks.md.
"""

from __future__ import annotations

from torch import nn

from ..registry import Registry
from .base import Network
from .embedding import drop_labels, noise_input
from .mlp import MLP, mlp
from .presets import PRESETS, preset, preset_names
from .unet import UNet, unet

__all__ = [
    "Network",
    "MLP",
    "UNet",
    "REGISTRY",
    "get",
    "names",
    "PRESETS",
    "preset",
    "preset_names",
    "from_preset",
    "drop_labels",
    "noise_input",
]

REGISTRY: Registry[nn.Module] = Registry("network")
REGISTRY.add("mlp", mlp, "residual MLP with Fourier features of c_noise (toy data)")
REGISTRY.add("unet", unet, "ADM-style U-Net (images of any size and channel count)")


def get(name: str, **params) -> Network:
    """The network ``name`` built with ``params``; initial weights are a function of (params, ``seed``)."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    return REGISTRY.names()


def from_preset(name: str, **overrides) -> Network:
    """``get(*preset(name, **overrides))``."""
    net, params = preset(name, **overrides)
    return get(net, **params)
