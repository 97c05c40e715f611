"""One `Registry` class for every variant cxrdet chooses by name: detectors, backbones, classifiers, label formats,
tasks (and, next, competitions).

Modelled on timm's `_registry.py` and mmengine's `Registry`: a registry maps a name (what a config writes) to an
object (a builder function, a class, a record), entries are added with a decorator at import time, and a lookup of an
unknown name is an error that lists the known ones.

    DETECTORS = Registry("detector", key="model.type")

    @DETECTORS.register
    def retinanet(model_cfg, num_classes, size): ...

    DETECTORS.get("retinanet")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

from cxrdet.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind.

    Args:
        kind: What the entries are, named in errors (`detector`, `label format`, ...).
        key: Where a config names an entry (`model.type`), named in errors; default `kind`.
    """

    def __init__(self, kind: str, key: str | None = None) -> None:
        self.kind = kind
        self.key = key or kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, entry: T, *, name: str | None = None) -> T: ...

    @overload
    def register(self, entry: None = None, *, name: str | None = None) -> Callable[[T], T]: ...

    def register(self, entry: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
        """Add `entry` under `name` (default: its `__name__`); usable as `@reg.register` or
        `@reg.register(name='x')`.

        Raises:
            ValueError: The name is taken by another entry (a programming error, not a user's).
        """

        def add(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"{self.kind} registry: {obj!r} has no __name__; pass name=...")
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register throw-away entries)."""
        self._entries.pop(name, None)

    def get(self, name: Any) -> T:
        """The entry registered as `name`.

        Raises:
            ConfigError: Unknown name; the message lists the registered ones.
        """
        if name not in self._entries:
            raise ConfigError(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: Any) -> str:
        """The message for an unknown name (for callers that add their own hint)."""
        return f"{self.key}={name!r} is not a registered {self.kind}; expected one of {self.names()}"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """Registered names in the order they were registered (the default first, where there is one)."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs, sorted by name."""
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
