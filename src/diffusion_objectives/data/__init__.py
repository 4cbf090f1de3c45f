"""Datasets (images know their number of grey levels K) and batching helpers.

``get(name, **params)`` returns a :class:`Dataset`; nothing is ever downloaded. Names:

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

from ..registry import Registry
from . import digits as _digits
from . import idx as _idx
from . import images as _images
from . import toy as _toy
from .dataset import Dataset, dequantize, quantize, random_hflip
from .grid import image_grid, save_image_grid
from .idx import read_idx
from .sharding import batch_indices, epoch_permutation

__all__ = [
    "Dataset",
    "REGISTRY",
    "get",
    "names",
    "quantize",
    "dequantize",
    "random_hflip",
    "batch_indices",
    "epoch_permutation",
    "image_grid",
    "save_image_grid",
    "read_idx",
]

REGISTRY: Registry[Dataset] = Registry("dataset")
REGISTRY.add("ring", _toy.ring, "8 Gaussians on a circle (2-D, closed-form density)")
REGISTRY.add("grid", _toy.grid, "5 x 5 grid of Gaussians (2-D, closed-form density)")
REGISTRY.add("anisotropic", _toy.anisotropic, "two anisotropic correlated Gaussians (2-D)")
REGISTRY.add("digits", _digits.digits, "scikit-learn digits, 8x8, K = 17, 10 classes")
REGISTRY.add("fashion-mnist", _idx.fashion_mnist, "Fashion-MNIST from IDX files, 28x28, K = 256, 10 classes")
REGISTRY.add("mnist-idx", _idx.mnist_idx, "MNIST-format IDX files under root, K = 256")
REGISTRY.add("folder", _images.folder, "a folder of images, optionally one sub-folder per class")
REGISTRY.add("npz", _images.npz, "an .npz with uint8 images in arr_0 and labels in arr_1")
REGISTRY.add("edm-zip", _images.edm_zip, "an EDM dataset_tool zip or folder with dataset.json labels")


def get(name: str, **params) -> Dataset:
    """The dataset ``name`` built with ``params`` (unknown names or parameters raise OptionError)."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    return REGISTRY.names()
