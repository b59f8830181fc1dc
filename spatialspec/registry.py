"""A tiny name -> object registry filled by decorator (as timm's ``@register_model``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; lookups of unknown names list the valid ones.

    Args:
        kind: What is registered (used in error messages), e.g. ``"method"``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name``."""

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            KeyError: ``name`` is unknown; the message lists the valid names.
        """
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none registered)"
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def name_of(self, obj: object) -> str:
        """The name ``obj`` is registered under (for classes, also a subclass's nearest base)."""
        for name, item in self._items.items():
            if item is obj:
                return name
        for klass in getattr(obj, "__mro__", ())[1:]:
            for name, item in self._items.items():
                if item is klass:
                    return name
        raise KeyError(f"{obj!r} is not a registered {self.kind}")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
