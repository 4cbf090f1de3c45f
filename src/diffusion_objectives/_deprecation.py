"""Deprecated aliases: a renamed public name stays importable under its old name and warns (issue 11)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["renamed"]


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
