"""Image datasets from files: a folder of images, an ``.npz`` array, an EDM-style zip (or folder) with
``dataset.json``. Everything is decoded once into memory as 8-bit pixels ``[N, H, W, C]``, reduced to
``levels`` grey levels and mapped to [−1, 1]. Any bad input raises :class:`OptionError` naming the file.

Pixels v ∈ {0, …, 255} become grey levels k = round(v (K−1)/255) (the identity for K = 256), then
x = −1 + 2k/(K−1) (:func:`~diffusion_objectives.data.dataset.dequantize`).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import OptionError
from .dataset import Dataset, dequantize

__all__ = ["IMAGE_EXTENSIONS", "from_pixels", "decode_image", "stack_images", "folder", "npz", "edm_zip"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# PIL modes kept as they are (channel count = number of bands), and modes converted to one of them
_KEEP = ("L", "LA", "RGB", "RGBA")
_CONVERT = {"1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not Path(name).name.startswith(".")


def _check_levels(levels: int) -> None:
    if not 2 <= levels <= 256:
        raise OptionError(f"levels must be in [2, 256] for 8-bit images, got {levels}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise OptionError(f"limit must be a positive number of examples, got {limit}")


def from_pixels(pixels: np.ndarray, name: str, *, levels: int = 256, labels: np.ndarray | None = None,
                num_classes: int | None = None, hflip: bool = False, limit: int | None = None) -> Dataset:
    """8-bit ``pixels`` ``[N, H, W, C]`` (uint8) → a :class:`Dataset` with images ``[N, C, H, W]``.

    ``num_classes`` defaults to max(label) + 1, computed before ``limit`` keeps the first examples.
    """
    _check_levels(levels)
    _check_limit(limit)
    if labels is not None and num_classes is None:
        num_classes = int(labels.max()) + 1
    if limit is not None:
        pixels = pixels[:limit]
        labels = None if labels is None else labels[:limit]
    # a 256-entry table: pixel v → level k = round(v (K−1)/255) → bin centre −1 + 2k/(K−1)
    k = torch.round(torch.arange(256, dtype=torch.float64) * ((levels - 1) / 255.0)).to(torch.int64)
    table = dequantize(k, levels).numpy()
    x = torch.from_numpy(table[pixels]).permute(0, 3, 1, 2).contiguous()  # [N, C, H, W] float32
    return Dataset(data=x, name=name, levels=levels,
                   labels=None if labels is None else torch.as_tensor(labels, dtype=torch.int64),
                   num_classes=num_classes or 0, hflip=hflip)


def decode_image(data: bytes | Path, where: str, resolution: int | None = None) -> np.ndarray:
    """Decode one image (``data``: its bytes or its path) to uint8 ``[H, W, C]``; ``where`` names it in
    errors. With ``resolution``, centre-crop to a square and resize to ``resolution`` × ``resolution``."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in _CONVERT:
                im = im.convert(_CONVERT[mode])
            elif mode not in _KEEP:
                raise OptionError(f"{where}: unsupported image mode {mode!r} (8-bit L, LA, RGB, RGBA only)")
            if resolution is not None:
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
    except OptionError:
        raise
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise OptionError(f"{where}: cannot read image ({exc})") from exc
    return a[:, :, None] if a.ndim == 2 else a


def stack_images(items: Sequence[tuple[str, Callable[[], bytes | Path]]],
                 resolution: int | None = None) -> np.ndarray:
    """Decode ``(where, load)`` pairs and stack them to uint8 ``[N, H, W, C]``; sizes and channel counts
    must agree (an error names the first image and the one that differs)."""
    arrays: list[np.ndarray] = []
    for where, load in items:
        a = decode_image(load(), where, resolution)
        if arrays:
            first, ref = items[0][0], arrays[0]
            if a.shape[:2] != ref.shape[:2]:
                raise OptionError(
                    f"{where}: image size {a.shape[1]}x{a.shape[0]} differs from {first}: "
                    f"{ref.shape[1]}x{ref.shape[0]} (pass resolution= to resize all images)")
            if a.shape[2] != ref.shape[2]:
                raise OptionError(f"{where}: {a.shape[2]} channel(s) but {first} has {ref.shape[2]}")
        arrays.append(a)
    return np.stack(arrays)


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise OptionError(f"dataset path {p} does not exist")
    return p


# -- a folder of images --------------------------------------------------------------------------------
def folder(path: str | Path, resolution: int | None = None, levels: int = 256, hflip: bool = False,
           limit: int | None = None) -> Dataset:
    """All images directly in ``path`` (unlabelled), or in one sub-folder per class (labels = the index of
    the sub-folder in sorted order; images anywhere below it). Files are read in sorted order; ``limit``
    keeps the first ones. ``resolution`` centre-crops and resizes every image (else sizes must agree)."""
    root = _existing(path)
    if not root.is_dir():
        raise OptionError(f"{root} is not a folder")
    if resolution is not None and resolution < 1:
        raise OptionError(f"resolution must be positive, got {resolution}")
    top = sorted(p for p in root.iterdir() if p.is_file() and _is_image(p.name))
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [sorted(f for f in c.rglob("*") if f.is_file() and _is_image(f.name)) for c in classes]
    if top and any(per_class):
        raise OptionError(f"{root} mixes images and class sub-folders; use one layout")
    if top:
        files, labels, num_classes = top, None, None
    else:
        kept = [(c, fs) for c, fs in zip(classes, per_class, strict=True) if fs]
        if not kept:
            raise OptionError(f"no images found in {root} (extensions {', '.join(IMAGE_EXTENSIONS)})")
        files = [f for _, fs in kept for f in fs]
        labels = np.concatenate([np.full(len(fs), i, dtype=np.int64) for i, (_, fs) in enumerate(kept)])
        num_classes = len(kept)
    _check_limit(limit)
    n = len(files) if limit is None else min(limit, len(files))
    pixels = stack_images([(str(f), lambda f=f: f) for f in files[:n]], resolution)
    labels = None if labels is None else labels[:n]
    return from_pixels(pixels, "folder", levels=levels, labels=labels, num_classes=num_classes, hflip=hflip)


