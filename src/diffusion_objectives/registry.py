"""Name → constructor tables. Strings become objects here and nowhere else (STYLE: no string dispatch)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import OptionError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A table of named constructors whose keyword parameters are validated before the call.

    ``get(name, **params)`` raises :class:`OptionError` naming the unknown name (and listing the known
    ones) or the unknown parameter (and listing the accepted ones).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[Callable[..., T], str]] = {}

    def register(self, name: str, summary: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = (factory, summary)
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., T], summary: str = "") -> None:
        self.register(name, summary)(factory)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def summary(self, name: str) -> str:
        return self._entry(name)[1]

    def parameters(self, name: str) -> dict[str, Any]:
        """The keyword parameters ``name`` accepts, with their defaults (``inspect.Parameter.empty`` if required)."""
        factory = self._entry(name)[0]
        return {
            p.name: p.default
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def get(self, name: str, **params: Any) -> T:
        factory = self._entry(name)[0]
        accepted = self.parameters(name)
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            allowed = ", ".join(accepted) or "none"
            raise OptionError(
                f"unknown parameter(s) {', '.join(unknown)} for {self.kind} {name!r}; allowed: {allowed}"
            )
        missing = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in params]
        if missing:
            raise OptionError(f"{self.kind} {name!r} needs parameter(s): {', '.join(missing)}")
        try:
            return factory(**params)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, OptionError):
                raise
            raise OptionError(f"{self.kind} {name!r}: {exc}") from exc

    def _entry(self, name: str) -> tuple[Callable[..., T], str]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise OptionError(
                f"unknown {self.kind} {name!r}; choose from: {', '.join(self._entries)}"
            ) from None
