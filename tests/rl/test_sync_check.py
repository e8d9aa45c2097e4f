"""The weight-sync canary compares the engine and the trainer on the tokens the policy wrote, and stops a run
whose engine samples from other weights."""

import pytest
import torch

from longcot.config import load_recipe
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.record import Trajectory
from longcot.rl.learner import Learner
from longcot.rl.sync_check import WeightSyncError, check_weight_sync, gap_row, token_gaps
from longcot.rollout.hf import HFEngine


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A learner and an HF engine on the same weights (each its own copy), the tokenizer and the checkpoint."""
    path = build_tiny_moe(tmp_path_factory.mktemp("m"))
    tok = load_tokenizer(path)
    learner = Learner(load_policy(path), tok, load_recipe(None, []))
    return learner, HFEngine.from_module(load_policy(path), tok), tok, path


def agent_turns() -> list[Trajectory]:
    """An orchestrator-like trace: its own tokens, an observation the environment inserted (loss mask 0), its own
    tokens again; and a plain response."""
    response = list(range(10, 40))
    mask = [1] * 10 + [0] * 12 + [1] * 8
    return [Trajectory(prompt_id="a", group_id="a", prompt_ids=[1, 40, 41], response_ids=response, loss_mask=mask,
                       rollout_logprobs=[]),
            Trajectory(prompt_id="b", group_id="b", prompt_ids=[1, 50], response_ids=list(range(60, 75)),
                       rollout_logprobs=[])]


def test_observation_tokens_are_not_compared(pair):
    learner, engine, _, _ = pair
    out = check_weight_sync(engine, learner, agent_turns(), max_gap=0.1)
    assert out["sync_check/gap_max"] < 1e-4  # before the fix: the 12 observation tokens gave gaps of several nats


def test_an_engine_on_other_weights_stops_the_run(pair):
    learner, _, tok, path = pair
    stale = HFEngine.from_module(load_policy(path), tok)
    with torch.no_grad():
        for p in stale.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    with pytest.raises(WeightSyncError, match="differ from the trainer's"):
        check_weight_sync(stale, learner, agent_turns(), max_gap=0.1)


def test_the_gap_rule_counts_only_masked_in_tokens():
    # the rule the local canary and the Ray workers' checks share (runtime/remote.py passes no masks)
    engine, trainer = [[-1.0, -2.0, -3.0], [-0.5]], [[-1.0, -7.0, -2.5], [-0.75]]
    assert token_gaps(engine, trainer, [[1, 0, 1], [1]]) == [0.0, 0.5, 0.25]
    assert token_gaps(engine, trainer) == [0.0, 5.0, 0.5, 0.25]
    assert gap_row(token_gaps(engine, trainer)) == {"sync_check/gap_mean": 1.4375, "sync_check/gap_max": 5.0}
    assert token_gaps(engine, trainer, [[0, 0, 0], [0]]) == []
