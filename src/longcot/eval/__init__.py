"""AIME-style evaluation: n samples per problem at the published protocol, graded by the training rewards.

``longcot eval`` is :func:`longcot.eval.cli.main`; the trainer calls :func:`longcot.eval.run.eval_during_training`.
Metrics are pure functions in :mod:`longcot.eval.metrics`. Heavy modules (engines) load only when used.
"""

from longcot.eval.config import DatasetConfig, EvalConfig, load_eval_config
from longcot.eval.metrics import avg_at_n, bootstrap_ci, length_stats, maj_at_k, pass_at_k, summarize

__all__ = [
    "DatasetConfig", "EvalConfig", "avg_at_n", "bootstrap_ci", "length_stats", "load_eval_config", "maj_at_k",
    "pass_at_k", "summarize",
]
