"""Prompt data: the synthetic arithmetic task, dataset sources, templates and samplers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from longcot.data.answers import require_answers
from longcot.data.arith import ArithSpec, make_split
from longcot.data.sources import load_rows
from longcot.data.templates import render_prompt
from longcot.rollout.base import Prompt


@dataclass
class Task:
    """Training rows, held-out rows, and how a row becomes a prompt for the engine."""

    train: list[dict]
    heldout: list[dict]
    template: str
    # (rows, tokenizer) -> SFT (prompt, completion) pairs, for tasks whose warm-up is more than one pair per row
    sft_pairs: Callable | None = None
    skipped_no_answer: int = 0  # rows dropped for lacking a gold answer (data.skip_missing_answers)

    def prompt(self, row: dict, tokenizer) -> Prompt:
        text = render_prompt(self.template, row, tokenizer)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        meta = {k: v for k, v in row.items() if k not in ("problem", "solution")}
        return Prompt(prompt_id=str(row["id"]), prompt_ids=ids, prompt_text=text, meta=meta)


TASKS = ("arith", "compound", "dataset")


def build_task(cfg) -> Task:
    """A :class:`Task` from a recipe's ``data`` section (``longcot.config.DataConfig``)."""
    if cfg.task == "arith":
        spec = ArithSpec(cfg.min_ops, cfg.max_ops, cfg.max_operand, cfg.recheck_prob, cfg.long_tail_frac,
                         slip_prob=cfg.slip_prob, ops=cfg.ops)
        train, heldout = make_split(spec, cfg.num_train, cfg.num_heldout, cfg.seed)
        return Task(train, heldout, cfg.template)
    if cfg.task == "compound":
        from longcot.data.compound import build_compound_task

        return build_compound_task(cfg)
    if cfg.task == "dataset":
        if not cfg.source:
            raise ValueError("data.task=dataset needs data.source (hub name, .jsonl or .parquet path)")
        rows = load_rows(cfg.source, cfg.split, cfg.columns)
        rows, skipped = require_answers(rows, cfg.source, cfg.skip_missing_answers, "data.skip_missing_answers")
        n_held = min(cfg.num_heldout, len(rows) // 10)
        return Task(rows[n_held:], rows[:n_held], cfg.template, skipped_no_answer=skipped)
    from longcot.registry import did_you_mean

    raise ValueError(f"unknown data.task '{cfg.task}'{did_you_mean(cfg.task, TASKS)}; expected one of {TASKS}")
