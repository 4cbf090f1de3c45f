"""2-D toy data drawn from Gaussian mixtures, whose density and optimal denoiser are closed form
(:mod:`diffusion_objectives.core.mixtures`). Points are continuous: ``levels`` is None."""

from __future__ import annotations

import hashlib

import torch

from ..core import mixtures
from ..core.mixtures import GaussianMixture
from ..errors import OptionError
from .dataset import Dataset

__all__ = ["derive_seed", "ring", "grid", "anisotropic", "check_split"]

SPLITS = ("train", "test")


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a fixed function of ``parts`` (stable across processes, machines and runs): the
    first 8 bytes of BLAKE2b of ``repr(parts)``, little-endian, shifted right by one bit."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise OptionError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    return split


def _toy(name: str, mixture: GaussianMixture, n: int, seed: int, split: str) -> Dataset:
    check_split(split)
    if n < 1:
        raise OptionError(f"dataset {name!r}: n must be positive, got {n}")
    # train uses `seed` itself; test a different stream derived from it, so the splits never coincide
    stream = seed if split == "train" else derive_seed("toy-test", seed)
    x = mixture.sample(n, torch.Generator().manual_seed(stream))  # [n, 2] float64
    return Dataset(data=x.to(torch.float32), name=name, mixture=mixture)


def ring(n: int = 50_000, seed: int = 0, split: str = "train") -> Dataset:
    """8 Gaussians (std 0.1) on the unit circle."""
    return _toy("ring", mixtures.ring(), n, seed, split)


def grid(n: int = 50_000, seed: int = 0, split: str = "train") -> Dataset:
    """A 5 × 5 grid of Gaussians (spacing 0.5, std 0.05)."""
    return _toy("grid", mixtures.grid(), n, seed, split)


def anisotropic(n: int = 50_000, seed: int = 0, split: str = "train") -> Dataset:
    """Two unequal-weight Gaussians with correlated, anisotropic covariances."""
    return _toy("anisotropic", mixtures.anisotropic_pair(), n, seed, split)
