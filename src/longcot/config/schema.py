"""The training recipe schema. Every key a recipe may set is a field here, with its default and meaning.

Algorithm options (loss, advantage, reward and sampler options) are passed to the registered function by
name and validated against its signature, so adding a loss never touches this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from longcot.long2short.config import Long2ShortConfig
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
    skip_missing_answers: bool = False  # task=dataset: drop (and count) rows without a gold answer; default: error


@dataclass
class RolloutCorrectionConfig:
    """Corrections for the engine that sampled (pi_rollout) differing from the trainer (pi_old), named as in verl's
    rollout correction (docs/moe.md; longcot/rl/rollout_correction.py). They need engine log-probs, which every
    step then asks for. Ratios are rho = pi_old / pi_rollout per token."""

    rollout_is: Literal["token"] | None = None  # token-level truncated IS: weight min(rho, rollout_is_threshold)
    rollout_is_threshold: float = 2.0
    # rejection: "token" = token-level masked IS (IcePop: drop tokens whose rho leaves [lower, upper]);
    # "geometric" = sequence-level geometric-mean masking (drop sequences whose exp(mean log rho) leaves it)
    rollout_rs: Literal["token", "geometric"] | None = None
    rollout_rs_threshold: float | None = None  # upper bound (e.g. 2.0 token, 1.001 geometric); required with rs
    rollout_rs_threshold_lower: float | None = None  # lower bound; None: 1 / upper

    def __post_init__(self) -> None:
        if self.rollout_is is not None and self.rollout_is_threshold <= 0:
            raise ValueError(f"rollout_correction.rollout_is_threshold must be > 0, got {self.rollout_is_threshold}")
        if self.rollout_rs is not None:
            up, lo = self.rollout_rs_threshold, self.rollout_rs_threshold_lower
            if up is None:
                raise ValueError(f"rollout_correction.rollout_rs={self.rollout_rs!r} needs rollout_rs_threshold (the "
                                 "upper ratio bound, e.g. 2.0 for token, 1.001 for geometric)")
            if up < 1 or (lo is not None and not 0 < lo <= 1):
                raise ValueError("rollout_correction: need rollout_rs_threshold >= 1 and 0 < "
                                 f"rollout_rs_threshold_lower <= 1, got {up} and {lo}")

    @property
    def active(self) -> bool:
        return self.rollout_is is not None or self.rollout_rs is not None

    @property
    def tis_cap(self) -> float | None:
        """The truncation cap of token-level truncated IS, or None when it is off."""
        return self.rollout_is_threshold if self.rollout_is == "token" else None


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
    max_length: int = 1024  # tokens per SFT example (prompt + completion); longer ones are truncated by TRL
    optimizer: str = "adamw"  # adamw | muon | muonclip (longcot/policies/optimizers.py; docs/moe.md)
    optimizer_options: dict[str, Any] = field(default_factory=dict)  # e.g. {momentum: 0.95, qk_clip_tau: 100}
    # A TRL checkpoint (weights, optimizer, schedule, RNG, data position) every N optimizer steps, and on
    # SIGTERM/Ctrl-C: `longcot train ... --resume` continues SFT mid-stage from it. 0: only on a signal.
    checkpoint_every: int = 200


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
    # use them; they feed the logprob_gap metric (rollout vs trainer mismatch) on those steps. rl.rollout_correction and
    # rl.kl_in=reward need them and get them on every step whatever this says. Default: every step (DESIGN.md
    # logs the gap every step); the tiny recipes use 10, as they cost ~10% of a CPU decode step.
    logprobs_every: int = 1
    # Weight-sync canary (rl/sync_check.py): every k steps compare the engine's log-probs of a few responses with
    # the trainer's after the sync, log sync_check/gap_*, and stop the run when the mean gap exceeds the bound
    # (fp32 engine and trainer agree to ~1e-6; bf16 rollouts differ by ~1e-2). 0: never.
    sync_check_every: int = 10
    sync_check_max_gap: float = 0.1


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
    micro_batch_size: int = 64  # at most this many sequences per forward/backward
    # ... and at most this many tokens (each distinct prompt once + responses when packed; rows x longest when
    # padded); a longer response is a micro-batch of its own. 0: sequence count only.
    micro_batch_tokens: int = 16384
    gradient_checkpointing: bool = False  # recompute each decoder layer's activations in backward (HF's)
    logit_chunk_tokens: int = 1024  # tokens per LM-head chunk for log-probs/entropy (0: all at once)
    updates_per_step: int = 1  # optimizer steps per rollout batch (>1: off-policy mini-batches)
    advantage: AlgoRef = field(default_factory=lambda: AlgoRef("grpo"))
    loss: AlgoRef = field(default_factory=lambda: AlgoRef("ppo_clip"))
    aggregation: str = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    # Rollout/trainer mismatch corrections (truncated IS, masked IS, geometric-mean masking); docs/moe.md
    rollout_correction: RolloutCorrectionConfig = field(default_factory=RolloutCorrectionConfig)
    # MoE routing replay (docs/moe.md): none | r3 (replay the engine's experts: vLLM captures them every step)
    # | r2 (replay the trainer's own first-pass experts across updates_per_step > 1)
    routing_replay: Literal["none", "r3", "r2"] = "none"
    router_aux_coef: float = 0.0  # MoE load-balancing loss weight in RL; off: RL should not move routing on its own
    optimizer: str = "adamw"  # adamw | muon | muonclip (longcot/policies/optimizers.py)
    optimizer_options: dict[str, Any] = field(default_factory=dict)  # e.g. {momentum: 0.95, qk_clip_tau: 100}
    # pi_old in the policy ratio: "trainer" = the trainer's policy before this update (the proximal policy of
    # decoupled PPO; with rl.rollout_correction the engine's log-probs enter as the truncated IS weight), "engine" = the
    # engine's log-probs of the policy that sampled (behaviour-policy PPO). "engine" and
    # rl.max_off_policy_steps > 0 ask the engine for log-probs on every step.
    old_logprobs: Literal["trainer", "engine"] = "trainer"
    # Asynchronous rollouts (cluster.backend: ray, docs/cluster.md): a trajectory may be sampled by a policy up to
    # k versions older than the one it trains; older ones are dropped at admission and counted. 0: synchronous.
    # k > 0 needs an off-policy correction: rl.rollout_correction or rl.old_logprobs: engine.
    max_off_policy_steps: int = 0
    reset_optimizer: bool = False  # clear optimizer state every iteration (k1.5; the k15 loss asks for it)
    kl_in: Literal["loss", "reward"] = "loss"  # where kl_coef applies: per-token loss term, or subtracted from R
    # Samples whose advantage is 0 on every token (a group of equal rewards) carry no gradient: leave them out of
    # the forward/backward, with the step's loss denominators unchanged, so the update is the same for less
    # compute. Applies when the loss is 0 at A = 0 (ppo_clip, gspo, cispo) and nothing else in the loss needs
    # them (no KL in the loss, entropy bonus, router aux loss or rollout rejection); docs/algorithms.md.
    skip_zero_advantage: bool = True
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, refill up to prompts_per_step
    dynamic_max_extra_rounds: int = 2  # cap on extra generation rounds per step
    length_penalty_reward: str = "k15_length"  # the reward whose weight follows the warm-up schedule
    length_penalty_warmup: int = 0  # steps with that reward's weight at 0 (k1.5), then its recipe weight
    # A training state (run/state.py: weights, optimizer, sampler, RNG, partial-rollout buffer) every N steps, at
    # the end and on SIGTERM/Ctrl-C; `longcot train ... --resume` continues from the latest. 0: end/signal only.
    checkpoint_every: int = 50
    keep_checkpoints: int = 2  # newest training states kept on disk (0: all)

    # rl.tis_cap was one correction among several; it lives in rollout_correction now (loader names the move)
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "tis_cap": "rl.rollout_correction: {rollout_is: token, rollout_is_threshold: <cap>}"}

    def __post_init__(self) -> None:
        if self.router_aux_coef < 0:
            raise ValueError(f"rl.router_aux_coef must be >= 0, got {self.router_aux_coef}")
        if self.routing_replay == "r2" and self.updates_per_step < 2:
            raise ValueError("rl.routing_replay=r2 replays the first pass's routing in the later passes over a batch: "
                             "it needs rl.updates_per_step >= 2 (use r3 to replay the engine's routing)")


@dataclass
class TrainerConfig:
    """Where and how the policy trains (docs/training.md): ranks, sharding strategy, device, precision."""

    strategy: Literal["single", "ddp", "fsdp"] = "single"
    ranks: int = 1  # trainer processes; > 1: `longcot train` starts all N itself, apart from the driver
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: rank r on GPU r when CUDA is available, else CPU
    precision: Literal["auto", "fp32", "bf16-mixed"] = "auto"  # auto: bf16-mixed on GPU, fp32 on CPU
    # how long a follower rank waits for rank 0's next command (it waits through every rollout phase)
    timeout_minutes: float = 360.0

    def __post_init__(self) -> None:
        if self.ranks < 1:
            raise ValueError(f"trainer.ranks must be >= 1, got {self.ranks}")
        if self.strategy == "single" and self.ranks != 1:
            raise ValueError(f"trainer.strategy=single runs one rank, got trainer.ranks={self.ranks}: set "
                             "trainer.strategy=ddp or trainer.strategy=fsdp")
        if self.timeout_minutes <= 0:
            raise ValueError(f"trainer.timeout_minutes must be > 0, got {self.timeout_minutes}")


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
class SubagentRole:
    """Who answers the directives that name a role (``[a@calc: 7-9]``; docs/agents.md, "Roles")."""

    policy: Literal["shared", "frozen"] = "shared"  # shared: the policy being trained; frozen: a fixed checkpoint
    path: str = ""  # frozen: its checkpoint; empty: `recipe`'s final checkpoint, else the policy RL starts from
    recipe: str = ""  # frozen: a recipe (path from the working directory) that trains this specialist, run first
    # when its checkpoint is missing
    engine: Literal["vllm", "hf"] = "hf"  # frozen: the engine that serves it (shared uses the rollout engine)
    template: str = ""  # its prompt, with {task}; empty: agents.subagent_template
    max_tokens: int = 0  # per sub-agent; 0: agents.subagent_max_tokens
    temperature: float | None = None  # None: agents.subagent_temperature

    def __post_init__(self) -> None:
        if self.template and "{task}" not in self.template:
            raise ValueError(f"a sub-agent role's template must contain '{{task}}', got {self.template!r}")
        if self.max_tokens < 0:
            raise ValueError(f"a sub-agent role's max_tokens must be >= 0 (0: agents.subagent_max_tokens), "
                             f"got {self.max_tokens}")
        if self.policy == "shared" and (self.path or self.recipe):
            raise ValueError("a shared sub-agent role is the trained policy itself: path/recipe need policy: frozen")


@dataclass
class AgentBudget:
    """What one task (orchestrator sample) may spend on sub-agents, over all its rounds; 0: no limit."""

    max_subagents: int = 0
    max_subagent_tokens: int = 0  # tokens its sub-agents may generate (every vote counts)

    def __post_init__(self) -> None:
        if self.max_subagents < 0 or self.max_subagent_tokens < 0:
            raise ValueError("agents.budget limits must be >= 0 (0: no limit)")


@dataclass
class AgentsConfig:
    """Parallel-agent rollouts (docs/agents.md): the policy orchestrates sub-agents. Off by default."""

    enabled: bool = False
    max_rounds: int = 3  # spawn-and-wait rounds per sample; then one last turn to answer
    max_subagents_per_round: int = 16  # per orchestrator sample; extra directives get an error observation
    schedule: Literal["dependency", "sequential"] = "dependency"  # sequential: one sub-agent per engine call
    vote_k: int = 1  # k samples per sub-agent, majority answer
    # role -> who answers it; a directive without @role gets default_role (empty: the first role listed)
    subagents: dict[str, SubagentRole] = field(default_factory=lambda: {"worker": SubagentRole()})
    default_role: str = ""
    budget: AgentBudget = field(default_factory=AgentBudget)
    fidelity: str = "subtasks"  # sub-task fidelity check: a registered name or module:function (agents/fidelity.py)
    train_subagents: bool = False  # also train on shared-role sub-agent tokens (default: orchestrator tokens only)
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
        if not self.subagents:
            raise ValueError("agents.subagents needs at least one role, e.g. {worker: {policy: shared}}")
        if self.default_role and self.default_role not in self.subagents:
            raise ValueError(f"agents.default_role '{self.default_role}' is not a role in agents.subagents "
                             f"({', '.join(self.subagents)})")

    @property
    def default(self) -> str:
        """The role of a directive that names none."""
        return self.default_role or next(iter(self.subagents))


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
    train_segments: Literal["all", "current"] = "all"  # all: older segments IS-corrected (rl.rollout_correction)
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
class ClusterConfig:
    """Where the RL loop runs (docs/cluster.md). ``local``: one process, rollouts and training take turns (the
    default). ``ray``: rollout workers and the trainer are Ray actors; rollouts overlap training within
    ``rl.max_off_policy_steps``. The same recipe runs in either mode."""

    backend: Literal["local", "ray"] = "local"
    address: str | None = None  # None: start a local Ray instance for this run; "auto" or "host:port": join one
    rollout_workers: int = 1  # Ray actors, each owning one engine (rollout.engine)
    worker_cpus: float = 1.0  # Ray resources per rollout worker (its torch/vLLM threads follow worker_cpus)
    worker_gpus: float = 0.0
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. node labels
    trainer_cpus: float = 1.0  # Ray resources of the trainer actor
    trainer_gpus: float = 0.0
    trainer_resources: dict[str, float] = field(default_factory=dict)
    prompts_per_call: int = 0  # prompts per worker generate call; 0: ceil(rl.prompts_per_step / rollout_workers)
    max_worker_restarts: int = 3  # Ray restarts a dead rollout worker this often; its prompts are re-queued
    weight_transport: Literal["object_store", "nccl"] = "object_store"  # nccl: GPUs only (vLLM weight transfer)

    def __post_init__(self) -> None:
        if self.rollout_workers < 1 or self.prompts_per_call < 0 or self.max_worker_restarts < 0:
            raise ValueError("cluster.rollout_workers must be >= 1, cluster.prompts_per_call and "
                             f"cluster.max_worker_restarts >= 0 (got {self.rollout_workers}, {self.prompts_per_call}, "
                             f"{self.max_worker_restarts})")
        if min(self.worker_cpus, self.worker_gpus, self.trainer_cpus, self.trainer_gpus) < 0:
            raise ValueError("cluster.worker_cpus/worker_gpus/trainer_cpus/trainer_gpus must be >= 0")


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
    # modules of @reward-registered functions to import first: dotted names (found on sys.path or in the
    # current directory) or .py paths (relative to the current directory), e.g. [myrewards, lib/extra.py]
    reward_modules: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("math")])
    rl: RLConfig = field(default_factory=RLConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    partial: PartialConfig = field(default_factory=PartialConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    long2short: Long2ShortConfig = field(default_factory=Long2ShortConfig)  # `longcot long2short` (docs/long2short.md)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    def __post_init__(self) -> None:
        if self.rollout.n < 1 or self.rl.prompts_per_step < 1:
            raise ValueError("rollout.n and rl.prompts_per_step must be >= 1")
        if self.rl.checkpoint_every < 0 or self.rl.keep_checkpoints < 0 or self.sft.checkpoint_every < 0:
            raise ValueError("rl.checkpoint_every, rl.keep_checkpoints and sft.checkpoint_every must be >= 0, got "
                             f"{self.rl.checkpoint_every}, {self.rl.keep_checkpoints}, {self.sft.checkpoint_every}")
        if self.rollout.sync_check_every < 0 or self.rollout.sync_check_max_gap <= 0:
            raise ValueError("rollout.sync_check_every must be >= 0 and rollout.sync_check_max_gap > 0, got "
                             f"{self.rollout.sync_check_every}, {self.rollout.sync_check_max_gap}")
        if self.rl.micro_batch_size < 1 or self.rl.micro_batch_tokens < 0 or self.rl.logit_chunk_tokens < 0:
            raise ValueError("rl.micro_batch_size must be >= 1, rl.micro_batch_tokens and rl.logit_chunk_tokens >= 0 "
                             f"(got {self.rl.micro_batch_size}, {self.rl.micro_batch_tokens}, "
                             f"{self.rl.logit_chunk_tokens})")
        if self.rollout.logprobs_every < 0:
            raise ValueError(f"rollout.logprobs_every must be >= 0 (0: never), got {self.rollout.logprobs_every}")
        if self.partial.enabled and self.partial.train_segments == "all" and not self.rl.rollout_correction.active:
            raise ValueError("partial.train_segments=all trains on tokens from older policies: set an importance "
                             "correction (rl.rollout_correction: {rollout_is: token, rollout_is_threshold: 2.0}) or "
                             "partial.train_segments=current")
        if self.trainer.strategy == "fsdp" and self.rl.optimizer != "adamw":
            raise ValueError(f"rl.optimizer={self.rl.optimizer} with trainer.strategy=fsdp is not supported: Muon "
                             "orthogonalises whole matrices and fsdp gives each rank a shard (use ddp or single)")
        if self.rl.routing_replay == "r3" and self.agents.enabled:
            raise ValueError("rl.routing_replay=r3 with agents.enabled is not supported: an orchestrator's response "
                             "holds observation tokens the engine never routed")
        if self.rl.routing_replay == "r3" and self.rollout.engine != "vllm":
            raise ValueError(f"rl.routing_replay=r3 needs the vllm engine (it captures the experts), not "
                             f"{self.rollout.engine!r}")
        frozen = {(r.engine, r.path, r.recipe) for r in self.agents.subagents.values() if r.policy == "frozen"}
        if self.cluster.backend == "ray" and self.agents.enabled and len(frozen) > 1:
            raise ValueError("agents.subagents: frozen roles on several checkpoints or engines: in Ray mode a rollout "
                             "worker serves one frozen checkpoint beside the policy (cluster.backend=local serves any)")
        if self.rl.max_off_policy_steps < 0:
            raise ValueError(f"rl.max_off_policy_steps must be >= 0 (0: synchronous), got "
                             f"{self.rl.max_off_policy_steps}")
        if self.rl.max_off_policy_steps and not self.rl.rollout_correction.active and self.rl.old_logprobs == "trainer":
            raise ValueError(f"rl.max_off_policy_steps={self.rl.max_off_policy_steps} trains on samples from older "
                             "policies: choose an off-policy correction, rl.rollout_correction (e.g. "
                             "{rollout_is: token}: decoupled PPO, the ratio against the trainer's policy, truncated "
                             "IS weight against the engine's) or "
                             "rl.old_logprobs: engine (the engine's log-probs as pi_old)")
        if self.rl.dynamic_sampling and self.partial.enabled:
            raise ValueError("rl.dynamic_sampling and partial.enabled cannot be combined: refill rounds would advance "
                             "the partial-rollout buffer")
        if not 0.0 < self.eval.fraction < 1.0:
            raise ValueError(f"eval.fraction must be in (0, 1), got {self.eval.fraction}")
        if self.eval.num_problems < 1:
            raise ValueError(f"eval.num_problems must be >= 1 (the held-out evaluations after SFT and after RL), got "
                             f"{self.eval.num_problems}")
        if self.eval.num_problems > self.data.num_heldout and self.data.task in ("arith", "codefit"):
            raise ValueError(f"eval.num_problems ({self.eval.num_problems}) > "
                             f"data.num_heldout ({self.data.num_heldout})")
