"""Prompt sources from the ``datasets`` library: a hub name, a jsonl file or a parquet file.

Rows are mapped to longcot's column names (``problem``, ``answer``, ``id``) with a user column mapping,
so any math dataset works without code (e.g. ``{"problem": "question", "answer": "final_answer"}``).
"""

from __future__ import annotations

from pathlib import Path

STANDARD_COLUMNS = ("problem", "answer", "id")


def load_rows(source: str, split: str = "train", columns: dict[str, str] | None = None,
              limit: int | None = None) -> list[dict]:
    """Load rows from a hub dataset name, ``*.jsonl``/``*.json`` or ``*.parquet`` and rename columns.

    ``columns`` maps a standard name to the dataset's column; the row keeps all original columns too (as
    metadata for rewards). A missing ``id`` column becomes the row index.
    """
    import datasets

    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        if not path.is_file():
            raise FileNotFoundError(f"dataset file not found: {source}")
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
    elif path.suffix == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"dataset file not found: {source}")
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    else:
        ds = datasets.load_dataset(source, split=split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    mapping = {k: v for k, v in (columns or {}).items()}
    unknown = set(mapping) - set(STANDARD_COLUMNS)
    if unknown:
        raise KeyError(f"column mapping keys must be among {STANDARD_COLUMNS}, got {sorted(unknown)}")
    rows = []
    for i, raw in enumerate(ds):
        row = dict(raw)
        for std in STANDARD_COLUMNS:
            col = mapping.get(std, std)
            if col in raw:
                row[std] = raw[col]
            elif std == "id":
                row["id"] = str(i)
            else:
                raise KeyError(f"{source}: row {i} has no column '{col}' for '{std}'; columns: {sorted(raw)}; "
                               f"set data.columns.{std}=<column>")
        row["id"] = str(row["id"])
        rows.append(row)
    return rows
