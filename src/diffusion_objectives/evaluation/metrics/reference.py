"""Reference statistics on disk: an ``.npz`` with ``mu`` ``[D]`` and ``sigma`` ``[D, D]`` (EDM / clean-fid).

Files written here may carry extra scalar string entries (``extractor``, ``extractor_checksum``,
``n_samples``) that other readers ignore; files from EDM or clean-fid (only ``mu`` and ``sigma``) load too.
Every loaded reference carries the sha256 of its file, which results record.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import OptionError
from .frechet import as_float64

__all__ = ["Reference", "load_reference", "save_reference", "sha256_file", "read_npz"]

_META_KEYS = ("extractor", "extractor_checksum", "n_samples")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Reference:
    """Reference statistics and where they came from (``meta``: the optional entries, as strings)."""

    mu: np.ndarray
    sigma: np.ndarray
    path: str
    checksum: str
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.mu.shape[0]


def save_reference(path: str | Path, mu, sigma, *, extractor=None, n_samples: int | None = None) -> Reference:
    """Write ``mu`` ``[D]`` and ``sigma`` ``[D, D]`` (float64) to exactly ``path``; returns what a load gives.

    ``extractor`` (an object with ``.name`` and ``.checksum``) and ``n_samples`` are stored as metadata.
    """
    mu, sigma = as_float64(mu), as_float64(sigma)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"need mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
    meta = {}
    if extractor is not None:
        meta.update(extractor=str(extractor.name), extractor_checksum=str(extractor.checksum))
    if n_samples is not None:
        meta["n_samples"] = str(int(n_samples))
    path = Path(path)
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz" to the name
        np.savez(f, mu=mu, sigma=sigma, **{k: np.array(v) for k, v in meta.items()})
    return load_reference(path)


def read_npz(path: str | Path, what: str, expected: str) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file ``path`` (read without pickles). An empty file, a file that is not an
    ``.npz`` (zip) archive or a damaged one is an :class:`OptionError` ``"<what> is ...; expected <expected>"``."""
    raw = Path(path).read_bytes()
    if not raw:
        raise OptionError(f"{what} is empty (0 bytes); expected {expected}")
    if not raw.startswith(b"PK"):
        raise OptionError(f"{what} is not an .npz (zip) archive; expected {expected}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise OptionError(f"cannot read {what} ({exc}); expected {expected}") from None


def load_reference(path: str | Path) -> Reference:
    """Read an ``.npz`` holding ``mu`` ``[D]`` and ``sigma`` ``[D, D]``; an :class:`OptionError` names the
    file and what was expected when it is missing or malformed."""
    path = Path(path)
    expected = "an .npz file with arrays 'mu' [D] and 'sigma' [D, D] (EDM / clean-fid reference statistics)"
    if not path.is_file():
        raise OptionError(f"reference statistics {str(path)!r} not found; expected {expected}")
    arrays = read_npz(path, f"reference statistics {str(path)!r}", expected)
    missing = [k for k in ("mu", "sigma") if k not in arrays]
    if missing:
        raise OptionError(
            f"reference statistics {str(path)!r} lacks {', '.join(missing)} "
            f"(has: {', '.join(arrays) or 'nothing'});"
            f" expected {expected}"
        )
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or not (
        np.isfinite(mu).all() and np.isfinite(sigma).all()
    ):
        raise OptionError(
            f"reference statistics {str(path)!r} has mu {mu.shape} and sigma {sigma.shape} "
            f"(or non-finite values);"
            f" expected {expected}"
        )
    meta = {k: str(arrays[k]) for k in _META_KEYS if k in arrays}
    return Reference(mu, sigma, str(path), sha256_file(path), meta)
