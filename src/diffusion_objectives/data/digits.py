"""scikit-learn's ``load_digits`` (the UCI optical digits, shipped inside scikit-learn: no download):
1797 images of 8 × 8 pixels with 17 grey levels (values 0..16), 10 classes."""

from __future__ import annotations

import torch

from ..errors import OptionError
from .dataset import Dataset, dequantize
from .toy import check_split

__all__ = ["digits", "DIGITS_LEVELS", "SPLIT_SEED"]

DIGITS_LEVELS = 17
SPLIT_SEED = 0  # the train/test split is one fixed permutation, the same on every machine


def digits(split: str = "train", test_fraction: float = 0.2, hflip: bool = False,
           limit: int | None = None) -> Dataset:
    """A fixed split: a permutation drawn with seed ``SPLIT_SEED``; its first round(test_fraction · N)
    indices are the test set. Each split keeps its examples in their original order."""
    check_split(split)
    if not 0.0 < test_fraction < 1.0:
        raise OptionError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if limit is not None and limit < 1:
        raise OptionError(f"limit must be a positive number of examples, got {limit}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise OptionError("dataset 'digits' needs scikit-learn (pip install scikit-learn)") from exc
    bunch = load_digits()
    k = torch.as_tensor(bunch.images).round().to(torch.int64)  # [1797, 8, 8], values 0..16
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(k.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = round(test_fraction * k.shape[0])
    idx = (perm[:n_test] if split == "test" else perm[n_test:]).sort().values[:limit]
    return Dataset(data=dequantize(k[idx, None], DIGITS_LEVELS), name="digits", levels=DIGITS_LEVELS,
                   labels=labels[idx], num_classes=10, hflip=hflip)
