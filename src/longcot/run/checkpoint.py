"""What a training state holds of a live run, and putting it back: the glue between the RL loop and state.py."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from longcot.run.rundir import RunDir
from longcot.run.state import TrainingState, rng_state, save_state, set_rng_state

log = logging.getLogger(__name__)


def save_training_state(trainer: Any, prompts: Any, run: RunDir, next_step: int, keep: int) -> Path:
    """Save everything needed to run step ``next_step`` exactly as an uninterrupted run would. Dynamic sampling
    carries nothing across steps (surplus groups are dropped), so it needs no entry."""
    engine = trainer.engine
    # the asynchronous loop (cluster.backend: ray) draws prompts in producer threads: snapshot with them paused
    with trainer.paused() if hasattr(trainer, "paused") else contextlib.nullcontext():
        loop = {"prompts": prompts.state_dict(),
                "engine": engine.state_dict() if hasattr(engine, "state_dict") else None,
                # the asynchronous loop's scored groups not yet trained, re-queued chunks, partial buffers
                "runtime": trainer.state_dict() if hasattr(trainer, "state_dict") else None,
                "rng": rng_state(), "summary": run.summary, "metrics_rows": run.metrics_rows()}
        path = save_state(run.states, next_step, trainer.learner, loop, keep)
    log.info("training state saved: %s", path)
    return path


def restore_training_state(trainer: Any, prompts: Any, run: RunDir, state: TrainingState) -> int:
    """Put ``state`` back into a freshly built trainer (policy and reference from the checkpoint RL started from)
    and return the step to run next. The engine gets the state's weights through the same sync the
    uninterrupted run used, so it holds bit-identical parameters."""
    learner = trainer.learner
    learner.load_weights(state.policy_path)
    learner.load_state_dict(state.learner)  # the Ray trainer also republishes the weights to its workers
    if state.loop.get("runtime") is not None:
        trainer.load_state_dict(state.loop["runtime"])
    else:
        trainer.engine.sync_weights(learner.named_parameters(), learner.version)
    if state.loop.get("engine") is not None:
        trainer.engine.load_state_dict(state.loop["engine"])
    prompts.load_state_dict(state.loop["prompts"])
    set_rng_state(state.loop["rng"])
    run.summary = state.loop["summary"]
    run.update_summary()
    dropped = run.truncate_metrics(state.loop["metrics_rows"])
    log.info("resuming from %s at RL step %d (policy version %d; %d metrics rows after it dropped)",
             state.path, state.step, learner.version, dropped)
    return state.step
