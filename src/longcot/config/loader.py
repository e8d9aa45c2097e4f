"""Load typed configs from YAML: inheritance (``base:``), ``key=value`` overrides, strict validation.

Every error names the file, the line, the dotted key and what was expected, and an unknown key names the
closest valid one. Validation happens before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from longcot.errors import InputError
from longcot.registry import did_you_mean

T = TypeVar("T")


class ConfigError(InputError):
    """A recipe or override that does not fit the schema."""


def _line_index(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    """Map every dotted key path in a YAML document to its 1-based line number."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[path] = key_node.start_mark.line + 1
            _line_index(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = f"{prefix}[{i}]"
            out[path] = item.start_mark.line + 1
            _line_index(item, path, out)


class Source:
    """Where each key came from (file and line, or a command-line override), for error messages."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def add_file(self, path: Path, text: str) -> None:
        lines: dict[str, int] = {}
        node = yaml.compose(text)
        if node is not None:
            _line_index(node, "", lines)
        for key, line in lines.items():
            self.where[key] = f"{path}:{line}"

    def of(self, key: str) -> str:
        """The most specific known origin of ``key`` (``rl.loss.options`` falls back to ``rl.loss``, then
        ``rl``; ``rewards[1].name`` to ``rewards[1]``, then ``rewards``)."""
        probe = key
        while probe:
            if probe in self.where:
                return self.where[probe]
            probe = probe[: probe.rindex("[")] if probe.endswith("]") else probe.rpartition(".")[0]
        return "<defaults>"

    def replaced(self, key: str) -> None:
        """``key`` was set as a whole (an override): what the files said about its parts no longer applies."""
        for k in [k for k in self.where if k.startswith((key + ".", key + "["))]:
            del self.where[k]


def deep_merge(base: dict, top: dict, _nested: bool = False) -> dict:
    """``top`` over ``base``, recursively. A nested function reference (``{name, options}``, e.g. ``rl.loss``) that
    names a different function than the base replaces it whole: the base's options belong to the other function
    (ppo_clip's clip_low must not reach k15). The recipe's own top-level ``name`` is an ordinary key."""
    if _nested and "options" in base and top.get("name", base.get("name")) != base.get("name"):
        return dict(top)
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v, True) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path, source: Source, _seen: tuple = ()) -> dict:
    """Read a recipe, resolving ``base: other.yaml`` (relative to the file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'base' inheritance cycle through {[str(p) for p in _seen]}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    merged: dict = {}
    if base:
        merged = read_yaml(path.parent / base, source, (*_seen, path.resolve()))
    source.add_file(path, text)
    return deep_merge(merged, data)


def apply_override(data: dict, item: str, source: Source) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML: numbers, booleans, lists) to a nested dict."""
    if "=" not in item:
        raise ConfigError(f"override '{item}': expected key=value, e.g. rl.lr=1e-5")
    key, _, raw = item.partition("=")
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': cannot parse value: {e}") from e
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    node[parts[-1]] = value
    source.replaced(key)
    source.where[key] = f"override '{item}'"


def _type_name(tp: Any) -> str:
    """``float``, ``one of ['zero', 'raise']``, ``float or one of [...]``: what a user may write."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is typing.Literal:
        return f"one of {list(typing.get_args(tp))}"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _literal_choices(tp: Any) -> list[str]:
    return [str(c) for a in typing.get_args(tp) if typing.get_origin(a) is typing.Literal for c in typing.get_args(a)]


def _coerce(value: Any, tp: Any, key: str, source: Source) -> Any:
    """Check ``value`` against the annotation ``tp`` (recursing into dataclasses, lists and dicts)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as e:
                errors.append(str(e))
        hint = did_you_mean(value, _literal_choices(tp)) if isinstance(value, str) else ""
        raise ConfigError(errors[0] if len(errors) == 1 else f"{source.of(key)}: '{key}': expected {_type_name(tp)}, "
                          f"got {value!r}{hint}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{source.of(key)}: '{key}': expected one of {list(choices)}, got {value!r}"
                              f"{did_you_mean(str(value), [str(c) for c in choices])}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source.of(key)}: '{key}': expected a mapping, got {value!r}")
        return build(tp, value, source, prefix=key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source.of(key)}: '{key}': expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source.of(key)}: '{key}': expected a mapping, got {value!r}")
        _, value_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, value_tp, f"{key}.{k}", source) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-5" as a string
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{source.of(key)}: '{key}': expected {tp.__name__}, got {value!r}")
    return value


def build(cls: type[T], data: dict, source: Source | None = None, prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    source = source or Source()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            moved = getattr(cls, "MOVED_KEYS", {}).get(key)
            hint = f" (moved: {moved})" if moved else did_you_mean(str(key), fields)
            raise ConfigError(f"{source.of(path)}: unknown key '{path}'{hint}; "
                              f"valid keys{' in ' + prefix if prefix else ''}: {', '.join(fields)}")
        kwargs[key] = _coerce(value, hints[key], path, source)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source.of(prefix)}: section '{prefix or '<root>'}': {e}") from e
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load(cls: type[T], path: str | Path | None, overrides: list[str] | tuple = ()) -> T:
    """Read ``path`` (with ``base:`` inheritance), apply overrides, validate into ``cls``.

    The result remembers where each key came from (``obj._source``), so the checks of
    :mod:`longcot.config.validate` can name the file and line too."""
    source = Source()
    data = read_yaml(path, source) if path else {}
    for item in overrides:
        apply_override(data, item, source)
    obj = build(cls, data, source)
    obj._source = source
    return obj


def add_reward_modules(cfg: Any, modules: list[str]) -> None:
    """``--reward-module M`` flags: appended to ``cfg.reward_modules`` (a recipe or an eval config), and named as
    their origin in errors (``--reward-module M: 'reward_modules[1]': cannot import ...``, not ``<defaults>``)."""
    source = getattr(cfg, "_source", None)
    for module in modules:
        if source is not None:
            source.where[f"reward_modules[{len(cfg.reward_modules)}]"] = f"--reward-module {module}"
        cfg.reward_modules = [*cfg.reward_modules, module]
