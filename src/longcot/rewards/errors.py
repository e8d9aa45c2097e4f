"""What happens when a reward fails: per-sample marks, the recipe's ``on_error``, and the per-step error rate.

A reward that raises (or runs past ``timeout_s``) on a sample is never silent. The sample gets
``trajectory.reward_errors[name] = "Type: message"`` (``longcot score`` writes it to the output row as
``reward_error``), the step metric ``reward_errors/<name>`` counts it, a warning names the sample id, and:

* ``on_error: zero`` (or a number): the sample scores 0 (that number) and the step goes on;
* ``on_error: raise``: the first failure stops the run with the sample id and the message;
* whatever ``on_error`` says, more than ``max_error_rate`` of a step's samples failing one reward stops the
  run (:func:`check_error_rate`, called by :func:`~longcot.rewards.registry.compute_rewards` each step): a
  reward that fails on most samples is a broken reward, and training on its zeros teaches nothing.

:class:`RewardSetupError` is different: the reward cannot work at all on this machine (the code sandbox
cannot start). It is never scored; it always stops the run.
"""

from __future__ import annotations

from collections.abc import Sequence


class RewardSetupError(RuntimeError):
    """A reward that cannot work at all here (e.g. the code sandbox cannot start). Never scored as a
    per-sample error: it stops the run, since grading every sample 0 would look like a policy that fails."""


class RewardError(RuntimeError):
    """A reward failed on too many samples of a step (or once, with ``on_error: raise``)."""


def error_score(on_error: float | str) -> float:
    """The score of a failed sample: 0 for ``"zero"``, the number itself otherwise (``"raise"`` never scores)."""
    return 0.0 if on_error in ("zero", "raise") else float(on_error)


def describe(exc: BaseException) -> str:
    """``"Type: message"`` (a KeyError's message without the quotes ``str`` would add), at most 500 characters."""
    message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str) \
        else str(exc)
    return f"{type(exc).__name__}: {message}"[:500]


def check_error_rate(errors: dict[str, list[tuple[str, str]]], n_samples: int, specs: Sequence) -> None:
    """Raise :class:`RewardError` when a reward failed on more than its ``max_error_rate`` of ``n_samples``.

    ``errors[name]`` lists ``(sample id, message)`` of one step's failures, first failure first. The RL loop
    needs no call of its own: :func:`~longcot.rewards.registry.compute_rewards` calls this at the end of every
    scoring round unless told not to (``longcot score`` marks rows instead of stopping)."""
    for spec in specs:
        failed = errors.get(spec.key, [])
        if failed and n_samples and len(failed) / n_samples > spec.max_error_rate:
            sample_id, message = failed[0]
            raise RewardError(
                f"reward '{spec.name}' failed on {len(failed)} of {n_samples} samples in one step, over its "
                f"max_error_rate {spec.max_error_rate:g}; first failure: sample {sample_id}: {message} "
                f"(set rewards[].max_error_rate to tolerate more, or fix the reward or the data)")
