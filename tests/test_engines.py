"""Rollout engines on the real tiny MoE: vLLM and HF give the same records, groups and logprobs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from longcot.policies.build import build_tiny_moe
from longcot.record import groups
from longcot.rollout import build_engine
from longcot.rollout.base import Prompt, SamplingConfig
from longcot.rollout.hf import HFEngine


def make_prompts(tok, texts: list[str]) -> list[Prompt]:
    return [
        Prompt(f"q{i}", [tok.bos_token_id] + tok.encode(t, add_special_tokens=False), t, meta={"answer": str(i)})
        for i, t in enumerate(texts)
    ]


TEXTS = ["1+1=", "What is 12*3? ", "abc", "Solve x+2=5 for x.\n"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_moe(tmp_path_factory.mktemp("tiny_moe"))


@pytest.fixture(scope="module")
def tok(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def hf(model_dir, tok):
    return build_engine("hf", str(model_dir), tok, batch_size=8)


@pytest.fixture(scope="module")
def vllm_engine(model_dir, tok):
    pytest.importorskip("vllm")
    engine = build_engine("vllm", str(model_dir), tok, max_model_len=256, seed=0)
    yield engine
    engine.shutdown()


def check_records(trajs, prompts, sampling, tok, group_tag):
    """Invariants every engine's output must satisfy."""
    assert len(trajs) == len(prompts) * sampling.n
    by_group = groups(trajs)
    assert list(by_group) == [p.prompt_id + group_tag for p in prompts]  # prompt order kept
    for p in prompts:
        group = by_group[p.prompt_id + group_tag]
        assert len(group) == sampling.n
        for t in group:
            assert t.prompt_id == p.prompt_id and t.prompt_ids == p.prompt_ids and t.meta == p.meta
            assert t.meta is not p.meta  # each sample gets its own meta to annotate
            assert len(t.rollout_logprobs) == len(t.response_ids) >= 1
            assert all(lp <= 0 for lp in t.rollout_logprobs)
            assert t.response_text == tok.decode(t.response_ids, skip_special_tokens=True)
            if t.finish == "length":
                assert len(t.response_ids) == sampling.max_tokens
            else:
                assert t.finish == "stop"
                ended_by_stop = any(t.response_text.endswith(s) for s in sampling.stop)
                assert t.response_ids[-1] == tok.eos_token_id or ended_by_stop


# ---- vLLM vs HF --------------------------------------------------------------------------------------------
def test_greedy_vllm_matches_hf_token_for_token(vllm_engine, hf, tok):
    prompts = make_prompts(tok, TEXTS)
    sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=48)
    v = vllm_engine.generate(prompts, sampling)
    h = hf.generate(prompts, sampling)
    for a, b in zip(v, h, strict=True):
        assert a.response_ids == b.response_ids and a.finish == b.finish
        assert max(abs(x - y) for x, y in zip(a.rollout_logprobs, b.rollout_logprobs, strict=True)) < 1e-4
    # vLLM refuses n > 1 for greedy; the engine repeats the one greedy sample instead.
    twice = vllm_engine.generate(prompts[:2], SamplingConfig(n=2, temperature=0.0, max_tokens=8))
    assert [t.response_ids for t in twice] == [v[0].response_ids[:8]] * 2 + [v[1].response_ids[:8]] * 2


def test_responses_are_capped_at_max_model_len(vllm_engine, model_dir, tok):
    prompt = Prompt("p", [tok.bos_token_id] + [5] * 249)  # 250 of the 256 tokens
    hf = HFEngine(str(model_dir), tok, max_model_len=256)
    for engine in (vllm_engine, hf):
        (t,) = engine.generate([prompt], SamplingConfig(n=1, temperature=0.0, max_tokens=40))
        assert len(t.response_ids) == 6 and t.finish == "length"


@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf"])
def test_groups_lengths_finish_and_stop(engine_name, request, tok):
    engine = request.getfixturevalue(engine_name)
    prompts = make_prompts(tok, TEXTS[:3])
    plain = SamplingConfig(n=4, max_tokens=40, seed=1)
    trajs = engine.generate(prompts, plain, group_tag="@it3")
    check_records(trajs, prompts, plain, tok, "@it3")
    assert {t.finish for t in trajs} == {"stop", "length"}  # EOS is sampled often enough on the random model
    for group in groups(trajs).values():  # the n samples of a prompt differ
        assert len({tuple(t.response_ids) for t in group}) == len(group)

    stop = SamplingConfig(n=4, max_tokens=40, seed=1, stop=["a", "e", "1"])
    trajs = engine.generate(prompts, stop)
    check_records(trajs, prompts, stop, tok, "")
    stopped = [t for t in trajs if t.finish == "stop" and t.response_ids[-1] != tok.eos_token_id]
    assert stopped, "no sample hit a stop string"
    for t in stopped:  # cut right after the first stop string, which stays in the text
        assert t.response_text[-1] in "ae1" and not set(t.response_text[:-1]) & set("ae1")


