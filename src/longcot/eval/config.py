"""The eval recipe: which model, which problems, which prompt, which sampling protocol, which metrics.

``recipes/eval/*.yaml`` map onto :class:`EvalConfig` through the project's loader (``longcot.config.load``):
``base:`` inheritance, dotted ``key=value`` overrides parsed as YAML (``dataset.source=/data/aime24.jsonl``,
``k=[1,4,16]``), type checks, and unknown keys fail naming the file, line and closest valid key, so a typo
never silently runs the default protocol. The training recipe can nest an :class:`EvalConfig` for periodic
evaluation (``every`` > 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from longcot.config.loader import load

# DeepSeek-R1's recommended math instruction; the published R1-Distill AIME/MATH numbers use it.
R1_MATH_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


@dataclass
class DatasetConfig:
    """Where the problems come from and which columns hold what (as in the training recipe's ``data``)."""

    source: str = ""  # hub name ("HuggingFaceH4/aime_2024"), or a local .jsonl / .json / .parquet file
    split: str = "train"  # hub split; ignored for local files
    columns: dict[str, str] = field(default_factory=dict)  # {"problem": ..., "answer": ..., "id": ...}
    limit: int | None = None  # first N problems only (smoke tests)
    skip_missing_answers: bool = False  # drop (and count) rows without a gold answer; default: an error


@dataclass
class EvalConfig:
    model: str = ""  # local path or hub name
    engine: Literal["vllm", "hf", "auto"] = "auto"  # auto: vllm when importable, else hf
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    template: Literal["chat", "raw"] = "chat"  # chat: `prompt` is the user turn of the chat template
    prompt: str = R1_MATH_PROMPT  # str.format pattern over the row's columns, e.g. {problem}
    n: int = 16  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = -1
    max_tokens: int = 32768
    seed: int = 0
    k: list[int] = field(default_factory=lambda: [1, 4, 16])  # pass@k and maj@k; k > n is dropped with a warning
    grader: str = "math"  # a registered reward name or module:function (longcot.eval.grading)
    grader_options: dict[str, Any] = field(default_factory=dict)  # keyword options of that reward
    grade_truncated: bool = False  # grade cut-off responses' text too (default: no answer, wrong)
    out: str = "runs/eval"
    every: int = 0  # trainer: evaluate every N steps (0 = off)
    max_model_len: int | None = None  # None: prompt + max_tokens rounded up
    dtype: str = "auto"  # engine dtype (float32 on CPU)
    engine_options: dict[str, Any] = field(default_factory=dict)  # extra build_engine keywords
    reward_modules: list[str] = field(default_factory=list)  # modules of @reward functions (custom graders)

    def __post_init__(self) -> None:
        if "{" not in self.prompt:
            raise ValueError(f"prompt must contain a column such as '{{problem}}', got {self.prompt!r}")
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1 (n={self.n}, max_tokens={self.max_tokens})")
        if any(k < 1 for k in self.k):
            raise ValueError(f"k={self.k}: every k must be >= 1")


def load_eval_config(path: str | Path | None, overrides: list[str] | tuple = ()) -> EvalConfig:
    """Read a YAML eval recipe (or the defaults when ``path`` is None), apply overrides, validate."""
    return load(EvalConfig, path, list(overrides))
