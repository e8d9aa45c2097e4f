"""The short-CoT model that ``merge`` averages with the long one, when the recipe does not name one.

It is the long model fine-tuned (TRL's SFTTrainer, ``longcot.rl.sft.run_sft``) on training traces without their
redundant re-check lines: the same solver, the same problems, only the re-checking gone. Weight averaging is
known to work between fine-tunes of one parent (model soups), hence a fine-tune of the long model rather than a
second model from the random init. The held-out problems never appear (training rows only).
"""

from __future__ import annotations

import re
from pathlib import Path

# The arithmetic solver's re-check line (longcot.data.arith.make_problem): "check 7+5: 12 ok".
RECHECK_LINE = re.compile(r"^check .+: -?\d+ ok$")


def without_rechecks(solution: str) -> str:
    """The trace with every re-check line removed (the step lines and the boxed answer stay as they are)."""
    return "\n".join(line for line in solution.split("\n") if not RECHECK_LINE.match(line))


def short_sft_pairs(task, tokenizer, k: int) -> list[tuple[str, str]]:
    """(prompt, re-check-free solution) for the first ``k`` training rows; rows need a ``solution``."""
    rows = task.train[:k]
    missing = [r.get("id") for r in rows if not r.get("solution")]
    if missing:
        raise ValueError(f"long2short.merge: training rows without a solution trace (e.g. {missing[:3]}): set "
                         "long2short.merge.short_model to a short-CoT checkpoint instead")
    return [(task.prompt(r, tokenizer).prompt_text, without_rechecks(r["solution"])) for r in rows]


def train_short_model(recipe, task, tokenizer, out_dir: Path) -> tuple[str, dict]:
    """Fine-tune the long model into the short one at ``out_dir``; returns (path, SFT metrics)."""
    from longcot.policies.load import load_policy
    from longcot.rl.sft import run_sft

    cfg = recipe.long2short.merge
    pairs = short_sft_pairs(task, tokenizer, cfg.short_examples)
    model = load_policy(recipe.long2short.long_model, recipe.model.dtype)
    sft = cfg.short_sft
    metrics = run_sft(model, tokenizer, pairs, out_dir, lr=sft.lr, epochs=sft.epochs, batch_size=sft.batch_size,
                      warmup_ratio=sft.warmup_ratio, weight_decay=sft.weight_decay, seed=recipe.seed)
    return str(out_dir), {"examples": len(pairs), **metrics}
