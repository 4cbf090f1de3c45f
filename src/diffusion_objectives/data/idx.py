"""MNIST-format IDX files (Fashion-MNIST, MNIST, KMNIST, ...): a big-endian header, then raw values.

Header: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions d, then d big-endian
uint32 sizes. Files may be gzip-compressed (``.gz``). The Debian package ``dataset-fashion-mnist``
installs Fashion-MNIST at ``/usr/share/datasets/fashion-mnist``; nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..errors import OptionError
from .dataset import Dataset
from .images import from_pixels
from .toy import check_split

__all__ = ["read_idx", "idx_dataset", "fashion_mnist", "mnist_idx", "FASHION_MNIST_ROOT"]

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in one IDX file (gzip-compressed if its name ends in ``.gz``)."""
    p = Path(path)
    try:
        raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
    except (OSError, EOFError) as exc:
        raise OptionError(f"{p}: cannot read ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _TYPES:
        raise OptionError(f"{p}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = _TYPES[raw[2]], raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise OptionError(f"{p}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    size = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - start != size:
        raise OptionError(f"{p}: IDX header says {dims} ({size} bytes of data), file has {len(raw) - start}")
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise OptionError(f"missing {root / stem}.gz (or {stem} uncompressed)")


def idx_dataset(root: str | Path, split: str, name: str, *, hflip: bool = False,
                limit: int | None = None) -> Dataset:
    """``{train,t10k}-images-idx3-ubyte[.gz]`` + ``...-labels-idx1-ubyte[.gz]`` under ``root``: uint8 images
    ``[N, H, W]`` (K = 256) with labels; num_classes = max(label) + 1 over the whole split."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise OptionError(f"dataset root {r} does not exist (or is not a folder)")
    prefix = {"train": "train", "test": "t10k"}[check_split(split)]
    images_file, labels_file = _find(r, f"{prefix}-images-idx3-ubyte"), _find(r, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise OptionError(f"{images_file}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.shape != images.shape[:1] or labels.dtype != np.uint8:
        raise OptionError(f"{labels_file}: expected {images.shape[0]} uint8 labels, got {labels.dtype} "
                          f"{labels.shape}")
    return from_pixels(images[..., None], name, labels=labels.astype(np.int64), hflip=hflip, limit=limit)


def fashion_mnist(split: str = "train", root: str = FASHION_MNIST_ROOT, hflip: bool = False,
                  limit: int | None = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 28 × 28 grey, K = 256, 10 classes; 60 000 train / 10 000 test."""
    return idx_dataset(root, split, "fashion-mnist", hflip=hflip, limit=limit)


def mnist_idx(root: str, split: str = "train", hflip: bool = False, limit: int | None = None) -> Dataset:
    """Any dataset in the MNIST IDX layout under ``root`` (MNIST itself, KMNIST, ...)."""
    return idx_dataset(root, split, "mnist-idx", hflip=hflip, limit=limit)
