"""Shared by the agent tests: one tiny MoE, one vLLM engine and one HF engine on it for the whole package.

The orchestrator's first turn is scripted (``meta["orchestrator_turn"]``), so a test drives the protocol exactly
while every sub-agent answer and later orchestrator turn comes from a real engine. ``Recording`` only records the
batches an engine receives and delegates to it.
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from longcot.policies.build import build_tiny_moe
from longcot.rollout import build_engine
from longcot.rollout.base import Prompt

MAX_LEN = 4096


class Recording:
    """Delegates to a real engine and keeps every batch it was given."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompts, sampling, group_tag=""):
        self.calls.append((list(prompts), sampling))
        return self.engine.generate(prompts, sampling, group_tag)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def scripted_prompt(tok, turn: str, pid: str = "p0", **meta) -> Prompt:
    text = "Q: compound\n"
    return Prompt(pid, tok(text, add_special_tokens=False).input_ids, text,
                  meta={"answer": "0", "orchestrator_turn": turn, **meta})


@pytest.fixture(scope="package")
def model_dir(tmp_path_factory):
    return build_tiny_moe(tmp_path_factory.mktemp("tiny_moe_agents"), max_position_embeddings=MAX_LEN)


@pytest.fixture(scope="package")
def tok(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="package")
def vllm_engine(model_dir, tok):
    engine = build_engine("vllm", str(model_dir), tok, max_model_len=MAX_LEN, seed=0)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="package")
def hf_engine(model_dir, tok):
    return build_engine("hf", str(model_dir), tok, batch_size=16)


@pytest.fixture
def recording():
    return Recording


@pytest.fixture
def scripted(tok):
    return lambda turn, pid="p0", **meta: scripted_prompt(tok, turn, pid, **meta)
