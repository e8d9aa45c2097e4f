"""Say why RL is not learning when reward or gradient stay at zero for several steps.

Group-relative advantages are zero when every sample of a group gets the same reward, so a run whose policy
never produces a rewarded answer (it does not know the answer format, every response is cut off, the gold
column is wrong) trains on nothing at all, and its curves are flat lines that look like a slow start. This
watch reads each step's metrics row and trajectories and warns once per streak, naming the likely cause and
what to change; the warnings also go to ``summary.json`` (``warnings``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from longcot.record import Trajectory, groups

log = logging.getLogger(__name__)
DOC = "docs/data.md (Train on your own data: when reward and gradient are zero)"


def _excerpt(text: str, limit: int = 160) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else "..." + text[-limit:]


def diagnose(trajs: list[Trajectory], row: dict, reward_names: list[str]) -> tuple[str, str] | None:
    """(condition, message) for a step that trains on no signal, or None when some group carries signal."""
    if not trajs:
        return None
    if all(t.finish in ("length", "budget", "repeat") for t in trajs):
        return ("all_truncated", "every response was cut off at rollout.max_tokens, and a cut-off response earns no "
                "reward: raise rollout.max_tokens (and max_model_len), or shorten the expected answers")
    if max(t.reward for t in trajs) <= 0:
        errors = {k: v for k, v in row.items() if k.startswith("reward_errors/") and v}
        why = f"the rewards failed ({errors}; see the warnings above)" if errors else (
            "the policy may not know the answer format (the math reward grades the last \\boxed{} after </think>, "
            "or an 'Answer:' line; the code reward runs the last ```python block), or the gold column is wrong")
        sample = max(trajs, key=lambda t: len(t.response_text))
        return ("no_reward", f"no sample has reward > 0 ({', '.join(reward_names)}): {why}. Turn SFT on with worked "
                f"solutions (sft.columns.solution / sft.source), state the format in data.system_prompt or the "
                f"template, and check the gold with `longcot train ... --dry-run`. A response: "
                f"'{_excerpt(sample.response_text)}'")
    spreads = [max(t.reward for t in g) - min(t.reward for t in g) for g in groups(trajs).values()]
    if max(spreads) == 0:
        solved = min(t.reward for t in trajs) > 0
        what = "every sample is rewarded (the prompts are too easy)" if solved else \
            "each group's samples all got the same reward"
        return ("no_spread", f"{what}, so every group-relative advantage is 0 and the update is empty: use harder "
                "prompts, a larger rollout.n, rl.dynamic_sampling, or data.sampler=prioritized")
    return None


@dataclass
class ZeroSignalWatch:
    """Counts consecutive steps without signal; warns once when a streak reaches ``patience`` steps."""

    patience: int = 3
    reward_names: list[str] = field(default_factory=list)
    streak: int = 0
    warned: bool = False
    warnings: list[dict] = field(default_factory=list)

    def observe(self, step: int, row: dict, trajs: list[Trajectory]) -> str | None:
        """Feed one RL step; returns (and logs) the warning when this step completes a streak."""
        found = diagnose(trajs, row, self.reward_names)
        if found is None and row.get("grad_norm", 1.0) != 0.0:
            self.streak, self.warned = 0, False
            return None
        condition, message = found or ("zero_gradient", "the gradient norm is 0 although rewards differ: check "
                                                        "rl.lr, the loss options and rl.grad_clip")
        self.streak += 1
        if self.streak < self.patience or self.warned:
            return None
        self.warned = True
        text = f"RL step {step}: no learning signal for {self.streak} steps: {message}. See {DOC}."
        self.warnings.append({"step": step, "condition": condition, "message": text})
        log.warning(text)
        return text
