"""A name -> class registry with a decorator and an error that lists valid names.

Used for strategies (server), selectors (client, ``query/``) and query actions
(client), so every lookup of an unknown name fails the same way: naming the
kind, the bad name and the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(dict[str, T], Generic[T]):
    """A dict of registered objects; ``kind`` names them in error messages."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.plural = plural or f"{kind}s"

    def register(self, name: str, *, set_name: bool = True) -> Callable[[T], T]:
        """Decorator adding the decorated object under ``name`` (sets ``obj.name`` for classes)."""

        def deco(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if set_name and isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            self[name] = obj
            return obj

        return deco

    def lookup(self, name: str) -> T:
        if name not in self:
            raise ValueError(f"{self.kind}: unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(sorted(self))}")
        return self[name]
