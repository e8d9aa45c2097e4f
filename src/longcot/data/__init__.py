"""Prompt data: synthetic tasks, dataset sources with column mapping, templates, held-out splits and samplers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from longcot.data.templates import PromptFormat, render_prompt
from longcot.rollout.base import Prompt

# Fields that stay out of a prompt's metadata: the prompt itself and SFT targets (rewards get the rest).
_NOT_META = ("problem", "prompt", "solution", "messages")
# The field each built-in grading reward reads from a row.
GOLD_FIELDS = {"math": "answer", "code": "tests"}


@dataclass
class Task:
    """Training rows, held-out rows, and how a row becomes a prompt for the engine."""

    train: list[dict]
    heldout: list[dict]
    template: str | PromptFormat
    # (rows, tokenizer, agents=None) -> SFT (prompt, completion) pairs, for tasks whose warm-up is more than one pair
    # per row (agents: the recipe's agents section, for pairs that include agent turns)
    sft_pairs: Callable | None = None
    skipped_no_answer: int = 0  # rows dropped for lacking a gold answer (data.skip_missing_answers)
    split: dict = field(default_factory=dict)  # how the held-out rows were chosen (written to split.json)

    @property
    def format(self) -> PromptFormat:
        return self.template if isinstance(self.template, PromptFormat) else PromptFormat(self.template)

    def prompt(self, row: dict, tokenizer) -> Prompt:
        text = render_prompt(self.format, row, tokenizer)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        meta = {k: v for k, v in row.items() if k not in _NOT_META}
        return Prompt(prompt_id=str(row["id"]), prompt_ids=ids, prompt_text=text, meta=meta)


def needed_fields(rewards, grader: str) -> tuple[str, ...]:
    """Fields every row needs: the prompt, and the gold of each built-in reward/grader the recipe uses."""
    names = [getattr(r, "name", r) for r in rewards] + [grader]
    return ("prompt", *sorted({GOLD_FIELDS[n] for n in names if n in GOLD_FIELDS}))


TASKS = ("arith", "codefit", "compound", "dataset")


def build_task(cfg, eval_cfg=None, needs: tuple[str, ...] = ("prompt",)) -> Task:
    """A :class:`Task` from a recipe's ``data`` section (and ``eval`` section for a dataset's held-out rows)."""
    if eval_cfg is not None and (eval_cfg.source or eval_cfg.split) and cfg.task != "dataset":
        raise ValueError(f"eval.source / eval.split need data.task=dataset; the synthetic task '{cfg.task}' makes "
                         "its own held-out split (data.num_heldout)")
    if cfg.task == "arith":
        from longcot.data.arith import ArithSpec, make_split

        spec = ArithSpec(cfg.min_ops, cfg.max_ops, cfg.max_operand, cfg.recheck_prob, cfg.long_tail_frac,
                         slip_prob=cfg.slip_prob, ops=cfg.ops)
        train, heldout = make_split(spec, cfg.num_train, cfg.num_heldout, cfg.seed)
        return Task(train, heldout, PromptFormat.from_data(cfg), split=synthetic_split(cfg, heldout))
    if cfg.task == "codefit":
        from longcot.data.codefit import make_codefit_split, spec_from

        train, heldout = make_codefit_split(spec_from(cfg), cfg.num_train, cfg.num_heldout, cfg.seed)
        return Task(train, heldout, PromptFormat.from_data(cfg), split=synthetic_split(cfg, heldout))
    if cfg.task == "compound":
        from longcot.data.compound import build_compound_task

        task = build_compound_task(cfg)
        task.split = synthetic_split(cfg, task.heldout)
        return task
    if cfg.task == "dataset":
        from longcot.data.split import dataset_split

        train, heldout, info = dataset_split(cfg, eval_cfg, needs)
        return Task(train, heldout, PromptFormat.from_data(cfg), split=info,
                    skipped_no_answer=info["train"].get("skipped_no_answer", 0))
    from longcot.registry import did_you_mean

    raise ValueError(f"unknown data.task '{cfg.task}'{did_you_mean(cfg.task, TASKS)}; expected one of {TASKS}")


def synthetic_split(cfg, heldout: list[dict]) -> dict:
    """A synthetic task's held-out split: drawn from its own RNG, disjoint from training by construction."""
    return {"heldout": {"how": "synthetic", "task": cfg.task, "seed": cfg.seed, "rows": len(heldout),
                        "disjoint_from_train": True, "ids": [r["id"] for r in heldout]},
            "train": {"task": cfg.task, "rows": cfg.num_train}}
