"""Prompt sources from the ``datasets`` library: a hub name, a jsonl file or a parquet file.

Rows are mapped to longcot's standard fields (``problem``/``prompt``, ``answer``, ``tests``, ``solution``,
``messages``, ``id``) with a column mapping of dotted paths (:mod:`longcot.data.columns`), so a published dataset
works as it is published, e.g. DAPO-Math-17k with ``{"prompt": "prompt", "answer": "reward_model.ground_truth"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from longcot.data.columns import ColumnError, check_mapping, map_row, preview
from longcot.errors import InputError

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def is_local(source: str) -> bool:
    return Path(source).suffix in LOCAL_SUFFIXES


def _dataset(source: str, split: str, streaming: bool = False):
    import datasets

    path = Path(source)
    if path.suffix in LOCAL_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"dataset file not found: {source}")
        try:
            return datasets.load_dataset(LOCAL_SUFFIXES[path.suffix], data_files=str(path), split="train",
                                         streaming=streaming)
        except Exception as e:  # noqa: BLE001 - `datasets` says only "An error occurred while generating the dataset"
            raise DataFileError(f"{source}: cannot be read as {path.suffix[1:]}: {_why(path, e)}") from e
    try:
        return datasets.load_dataset(source, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001 - offline, a typo, a private set, a wrong split: one message with the fix
        raise FileNotFoundError(f"dataset '{source}' (split {split}) could not be loaded: {e}. A hub name needs the "
                                "network or the Hugging Face cache; offline, point the source at a local .jsonl, "
                                ".json or .parquet copy") from e


class DataFileError(InputError):
    """A local data file that cannot be read: invalid JSON on some line, a broken parquet file, mixed types."""


def _why(path: Path, error: BaseException) -> str:
    """The first line of a .jsonl file that is not JSON, with the parser's message; else the innermost cause."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        json.loads(line.rstrip("\n"))
                    except json.JSONDecodeError as bad:
                        return f"line {n} is not valid JSON ({bad.msg}, column {bad.colno}): {line.strip()[:160]}"
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def first_raw_row(source: str, split: str = "train") -> dict:
    """The first row as published (a hub dataset is streamed: one row, not the whole set), for ``--dry-run``."""
    for row in _dataset(source, split, streaming=not is_local(source)):
        return dict(row)
    raise ValueError(f"{source} (split {split}): no rows")


def require_fields(row: Mapping, fields: tuple[str, ...], where: str, key: str, raw: Mapping | None = None) -> None:
    """A clear error for a field a consumer needs (the prompt, the grader's gold, the SFT target); ``raw`` is the
    row as published, shown in the message."""
    raw = row if raw is None else raw
    for name in fields:
        options = ("problem", "prompt") if name == "prompt" else (name,)
        if not any(o in row for o in options):
            raise ColumnError(f"{where}no '{name}' field: map it with {key}.{name}=<column path>; top-level "
                              f"columns: {', '.join(sorted(raw))}; row: {preview(raw)}")


def load_rows(source: str, split: str = "train", columns: Mapping[str, str] | None = None,
              limit: int | None = None, require: tuple[str, ...] = ("prompt",),
              key: str = "data.columns") -> list[dict]:
    """Rows of a hub dataset name, ``*.jsonl``/``*.json`` or ``*.parquet``, mapped to the standard fields.

    ``require`` names the fields every row must have ("prompt" means ``problem`` or ``prompt``); ``key`` is the
    recipe key of the mapping, for error messages. A missing ``id`` becomes the row index.
    """
    mapping = dict(columns or {})
    check_mapping(mapping, key)
    ds = _dataset(source, split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    rows = []
    for i, raw in enumerate(ds):
        row = map_row(raw, mapping, i, where=f"{source}: ", key=key)
        require_fields(row, require, f"{source}: row {i}: ", key, raw)
        rows.append(row)
    if not rows:
        raise ValueError(f"{source} (split {split}): no rows")
    return rows
