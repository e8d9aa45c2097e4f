"""The training recipe schema. Every key a recipe may set is a field here, with its default and meaning.

Algorithm options (loss, advantage, reward and sampler options) are passed to the registered function by
name and validated against its signature, so adding a loss never touches this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from longcot.rewards.registry import RewardSpec


@dataclass
class ModelConfig:
    path: str = ""  # HF hub name or local path; empty: build the tiny MoE into runs/<name>/init
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    build_seed: int = 0  # init seed of the tiny model when path is empty
    build_overrides: dict[str, Any] = field(default_factory=dict)  # Qwen3MoeConfig fields for the tiny model
    # --dry-run's memory plan reads the model's config.json: from `path` when it is a local directory or in the
    # HF cache, else from this file (a hub model planned offline, e.g. tests/data/configs/qwen3-30b-a3b.json)
    config: str = ""


@dataclass
class DataConfig:
    task: str = "arith"  # "arith", "codefit" (synthetic) or "dataset" (hub name / jsonl / parquet in `source`)
    source: str = ""
    split: str = "train"
    # standard field -> dotted column path (docs/data.md): {"prompt": "prompt", "answer": "reward_model.ground_truth"}
    columns: dict[str, str] = field(default_factory=dict)
    template: str = "{problem}\n"  # prompt template; "chat" uses the tokenizer's chat template
    system_prompt: str = ""  # chat template only: a system turn before each prompt
    user_template: str = "{problem}"  # chat template only: the user turn of a row without a message-list prompt
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {enable_thinking: false} (Qwen3)
    # synthetic arithmetic task (longcot.data.arith)
    min_ops: int = 1
    max_ops: int = 3
    max_operand: int = 20
    recheck_prob: float = 0.0  # chance of a redundant "check:" line per step in solver traces
    long_tail_frac: float = 0.0  # fraction of problems whose traces are many times longer (partial rollouts)
    slip_prob: float = 0.0  # imperfect teacher: chance of an arithmetic slip per solver step (SFT traces)
    ops: str = "+-*"  # operators the arithmetic problems use
    num_train: int = 20000
    num_heldout: int = 256  # synthetic tasks: held-out problems; datasets: the most a random eval.fraction takes
    seed: int = 0
    sampler: str = "uniform"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)  # extra options of a task (compound: parts, ...)


@dataclass
class SFTConfig:
    enabled: bool = True
    # SFT data: empty = the training rows (their `solution`); or its own source with its own column mapping, whose
    # rows need `solution` (a worked solution) or `messages` (a conversation ending with the assistant's turn)
    source: str = ""
    split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)
    num_examples: int = 4000
    epochs: float = 1.0
    lr: float = 3e-3
    batch_size: int = 32
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    # recompute activations in backward (TRL's SFT default is on): saves memory on big models, costs ~a
    # third more compute; off by default here, and never carried into RL (run_sft restores the model)
    gradient_checkpointing: bool = False


@dataclass
class RolloutConfig:
    engine: Literal["vllm", "hf"] = "vllm"
    n: int = 8  # samples per prompt (group size)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    max_model_len: int = 1024
    engine_options: dict[str, Any] = field(default_factory=dict)
    # Ask the engine for the sampled tokens' log-probs on every k-th step (0: never). On-policy losses do not
    # use them; they feed the logprob_gap metric (rollout vs trainer mismatch) on those steps. rl.tis_cap and
    # rl.kl_in=reward need them and get them on every step whatever this says. Default: every step (DESIGN.md
    # logs the gap every step); the tiny recipes use 10, as they cost ~10% of a CPU decode step.
    logprobs_every: int = 1


@dataclass
class AlgoRef:
    """A registered function by name plus its keyword options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RLConfig:
    enabled: bool = True
    steps: int = 60
    prompts_per_step: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 0
    grad_clip: float = 1.0
    micro_batch_size: int = 64  # sequences per forward/backward
    updates_per_step: int = 1  # optimizer steps per rollout batch (>1: off-policy mini-batches)
    advantage: AlgoRef = field(default_factory=lambda: AlgoRef("grpo"))
    loss: AlgoRef = field(default_factory=lambda: AlgoRef("ppo_clip"))
    aggregation: str = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    tis_cap: float | None = None  # truncated importance sampling cap against engine logprobs
    reset_optimizer: bool = False  # clear optimizer state every iteration (k1.5; the k15 loss asks for it)
    kl_in: Literal["loss", "reward"] = "loss"  # where kl_coef applies: per-token loss term, or subtracted from R
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, refill up to prompts_per_step
    dynamic_max_extra_rounds: int = 2  # cap on extra generation rounds per step
    length_penalty_reward: str = "k15_length"  # the reward whose weight follows the warm-up schedule
    length_penalty_warmup: int = 0  # steps with that reward's weight at 0 (k1.5), then its recipe weight
    checkpoint_every: int = 0  # 0: only the final checkpoint


