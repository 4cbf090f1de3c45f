"""Tests for diffusion_objectives.data: every loader round-trips files it is given, bad files are errors
naming the file, and the batching is a function of (seed, step) alone."""

from __future__ import annotations

import gzip
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from diffusion_objectives import data
from diffusion_objectives.core import mixtures
from diffusion_objectives.data import Dataset, batch_indices, dequantize, quantize, random_hflip
from diffusion_objectives.errors import OptionError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def expected(pixels: np.ndarray, levels: int = 256) -> torch.Tensor:
    """Re-derivation of the documented map: pixel v → k = round(v (K−1)/255) → −1 + 2k/(K−1), [N, C, H, W]."""
    v = pixels.astype(np.float64)
    k = np.floor(v * (levels - 1) / 255 + 0.5)  # v (K−1)/255 is never exactly a half for K ≤ 256
    return torch.from_numpy(-1 + 2 * k / (levels - 1)).float().permute(0, 3, 1, 2)


def rng_pixels(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def save_png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(path)


# -- levels -------------------------------------------------------------------------------------------
@given(levels=st.integers(2, 256), seed=st.integers(0, 2**31))
def test_quantize_inverts_dequantize(levels, seed):
    k = torch.randint(0, levels, (50,), generator=torch.Generator().manual_seed(seed))
    x = dequantize(k, levels)
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.equal(quantize(x, levels), k)
    # a value within half a bin (2/(K−1)/2) of a centre rounds to it; values outside [−1, 1] clamp
    half = 1.0 / (levels - 1)
    assert torch.equal(quantize(x + 0.49 * half, levels), k)
    assert torch.equal(quantize(torch.tensor([-3.0, 3.0]), levels), torch.tensor([0, levels - 1]))


def test_random_hflip_flips_exactly_where_the_generator_says():
    x = torch.randn(200, 2, 3, 5)
    out = random_hflip(x, torch.Generator().manual_seed(7))
    flip = torch.rand(200, generator=torch.Generator().manual_seed(7)) < 0.5
    assert torch.equal(out[flip], x[flip].flip(-1)) and torch.equal(out[~flip], x[~flip])
    assert 0.35 < flip.float().mean() < 0.65


# -- toy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,mixture", [("ring", mixtures.ring()), ("grid", mixtures.grid()),
                                          ("anisotropic", mixtures.anisotropic_pair())])
def test_toy_datasets(name, mixture):
    ds = data.get(name, n=20_000, seed=3)
    assert ds.shape == (2,) and len(ds) == 20_000 and ds.data.dtype == torch.float32
    assert ds.levels is None and ds.labels is None and ds.num_classes == 0 and ds.mixture is not None
    assert torch.equal(ds.data, data.get(name, n=20_000, seed=3).data)  # a function of the seed
    assert not torch.equal(ds.data, data.get(name, n=20_000, seed=4).data)
    assert not torch.equal(ds.data, data.get(name, n=20_000, seed=3, split="test").data)
    # the sample moments match the closed-form mixture moments (5 standard errors)
    cov = mixture.covariance()
    se = (torch.diagonal(cov) / len(ds)).sqrt()
    assert ((ds.data.double().mean(0) - mixture.mean()).abs() < 5 * se).all()
    # sampling s.e. of a covariance entry ≈ √((Σ_ii Σ_jj + Σ_ij²)/n) (Gaussian fourth moments; 6 s.e.)
    se_cov = ((torch.diagonal(cov)[:, None] * torch.diagonal(cov)[None] + cov**2) / len(ds)).sqrt()
    assert ((torch.cov(ds.data.double().T) - cov).abs() < 6 * se_cov).all()
    # the mixture's density is the generating one: mean log-likelihood ≈ −entropy, better than a shifted copy
    assert mixture.log_prob(ds.data).mean() > mixture.log_prob(ds.data + 0.3).mean()


