"""Name registries: a new task, user simulator, judge or back end is one file and one decorator.

>>> from refuel_env.registry import USERS
>>> @USERS.register("my-user")
... class MyUser: ...
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, hint: str | None = None):
        self.kind = kind
        self.hint = hint or (f"pass an object that implements the {kind} protocol, or register your own with "
                             f"refuel_env.registry.{kind.upper().replace(' ', '_')}S.register(name)")
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries[name]!r})")
            self._entries[name] = factory
            return factory

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none)'}. "
                           f"Pass one of these names, or {self.hint}.") from None

    def make(self, spec: Any, **kwargs) -> T:
        """Build from a registered name, or return ``spec`` itself if it already is an object."""
        if isinstance(spec, str):
            return self.get(spec)(**kwargs)
        if spec is None:
            raise ValueError(f"no {self.kind} given")
        return spec

    def __contains__(self, name: str) -> bool:
        return name in self._entries


TASKS: Registry = Registry("task")
USERS: Registry = Registry("user")
JUDGES: Registry = Registry("judge")
BACKENDS: Registry = Registry("backend")
