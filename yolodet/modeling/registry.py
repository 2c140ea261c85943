"""A tiny name -> builder registry (the one way a block type is added to yolodet).

Each entry records the builder and the cfg keys the block understands, so the model can reject unknown keys
with the list of known ones *before* building anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T", bound=Callable)


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    name: str
    builder: T
    keys: frozenset[str]
    doc: str = ""


class Registry(Generic[T]):
    """Maps a name to a builder plus the set of cfg keys it accepts. Duplicate names are refused."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}

    def register(self, name: str, *, keys: Iterable[str] = ()) -> Callable[[T], T]:
        """Decorator: ``@BLOCKS.register("convolutional", keys=("filters", ...))``."""

        def wrap(builder: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            doc = (builder.__doc__ or "").strip().splitlines()
            self._entries[name] = RegistryEntry(name, builder, frozenset(keys), doc[0] if doc else "")
            return builder

        return wrap

    def get(self, name: str) -> RegistryEntry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)


BLOCKS: Registry = Registry("block type")
"""Every cfg section type (``convolutional``, ``route``, ``yolo``, backbone stages ...) -> its builder."""
