"""Recorded results: :class:`MetricResult`, the base of the metrics' result records (their fields as a JSON-ready
dict), and FD results, the value together with everything needed to compare it (results carry their
provenance). An Inception FID from fewer than 50,000 samples is allowed, but its label says so."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from ...errors import OptionError
from .frechet import feature_statistics, frechet_distance
from .reference import Reference, load_reference, save_reference

__all__ = [
    "MetricResult", "FDResult", "fd_result", "fd_of_features", "evaluate_fd", "dataset_reference", "check_reference",
    "format_seeds",
    "PUBLISHED_FID_SAMPLES",
]

PUBLISHED_FID_SAMPLES = 50_000


def format_seeds(seeds: Iterable[int]) -> str:
    """Seeds as compact ranges, e.g. ``[0, 1, 2, 7]`` → ``"0-2,7"`` (EDM's ``--seeds`` syntax)."""
    out: list[str] = []
    run: list[int] = []
    for s in [int(s) for s in seeds]:
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


class MetricResult:
    """A metric's result record (a frozen dataclass deriving from this): :meth:`as_dict` gives its fields, for
    ``metrics.json``."""

    def as_dict(self) -> dict:
        return asdict(self)


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


@dataclass(frozen=True)
class FDResult(MetricResult):
    value: float
    n_samples: int
    extractor: str
    extractor_checksum: str
    reference: str
    reference_checksum: str
    seeds: str
    label: str


def fd_result(value: float, *, n_samples: int, extractor, reference: Reference,
              seeds: Iterable[int] | str = ()) -> FDResult:
    """An :class:`FDResult` for ``value`` computed from ``n_samples`` samples with ``extractor`` (``.name``,
    ``.checksum``) against ``reference``; ``seeds``: those of the samples (a list or a range string)."""
    seeds = seeds if isinstance(seeds, str) else format_seeds(seeds)
    if extractor.name == "inception":
        label = f"FID (Inception, {_count(n_samples)} samples"
        if n_samples < PUBLISHED_FID_SAMPLES:
            label += "; < 50k: not comparable to published FID"
        label += ")"
    else:
        label = f"FD ({extractor.name} features, {_count(n_samples)} samples; not an FID)"
    return FDResult(float(value), int(n_samples), extractor.name, extractor.checksum, reference.path,
                    reference.checksum, seeds, label)


def check_reference(reference: Reference, extractor) -> None:
    """Raise :class:`OptionError` unless ``reference`` has ``extractor``'s feature dimension and (when it
    records them) its name and checksum."""
    if reference.dim != extractor.dim:
        raise OptionError(f"reference statistics {reference.path!r} are {reference.dim}-d but extractor "
                          f"{extractor.name!r} gives {extractor.dim}-d features")
    name, checksum = reference.meta.get("extractor"), reference.meta.get("extractor_checksum")
    if name not in (None, extractor.name) or checksum not in (None, extractor.checksum):
        raise OptionError(f"reference statistics {reference.path!r} were computed with extractor {name!r} "
                          f"(sha256 {checksum}), not {extractor.name!r} (sha256 {extractor.checksum})")


def fd_of_features(features, extractor, reference: Reference, *, seeds: Iterable[int] | str = ()) -> FDResult:
    """FD between the statistics of ``features`` ``[N, D]`` (computed by ``extractor``) and ``reference``."""
    mu, sigma = feature_statistics(features)
    value = frechet_distance(mu, sigma, reference.mu, reference.sigma)
    return fd_result(value, n_samples=features.shape[0], extractor=extractor, reference=reference, seeds=seeds)


def evaluate_fd(images, extractor, reference: Reference | str | Path, *,
                seeds: Iterable[int] | str = ()) -> FDResult:
    """FD between the features of ``images`` ``[N, C, H, W]`` in [−1, 1] and ``reference`` statistics."""
    if not isinstance(reference, Reference):
        reference = load_reference(reference)
    check_reference(reference, extractor)
    return fd_of_features(extractor(images), extractor, reference, seeds=seeds)


def dataset_reference(images, extractor, path: str | Path) -> Reference:
    """Compute the statistics of ``images`` (e.g. ``data.get(...).data``) with ``extractor``, save them to
    ``path`` with the extractor's name, checksum and the sample count, and return them."""
    features = extractor(images)
    mu, sigma = feature_statistics(features)
    return save_reference(path, mu, sigma, extractor=extractor, n_samples=features.shape[0])
