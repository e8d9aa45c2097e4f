"""single, ddp (2 ranks) and fsdp (2 ranks) train the same batch to the same weights and loss on CPU (gloo).

The multi-rank learners are the real thing: ``make_learner`` starts two trainer processes, rank 0 plans the
micro-batches and gives each rank its share (one rank gets an empty filler: an odd number of micro-batches),
the ranks reduce gradients (ddp) or shard everything (fsdp), and the driver pulls the gathered weights.
"""

from __future__ import annotations

import pytest
import torch

from longcot.config import load_recipe
from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.record import Trajectory
from longcot.rl.remote import RemoteLearner, make_learner

OVERRIDES = ["rl.micro_batch_size=6", "rl.micro_batch_tokens=0", "rl.lr=1e-3", "rl.kl_coef=0.05", "threads=1",
             "rl.logit_chunk_tokens=16"]


def batch(seed: int) -> list[Trajectory]:
    """5 groups of 4 (20 responses -> micro-batches of 6, 6, 6, 2: ranks get 2 each, one rank a filler too
    when the count is odd), responses of 1-29 tokens, engine log-probs present."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for gi in range(5 - seed):  # the second batch has 4 groups: 16 responses -> 3 micro-batches (odd)
        prompt = torch.randint(4, 90, (5 + 3 * gi,), generator=g).tolist()
        for i in range(4):
            r = torch.randint(4, 90, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).tolist()
            out.append(Trajectory(f"p{gi}", f"p{gi}@{seed}", prompt, r, [-1.0] * len(r), advantage=float(i % 3 - 1)))
    return out


def train_two_steps(path, strategy: str, ranks: int, load_state: dict | None = None, extra: tuple = ()) -> dict:
    recipe = load_recipe(None, [f"trainer.strategy={strategy}", f"trainer.ranks={ranks}", *OVERRIDES, *extra])
    learner = make_learner(load_policy(path), load_tokenizer(path), recipe)
    try:
        first = learner.update(batch(0))
        state = learner.state_dict()
        if load_state is not None:  # resume from another strategy's optimizer state
            learner.load_state_dict(load_state)
        second = learner.update(batch(1))
        weights = {n: t.clone() for n, t in learner.named_parameters()}
        ref = learner.reference_logprobs(batch(1)[:5])
        pol = learner.policy_logprobs(batch(1)[:5])
        after_forwards = learner.state_dict()  # fsdp: forwards without a backward leave the root gathered
        out = {"first": first, "second": second, "state": state, "weights": weights, "ref": ref, "pol": pol,
               "state_after_forwards": after_forwards,
               "version": learner.version, "updates": learner.updates, "learner": type(learner)}
        learner.load_weights(path)  # back to the starting policy (what resume does), on every rank
        out["reloaded"] = {n: t.clone() for n, t in learner.named_parameters()}
        # 16 responses in 3 micro-batches: both ranks score a share, so a rank that kept its old weights shows
        out["reloaded_pol"], out["start_ref"] = learner.policy_logprobs(batch(1)), learner.reference_logprobs(batch(1))
        return out
    finally:
        if isinstance(learner, RemoteLearner):
            procs = learner.launcher.context.processes
            learner.close()
            assert not any(p.is_alive() for p in procs)  # no rank outlives close()


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_tiny_moe(tmp_path_factory.mktemp("m"), seed=1, num_hidden_layers=2)


@pytest.fixture(scope="module")
def single(policy):
    return train_two_steps(policy, "single", 1)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_train_to_the_single_rank_weights(policy, single, strategy):
    """Same updated weights (<= 1e-5) and loss after two steps; the optimizer state gathered from the ranks
    equals single's and loads back across strategies (the second step starts from single's state); load_weights
    puts the starting checkpoint back on every rank. fsdp runs with activation checkpointing (recomputing gives the
    same numbers), which also covers FSDP2 + HF checkpointing."""
    extra = ("rl.gradient_checkpointing=true",) if strategy == "fsdp" else ()
    got = train_two_steps(policy, strategy, 2, load_state=single["state"], extra=extra)
    assert got["learner"] is RemoteLearner and got["version"] == got["updates"] == 2
    assert set(got["weights"]) == set(single["weights"])
    assert max((w - single["weights"][n]).abs().max().item() for n, w in got["weights"].items()) <= 1e-5
    start = load_policy(policy).state_dict()
    assert max((single["weights"][n] - start[n]).abs().max().item() for n in start) > 1e-3  # it did train
    for step in ("first", "second"):
        assert got[step]["loss"] == pytest.approx(single[step]["loss"], abs=1e-6)
        assert got[step]["grad_norm"] == pytest.approx(single[step]["grad_norm"], rel=1e-5)
        assert got[step]["kl"] == pytest.approx(single[step]["kl"], abs=1e-6)
    for which in ("state", "state_after_forwards"):  # the second: after log-prob forwards (a Ray sync check)
        s1, s2 = single[which]["optimizer"], got[which]["optimizer"]
        assert s1["state"].keys() == s2["state"].keys()
        for k in s1["state"]:
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.allclose(s1["state"][k][key], s2["state"][k][key], atol=1e-7, rtol=1e-4)
    for a, b in zip(single["ref"] + single["pol"], got["ref"] + got["pol"], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    for run in (single, got):  # load_weights: the starting checkpoint back into every rank's (sharded) policy
        assert all(torch.equal(w, start[n]) for n, w in run["reloaded"].items())
        for a, b in zip(run["reloaded_pol"], run["start_ref"], strict=True):
            assert a == pytest.approx(b, abs=1e-6)


@pytest.mark.slow
def test_bf16_mixed_trains_alike_on_every_strategy(policy):
    """bf16 compute (autocast for single, FSDP2's mixed-precision policy for fsdp), float32 master weights: the
    same loss to bf16 accuracy, and the weights stay float32."""
    single = train_two_steps(policy, "single", 1, extra=("trainer.precision=bf16-mixed",))
    fsdp = train_two_steps(policy, "fsdp", 2, extra=("trainer.precision=bf16-mixed",))
    for step in ("first", "second"):
        assert fsdp[step]["loss"] == pytest.approx(single[step]["loss"], rel=2e-2, abs=2e-3)
    assert all(t.dtype == torch.float32 for t in fsdp["weights"].values())
    diff = max((w - single["weights"][n]).abs().max().item() for n, w in fsdp["weights"].items())
    assert diff < 5e-3, diff
