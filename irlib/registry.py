"""The one "name -> thing" table of irlib (models, losses, datasets, rerankers, checkpoint converters), timm-style:
register with a decorator, look up with an error that lists the names and the closest ones, list with a pattern.

It sits at the bottom of irlib and imports nothing of it."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Registry(Generic[T]):
    """Things of one ``kind`` (e.g. ``"method"``) by name.

    Args:
        kind: what a name names, in messages (``"Unknown method 'x'. Available methods: ..."``).
        plural: its plural (default ``kind + "s"``).
        populate: called before every look-up and listing, e.g. to import the modules that register themselves.
    """

    def __init__(self, kind: str, plural: str | None = None, populate: Callable[[], None] | None = None) -> None:
        self.kind, self.plural = kind, plural or f"{kind}s"
        self._populate = populate
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, thing: T) -> T: ...

    def register(self, name: str, thing: object = None) -> object:
        """Register ``thing`` as ``name`` (or, without ``thing``, return a decorator that does); a name registered
        twice raises ValueError."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind.capitalize()} {name!r} is already registered (by {self._items[name]!r}).")
            self._items[name] = item
            return item

        return add if thing is None else add(thing)  # type: ignore[arg-type]

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names, optionally filtered by an fnmatch ``pattern`` (e.g. ``"ge*"``)."""
        if self._populate is not None:
            self._populate()
        names = sorted(self._items)
        return names if pattern is None else fnmatch.filter(names, pattern)

    def get(self, name: str) -> T:
        """The thing registered as ``name``; an unknown name raises ValueError listing the names (and close ones)."""
        names = self.names()
        if name not in self._items:
            close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"Unknown {self.kind} {name!r}. Available {self.plural}: {', '.join(names) or '(none)'}.{hint}"
            )
        return self._items[name]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        """``(name, thing)`` pairs in name order."""
        return [(n, self._items[n]) for n in self.names()]
