"""Reference statistics: .npz round trip, foreign (EDM / clean-fid) files, and clear errors."""

import hashlib

import numpy as np
import pytest

from diffusion_objectives.errors import OptionError
from diffusion_objectives.evaluation.metrics import load_reference, save_reference


class FakeExtractor:
    name, checksum, dim = "fake", "ab" * 32, 4


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mu, a = rng.standard_normal(4), rng.standard_normal((4, 4))
    sigma = a @ a.T
    path = tmp_path / "ref.npz"
    saved = save_reference(path, mu, sigma, extractor=FakeExtractor(), n_samples=123)
    loaded = load_reference(path)
    np.testing.assert_array_equal(loaded.mu, mu)
    np.testing.assert_array_equal(loaded.sigma, sigma)
    assert loaded.checksum == hashlib.sha256(path.read_bytes()).hexdigest() == saved.checksum
    assert loaded.meta == {"extractor": "fake", "extractor_checksum": "ab" * 32, "n_samples": "123"}
    assert loaded.path == str(path) and loaded.dim == 4


def test_path_is_kept_exactly(tmp_path):
    path = tmp_path / "stats"  # np.savez would write stats.npz
    save_reference(path, np.zeros(2), np.eye(2))
    assert path.is_file() and not (tmp_path / "stats.npz").exists()


def test_reads_edm_style_file(tmp_path):
    path = tmp_path / "edm.npz"
    np.savez(path, mu=np.ones(3, np.float32), sigma=np.eye(3, dtype=np.float32))
    ref = load_reference(path)
    assert ref.mu.dtype == np.float64 and ref.meta == {}
    np.testing.assert_array_equal(ref.sigma, np.eye(3))


@pytest.mark.parametrize("case", ["missing", "not-npz", "no-sigma", "bad-shape", "pickled"])
def test_errors_name_the_file(tmp_path, case):
    path = tmp_path / f"{case}.npz"
    if case == "not-npz":
        path.write_text("hello")
    elif case == "no-sigma":
        np.savez(path, mu=np.zeros(3))
    elif case == "bad-shape":
        np.savez(path, mu=np.zeros(3), sigma=np.eye(2))
    elif case == "pickled":
        np.savez(path, mu=np.zeros(2), sigma=np.array([{"a": 1}], dtype=object))
    with pytest.raises(OptionError, match=case) as info:
        load_reference(path)
    assert "'mu'" in str(info.value) and "'sigma'" in str(info.value)


def test_save_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError):
        save_reference(tmp_path / "x.npz", np.zeros(3), np.eye(2))