@dataclass
class EvalConfig:
    num_problems: int = 256  # held-out problems (<= data.num_heldout)
    # held-out rows of data.task=dataset: their own source and/or split (columns: default data.columns), else a
    # random `fraction` of the training source (seed data.seed, at most data.num_heldout rows); see split.json
    source: str = ""
    split: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    fraction: float = 0.1
    grader: str = "math"  # the reward that decides "correct" (math: row answer; code: row tests)
    every: int = 0  # also evaluate every N RL steps (0: only after SFT and after RL)
    temperature: float = 0.0  # 0: greedy; > 0: sampled, accuracy = avg@n
    n: int = 1  # samples per problem when sampling
    max_tokens: int = 128


@dataclass
class AgentsConfig:
    """Parallel-agent rollouts (docs/agents.md): the policy orchestrates sub-agents. Off by default."""

    enabled: bool = False
    max_rounds: int = 3  # spawn-and-wait rounds per sample; then one last turn to answer
    max_subagents_per_round: int = 16  # per orchestrator sample; extra directives get an error observation
    schedule: Literal["dependency", "sequential"] = "dependency"  # sequential: one sub-agent per engine call
    vote_k: int = 1  # k samples per sub-agent, majority answer
    subagent_policy: Literal["shared", "frozen"] = "shared"  # frozen: a fixed checkpoint answers (K2.5)
    frozen_path: str = ""  # frozen sub-agents' checkpoint; empty: the policy RL starts from
    frozen_engine: Literal["vllm", "hf"] = "hf"
    train_subagents: bool = False  # also train on sub-agent tokens (default: orchestrator tokens only)
    subagent_template: str = "Q: {task}\n"
    subagent_max_tokens: int = 128
    subagent_temperature: float | None = None  # None: the rollout temperature
    max_answer_chars: int = 32
    max_total_tokens: int = 0  # cap on an orchestrator's whole response (0: only max_model_len)

    def __post_init__(self) -> None:
        if not 1 <= self.max_subagents_per_round <= 4096:
            raise ValueError(f"agents.max_subagents_per_round must be in [1, 4096], got {self.max_subagents_per_round}")
        if self.max_rounds < 0 or self.vote_k < 1 or self.subagent_max_tokens < 1:
            raise ValueError("agents.max_rounds must be >= 0, agents.vote_k and agents.subagent_max_tokens >= 1")
        if "{task}" not in self.subagent_template:
            raise ValueError(f"agents.subagent_template must contain '{{task}}', got {self.subagent_template!r}")


@dataclass
class RepetitionConfig:
    """End a response early when its tail is a loop: one block of at most ``max_period`` tokens repeated at
    least ``min_repeats`` times in a row, covering at least ``min_span`` tokens (``finish="repeat"``)."""

    enabled: bool = False
    max_period: int = 32
    min_repeats: int = 4
    min_span: int = 32
    chunk_tokens: int = 0  # check every N generated tokens (0: once per iteration's segment)

    def __post_init__(self) -> None:
        if self.max_period < 1 or self.min_repeats < 2 or self.min_span < 2 or self.chunk_tokens < 0:
            raise ValueError("repetition: need max_period >= 1, min_repeats >= 2, min_span >= 2, chunk_tokens >= 0 "
                             f"(got {self.max_period}, {self.min_repeats}, {self.min_span}, {self.chunk_tokens})")


