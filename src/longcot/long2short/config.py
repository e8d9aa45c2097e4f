"""The ``long2short:`` section of a recipe: which method turns the long-CoT checkpoint into a short one, and
each method's knobs. Plain dataclasses (no torch import), so the recipe schema can include them cheaply.

The rest of the recipe keeps its meaning: ``data`` is the task (the held-out split must be the long model's),
``rollout`` the engine, ``rewards`` grade the samples, ``eval`` the held-out evaluation, and for ``method: rl``
the ``rl`` section configures the second RL phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

METHODS = ("merge", "shortest_rejection", "dpo", "rl")


@dataclass
class FinetuneConfig:
    """Optimiser settings of a fine-tuning stage that starts from the long-CoT checkpoint (TRL trainers)."""

    lr: float = 1e-3
    epochs: float = 2.0
    batch_size: int = 32
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs <= 0 or self.batch_size < 1:
            raise ValueError(f"need lr > 0, epochs > 0, batch_size >= 1 (got {self.lr}, {self.epochs}, "
                             f"{self.batch_size})")


@dataclass
class DPOTrainConfig(FinetuneConfig):
    """DPO moves a fine-tuned model by small steps: a lower learning rate than SFT's by default."""

    lr: float = 1e-4
    epochs: float = 1.0
    batch_size: int = 16


@dataclass
class SampleConfig:
    """The long model's samples on training problems, which shortest rejection sampling and DPO both use."""

    num_problems: int = 1024  # training problems (a seeded random subset of data's training split)
    n: int = 8  # samples per problem (k1.5 used 8)
    temperature: float = 1.0
    max_tokens: int = 0  # 0: eval.max_tokens, the budget the long model is evaluated with
    # problems per engine call with an engine that does not stream (hf); vLLM queues them all and saves each
    # problem as it finishes (a crashed draw resumes: docs/long2short.md)
    chunk_problems: int = 128
    # samples.jsonl of another long2short run to reuse (same long model, n, temperature, max_tokens, problems
    # and rewards, checked): the DPO run can train on exactly the samples the rejection-sampling run drew.
    reuse: str = ""

    def __post_init__(self) -> None:
        if self.num_problems < 1 or self.n < 1 or self.chunk_problems < 1 or self.max_tokens < 0:
            raise ValueError("long2short.samples: need num_problems, n, chunk_problems >= 1 and max_tokens >= 0")


@dataclass
class MergeConfig:
    """merged = long_weight * long + (1 - long_weight) * short, tensor by tensor."""

    long_weight: float = 0.5  # k1.5 averages the two models: 0.5
    short_model: str = ""  # a short-CoT checkpoint; empty: fine-tune the long model on short traces (below)
    short_examples: int = 4000  # training rows whose solver traces, re-check lines removed, teach the short model
    short_sft: FinetuneConfig = field(default_factory=FinetuneConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.long_weight <= 1.0:
            raise ValueError(f"long2short.merge.long_weight must be in [0, 1], got {self.long_weight}")
        if self.short_examples < 1:
            raise ValueError(f"long2short.merge.short_examples must be >= 1, got {self.short_examples}")


@dataclass
class DPOConfig:
    """Preference pairs from the samples (``long2short.dpo.build_pairs``) and TRL's DPOTrainer settings."""

    beta: float = 0.1
    # TRL's DPO loss types, summed with loss_weights (default 1 each): ["sigmoid"] is DPO; ["sigmoid", "sft"] adds
    # the chosen responses' NLL (RPO), which keeps their likelihood from falling with the rejected ones'
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    # rejected candidates: correct responses at least long_ratio x the chosen (shortest correct) length, and
    # wrong responses chosen by `wrong`: "longer" (longer than the chosen; k1.5), "any", or "none"
    long_ratio: float = 1.5
    wrong: Literal["longer", "any", "none"] = "longer"
    pairs_per_problem: int = 2  # the longest candidates first
    train: DPOTrainConfig = field(default_factory=DPOTrainConfig)

    def __post_init__(self) -> None:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"long2short.dpo: {len(self.loss_weights)} loss_weights for {len(self.loss_type)} "
                             f"loss types {self.loss_type}")
        if self.long_ratio < 1.0 or self.pairs_per_problem < 1 or self.beta <= 0:
            raise ValueError("long2short.dpo: need long_ratio >= 1, pairs_per_problem >= 1 and beta > 0 "
                             f"(got {self.long_ratio}, {self.pairs_per_problem}, {self.beta})")


@dataclass
class Long2ShortConfig:
    """``longcot long2short RECIPE``: from ``long_model``, make a short-CoT model with ``method``."""

    method: Literal["", "merge", "shortest_rejection", "dpo", "rl"] = ""  # empty: not a long2short recipe
    long_model: str = ""  # the long-CoT checkpoint every method starts from
    correctness: str = "math"  # the reward component that says a sample is correct (score > 0.5)
    samples: SampleConfig = field(default_factory=SampleConfig)
    sft: FinetuneConfig = field(default_factory=FinetuneConfig)  # shortest_rejection: SFT on the kept samples
    dpo: DPOConfig = field(default_factory=DPOConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
