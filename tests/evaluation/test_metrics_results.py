"""FD records: provenance fields, the < 50k label, and an end-to-end FD on real digits."""

import numpy as np
import pytest

from diffusion_objectives import data
from diffusion_objectives.errors import OptionError
from diffusion_objectives.evaluation.metrics import (
    dataset_reference,
    evaluate_fd,
    extractors,
    fd_result,
    save_reference,
)
from diffusion_objectives.evaluation.metrics.reference import Reference
from diffusion_objectives.evaluation.metrics.results import format_seeds


class Inception:
    name, checksum, dim = "inception", "c" * 64, 2048


REF = Reference(np.zeros(2), np.eye(2), "/refs/x.npz", "d" * 64)


def test_format_seeds():
    assert format_seeds(range(50_000)) == "0-49999"
    assert format_seeds([0, 1, 2, 7, 9, 10]) == "0-2,7,9-10"
    assert format_seeds([]) == ""


def test_label_marks_inception_fid_below_50k():
    small = fd_result(3.2, n_samples=10_000, extractor=Inception(), reference=REF, seeds=range(10_000))
    assert small.label == "FID (Inception, 10k samples; < 50k: not comparable to published FID)"
    full = fd_result(3.2, n_samples=50_000, extractor=Inception(), reference=REF, seeds="0-49999")
    assert full.label == "FID (Inception, 50k samples)"
    d = small.as_dict()
    assert d["extractor_checksum"] == "c" * 64 and d["reference"] == "/refs/x.npz"
    assert d["reference_checksum"] == "d" * 64 and d["seeds"] == "0-9999" and d["n_samples"] == 10_000


def test_fd_on_digits_end_to_end(tmp_path):
    ext = extractors.get("classifier-digits")
    train, test = data.get("digits", split="train"), data.get("digits", split="test")
    ref = dataset_reference(train.data, ext, tmp_path / "digits-train.npz")
    assert ref.meta == {"extractor": ext.name, "extractor_checksum": ext.checksum, "n_samples": str(len(train))}
    same = evaluate_fd(train.data, ext, ref)
    assert abs(same.value) < 1e-6
    result = evaluate_fd(test.data, ext, tmp_path / "digits-train.npz", seeds=[])
    assert result.value > 0 and result.n_samples == len(test) and result.reference_checksum == ref.checksum
    assert result.label == f"FD (classifier-digits features, {len(test)} samples; not an FID)"
    # the wrong extractor for these statistics is refused
    save_reference(tmp_path / "other.npz", ref.mu, ref.sigma, extractor=Inception())
    with pytest.raises(OptionError, match="inception"):
        evaluate_fd(test.data, ext, tmp_path / "other.npz")
