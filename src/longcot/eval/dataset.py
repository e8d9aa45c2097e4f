"""Eval problems: rows from the shared data sources (hub name, jsonl, parquet + column mapping) -> prompts.

Every problem becomes ``{"id", "problem", "answer", ...}``; ids are strings so that re-scored files (whose
ids were written as JSON) and the dataset agree.
"""

from __future__ import annotations

import logging

from longcot.data.answers import require_answers
from longcot.data.sources import load_rows
from longcot.errors import InputError, MissingKeyError
from longcot.eval.config import DatasetConfig
from longcot.rollout.base import Prompt

log = logging.getLogger(__name__)


def load_problems(cfg: DatasetConfig) -> list[dict]:
    """Rows with ``id``/``problem``/``answer`` (column mapping applied); duplicate ids are errors."""
    return load_problems_counted(cfg)[0]


def load_problems_counted(cfg: DatasetConfig) -> tuple[list[dict], list[str]]:
    """:func:`load_problems` and the ids of the rows skipped for lacking a gold answer (a row without one is an
    error unless ``dataset.skip_missing_answers``). The ids let a re-score drop responses to skipped problems
    instead of calling them unknown."""
    if not cfg.source:
        raise InputError("eval: dataset.source is empty (a hub name or a .jsonl/.json/.parquet file)")
    rows = load_rows(cfg.source, split=cfg.split, columns=cfg.columns, limit=cfg.limit, key="dataset.columns")
    rows, skipped = require_answers(rows, cfg.source, cfg.skip_missing_answers, "dataset.skip_missing_answers")
    seen: set[str] = set()
    for i, row in enumerate(rows):
        row["answer"] = str(row["answer"])
        if row["id"] in seen:
            raise InputError(f"{cfg.source} row {i}: duplicate id '{row['id']}' (map dataset.columns.id to a "
                             "unique column)")
        seen.add(row["id"])
    if not rows:
        raise InputError(f"{cfg.source}: no problems")
    return rows, [str(r["id"]) for r in skipped]


def effective_template(template: str, tokenizer) -> str:
    """``template``, except that ``chat`` with a tokenizer that has no chat template (a base model, the tiny
    demo model) falls back to ``raw`` with a warning, instead of stopping the eval."""
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        log.warning("template=chat but the tokenizer has no chat template: using template=raw (the prompt text "
                    "as is); pass --template raw to make this explicit")
        return "raw"
    return template


def render_prompt(row: dict, tokenizer, template: str, prompt: str) -> str:
    """The text the model sees: ``prompt`` filled from the row, as is (raw) or as the chat template's user turn."""
    try:
        text = prompt.format(**row)
    except KeyError as e:
        raise MissingKeyError(f"eval prompt {prompt!r} uses column {e} that the row lacks; "
                              f"columns: {sorted(row)}") from e
    if template == "raw":
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("template=chat but the tokenizer has no chat template; use template=raw")
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_prompts(rows: list[dict], tokenizer, template: str, prompt: str) -> list[Prompt]:
    """Engine prompts; the gold answer travels in ``meta["answer"]`` for the grader."""
    template = effective_template(template, tokenizer)
    out = []
    for row in rows:
        text = render_prompt(row, tokenizer, template, prompt)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(Prompt(prompt_id=row["id"], prompt_ids=ids, prompt_text=text, meta={"answer": row["answer"]}))
    return out