@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf"])
def test_logprobs_can_be_skipped_without_changing_the_samples(engine_name, request, tok):
    engine = request.getfixturevalue(engine_name)
    prompts = make_prompts(tok, TEXTS[:2])
    with_lp = engine.generate(prompts, SamplingConfig(n=3, max_tokens=20, seed=4))
    without = engine.generate(prompts, SamplingConfig(n=3, max_tokens=20, seed=4, logprobs=False))
    assert [t.response_ids for t in without] == [t.response_ids for t in with_lp]
    assert all(t.rollout_logprobs == [] for t in without)
    assert all(len(t.rollout_logprobs) == len(t.response_ids) for t in with_lp)


def test_vllm_seeded_sampling_reproducible_and_order_free(vllm_engine, tok):
    prompts = make_prompts(tok, TEXTS)
    sampling = SamplingConfig(n=3, max_tokens=24, seed=5)
    first = vllm_engine.generate(prompts, sampling)
    again = vllm_engine.generate(prompts[::-1], sampling)  # a prompt's samples depend on its id, not position
    key = lambda ts: {(t.prompt_id, tuple(t.response_ids)) for t in ts}
    assert key(first) == key(again)
    other = vllm_engine.generate(prompts, SamplingConfig(n=3, max_tokens=24, seed=6))
    assert key(first) != key(other)


def test_vllm_compute_logprobs_equals_rollout_logprobs(vllm_engine, tok):
    prompts = make_prompts(tok, TEXTS[:2])
    trajs = vllm_engine.generate(prompts, SamplingConfig(n=2, max_tokens=20, seed=2))
    scored = vllm_engine.compute_logprobs([t.prompt_ids for t in trajs], [t.response_ids for t in trajs])
    for t, lps in zip(trajs, scored, strict=True):
        assert max(abs(a - b) for a, b in zip(t.rollout_logprobs, lps, strict=True)) < 1e-4


def test_vllm_rejects_bad_input(vllm_engine):
    with pytest.raises(ValueError, match="'long'.*max_model_len"):
        vllm_engine.generate([Prompt("long", [5] * 300)], SamplingConfig(n=1))
    with pytest.raises(ValueError, match="appears twice"):
        vllm_engine.generate([Prompt("a", [1, 5]), Prompt("a", [1, 6])], SamplingConfig(n=1))


# ---- HF engine on its own ----------------------------------------------------------------------------------
def test_hf_left_padding_does_not_change_greedy_output(hf, tok):
    prompts = make_prompts(tok, TEXTS)  # different lengths: the batch is left-padded
    sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=16)
    batched = hf.generate(prompts, sampling)
    for p, t in zip(prompts, batched, strict=True):
        (alone,) = hf.generate([p], sampling)
        assert alone.response_ids == t.response_ids
        assert max(abs(a - b) for a, b in zip(alone.rollout_logprobs, t.rollout_logprobs, strict=True)) < 1e-4


def test_hf_seed_reproducible_and_global_rng_untouched(hf, tok):
    prompts = make_prompts(tok, TEXTS[:2])
    sampling = SamplingConfig(n=2, max_tokens=12, seed=9)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = hf.generate(prompts, sampling)
    assert torch.equal(torch.rand(1), expected_next)
    b = hf.generate(prompts, sampling)
    assert [t.response_ids for t in a] == [t.response_ids for t in b]


def test_hf_temperature_logprobs_are_of_the_sampling_distribution(hf, tok):
    prompts = make_prompts(tok, TEXTS[:1])
    (t,) = hf.generate(prompts, SamplingConfig(n=1, max_tokens=10, temperature=0.5, seed=0))
    ids = torch.tensor([t.prompt_ids + t.response_ids])
    with torch.no_grad():
        logits = hf.model(input_ids=ids).logits[0, len(t.prompt_ids) - 1 : -1] / 0.5
    ref = logits.log_softmax(-1).gather(-1, torch.tensor(t.response_ids)[:, None])[:, 0]
    assert (torch.tensor(t.rollout_logprobs) - ref).abs().max().item() < 1e-4


def test_build_engine_errors(model_dir, tok):
    with pytest.raises(KeyError, match="did you mean 'vllm'"):
        build_engine("vlm", str(model_dir), tok)
    with pytest.raises(KeyError, match="unknown option 'batchsize'.*batch_size"):
        build_engine("hf", str(model_dir), tok, batchsize=4)
    with pytest.raises(ValueError, match="tokenizer"):
        HFEngine(str(model_dir), None)
