"""Name → constructor tables. Strings become objects here and nowhere else (no string dispatch elsewhere)."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import OptionError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A table of named constructors whose keyword parameters are validated before the call.

    ``get(name, **params)`` raises :class:`OptionError` naming the unknown name (and listing the known
    ones), the unknown parameter (and listing the accepted ones), or a parameter given a non-finite number:
    NaN always, ±inf unless the parameter is named in ``infinite`` or its default is itself infinite. Every
    route that builds an object from user input (the CLI specs, ``--set``, YAML configs) passes through here.
    """

    def __init__(self, kind: str, infinite: tuple[str, ...] = ()):
        self.kind = kind
        self.infinite = frozenset(infinite)  # parameters for which ±inf means something (e.g. logsnr_min)
        self._entries: dict[str, tuple[Callable[..., T], str]] = {}
        self._info: dict[str, Any] = {}

    def register(self, name: str, summary: str = "",
                 info: Any = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` as ``name``; ``info`` is what callers may ask about the entry
        without building it (e.g. whether a dataset holds images), see :meth:`info`."""
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = (factory, summary)
            self._info[name] = info
            return factory

        return decorator

    def add(self, name: str, factory: Callable[..., T], summary: str = "", info: Any = None) -> None:
        self.register(name, summary, info)(factory)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def summary(self, name: str) -> str:
        return self._entry(name)[1]

    def info(self, name: str) -> Any:
        """The ``info`` registered with ``name`` (None if none); unknown names raise like :meth:`get`."""
        self._entry(name)
        return self._info[name]

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
        _check_finite(self.kind, name, params, accepted, self.infinite)
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


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_finite(kind: str, name: str, params: dict[str, Any], accepted: dict[str, Any],
                  infinite: frozenset[str]) -> None:
    """NaN is never a parameter; ±inf only where the registry allows it or the default is infinite
    (``s_max=inf``)."""
    for key, value in params.items():
        if not _is_number(value) or math.isfinite(value):
            continue
        default = accepted.get(key)
        if math.isnan(value) or not (key in infinite or (_is_number(default) and math.isinf(default))):
            raise OptionError(f"{kind} {name!r}: parameter {key} must be a finite number, got {value}")
