"""Name -> function registries: the extension points (rewards, advantage estimators, losses, samplers).

A registered object is looked up by its name from a recipe. A name of the form ``module.path:attr``
imports a user's object without registering it. Unknown names fail with the closest valid name.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_options(fn: Callable, options: dict, where: str) -> None:
    """Fail early, naming the key, when a recipe passes an option that ``fn`` does not take.

    Options are the parameters with a default (or keyword-only); the leading positional inputs (the sample,
    the loss batch, ...) are not options, so a recipe key with that name is rejected too.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not p.empty]
    for key in options:
        if key not in names:
            raise KeyError(f"{where}: unknown option '{key}'{did_you_mean(key, names)}; valid: {', '.join(names)}")


def import_object(spec: str):
    """Import ``package.module:attr`` (attr may be dotted)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise KeyError(f"cannot import module '{module_name}' for '{spec}': {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise KeyError(f"module '{module_name}' has no attribute '{attr}' (from '{spec}')")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """A named table of objects with a decorator to add to it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, **attrs) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")``. Extra ``attrs`` are set on the object (e.g. ``per_group``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__
            if key in self._items and self._items[key] is not obj:
                raise KeyError(f"{self.kind} '{key}' is already registered")
            for k, v in attrs.items():
                setattr(obj, k, v)
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if ":" in name:
            return import_object(name)
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; known: {known}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
