"""Name -> function registries: the extension points (rewards, advantage estimators, losses, samplers).

A registered object is looked up by its name from a recipe. A name of the form ``module.path:attr`` (or
``path/to/file.py:attr``) imports a user's object without registering it; modules are found on ``sys.path``
or in the current directory, as ``python -m`` would find them, whatever started the process. Unknown names
fail with the closest valid name.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

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
            valid = f"valid: {', '.join(names)}" if names else "it takes no options"
            raise KeyError(f"{where}: unknown option '{key}'{did_you_mean(key, names)}; {valid}")


def _load_file(path: Path):
    """A ``.py`` file as the module named after it (once: a second load returns the first)."""
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path.resolve():
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_module_or_file(name: str):
    """Import a module by dotted name, or a ``.py`` file by path (relative to the current directory).

    Why the current directory: the ``longcot`` console script does not put it on ``sys.path`` (``python -m``
    does), so ``--rewards myfile:fn`` would find ``myfile.py`` under one and not the other."""
    if name.endswith(".py") or "/" in name or os.sep in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ImportError(f"no such file: {name} (cwd {os.getcwd()})")
        return _user_code(name, _load_file, path)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = name.split(".")[0]
        here = Path.cwd()
        if e.name != top or not ((here / f"{top}.py").is_file() or (here / top / "__init__.py").is_file()):
            raise ImportError(f"cannot import module '{name}': {e} (looked on sys.path and in {here})") from e
    except Exception as e:  # noqa: BLE001 - the user's module raised while it was imported
        raise _user_code_error(name, e) from e
    sys.path.append(str(here))
    return _user_code(name, importlib.import_module, name)


def _user_code(name: str, load: Callable, arg: Any):
    try:
        return load(arg)
    except Exception as e:  # noqa: BLE001
        raise _user_code_error(name, e) from e


def _user_code_error(name: str, e: Exception) -> ImportError:
    """One line for an error raised while a user's module was imported (a reward file with a typo): the file and
    line in their code, and what went wrong, instead of a traceback through importlib."""
    if isinstance(e, ImportError) and not isinstance(e, ModuleNotFoundError) and str(e).startswith("importing "):
        return e  # already one of these (a module importing another user module)
    if isinstance(e, SyntaxError):
        text = (e.text or "").strip()
        return ImportError(f"importing {name} failed: {e.filename}:{e.lineno}: SyntaxError: {e.msg}"
                           + (f": {text}" if text else ""))
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<frozen")]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return ImportError(f"importing {name} failed: {where}{type(e).__name__}: {e}")


def import_object(spec: str):
    """Import ``package.module:attr`` or ``path/to/file.py:attr`` (attr may be dotted)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = import_module_or_file(module_name)
    except ImportError as e:
        raise KeyError(f"cannot import '{module_name}' for '{spec}': {e}") from e
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
            old = self._items.get(key)
            same = old is not None and (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) == (
                getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
            if old is not None and old is not obj and not same:  # same: the module was imported again
                raise KeyError(f"{self.kind} '{key}' is already registered (by {old.__module__}.{old.__qualname__})")
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

    def name_of(self, obj) -> str | None:
        """The name ``obj`` is registered under, if any (a ``module:function`` may name a registered one)."""
        return next((k for k, v in self._items.items() if v is obj), None)

    def __contains__(self, name: str) -> bool:
        return name in self._items