@dataclass
class PartialConfig:
    """Partial rollouts (Kimi k1.5; docs/partial_rollouts.md): each trajectory generates at most ``token_budget``
    tokens per iteration; unfinished ones are carried over and continued by the next policy, token-exactly."""

    enabled: bool = False
    token_budget: int = 64  # new tokens per trajectory per iteration (the total stays rollout.max_tokens)
    train_segments: Literal["all", "current"] = "all"  # all: older segments IS-corrected via rl.tis_cap
    max_staleness: int | None = None  # versions an unfinished trajectory may lag behind; None: no cap
    on_stale: Literal["drop", "restart"] = "restart"  # drop its whole group, or regenerate it from the prompt
    exact_resume: bool = True  # vLLM on CPU: a continued sample equals an uninterrupted one with the same seed
    repetition: RepetitionConfig = field(default_factory=RepetitionConfig)

    def __post_init__(self) -> None:
        if self.token_budget < 1:
            raise ValueError(f"partial.token_budget must be >= 1, got {self.token_budget}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError(f"partial.max_staleness must be >= 0 or null, got {self.max_staleness}")


@dataclass
class TrackingConfig:
    """Experiment trackers through accelerate (docs/data.md): the metrics.jsonl scalars plus sample tables."""

    log_with: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    project: str = "longcot"  # wandb project / mlflow experiment name
    dir: str = ""  # tracker files (tensorboard events, wandb offline runs, mlflow store); empty: <run>/tracking
    offline: bool = False  # wandb: mode=offline (sync later with `wandb sync`); tensorboard/mlflow write files anyway
    samples_every: int = 10  # log a table of sample completions every N RL steps (0: never)
    num_samples: int = 4  # rows in that table

    def __post_init__(self) -> None:
        if self.samples_every < 0 or self.num_samples < 1:
            raise ValueError(f"tracking: need samples_every >= 0 and num_samples >= 1 (got {self.samples_every}, "
                             f"{self.num_samples})")


@dataclass
class HardwareConfig:
    """The machine a recipe was written for; --dry-run plans memory against it (longcot.plan)."""

    name: str = ""  # e.g. "8x H100 80GB"
    devices: int = 1  # accelerators (GPUs) in the job
    memory_gb: float = 0.0  # memory per device in GiB (an "80GB" H100 has 79.6); 0: unknown (needs, not fit)


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    out_dir: str = "runs"
    threads: int = 0  # torch threads; 0 = all cores
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math")])
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    partial: PartialConfig = field(default_factory=PartialConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    def __post_init__(self) -> None:
        if self.rollout.n < 1 or self.rl.prompts_per_step < 1:
            raise ValueError("rollout.n and rl.prompts_per_step must be >= 1")
        if self.rollout.logprobs_every < 0:
            raise ValueError(f"rollout.logprobs_every must be >= 0 (0: never), got {self.rollout.logprobs_every}")
        if self.partial.enabled and self.partial.train_segments == "all" and self.rl.tis_cap is None:
            raise ValueError("partial.train_segments=all trains on tokens from older policies: set rl.tis_cap "
                             "(importance correction, e.g. 2.0) or partial.train_segments=current")
        if self.rl.dynamic_sampling and self.partial.enabled:
            raise ValueError("rl.dynamic_sampling and partial.enabled cannot be combined: refill rounds would advance "
                             "the partial-rollout buffer")
        if not 0.0 < self.eval.fraction < 1.0:
            raise ValueError(f"eval.fraction must be in (0, 1), got {self.eval.fraction}")
        if self.eval.num_problems > self.data.num_heldout and self.data.task in ("arith", "codefit"):
            raise ValueError(f"eval.num_problems ({self.eval.num_problems}) > "
                             f"data.num_heldout ({self.data.num_heldout})")
