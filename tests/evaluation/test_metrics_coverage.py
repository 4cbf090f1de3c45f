"""Mode coverage: real data covers every class; one-class samples are flagged."""

import math

import pytest

from diffusion_objectives import data
from diffusion_objectives.evaluation.metrics import class_coverage, extractors


@pytest.fixture(scope="module")
def digits():
    return data.get("digits", split="test"), extractors.get("classifier-digits")


def test_real_test_data(digits):
    test, ext = digits
    cov = class_coverage(test.data, ext, labels=test.labels)
    assert cov.accuracy == pytest.approx(ext.test_accuracy, abs=1e-3)
    assert sum(cov.counts) == cov.n_samples == len(test)
    assert cov.missing_classes == () and cov.tv_distance < 0.1
    assert cov.entropy == pytest.approx(math.log(10), abs=0.05)
    assert cov.classifier == "classifier-digits" and cov.classifier_checksum == ext.checksum


def test_collapsed_samples(digits):
    test, ext = digits
    zeros = test.data[test.labels == 0]
    cov = class_coverage(zeros, ext)
    assert cov.accuracy is None
    assert len(cov.missing_classes) >= 9 and 0 not in cov.missing_classes
    # all mass on (about) one class: TV to uniform → 1 − 1/K, entropy → 0
    assert cov.tv_distance == pytest.approx(0.9, abs=0.03) and cov.entropy < 0.2
