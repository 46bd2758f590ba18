"""A small name -> factory registry with helpful errors.

Example:
    >>> from celltune.registry import Registry
    >>> colors = Registry("color")
    >>> @colors.register("red")
    ... def make_red():
    ...     return (255, 0, 0)
    >>> colors.get("RED")()
    (255, 0, 0)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from celltune.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Maps lower-cased names to factories; unknown names raise ConfigError listing valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, F] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``; ``info`` is free metadata for listings."""
        key = name.lower()

        def decorator(fn: F) -> F:
            if key in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[key] = fn
            self._info[key] = dict(info)
            return fn

        return decorator

    def get(self, name: str) -> F:
        key = str(name).lower()
        if key not in self._items:
            raise ConfigError(self.unknown_message(name))
        return self._items[key]

    def info(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._info[str(name).lower()])

    def unknown_message(self, name: str) -> str:
        valid = ", ".join(self.names())
        close = difflib.get_close_matches(str(name).lower(), self.names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"Unknown {self.kind} {name!r}; valid names are: {valid}.{hint}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
