"""Datasets (images know their number of grey levels K) and batching helpers.

``get(name, **params)`` returns a :class:`Dataset`; nothing is ever downloaded. Each name also carries a
:class:`DatasetInfo` (``REGISTRY.info(name)``, or :func:`is_image`/:func:`probe_params`): whether it holds
images ``[N, C, H, W]`` or points ``[N, D]``, and the parameters that make a build cheap when only the shape
or the density is wanted. Names:

| name | data | K | params |
|---|---|---|---|
| ring, grid, anisotropic | 2-D Gaussian mixtures ``[N, 2]`` (closed-form density) | None | n, seed, split |
| digits | scikit-learn 8 × 8 digits ``[N, 1, 8, 8]``, 10 classes | 17 | split, test_fraction, hflip, limit |
| fashion-mnist | IDX files ``[N, 1, 28, 28]``, 10 classes | 256 | split, root, hflip, limit |
| mnist-idx | any MNIST-layout IDX files | 256 | root, split, hflip, limit |
| folder | images (optionally one sub-folder per class) | levels | path, resolution, levels, hflip, limit |
| npz | ``arr_0`` uint8 images, ``arr_1`` labels | levels | path, levels, hflip, limit |
| edm-zip | EDM ``dataset_tool`` zip/folder + ``dataset.json`` | levels | path, levels, hflip, limit |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry
from . import digits as _digits
from . import idx as _idx
from . import images as _images
from . import toy as _toy
from .dataset import Dataset, dequantize, quantize, random_hflip
from .grid import image_grid, save_image_grid, scatter_points
from .idx import read_idx
from .sharding import batch_indices, epoch_permutation

__all__ = [
    "Dataset",
    "DatasetInfo",
    "REGISTRY",
    "get",
    "names",
    "is_image",
    "probe_params",
    "quantize",
    "dequantize",
    "random_hflip",
    "batch_indices",
    "epoch_permutation",
    "image_grid",
    "save_image_grid",
    "scatter_points",
    "read_idx",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset is, known without building it: ``image`` (images ``[N, C, H, W]`` with K
    grey levels, or continuous points ``[N, D]``) and ``probe``, parameters that keep a build cheap when only
    its shape or its closed-form density is needed (``n=16`` points of a toy density)."""

    image: bool
    probe: Mapping[str, Any] = field(default_factory=dict)


TOY = DatasetInfo(image=False, probe={"n": 16})
IMAGES = DatasetInfo(image=True)

REGISTRY: Registry[Dataset] = Registry("dataset")
REGISTRY.add("ring", _toy.ring, "8 Gaussians on a circle (2-D, closed-form density)", TOY)
REGISTRY.add("grid", _toy.grid, "5 x 5 grid of Gaussians (2-D, closed-form density)", TOY)
REGISTRY.add("anisotropic", _toy.anisotropic, "two anisotropic correlated Gaussians (2-D)", TOY)
REGISTRY.add("digits", _digits.digits, "scikit-learn digits, 8x8, K = 17, 10 classes", IMAGES)
REGISTRY.add("fashion-mnist", _idx.fashion_mnist, "Fashion-MNIST from IDX files, 28x28, K = 256, 10 classes",
             IMAGES)
REGISTRY.add("mnist-idx", _idx.mnist_idx, "MNIST-format IDX files under root, K = 256", IMAGES)
REGISTRY.add("folder", _images.folder, "a folder of images, optionally one sub-folder per class", IMAGES)
REGISTRY.add("npz", _images.npz, "an .npz with uint8 images in arr_0 and labels in arr_1", IMAGES)
REGISTRY.add("edm-zip", _images.edm_zip, "an EDM dataset_tool zip or folder with dataset.json labels", IMAGES)


def get(name: str, **params) -> Dataset:
    """The dataset ``name`` built with ``params`` (unknown names or parameters raise OptionError)."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    return REGISTRY.names()


def is_image(name: str) -> bool:
    """Whether dataset ``name`` holds images (``[N, C, H, W]``, K levels) rather than points ``[N, D]``."""
    return REGISTRY.info(name).image


def probe_params(name: str) -> dict[str, Any]:
    """Parameters of dataset ``name`` that make a build cheap when only its shape or density is wanted."""
    return dict(REGISTRY.info(name).probe)
