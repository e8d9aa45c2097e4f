"""Loop detection: exact agreement with a brute-force definition, no false alarms on real solver traces, and
(acceptance 3) a looping response from the real tiny policy is cut within the detector's bound."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer

from longcot.config.schema import PartialConfig, RepetitionConfig
from longcot.data.arith import ArithSpec, make_split
from longcot.policies.build import build_tiny_moe
from longcot.record import Trajectory
from longcot.rollout import build_engine
from longcot.rollout.base import Prompt, SamplingConfig
from longcot.rollout.partial import PartialRollouts
from longcot.rollout.repetition import LoopDetector, find_loop, repeat_cut


def brute_force(ids: list[int], d: LoopDetector) -> int | None:
    """The definition, checked directly: smallest k with ids[k-need(p):k] p-periodic for some p."""
    for k in range(1, len(ids) + 1):
        for p in range(1, d.max_period + 1):
            n = d.need(p)
            if n <= k and all(ids[j] == ids[j - p] for j in range(k - n + p, k)):
                return k
    return None


def test_matches_brute_force_on_random_and_looped_sequences():
    rng = random.Random(0)
    d = LoopDetector(max_period=6, min_repeats=3, min_span=8)
    for trial in range(300):
        ids = [rng.randrange(4) for _ in range(rng.randint(0, 30))]
        if trial % 2:  # plant a loop of a random period somewhere
            block = [rng.randrange(4) for _ in range(rng.randint(1, 8))]
            ids += block * rng.randint(1, 5) + [rng.randrange(4) for _ in range(rng.randint(0, 5))]
        assert d.find(ids) == brute_force(ids, d), ids
        # Incremental use: prefixes up to `start` were clean, so find(ids, start) agrees when start < cut.
        cut = d.find(ids)
        start = rng.randint(0, len(ids))
        if cut is None or start < cut:
            assert d.find(ids, start) == cut


def test_cut_point_and_bound():
    # A period-3 loop starting at token 10: cut when it covers max(4*3, 32) = 32 tokens, at 42.
    ids = list(range(100, 110)) + [1, 2, 3] * 30
    assert find_loop(ids) == 42
    assert find_loop([7] * 31) is None and find_loop([7] * 32) == 32  # min_span for period 1
    assert find_loop(list(range(100, 140)) + list(range(40)) * 5) is None  # period 40 > max_period
    assert LoopDetector().max_need == 128  # 4 repeats of the longest (32-token) block
    with pytest.raises(ValueError, match="min_repeats"):
        LoopDetector(min_repeats=1)


def test_no_false_alarm_on_solver_traces():
    """Every correct solution of the arithmetic task (long tail and re-check lines included) passes."""
    train, held = make_split(ArithSpec(1, 4, 20, recheck_prob=0.5, long_tail_frac=0.3), 3000, 100, seed=1)
    d = LoopDetector()
    for row in train + held:
        assert d.find([ord(c) for c in row["solution"]]) is None, row["solution"]


def test_penalty_reward():
    t = Trajectory("p", "p@0", [1], [2, 3], [-0.1, -0.1], finish="repeat")
    assert repeat_cut(t) == -1.0
    t.finish = "stop"
    assert repeat_cut(t) == 0.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_moe(tmp_path_factory.mktemp("tiny_moe_rep"))
    return str(path), AutoTokenizer.from_pretrained(path)


def test_looping_response_is_cut_within_bound(tiny):
    """Acceptance 3. The untrained tiny policy, decoded greedily, falls into loops ("$$$$...", "kkkk...");
    through the partial engine with the loop check every 16 tokens, every such response ends with
    finish="repeat" no later than loop start + max_need, and generation stops within one chunk of the cut."""
    path, tok = tiny
    engine = build_engine("hf", path, tok, batch_size=8)
    texts = ["1+1=", "Q: 3*4-2\n", "abc", "hello"]
    prompts = [Prompt(f"q{i}", [tok.bos_token_id] + tok.encode(t, add_special_tokens=False)) for i, t in
               enumerate(texts)]
    sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=200)
    full = engine.generate(prompts, sampling)
    rep = RepetitionConfig(enabled=True, chunk_tokens=16)
    d = LoopDetector(rep.max_period, rep.min_repeats, rep.min_span)
    wrapped = PartialRollouts(engine, PartialConfig(enabled=False, repetition=rep))
    cut = wrapped.generate(prompts, sampling, group_tag="@0")
    looped = 0
    for f, c in zip(full, cut, strict=True):
        k = d.find(f.response_ids)
        if k is None:  # no loop: untouched
            assert c.response_ids == f.response_ids and c.finish == f.finish
            continue
        looped += 1
        assert c.finish == "repeat" and c.response_ids == f.response_ids[:k]
        assert c.rollout_logprobs == pytest.approx(f.rollout_logprobs[:k], abs=1e-4)
        assert brute_force(f.response_ids[:k], d) == k  # the first point where the loop is certain
        # k - (loop start) <= max_need: some period's periodic stretch ending at k started at most max_need back.
        assert any(all(f.response_ids[j] == f.response_ids[j - p] for j in range(k - d.need(p) + p, k))
                   for p in range(1, d.max_period + 1))
    assert looped >= 2  # the random policy loops on most prompts (measured: all 4)
    m = wrapped.last_metrics
    assert m["partial/repeat_cut"] == looped
    # Generation stopped at the first 16-token chunk boundary after each cut.
    assert m["partial/tokens_wasted"] < 16 * looped
    assert m["partial/generated_tokens"] == sum(len(t.response_ids) for t in cut) + m["partial/tokens_wasted"]