# -- an .npz with arr_0 (images) and optional arr_1 (labels) -----------------------------------------
def _layout(shape: tuple[int, ...], where: str) -> str:
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4 and shape[3] <= 4:
        return "NHWC"
    if len(shape) == 4 and shape[1] <= 4:
        return "NCHW"
    raise OptionError(f"{where}: arr_0 has shape {shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W]"
                      " with C ≤ 4")


def npz(path: str | Path, levels: int = 256, hflip: bool = False, limit: int | None = None) -> Dataset:
    """``arr_0``: 8-bit images, uint8 ``[N, H, W, C]`` (the ADM/EDM sample-batch layout), ``[N, H, W]`` or
    ``[N, C, H, W]`` (C ≤ 4); optional ``arr_1``: integer labels ``[N]``."""
    p = _existing(path)
    try:
        with np.load(p, allow_pickle=False) as f:
            if "arr_0" not in f.files:
                raise OptionError(f"{p}: no arr_0 in the npz (found: {', '.join(f.files) or 'nothing'})")
            images = f["arr_0"]
            labels = f["arr_1"] if "arr_1" in f.files else None
    except OptionError:
        raise
    except Exception as exc:
        raise OptionError(f"{p}: cannot read npz ({exc})") from exc
    if images.dtype != np.uint8:
        raise OptionError(f"{p}: arr_0 has dtype {images.dtype}; expected uint8 pixels")
    layout = _layout(images.shape, str(p))
    if images.shape[0] == 0:
        raise OptionError(f"{p}: arr_0 holds no images")
    if layout == "NHW":
        images = images[..., None]
    elif layout == "NCHW":
        images = images.transpose(0, 2, 3, 1)
    if labels is not None:
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise OptionError(f"{p}: arr_1 must be integer labels [{images.shape[0]}], got {labels.dtype} "
                              f"{list(labels.shape)}")
        if labels.min() < 0:
            raise OptionError(f"{p}: arr_1 has negative labels")
        labels = labels.astype(np.int64)
    return from_pixels(images, "npz", levels=levels, labels=labels, hflip=hflip, limit=limit)


# -- EDM dataset_tool output: a zip or folder of PNGs with dataset.json ---------------------------------
def _read_labels(text: bytes, where: str, images: Sequence[str]) -> tuple[np.ndarray | None, int | None]:
    """Parse EDM's ``{"labels": [["00000/img00000000.png", 6], ...]}`` (or ``"labels": null``)."""
    try:
        entries = json.loads(text).get("labels")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise OptionError(f"{where}: not a JSON object with 'labels' ({exc})") from exc
    if entries is None:
        return None, None
    if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int)
            and not isinstance(e[1], bool) and e[1] >= 0 for e in entries):
        raise OptionError(f"{where}: 'labels' must be a list of [file name, non-negative integer label]")
    table = dict(entries)
    known = set(images)
    for fname in table:
        if fname not in known:
            raise OptionError(f"{where}: labels name {fname}, which is not an image in the dataset")
    for fname in images:
        if fname not in table:
            raise OptionError(f"{where}: image {fname} has no label")
    labels = np.array([table[f] for f in images], dtype=np.int64)
    return labels, int(labels.max()) + 1


def edm_zip(path: str | Path, levels: int = 256, hflip: bool = False, limit: int | None = None) -> Dataset:
    """A zip (or folder) as written by EDM's ``dataset_tool.py``: images at any depth (read in sorted
    order of their '/'-separated names) and an optional ``dataset.json`` at the root with labels."""
    p = _existing(path)
    _check_limit(limit)
    if p.is_dir():
        names = sorted(f.relative_to(p).as_posix() for f in p.rglob("*") if f.is_file() and _is_image(f.name))
        json_file = p / "dataset.json"
        meta = json_file.read_bytes() if json_file.exists() else None
        labels, num_classes = _labels_and_check(p, names, meta, str(json_file))
        pixels = stack_images([(str(p / n), lambda n=n: p / n) for n in names[:limit]])
    else:
        try:
            zf = zipfile.ZipFile(p)
        except (zipfile.BadZipFile, OSError) as exc:
            raise OptionError(f"{p}: not a readable zip file ({exc})") from exc
        with zf:
            names = sorted(n for n in zf.namelist() if not n.endswith("/") and _is_image(n))
            meta = zf.read("dataset.json") if "dataset.json" in zf.namelist() else None
            labels, num_classes = _labels_and_check(p, names, meta, f"{p}:dataset.json")
            pixels = stack_images([(f"{p}:{n}", lambda n=n: zf.read(n)) for n in names[:limit]])
    return from_pixels(pixels, "edm-zip", levels=levels, labels=labels, num_classes=num_classes, hflip=hflip,
                       limit=limit)


def _labels_and_check(p: Path, names: list[str], meta: bytes | None,
                      json_where: str) -> tuple[np.ndarray | None, int | None]:
    if not names:
        raise OptionError(f"no images found in {p} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return (None, None) if meta is None else _read_labels(meta, json_where, names)
