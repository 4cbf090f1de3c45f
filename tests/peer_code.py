"""Peers' own code, loaded for cross-checks (shared by the tests and benchmarks/peers.py).

``import k_diffusion`` runs its package ``__init__``, which imports every submodule and with them scikit-image,
torchvision, dctorch, einops, torchdiffeq, torchsde, ... (not installed: its declared dependencies pull
torchvision and a CUDA torch). If that import fails, the definitions needed are taken from the installed sources
(``layers.py``: ``Denoiser``; ``utils.py``: ``append_dims``, the stratified uniform and the ``rand_*`` σ
samplers) and executed with torch alone: the peer's own code, nothing rewritten.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import math
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


def load_kdiffusion():
    """A namespace with k-diffusion's ``Denoiser``, ``rand_*`` samplers, ``version`` and ``how``, or a string
    saying why they are unavailable."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return "not installed: k-diffusion (pip install --no-deps k-diffusion)"
    version = importlib.metadata.version("k-diffusion")
    try:
        import k_diffusion
        return types.SimpleNamespace(Denoiser=k_diffusion.layers.Denoiser, version=version, how="import k_diffusion",
                                     **{n: getattr(k_diffusion.utils, n) for n in UTILS if n.startswith("rand_")})
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
    pkg = Path(spec.submodule_search_locations[0])
    try:
        utils_ns: dict = {"torch": torch, "math": math, "threading": threading}
        extract(pkg / "utils.py", UTILS, utils_ns)
        layers_ns: dict = {"torch": torch, "nn": torch.nn, "math": math, "utils": types.SimpleNamespace(**utils_ns)}
        extract(pkg / "layers.py", LAYERS, layers_ns)
    except (OSError, SyntaxError, ImportError) as exc:
        return f"not usable: k-diffusion {version}: `import k_diffusion` fails ({why}) and its sources could " \
               f"not be read ({exc})"
    return types.SimpleNamespace(Denoiser=layers_ns["Denoiser"], version=version,
                                 how=f"sources of layers.Denoiser and utils.rand_* (`import k_diffusion` fails: {why})",
                                 **{n: utils_ns[n] for n in UTILS if n.startswith("rand_")})
