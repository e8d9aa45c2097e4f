"""Pieces of ``longcot train`` that are easy to get silently wrong."""

from longcot.data import Task
from longcot.pipeline import longest_prompt
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_tokenizer


def test_the_engine_context_covers_the_longest_training_prompt(tmp_path):
    """The engine's max_model_len is sized from training and held-out prompts alike: sizing it from the held-out
    rows only made vLLM refuse (or truncate) a longer training prompt mid-run."""
    tok = load_tokenizer(build_tiny_moe(tmp_path))
    task = Task(train=[{"id": "long", "problem": "1+2-3" * 40}], heldout=[{"id": "short", "problem": "1+1"}],
                template="Q: {problem}\n")
    longest = len(task.prompt(task.train[0], tok).prompt_ids)
    assert longest_prompt(task, tok) == longest > len(task.prompt(task.heldout[0], tok).prompt_ids)
