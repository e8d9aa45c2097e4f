"""Input checks and record building shared by the vLLM and HF engines, so both return identical records."""

from __future__ import annotations

import zlib

import numpy as np

from longcot.record import Finish, Segment, Trajectory
from longcot.rollout.base import Prompt, SamplingConfig


def check_inputs(prompts: list[Prompt], sampling: SamplingConfig, max_model_len: int | None) -> None:
    """Fail early with the offending prompt named, instead of deep inside the engine."""
    if sampling.n < 1:
        raise ValueError(f"sampling.n must be >= 1 (samples per prompt), got {sampling.n}")
    if sampling.max_tokens < 1:
        raise ValueError(f"sampling.max_tokens must be >= 1, got {sampling.max_tokens}")
    if sampling.temperature < 0:
        raise ValueError(f"sampling.temperature must be >= 0 (0 = greedy), got {sampling.temperature}")
    seen: set[str] = set()
    for p in prompts:
        if not p.prompt_ids:
            raise ValueError(f"prompt {p.prompt_id!r} has no prompt_ids (tokenize it before generating)")
        if p.prompt_id in seen:
            raise ValueError(f"prompt_id {p.prompt_id!r} appears twice in one batch; group ids would collide")
        seen.add(p.prompt_id)
        if max_model_len is not None and len(p.prompt_ids) >= max_model_len:
            raise ValueError(
                f"prompt {p.prompt_id!r} has {len(p.prompt_ids)} tokens, but the engine's max_model_len is "
                f"{max_model_len}: raise max_model_len or shorten the prompt"
            )


def make_trajectory(
    prompt: Prompt,
    group_tag: str,
    response_ids: list[int],
    logprobs: list[float],
    text: str,
    finish: Finish,
    version: int,
    temperature: float | None = None,
    routed_experts: np.ndarray | None = None,
) -> Trajectory:
    """One record; ``meta`` is copied so reward functions can annotate one sample without touching its siblings.
    ``logprobs`` is empty when the engine was asked not to return them (``SamplingConfig.logprobs=False``)."""
    if logprobs and len(logprobs) != len(response_ids):
        raise RuntimeError(
            f"engine returned {len(logprobs)} logprobs for {len(response_ids)} tokens (prompt {prompt.prompt_id!r})"
        )
    return Trajectory(
        prompt_id=prompt.prompt_id,
        group_id=prompt.prompt_id + group_tag,
        prompt_ids=list(prompt.prompt_ids),
        response_ids=list(response_ids),
        rollout_logprobs=[float(x) for x in logprobs],
        finish=finish,
        response_text=text,
        prompt_text=prompt.prompt_text,
        segments=[Segment(start=0, end=len(response_ids), policy_version=version)],
        meta=dict(prompt.meta),
        temperature=temperature,
        routed_experts=routed_experts,
    )


def check_pairs(prompt_ids: list[list[int]], response_ids: list[list[int]]) -> None:
    """Inputs of ``compute_logprobs``: equally many prompts and responses, every prompt non-empty."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"compute_logprobs got {len(prompt_ids)} prompts but {len(response_ids)} responses")
    for i, p in enumerate(prompt_ids):
        if not p:
            raise ValueError(f"compute_logprobs: prompt {i} is empty (the first token has no logprob)")


def prompt_seed(seed: int | None, prompt_id: str) -> int | None:
    """A per-prompt seed that depends only on the run seed and the prompt id (stable across processes)."""
    if seed is None:
        return None
    return (seed * 1_000_003 + zlib.crc32(prompt_id.encode())) % (2**31 - 1)