# -- digits -------------------------------------------------------------------------------------------
def test_digits_split_is_a_fixed_partition_of_load_digits():
    from sklearn.datasets import load_digits

    train, test = data.get("digits"), data.get("digits", split="test")
    assert train.shape == test.shape == (1, 8, 8) and train.levels == 17 and train.num_classes == 10
    assert len(test) == round(0.2 * 1797) and len(train) + len(test) == 1797
    raw = load_digits()
    rows = np.concatenate([raw.images.reshape(1797, 64), raw.target[:, None]], 1).astype(np.int64)
    ours = torch.cat([torch.cat([quantize(d.data, 17).flatten(1), d.labels[:, None]], 1) for d in (train, test)])
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, rows.tolist()))
    assert torch.equal(dequantize(quantize(train.data, 17), 17), train.data)  # values are bin centres
    assert torch.equal(data.get("digits").data, train.data)
    assert len(data.get("digits", limit=10)) == 10


# -- IDX (Fashion-MNIST / MNIST) ----------------------------------------------------------------------
def write_idx(path: Path, a: np.ndarray, code: int = 0x08) -> None:
    raw = struct.pack(">BBBB", 0, 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, suffix):
    images, labels = rng_pixels((6, 3, 5)), np.array([3, 0, 1, 3, 2, 0], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    ds = data.get("mnist-idx", root=str(tmp_path), split="test")
    assert ds.shape == (1, 3, 5) and ds.levels == 256 and ds.num_classes == 4
    assert torch.equal(ds.data, expected(images[..., None]))
    assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
    sub = data.get("mnist-idx", root=str(tmp_path), limit=2)
    assert len(sub) == 2 and sub.num_classes == 4 and torch.equal(sub.data, ds.data[:2])
    wide = rng_pixels((2, 3))
    write_idx(tmp_path / "x.idx", wide.astype(">i4"), code=0x0C)
    assert np.array_equal(data.read_idx(tmp_path / "x.idx"), wide)


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_matches_the_raw_files():
    ds = data.get("fashion-mnist", split="test", limit=64)
    assert ds.shape == (1, 28, 28) and len(ds) == 64 and ds.levels == 256 and ds.num_classes == 10
    raw = gzip.decompress((FASHION / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert struct.unpack(">4I", raw[:16]) == (0x803, 10_000, 28, 28)
    pixels = np.frombuffer(raw, np.uint8, 64 * 784, offset=16).reshape(64, 28, 28, 1)
    assert torch.equal(ds.data, expected(pixels))
    lab = np.frombuffer(gzip.decompress((FASHION / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, 64, 8)
    assert torch.equal(ds.labels, torch.from_numpy(lab.astype(np.int64)))


# -- folder / npz / edm-zip ---------------------------------------------------------------------------
def test_folder_unlabelled_and_levels(tmp_path):
    pixels = rng_pixels((4, 6, 5, 3))
    for i, a in enumerate(pixels):
        save_png(tmp_path / f"{i:02d}.png", a)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = data.get("folder", path=str(tmp_path))
    assert ds.shape == (3, 6, 5) and ds.labels is None and ds.num_classes == 0 and ds.levels == 256
    assert torch.equal(ds.data, expected(pixels))
    ds16 = data.get("folder", path=str(tmp_path), levels=16, hflip=True)
    assert ds16.levels == 16 and ds16.hflip and torch.equal(ds16.data, expected(pixels, 16))
    assert len(data.get("folder", path=str(tmp_path), limit=3)) == 3


def test_folder_classes_and_resolution(tmp_path):
    a, b = rng_pixels((2, 8, 8, 1), 1), rng_pixels((3, 8, 12, 1), 2)  # class b is wider
    for i, img in enumerate(a):
        save_png(tmp_path / "cat" / f"{i}.png", img)
    for i, img in enumerate(b):
        save_png(tmp_path / "dog" / "deeper" / f"{i}.png", img)
    ds = data.get("folder", path=str(tmp_path), resolution=4)
    assert ds.shape == (1, 4, 4) and ds.num_classes == 2 and ds.labels.tolist() == [0, 0, 1, 1, 1]
    # the documented resize: centre crop to a square, then Lanczos to the resolution
    ref = Image.fromarray(b[0, :, 2:10, 0]).resize((4, 4), Image.Resampling.LANCZOS)
    assert torch.equal(ds.data[2], expected(np.asarray(ref)[None, :, :, None])[0])


@pytest.mark.parametrize("layout", ["NHWC", "NHW", "NCHW"])
def test_npz_round_trip(tmp_path, layout):
    pixels = rng_pixels((5, 4, 6, 1 if layout == "NHW" else 3))
    arr = {"NHWC": pixels, "NHW": pixels[..., 0], "NCHW": pixels.transpose(0, 3, 1, 2)}[layout]
    labels = np.array([1, 0, 4, 1, 2])
    np.savez(tmp_path / "d.npz", arr, labels)
    ds = data.get("npz", path=str(tmp_path / "d.npz"))
    assert ds.shape == (pixels.shape[3], 4, 6) and ds.num_classes == 5 and ds.levels == 256
    assert torch.equal(ds.data, expected(pixels)) and ds.labels.tolist() == labels.tolist()
    np.savez(tmp_path / "u.npz", pixels)
    assert data.get("npz", path=str(tmp_path / "u.npz")).labels is None


def edm_layout(pixels: np.ndarray, labels: list[int] | None) -> dict[str, bytes]:
    """The files of EDM's dataset_tool output: 00000/img00000000.png, ... and dataset.json."""
    import io

    files = {}
    for i, a in enumerate(pixels):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        files[f"{i // 1000:05d}/img{i:08d}.png"] = buf.getvalue()
    table = None if labels is None else [[name, lab] for name, lab in zip(files, labels, strict=True)]
    files["dataset.json"] = json.dumps({"labels": table}).encode()
    return files


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return path


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


@pytest.mark.parametrize("container", ["zip", "folder"])
@pytest.mark.parametrize("labels", [[2, 0, 5], None])
def test_edm_zip_round_trip(tmp_path, container, labels):
    pixels = rng_pixels((3, 4, 4, 3))
    files = edm_layout(pixels, labels)
    path = write_zip(tmp_path / "d.zip", files) if container == "zip" else write_tree(tmp_path / "d", files)
    ds = data.get("edm-zip", path=str(path))
    assert ds.shape == (3, 4, 4) and torch.equal(ds.data, expected(pixels))
    if labels is None:
        assert ds.labels is None and ds.num_classes == 0
    else:
        assert ds.labels.tolist() == labels and ds.num_classes == 6


# -- bad inputs ---------------------------------------------------------------------------------------
def _mixed_sizes(root):
    save_png(root / "a.png", rng_pixels((4, 4, 1)))
    save_png(root / "b.png", rng_pixels((4, 5, 1)))
    return ("folder", dict(path=str(root)), root / "b.png")


def _mixed_channels(root):
    save_png(root / "a.png", rng_pixels((4, 4, 1)))
    save_png(root / "b.png", rng_pixels((4, 4, 3)))
    return ("folder", dict(path=str(root)), root / "b.png")


def _unreadable(root):
    save_png(root / "a.png", rng_pixels((4, 4, 1)))
    (root / "b.png").write_bytes(b"this is not a png")
    return ("folder", dict(path=str(root)), root / "b.png")


def _empty(root):
    (root / "readme.txt").write_text("no images here")
    return ("folder", dict(path=str(root)), root)


def _missing(root):
    return ("folder", dict(path=str(root / "nope")), root / "nope")


def _json_names_missing_file(root):
    files = edm_layout(rng_pixels((2, 4, 4, 3)), [0, 1])
    files["dataset.json"] = json.dumps({"labels": [["00000/img00000000.png", 0],
                                                   ["00000/img00000001.png", 1],
                                                   ["00000/img00000009.png", 1]]}).encode()
    return ("edm-zip", dict(path=str(write_zip(root / "d.zip", files))), "00000/img00000009.png")


def _json_misses_an_image(root):
    files = edm_layout(rng_pixels((2, 4, 4, 3)), [0, 1])
    files["dataset.json"] = json.dumps({"labels": [["00000/img00000000.png", 0]]}).encode()
    return ("edm-zip", dict(path=str(write_tree(root / "d", files))), "00000/img00000001.png")


def _bad_json(root):
    files = edm_layout(rng_pixels((2, 4, 4, 3)), [0, 1])
    files["dataset.json"] = b"{not json"
    return ("edm-zip", dict(path=str(write_zip(root / "d.zip", files))), root / "d.zip")


def _not_a_zip(root):
    (root / "d.zip").write_bytes(b"garbage")
    return ("edm-zip", dict(path=str(root / "d.zip")), root / "d.zip")


def _npz_not_npz(root):
    (root / "d.npz").write_bytes(b"garbage")
    return ("npz", dict(path=str(root / "d.npz")), root / "d.npz")


def _npz_no_arr_0(root):
    np.savez(root / "d.npz", images=rng_pixels((2, 4, 4, 3)))
    return ("npz", dict(path=str(root / "d.npz")), root / "d.npz")


def _npz_float(root):
    np.savez(root / "d.npz", np.zeros((2, 4, 4, 3), np.float32))
    return ("npz", dict(path=str(root / "d.npz")), root / "d.npz")


def _npz_labels_length(root):
    np.savez(root / "d.npz", rng_pixels((2, 4, 4, 3)), np.array([0, 1, 2]))
    return ("npz", dict(path=str(root / "d.npz")), root / "d.npz")


def _idx_missing_file(root):
    write_idx(root / "train-images-idx3-ubyte.gz", rng_pixels((2, 4, 4)))
    return ("mnist-idx", dict(root=str(root)), root / "train-labels-idx1-ubyte")


def _idx_truncated(root):
    write_idx(root / "train-images-idx3-ubyte", rng_pixels((2, 4, 4)))
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    return ("mnist-idx", dict(root=str(root)), path)


def _idx_bad_magic(root):
    (root / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04garbage")
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(2, np.uint8))
    return ("mnist-idx", dict(root=str(root)), root / "train-images-idx3-ubyte")


def _idx_label_count(root):
    write_idx(root / "train-images-idx3-ubyte", rng_pixels((2, 4, 4)))
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    return ("mnist-idx", dict(root=str(root)), root / "train-labels-idx1-ubyte")


def _fashion_missing_root(root):
    return ("fashion-mnist", dict(root=str(root / "absent")), root / "absent")


BAD = [_mixed_sizes, _mixed_channels, _unreadable, _empty, _missing, _json_names_missing_file,
       _json_misses_an_image, _bad_json, _not_a_zip, _npz_not_npz, _npz_no_arr_0, _npz_float,
       _npz_labels_length, _idx_missing_file, _idx_truncated, _idx_bad_magic, _idx_label_count,
       _fashion_missing_root]


@pytest.mark.parametrize("case", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_bad_data_is_an_option_error_naming_the_file(tmp_path, case):
    name, params, culprit = case(tmp_path)
    with pytest.raises(OptionError) as info:
        data.get(name, **params)
    assert str(culprit) in str(info.value)


def test_registry_and_options():
    assert set(data.names()) == {"ring", "grid", "anisotropic", "digits", "fashion-mnist", "mnist-idx",
                                 "folder", "npz", "edm-zip"}
    with pytest.raises(OptionError, match="ring"):
        data.get("rings")
    with pytest.raises(OptionError, match="nn"):
        data.get("ring", nn=3)
    with pytest.raises(OptionError, match="split"):
        data.get("ring", split="validation")
    with pytest.raises(ValueError, match="labels"):
        Dataset(data=torch.zeros(2, 2), name="x", labels=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="hflip"):
        Dataset(data=torch.zeros(2, 2), name="x", hflip=True)


# -- image grids --------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_save_image_grid_places_each_image(tmp_path, channels):
    x = dequantize(torch.randint(0, 256, (5, channels, 3, 4), generator=torch.Generator().manual_seed(0)), 256)
    grid = data.save_image_grid(x, tmp_path / "g.png", nrow=2, padding=1)
    back = np.asarray(Image.open(tmp_path / "g.png"))
    back = back[..., None] if back.ndim == 2 else back
    assert np.array_equal(back, grid) and grid.shape == (3 * 4 + 1, 2 * 5 + 1, channels)
    for i in range(5):
        r, c = divmod(i, 2)
        tile = back[1 + r * 4: 1 + r * 4 + 3, 1 + c * 5: 1 + c * 5 + 4]
        assert np.array_equal(tile, quantize(x[i], 256).permute(1, 2, 0).numpy())
    assert (back[0] == 0).all()  # padding is black


# -- batching -----------------------------------------------------------------------------------------
@given(n=st.integers(1, 60), local=st.integers(1, 9), world=st.integers(1, 4), seed=st.integers(0, 2**40),
       step=st.integers(0, 50))
def test_global_batch_is_independent_of_world_size(n, local, world, seed, step):
    batch = local * world
    whole = batch_indices(n, batch, seed, step)
    parts = [batch_indices(n, batch, seed, step, rank, world) for rank in range(world)]
    assert torch.equal(torch.cat(parts), whole)
    assert whole.dtype == torch.int64 and whole.shape == (batch,)
    assert torch.equal(whole, batch_indices(n, batch, seed, step))


@given(n=st.integers(1, 40), batch=st.integers(1, 17), seed=st.integers(0, 1000))
def test_every_epoch_visits_every_item_once(n, batch, seed):
    steps = -(-3 * n // batch)  # enough batches for three epochs
    stream = torch.cat([batch_indices(n, batch, seed, s) for s in range(steps)])
    for e in range(3):
        assert torch.equal(stream[e * n:(e + 1) * n].sort().values, torch.arange(n))


def test_batches_depend_on_seed_and_epoch():
    a, b = batch_indices(1000, 1000, 0, 0), batch_indices(1000, 1000, 1, 0)
    assert not torch.equal(a, b) and not torch.equal(a, batch_indices(1000, 1000, 0, 1))
    with pytest.raises(OptionError, match="divisible"):
        batch_indices(10, 5, 0, 0, rank=0, world_size=2)
    with pytest.raises(OptionError, match="rank"):
        batch_indices(10, 4, 0, 0, rank=2, world_size=2)


def _tiny_builds(tmp_path: Path) -> dict[str, dict]:
    """Parameters that build every registered dataset from small files written here."""
    images, labels = rng_pixels((4, 3, 5)), np.array([1, 0, 2, 1], dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    for i, a in enumerate(rng_pixels((3, 4, 4, 3))):
        save_png(tmp_path / "pngs" / f"{i}.png", a)
    np.savez(tmp_path / "d.npz", rng_pixels((3, 4, 6, 1)))
    edm = write_zip(tmp_path / "d.zip", edm_layout(rng_pixels((3, 4, 4, 3)), None))
    return {"digits": {}, "fashion-mnist": {"root": str(tmp_path)}, "mnist-idx": {"root": str(tmp_path)},
            "folder": {"path": str(tmp_path / "pngs")}, "npz": {"path": str(tmp_path / "d.npz")},
            "edm-zip": {"path": str(edm)}}


def test_is_image_agrees_with_the_data_of_every_registered_dataset(tmp_path):
    """The registry's image flag (and the probe parameters of the toy data) against what each dataset builds:
    images are [N, C, H, W] with K levels, points [N, D] continuous."""
    builds = _tiny_builds(tmp_path)
    for name in data.names():
        ds = data.get(name, **builds.get(name, {}), **data.probe_params(name))
        assert data.is_image(name) == (ds.data.ndim == 4) == (ds.levels is not None), name
        if not data.is_image(name):
            assert ds.data.shape == (16, 2) and ds.mixture is not None  # the probe: 16 points of the density
    with pytest.raises(OptionError, match="unknown dataset 'rings'; choose from: ring, grid, anisotropic, digits"):
        data.is_image("rings")
