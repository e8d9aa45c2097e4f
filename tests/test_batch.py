"""Trajectories -> tensors -> response log-probs, checked against a direct per-sequence computation."""

import numpy as np
import pytest
import torch

from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy
from longcot.record import Trajectory
from longcot.rl.batch import collate, length_sorted_chunks, response_logprobs


def direct_logprobs(model, prompt, response, temperature=1.0):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].float() / temperature
    logp = torch.log_softmax(logits, -1)
    return [logp[len(prompt) + k - 1, tok].item() for k, tok in enumerate(response)]


def test_response_logprobs_match_direct_computation(tmp_path):
    model = load_policy(build_tiny_moe(tmp_path / "m")).eval()
    trajs = [
        Trajectory("a", "g", [5, 6, 7], [8, 9], [0.0, 0.0], advantage=1.0),
        Trajectory("b", "g", [5], [10, 11, 12, 13], [0.0] * 4, advantage=-0.5, loss_mask=[1, 0, 1, 1]),
        Trajectory("c", "g", [5, 6, 7, 8, 9], [14], [0.0], advantage=[2.0]),
    ]
    b = collate(trajs, pad_id=0)
    assert b.mask.tolist() == [[1, 1, 0, 0], [1, 0, 1, 1], [1, 0, 0, 0]]
    assert b.advantages[0].tolist() == [1.0, 1.0, 0.0, 0.0] and b.advantages[2, 0] == 2.0
    for temp in (1.0, 0.7):
        with torch.no_grad():
            logp, ent = response_logprobs(model, b, with_entropy=True, temperature=temp)
        for i, t in enumerate(trajs):
            want = direct_logprobs(model, t.prompt_ids, t.response_ids, temp)
            got = logp[i, : len(want)].tolist()
            for k, m in enumerate(t.mask()):
                if m:
                    assert abs(got[k] - want[k]) < 1e-5
        assert (ent[b.mask > 0] > 0).all()


@pytest.mark.parametrize("pack", [True, False])
def test_each_response_is_scored_at_its_own_sampling_temperature(tmp_path, pack):
    """Sub-agents may sample at another temperature than the orchestrator: each response's log-probs (and so
    its gradient) come from the distribution it was sampled from; unset means the collate default; greedy
    (0) counts as 1."""
    model = load_policy(build_tiny_moe(tmp_path / "m")).eval()
    trajs = [Trajectory("a", "g", [5, 6, 7], [8, 9], [], temperature=0.5),
             Trajectory("b", "g", [5, 6, 7], [10, 11, 12], []),
             Trajectory("c", "g", [5, 6, 7], [13], [], temperature=0.0)]
    b = collate(trajs, pad_id=0, pack=pack, temperature=0.8)
    assert (b.packed is not None) == pack
    with torch.no_grad():
        logp, _ = response_logprobs(model, b)
    for i, temp in enumerate([0.5, 0.8, 1.0]):
        want = direct_logprobs(model, trajs[i].prompt_ids, trajs[i].response_ids, temp)
        assert logp[i, : len(want)].tolist() == pytest.approx(want, abs=1e-5)


def test_length_sorted_chunks_group_similar_lengths():
    trajs = [Trajectory(str(i), "g", [1] * n, [2], [0.0]) for i, n in enumerate([9, 1, 5, 2, 8, 3])]
    chunks = length_sorted_chunks(trajs, 2)
    assert [[len(t.prompt_ids) for t in c] for c in chunks] == [[1, 2], [3, 5], [8, 9]]


def test_batch_moves_to_the_model_device_whole():
    """Collation runs on the CPU; the trainer moves each micro-batch to the model's device. Every tensor,
    the packed layout included, must travel (a GPU policy fails on the first one left behind)."""
    trajs = [Trajectory("a", "g", [5, 6], [8, 9], [-1.0, -1.0], advantage=1.0,
                        routed_experts=np.zeros((3, 2, 2), np.uint8)),
             Trajectory("b", "g", [5, 6], [10], [-1.0], advantage=-1.0, routed_experts=np.zeros((2, 2, 2), np.uint8))]
    b = collate(trajs, pad_id=0, routing=True)
    b.old_logprobs = torch.zeros_like(b.mask)
    moved = b.to("meta")
    values = list(vars(moved).values()) + list(vars(moved.packed).values())
    values += [v for v in vars(moved.routing).values() if v is not None]  # MoE routing layout (replay rows)
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    assert len(tensors) == 21 and all(t.device.type == "meta" for t in tensors)
    assert moved.ref_logprobs is None and b.mask.device.type == "cpu"


def test_rollout_logprobs_are_all_or_none():
    """A step generated without engine log-probs has none in its batch (not zeros posing as log-probs); a mix
    would train some responses against made-up values, so it is refused."""
    a = Trajectory("a", "g", [5, 6], [8, 9], [-1.0, -2.0], advantage=1.0)
    b = Trajectory("b", "g", [5, 6], [10], [], advantage=-1.0)
    empty = Trajectory("c", "g", [5, 6], [], [], advantage=0.0)
    assert collate([a, empty], pad_id=0).rollout_logprobs[0].tolist() == [-1.0, -2.0]
    assert collate([b, empty], pad_id=0).rollout_logprobs is None
    with pytest.raises(ValueError, match="1 of 2 responses have rollout log-probs, 'b' has none"):
        collate([a, b], pad_id=0)
