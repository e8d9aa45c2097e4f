"""Column mapping: where in a published row each field longcot needs lives.

Datasets are published in many shapes: DAPO-Math-17k keeps the prompt as a chat message list and the gold in
``reward_model.ground_truth``; DeepScaleR and OpenR1-Math have flat ``problem``/``answer``/``solution``; code sets
keep their tests as a JSON string. A mapping names, for each *standard field*, a dotted path into the row:

* ``a.b``: key ``b`` of the dict under ``a``; ``prompt.0.content`` / ``prompt.-1.content``: an item of a list;
* a field without a mapping is read from the top-level column of the same name when the row has one.

Standard fields: ``problem`` (question text), ``prompt`` (a chat message list, or a string for one user turn),
``answer`` (gold for the math reward), ``tests`` (for the code reward), ``solution`` (an SFT target: a worked
solution), ``messages`` (an SFT conversation whose last assistant turn is the target) and ``id``. A path that
does not resolve fails with the source, the row, the path, how far it got and the keys that exist there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

STANDARD_FIELDS = ("problem", "prompt", "answer", "tests", "solution", "messages", "id")
_MISSING = object()


class ColumnError(KeyError):
    """A column path that does not resolve in a row (or a field value of the wrong shape)."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


def preview(row: Any, limit: int = 300) -> str:
    """A row as short JSON for error messages (long strings cut)."""
    text = json.dumps(row, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _step(node: Any, part: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(part, _MISSING)
    if isinstance(node, Sequence) and not isinstance(node, str | bytes):
        try:
            index = int(part)
        except ValueError:
            return _MISSING
        return node[index] if -len(node) <= index < len(node) else _MISSING
    return _MISSING


def _where(node: Any) -> str:
    """What exists at a node, for an error message."""
    if isinstance(node, Mapping):
        return f"keys there: {', '.join(sorted(map(str, node))) or '(none)'}"
    if isinstance(node, Sequence) and not isinstance(node, str | bytes):
        return f"a list of {len(node)} item(s): use an index 0..{len(node) - 1} or -1"
    return f"a {type(node).__name__} value, which has no fields"


def resolve(row: Mapping, path: str, *, where: str = "") -> Any:
    """The value at dotted ``path`` in ``row``; :class:`ColumnError` naming the path, the row and what exists."""
    node: Any = row
    parts = path.split(".")
    for depth, part in enumerate(parts):
        nxt = _step(node, part)
        if nxt is _MISSING:
            done = ".".join(parts[:depth])
            at = f" under '{done}'" if done else ""
            raise ColumnError(f"{where}column path '{path}': no '{part}'{at} ({_where(node)}); "
                              f"top-level columns: {', '.join(sorted(map(str, row)))}; row: {preview(row)}")
        node = nxt
    return node


def has_path(row: Mapping, path: str) -> bool:
    try:
        resolve(row, path)
    except ColumnError:
        return False
    return True


def check_mapping(mapping: Mapping[str, str], key: str) -> None:
    """Mapping keys must be standard fields (a typo would otherwise map nothing, silently)."""
    from longcot.registry import did_you_mean

    for name, path in mapping.items():
        if name not in STANDARD_FIELDS:
            raise ColumnError(f"{key}.{name}: unknown field '{name}'{did_you_mean(name, STANDARD_FIELDS)}; "
                              f"fields: {', '.join(STANDARD_FIELDS)}")
        if not isinstance(path, str) or not path:
            raise ColumnError(f"{key}.{name}: expected a column path such as 'reward_model.ground_truth', "
                              f"got {path!r}")


def map_row(raw: Mapping, mapping: Mapping[str, str], index: int, *, where: str = "",
            key: str = "data.columns") -> dict:
    """The row with every standard field it maps (the original columns are kept, for custom rewards).

    A mapped path that does not resolve is an error; an unmapped field is taken from the column of its own name
    when there is one. A missing ``id`` becomes the row index. ``prompt``/``messages`` must be message lists (a
    string prompt is one user turn); ``problem`` defaults to the text of the prompt's last user turn.
    """
    row = dict(raw)
    label = f"{where}row {index}: {key}.<field>: "
    for name in STANDARD_FIELDS:
        if name in mapping:
            try:
                row[name] = resolve(raw, mapping[name])
            except ColumnError as e:
                raise ColumnError(f"{where}row {index}: {key}.{name}: {e}") from None
    if "id" not in row:
        row["id"] = str(index)
    row["id"] = str(row["id"])
    if "prompt" in row and ("prompt" in mapping or isinstance(row["prompt"], list)):
        row["prompt"] = as_messages(row["prompt"], f"{label.replace('<field>', 'prompt')}")
        if "problem" not in row:
            row["problem"] = last_user_text(row["prompt"])
    if "messages" in row:
        row["messages"] = as_messages(row["messages"], label.replace("<field>", "messages"))
    if "tests" in row:
        from longcot.data.code_tests import normalize_tests

        row["tests"] = normalize_tests(row["tests"], label.replace("<field>", "tests"))
    return row


def as_messages(value: Any, where: str) -> list[dict]:
    """A chat message list (``[{"role", "content"}, ...]``); a string is one user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, Sequence) and value and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ColumnError(f"{where}expected a string or a list of {{role, content}} messages, got {preview(value, 160)}")


def last_user_text(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""
