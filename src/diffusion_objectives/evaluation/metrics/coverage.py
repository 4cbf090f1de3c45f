r"""Mode coverage read off a classifier: how generated samples spread over the classes.

For unconditional samples the predicted-label histogram :math:`\hat q` is compared with the class
distribution π of the data (uniform unless given): total variation :math:`\tfrac12 \sum_k |\hat q_k - \pi_k|`,
the entropy of :math:`\hat q` (log K when uniform) and the classes that receive under 10 % of their
expected share. For class-conditional samples, ``accuracy`` is the fraction classified as the label they
were generated for; the classifier's own test accuracy (recorded alongside) is its ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .results import MetricResult

__all__ = ["ClassCoverage", "class_coverage"]

MISSING_FRACTION = 0.1


@dataclass(frozen=True)
class ClassCoverage(MetricResult):
    counts: tuple[int, ...]
    n_samples: int
    entropy: float
    tv_distance: float
    missing_classes: tuple[int, ...]
    accuracy: float | None
    classifier: str
    classifier_checksum: str
    classifier_test_accuracy: float


def class_coverage(images, classifier, labels=None, class_distribution=None) -> ClassCoverage:
    """Coverage statistics (above) of ``images`` ``[N, C, H, W]`` under ``classifier`` (a
    :class:`~.extractors.ClassifierExtractor`); ``labels`` ``[N]``: the classes the samples were
    conditioned on; ``class_distribution`` ``[K]``: π (default uniform)."""
    pred = classifier.predict(images).numpy()
    k = classifier.model.head.out_features
    counts = np.bincount(pred, minlength=k)
    q = counts / counts.sum()
    pi = np.full(k, 1.0 / k) if class_distribution is None else np.asarray(class_distribution, np.float64)
    pi = pi / pi.sum()
    nz = q[q > 0]
    accuracy = None
    if labels is not None:
        accuracy = float((pred == torch.as_tensor(labels).numpy()).mean())
    return ClassCoverage(
        counts=tuple(int(c) for c in counts),
        n_samples=int(counts.sum()),
        entropy=float(-(nz * np.log(nz)).sum()),
        tv_distance=float(0.5 * np.abs(q - pi).sum()),
        missing_classes=tuple(int(c) for c in np.flatnonzero(q < MISSING_FRACTION * pi)),
        accuracy=accuracy,
        classifier=classifier.name,
        classifier_checksum=classifier.checksum,
        classifier_test_accuracy=classifier.test_accuracy,
    )
