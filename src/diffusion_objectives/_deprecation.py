"""Deprecated names and module paths: what was renamed or moved stays importable under its old name and warns.

- :func:`renamed`: a module ``__getattr__`` (PEP 562) serving a renamed public name under its old one.
- :func:`install`: module paths from before the package layout of docs/api.md ("Layout"), such as
  ``diffusion_objectives.schedules`` (now ``diffusion_objectives.core.schedules``), import the module at its new
  place and bind the old name to the same module object, so old imports, ``monkeypatch`` targets and
  ``isinstance`` checks keep working.
- :func:`forward`: the names of a module that became a package (``evaluation``, ``study``), or that moved to
  another module, served from their new place.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["renamed", "MOVED", "new_name", "install", "forward"]

def renamed(module: str, renames: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that serves each old name in ``renames`` (old -> new) as the object
    ``namespace[new]``, with a :class:`DeprecationWarning` naming the new name."""

    def __getattr__(name: str) -> Any:
        if name in renames:
            warnings.warn(f"{module}.{name} is deprecated; use {module}.{renames[name]}", DeprecationWarning,
                          stacklevel=2)
            return namespace[renames[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


# old module (relative to the package) -> its new place
MOVED = {
    "process": "core.process",
    "schedules": "core.schedules",
    "weightings": "core.weightings",
    "parameterizations": "core.parameterizations",
    "loss": "core.loss",
    "adaptive": "core.adaptive",
    "objectives": "core.objectives",
    "theory": "core.theory",
    "shifts": "core.shifts",
    "tabulated": "core.tabulated",
    "mixtures": "core.mixtures",
    "uncertainty": "training.uncertainty",
    "elbo": "likelihoods.vlb",
    "likelihood": "likelihoods.ode",
    "samplers": "sampling.samplers",
    "metrics": "evaluation.metrics",
    "phema": "training.phema",
    "report": "study.report",
    "launchers": "study.launchers",
    "adapters": "interop.adapters",
    "translate": "interop.translate",
    "pipelines": "interop.pipelines",
}
_PACKAGE = __name__.rpartition(".")[0]


def new_name(fullname: str) -> str | None:
    """``diffusion_objectives.metrics.kid`` -> ``diffusion_objectives.evaluation.metrics.kid``; ``None`` for a
    name that did not move."""
    head, _, rest = fullname.removeprefix(_PACKAGE + ".").partition(".")
    if not fullname.startswith(_PACKAGE + ".") or head not in MOVED:
        return None
    return ".".join(filter(None, [_PACKAGE, MOVED[head], rest]))


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if new_name(fullname) else None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        target = new_name(module.__name__)
        warnings.warn(f"{module.__name__} moved to {target}; import it from there", DeprecationWarning,
                      stacklevel=2)
        # the import system returns what sys.modules holds under the old name once this returns
        sys.modules[module.__name__] = importlib.import_module(target)


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())  # before the path finder, which would load a second copy


def forward(package: str, module: str, names: set[str] | None = None):
    """A module ``__getattr__`` for ``package`` whose names (all, or ``names``) now live in ``module`` (a
    submodule name, or a full module name): it returns them with a DeprecationWarning."""
    target_name = module if "." in module else f"{package}.{module}"

    def __getattr__(name: str):
        if name.startswith("__") or (names is not None and name not in names):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if names is None and importlib.util.find_spec(f"{package}.{name}") is not None:  # a submodule
            return importlib.import_module(f"{package}.{name}")
        target = importlib.import_module(target_name)
        if not hasattr(target, name):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        warnings.warn(f"{package}.{name} moved to {target_name}.{name}; import it from there",
                      DeprecationWarning, stacklevel=2)
        return getattr(target, name)

    return __getattr__
