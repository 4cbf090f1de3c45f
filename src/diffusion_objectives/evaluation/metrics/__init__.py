"""Sample-quality metrics: Fréchet distance and KID on extractor features, reference statistics,
mode coverage, and exact metrics for the toy densities. See docs/metrics.md."""

from . import extractors
from .coverage import ClassCoverage, class_coverage
from .extractors import ClassifierExtractor, Extractor, InceptionExtractor
from .frechet import feature_statistics, frechet_distance
from .kid import KIDResult, kid, mmd2_unbiased, polynomial_kernel
from .reference import Reference, load_reference, save_reference, sha256_file
from .results import FDResult, check_reference, dataset_reference, evaluate_fd, fd_of_features, fd_result, format_seeds
from .toy import ToyMetrics, cross_entropy, knn_entropy, mmd_rbf, reverse_kl, sliced_wasserstein, toy_metrics

__all__ = [
    "ClassCoverage",
    "ClassifierExtractor",
    "Extractor",
    "FDResult",
    "InceptionExtractor",
    "KIDResult",
    "Reference",
    "ToyMetrics",
    "check_reference",
    "class_coverage",
    "cross_entropy",
    "dataset_reference",
    "evaluate_fd",
    "extractors",
    "fd_of_features",
    "fd_result",
    "format_seeds",
    "feature_statistics",
    "frechet_distance",
    "kid",
    "knn_entropy",
    "load_reference",
    "mmd2_unbiased",
    "mmd_rbf",
    "polynomial_kernel",
    "reverse_kl",
    "save_reference",
    "sha256_file",
    "sliced_wasserstein",
    "toy_metrics",
]


def get_extractor(name: str, **params) -> Extractor:
    """An extractor by registry name (``inception``, ``classifier-digits``, ``classifier-fashion-mnist``)."""
    return extractors.get(name, **params)


def extractor_names() -> list[str]:
    return extractors.names()


__all__ += ["get_extractor", "extractor_names"]
