"""The data mapping applied to the first row of every source a recipe reads, as ``--dry-run`` shows it.

For each source (``data.source``, the held-out ``eval.source``/``eval.split``, ``sft.source``; the first row of a
synthetic task) the first row goes through exactly what training does: the column mapping (a wrong path fails
here with the row, the path and the columns that exist), the fields the rewards and SFT need, the prompt
rendering (chat template, system prompt, template keywords) when the tokenizer is at hand, and the math gold
through the math reward (``\\boxed{gold}`` must score 1, or the answer column is not what the reward reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from longcot.data import GOLD_FIELDS, needed_fields
from longcot.data.columns import map_row
from longcot.data.sft_data import TARGET_FIELDS, SFTDataError
from longcot.data.sources import first_raw_row, require_fields
from longcot.data.split import heldout_source
from longcot.data.templates import PromptFormat, conversation, render_prompt


@dataclass
class SourcePreview:
    role: str  # "train", "held-out", "sft"
    source: str
    mapping: dict
    fields: dict = field(default_factory=dict)  # standard field -> value (shortened for printing)
    prompt_text: str | None = None  # None: no tokenizer for the chat template
    messages: list | None = None
    gold_check: str = ""


def load_tokenizer_offline(recipe):
    """The recipe's tokenizer when it is available without a download (tiny, local, cached), else None."""
    if not recipe.model.path:
        from longcot.policies.build import build_tokenizer

        return build_tokenizer(bool(recipe.model.build_overrides.get("chat_template", False)))  # as the run builds it
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(recipe.model.path, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached or offline: the plan shows messages instead of rendered text
        return None


def _short(value, limit: int = 200) -> str:
    """One line: strings and structures as Python literals, cut at ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _gold_check(row: dict, grader: str) -> str:
    """The gold through the math reward, as a response that boxes it (math only: code has no gold program)."""
    if grader != "math" or "answer" not in row:
        return f"{GOLD_FIELDS.get(grader, 'gold')} read by the '{grader}' grader" if grader in GOLD_FIELDS else ""
    from longcot.record import Trajectory
    from longcot.rewards.math import math as math_reward

    gold = str(row["answer"])
    traj = Trajectory(prompt_id="", group_id="", prompt_ids=[], response_ids=[1], rollout_logprobs=[], finish="stop",
                      response_text=f"\\boxed{{{gold}}}", meta={"answer": gold})
    score = float(math_reward(traj))
    verdict = "ok" if score == 1.0 else "FAILS: the math reward cannot read this gold; check the answer column"
    shown = gold if len(gold) <= 60 else gold[:60] + "..."
    return f"math reward on '\\boxed{{{shown}}}': {score:.1f} ({verdict})"


def preview_row(role: str, source: str, raw: dict, mapping: dict, key: str, needs: tuple[str, ...], fmt: PromptFormat,
                tokenizer, grader: str) -> SourcePreview:
    row = map_row(raw, mapping, 0, where=f"{source}: ", key=key)
    require_fields(row, needs, f"{source}: row 0: ", key, raw)
    p = SourcePreview(role, source, dict(mapping))
    for name in ("id", "problem", "prompt", "answer", "tests", "solution", "messages"):
        if name in row:
            p.fields[name] = _short(row[name])
    if fmt.is_chat:
        p.messages = conversation(fmt, row)
    if tokenizer is not None and (not fmt.is_chat or getattr(tokenizer, "chat_template", None)):
        p.prompt_text = render_prompt(fmt, row, tokenizer)
    elif fmt.is_chat and tokenizer is not None:
        raise ValueError("data.template=chat but the model's tokenizer has no chat template: give a template string "
                         "(data.template: \"Q: {problem}\\n\"), a model whose tokenizer has one, or, for the tiny "
                         "model built by the run, model.build_overrides.chat_template=true")
    if role != "sft":
        p.gold_check = _gold_check(row, grader)
    return p


def preview_sources(recipe) -> tuple[list[SourcePreview], object]:
    """A :class:`SourcePreview` per source of the recipe (and the tokenizer used, or None)."""
    tok = load_tokenizer_offline(recipe)
    fmt = PromptFormat.from_data(recipe.data)
    needs = needed_fields(recipe.rewards, recipe.eval.grader)
    d, e, s = recipe.data, recipe.eval, recipe.sft
    out = []
    if d.task == "dataset":
        out.append(preview_row("train", d.source, first_raw_row(d.source, d.split), d.columns, "data.columns", needs,
                               fmt, tok, e.grader))
        named = heldout_source(d, e)
        if named is not None:
            source, split, columns, key = named
            out.append(preview_row("held-out", f"{source} (split {split})", first_raw_row(source, split), columns,
                                   key, needs, fmt, tok, e.grader))
    else:
        from longcot.data import build_task

        task = build_task(d)
        out.append(preview_row("train", f"synthetic task {d.task}", task.train[0], {}, "data.columns", needs, fmt, tok,
                               e.grader))
    if recipe.sft.enabled and s.source:
        out.append(preview_row("sft", s.source, first_raw_row(s.source, s.split), s.columns, "sft.columns",
                               ("prompt",), fmt, tok, e.grader))
    if recipe.sft.enabled and d.task in ("dataset",):
        sft = out[-1] if out[-1].role == "sft" else out[0]
        if not any(f in sft.fields for f in TARGET_FIELDS):
            raise SFTDataError(f"SFT is on (sft.enabled) but {sft.source} has no completion column: map "
                               "sft.columns.solution or sft.columns.messages (or data.columns.solution), give "
                               "sft.source=FILE, or set sft.enabled=false")
    return out, tok
