"""Peers' own code, loaded for cross-checks (shared by the tests and benchmarks/peers.py).

``import k_diffusion`` would run its package ``__init__``, which imports every submodule and with them scikit-image,
torchvision, dctorch, einops, torchdiffeq, torchsde, ... (not installed: its declared dependencies pull
torchvision and a CUDA torch). So k-diffusion is never imported: the definitions needed are taken from its
sources (``layers.py``: ``Denoiser``; ``utils.py``: ``append_dims``, the stratified uniform and the ``rand_*`` σ
samplers), which scripts/_env.sh unpacks from its wheel into the cache, and executed with torch alone: the
peer's own code, nothing rewritten.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import math
import os
import threading
import types
from pathlib import Path

import torch

UTILS = {"append_dims", "stratified_uniform", "stratified_settings", "stratified_with_settings", "rand_log_normal",
         "rand_log_logistic", "rand_log_uniform", "rand_v_diffusion", "rand_split_log_normal",
         "rand_cosine_interpolated"}
LAYERS = {"Denoiser"}


def extract(path: Path, names: set[str], namespace: dict) -> None:
    """Execute only the top-level definitions ``names`` of the source file ``path`` in ``namespace``."""
    tree = ast.parse(path.read_text(), str(path))
    keep = [n for n in tree.body
            if (isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names)
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in names for t in n.targets))]
    missing = names - {getattr(n, "name", None) or n.targets[0].id for n in keep}
    if missing:
        raise ImportError(f"{path.name} has no {', '.join(sorted(missing))}")
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102


KDIFFUSION = "0.1.1.post1"  # the version scripts/_env.sh unpacks


def kdiffusion_sources() -> tuple[Path, str] | None:
    """Where k-diffusion's package sources are, and their version: the copy scripts/_env.sh unpacks into the
    cache (``$DIFFOBJ_CACHE``, else ``$XDG_CACHE_HOME/diffusion-objectives``, else ``~/.cache/...``), or an
    installed distribution."""
    cache = os.environ.get("DIFFOBJ_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffusion-objectives")
    unpacked = Path(cache) / "peers" / f"k-diffusion-{KDIFFUSION}" / "k_diffusion"
    if (unpacked / "utils.py").is_file():
        return unpacked, KDIFFUSION
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]), importlib.metadata.version("k-diffusion")


def load_kdiffusion():
    """A namespace with k-diffusion's ``Denoiser``, ``rand_*`` samplers, ``version`` and ``how``, or a string
    saying why they are unavailable."""
    found = kdiffusion_sources()
    if found is None:
        return "not available: k-diffusion's sources (bash scripts/test unpacks them into the cache)"
    pkg, version = found
    try:
        utils_ns: dict = {"torch": torch, "math": math, "threading": threading}
        extract(pkg / "utils.py", UTILS, utils_ns)
        layers_ns: dict = {"torch": torch, "nn": torch.nn, "math": math, "utils": types.SimpleNamespace(**utils_ns)}
        extract(pkg / "layers.py", LAYERS, layers_ns)
    except (OSError, SyntaxError, ImportError) as exc:
        return f"not usable: k-diffusion {version}: its sources in {pkg} could not be read ({exc})"
    return types.SimpleNamespace(Denoiser=layers_ns["Denoiser"], version=version,
                                 how=f"sources of layers.Denoiser and utils.rand_* from {pkg}",
                                 **{n: utils_ns[n] for n in UTILS if n.startswith("rand_")})
