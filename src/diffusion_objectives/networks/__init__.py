"""Denoising networks: ``net(z, logsnr, labels=None)`` → a tensor of z's shape.

A network gets the noisy latent z and the embedding of c_noise = −λ/8 (:mod:`.embedding`), never a
schedule or weighting, and its output means whatever the parameterization says. Names: ``mlp`` (toy
data), ``unet`` (images), ``diffusers-unet2d`` (a diffusers ``UNet2DModel``, any data; needs the
``diffusers`` extra). Size presets: :func:`preset` (``tiny``, ``toy-mlp``, ``digits``,
``fashion-mnist``, ``imagenet64-kg23``); see docs/networks.md.
"""

from __future__ import annotations

from torch import nn

from ..registry import Registry
from .base import Network
from .diffusers_unet import SCHEDULER_DEFAULTS, DiffusersNetwork, diffusers_unet2d
from .embedding import drop_labels, noise_input
from .mlp import MLP, mlp
from .presets import PRESETS, preset, preset_names
from .unet import UNet, unet

__all__ = [
    "Network",
    "MLP",
    "UNet",
    "DiffusersNetwork",
    "recorded_defaults",
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
REGISTRY.add("diffusers-unet2d", diffusers_unet2d,
             "diffusers UNet2DModel (its kwargs as params) through the diffusers adapter on a fixed noise table")

# defaults that define what a trained network means beyond its weights (the diffusers noise table): written
# into the resolved config, so a checkpoint is rebuilt and exported with the table it was trained with
_RECORDED = {"diffusers-unet2d": SCHEDULER_DEFAULTS}


def get(name: str, **params) -> Network:
    """The network ``name`` built with ``params``; initial weights are a function of (params, ``seed``)."""
    return REGISTRY.get(name, **params)


def recorded_defaults(name: str) -> dict:
    """The defaults of network ``name`` that the resolved config records ({} for most networks)."""
    return dict(_RECORDED.get(name, {}))


def names() -> list[str]:
    return REGISTRY.names()


def from_preset(name: str, **overrides) -> Network:
    """``get(*preset(name, **overrides))``."""
    net, params = preset(name, **overrides)
    return get(net, **params)
