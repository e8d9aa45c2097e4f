"""SFT warm-up data: (prompt, completion) pairs from the training rows or from the recipe's own ``sft.source``.

A row gives a pair through ``solution`` (a worked solution: the prompt is rendered exactly as RL renders it) or,
when the mapping names ``messages`` and not ``solution``, through ``messages`` (a conversation whose last turn is
the assistant's: that turn is the completion, the turns before it the prompt, through the chat template with the
recipe's system prompt and template keywords). A recipe with SFT on and neither field fails here, before any
model is loaded, saying what to map.
"""

from __future__ import annotations

import logging

from longcot.data.columns import last_user_text, preview
from longcot.data.sources import load_rows
from longcot.data.split import problem_key
from longcot.data.templates import render_chat

TARGET_FIELDS = ("solution", "messages")
log = logging.getLogger(__name__)


class SFTDataError(ValueError):
    """SFT is on but its rows have nothing to imitate."""


def sft_rows(recipe, task) -> list[dict]:
    """The rows SFT trains on (at most ``sft.num_examples``); a clear error when they have no target."""
    sft = recipe.sft
    if sft.source:
        rows = load_rows(sft.source, sft.split, sft.columns, require=("prompt",), key="sft.columns")
        where = f"sft.source {sft.source}"
    else:
        rows = task.train
        where = f"the training rows ({recipe.data.source or 'task ' + recipe.data.task})"
    rows = rows[: sft.num_examples]
    mapping = sft.columns if sft.source else recipe.data.columns
    if "messages" in mapping and "solution" not in mapping:  # a mapped conversation wins over a same-named column
        rows = [{k: v for k, v in r.items() if k != "solution"} for r in rows]
    _warn_heldout_overlap(rows, task.heldout, where)
    if task.sft_pairs is None:
        missing = next((i for i, r in enumerate(rows) if not any(f in r for f in TARGET_FIELDS)), None)
        if missing is not None:
            row = rows[missing]
            raise SFTDataError(
                f"SFT is on (sft.enabled) but row {missing} of {where} has no completion to imitate: map a worked "
                f"solution with sft.columns.solution=<path> (or data.columns.solution), or a conversation with "
                f"sft.columns.messages=<path>; give SFT its own data with sft.source=FILE; or set sft.enabled=false "
                f"(then RL starts from the model as it is). Columns: {', '.join(sorted(row))}; row: {preview(row)}")
    return rows


def _warn_heldout_overlap(rows: list[dict], heldout: list[dict], where: str) -> None:
    """SFT on a held-out problem's solution makes the held-out accuracy a memory test: count and say so."""
    held = {problem_key(r) for r in heldout} - {""}
    overlap = sum(problem_key(r) in held for r in rows)
    if overlap:
        log.warning("%d SFT rows of %s are held-out problems: held-out accuracy after SFT overstates "
                    "generalisation (give SFT data without them, or held-out data from eval.source)", overlap, where)


def sft_pairs(rows: list[dict], task, tokenizer, agents=None) -> list[tuple[str, str]]:
    """(prompt, completion) for every row (see module docstring). ``agents``: the recipe's agents section, for
    tasks whose pairs include agent turns (their observations must match what the agent driver shows)."""
    if task.sft_pairs is not None:  # tasks with several pairs per row (compound: orchestrator turns, sub-agents)
        return task.sft_pairs(rows, tokenizer, agents=agents)
    fmt = task.format
    pairs = []
    for row in rows:
        if "solution" in row:
            pairs.append((task.prompt(row, tokenizer).prompt_text, str(row["solution"])))
            continue
        messages = row["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise SFTDataError(f"row {row['id']}: sft messages must end with the assistant's turn (the completion); "
                               f"got roles {[m['role'] for m in messages]}")
        context = messages[:-1]
        if fmt.is_chat:
            if fmt.system_prompt and not any(m["role"] == "system" for m in context):
                context = [{"role": "system", "content": fmt.system_prompt}, *context]
            prompt = render_chat(tokenizer, context, fmt)
        else:
            prompt = task.prompt({**row, "problem": last_user_text(context)}, tokenizer).prompt_text
        pairs.append((prompt, messages[-1]["content"]))
    return pairs
