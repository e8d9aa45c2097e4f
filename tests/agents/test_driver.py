"""Parallel-agent rollouts through real engines (vLLM, HF) on the tiny MoE (fixtures in conftest.py)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from longcot.agents.driver import AgentEngine
from longcot.agents.protocol import extract_answer
from longcot.config.schema import AgentsConfig, SubagentRole
from longcot.rl.batch import collate, response_logprobs
from longcot.rl.losses import LossBatch, policy_loss
from longcot.rollout.base import Prompt, SamplingConfig


def test_100_subagents_one_batch_answers_routed_back(vllm_engine, tok, recording, scripted):
    tasks = [f"{i}+{i % 7}*{i % 5 + 2}" for i in range(100)]
    turn = "".join(f"[a{i}: {t}]\n" for i, t in enumerate(tasks)) + "[wait]"
    rec = recording(vllm_engine)
    cfg = AgentsConfig(enabled=True, max_rounds=2, max_subagents_per_round=128, subagent_max_tokens=10)
    agents = AgentEngine(rec, tok, cfg)
    (orch,) = agents.generate([scripted(turn)], SamplingConfig(n=1, max_tokens=16, seed=3))

    # the orchestrator's scripted turn needs no engine call; then ONE call holds all 100 sub-agents,
    # then one orchestrator turn reads their answers
    assert [len(p) for p, _ in rec.calls] == [100, 1]
    sub_prompts = rec.calls[0][0]
    assert [p.prompt_text for p in sub_prompts] == [f"Q: {t}\n" for t in tasks]
    assert agents.last_metrics["agents/subagent_batch_max"] == 100
    assert agents.last_metrics["agents/subagents_mean"] == 100 and agents.last_metrics["agents/rounds_mean"] == 1

    # every answer sits on the line of the sub-agent that produced it, in spawn order
    subs = agents.last_subagents
    assert len(subs) == 100 and [t.prompt_text for t in subs] == [f"Q: {t}\n" for t in tasks]
    answers = [extract_answer(t.response_text) for t in subs]
    assert len(set(answers)) >= 90  # distinct enough that a mix-up could not go unnoticed
    obs = orch.meta["agents"]
    expected = "\n" + "".join(f"[a{i} = {a or '?'}]\n" for i, a in enumerate(answers))
    assert orch.response_text.startswith(turn + expected)
    # the next orchestrator turn was conditioned on exactly these tokens
    (cont,) = rec.calls[1][0]
    n_ctx = len(cont.prompt_ids) - len(orch.prompt_ids)
    assert cont.prompt_ids == orch.prompt_ids + orch.response_ids[:n_ctx]
    assert tok.decode(orch.response_ids[:n_ctx]) == turn + expected
    assert obs["subagents"] == 100 and obs["turns"] == 2
    # critical path: orchestrator's own tokens + the longest sub-agent of the round
    longest = max(len(t.response_ids) for t in subs)
    assert obs["critical_path_tokens"] == sum(orch.loss_mask) + longest
    assert obs["total_tokens"] == sum(orch.loss_mask) + sum(len(t.response_ids) for t in subs)
    assert obs["critical_steps"] == 2 + 1


def test_loss_mask_observation_and_subagent_tokens_get_no_gradient(vllm_engine, tok, model_dir, scripted):
    turn = "[a: 3+4]\n[b: 2*5]\n[wait]"
    cfg = AgentsConfig(enabled=True, max_rounds=1, subagent_max_tokens=8)
    agents = AgentEngine(vllm_engine, tok, cfg)
    prompts = [scripted(turn, "s0"), Prompt("g0", tok("Q: 1+2\n", add_special_tokens=False).input_ids,
                                                        "Q: 1+2\n", meta={"answer": "3"})]
    trajs = agents.generate(prompts, SamplingConfig(n=2, max_tokens=12, seed=0), group_tag="@0")
    assert [t.agent.role for t in trajs] == ["orchestrator"] * 4  # sub-agents are not trained by default
    scripted = trajs[0]
    n_turn = len(tok(turn, add_special_tokens=False).input_ids)
    spans = scripted.meta["agents"]["spans"]
    assert [k for k, _, _ in spans] == ["scripted", "obs", "gen"] and spans[0][2] == n_turn
    mask = scripted.loss_mask
    (_, o_start, o_end), (_, g_start, g_end) = spans[1:]
    assert mask[:n_turn] == [0] * n_turn  # scripted text was not sampled by the policy
    assert mask[o_start:o_end] == [0] * (o_end - o_start) and o_end - o_start > 10
    assert mask[g_start:] == [1] * (g_end - g_start) and g_end == len(mask) > g_start
    assert all(lp == 0.0 for lp, m in zip(scripted.rollout_logprobs, mask, strict=True) if m == 0)
    assert all(m == 0 for t in agents.last_subagents for m in t.loss_mask)

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    grads = logprob_grads(model, tok, trajs[:1] + agents.last_subagents[:1])
    assert (grads[0][torch.tensor(mask) == 0] == 0).all()
    assert (grads[0][torch.tensor(mask) == 1] != 0).all()
    assert (grads[1] == 0).all()  # a sub-agent record that slipped into a batch still trains nothing

    cfg.train_subagents = True
    trajs = agents.generate(prompts[:1], SamplingConfig(n=1, max_tokens=12, seed=0), group_tag="@1")
    subs = [t for t in trajs if t.agent.role == "subagent"]
    assert len(subs) == 2 and all(t.loss_mask == [1] * len(t.response_ids) for t in subs)
    assert {t.agent.parent for t in subs} == {trajs[0].meta["agents"]["sample_id"]}
    assert (logprob_grads(model, tok, subs[:1])[0] != 0).all()


def logprob_grads(model, tok, trajs):
    """d loss / d logprob per response token, through the trainer's collate -> logprobs -> policy loss."""
    for t in trajs:
        t.advantage = 1.0
    batch = collate(trajs, tok.pad_token_id)
    logp, _ = response_logprobs(model, batch)
    logp.retain_grad()
    lb = LossBatch(logprobs=logp, old_logprobs=logp.detach(), advantages=batch.advantages, mask=batch.mask,
                   rollout_logprobs=batch.rollout_logprobs, total_tokens=float(batch.mask.sum()),
                   total_seqs=float(len(trajs)))
    loss, _ = policy_loss(lb, "ppo_clip")
    loss.backward()
    return [logp.grad[i, : len(t.response_ids)] for i, t in enumerate(trajs)]


def test_malformed_directives_get_observations_and_counters_never_a_crash(vllm_engine, tok, scripted):
    turn = "[a: 1+2]\n[b after zz: 3]\n[c: 4+5\n[??]\n[d: 2*3]\n[e: 7]\n[a: 9]\n[wait]"
    cfg = AgentsConfig(enabled=True, max_rounds=1, max_subagents_per_round=2, subagent_max_tokens=6)
    agents = AgentEngine(vllm_engine, tok, cfg)
    (orch,) = agents.generate([scripted(turn)], SamplingConfig(n=1, max_tokens=8, seed=1))
    obs = orch.response_text[len(turn):]
    lines = [ln for ln in obs.split("\n") if ln.startswith("[")]
    assert lines[0].startswith("[a = ") and lines[1].startswith("[d = ")  # the two that fit the cap ran
    assert lines[2:] == [
        "[error: unclosed directive '[c: 4+5 ': expected ']' at the end of the task]",
        "[error: malformed directive '[??]': expected '[NAME: TASK]', '[NAME@ROLE: TASK]', '[NAME after A,B: TASK]' "
        "or '[wait]']",
        "[error: 'b' depends on unknown sub-agent(s) zz; it was not run]",
        "[error: at most 2 sub-agents per round; 'e' was not run]",
        "[error: sub-agent 'a' already exists; '[a: 9]' was not run]",
        "[error: round limit reached (1): no more sub-agents; give the final answer]",
    ]
    m = agents.last_metrics
    assert (m["agents/problems/unclosed"], m["agents/problems/malformed"], m["agents/problems/unknown_dependency"],
            m["agents/problems/over_cap"], m["agents/problems/duplicate_name"]) == (1, 1, 1, 1, 1)
    assert orch.meta["agents"]["subagents"] == 2 and orch.meta["agents"]["problems"]["over_cap"] == 1

    # waiting again after the round limit ends the sample, counted; no sub-agent runs
    agents.cfg.max_rounds = 0
    (orch,) = agents.generate([scripted("[x: 1+1]\n[wait]")], SamplingConfig(n=1, max_tokens=8))
    assert orch.meta["agents"]["subagents"] == 0 and agents.last_metrics["agents/problems/round_cap"] == 1
    # a task longer than the sub-agent engine allows is refused with an observation, not an engine error
    agents.cfg.max_rounds = 1
    long_turn = f"[big: {'1+' * 2100}1]\n[ok: 2+2]\n[wait]"
    (orch,) = agents.generate([scripted(long_turn)], SamplingConfig(n=1, max_tokens=4))
    assert "[error: the task of 'big' is too long to run]" in orch.response_text
    assert orch.meta["agents"]["subagents"] == 1 and agents.last_metrics["agents/problems/task_too_long"] == 1


def test_dependencies_run_in_waves_votes_and_a_frozen_subagent_engine(vllm_engine, hf_engine, model_dir, tok,
                                                                     recording, scripted):
    frozen = recording(hf_engine)
    main = recording(vllm_engine)
    turn = "[a: 1+2]\n[b: 3*4]\n[c after a,b: {a}-{b}]\n[d: {c}+1]\n[wait]"
    cfg = AgentsConfig(enabled=True, max_rounds=1, vote_k=3, subagent_max_tokens=6,
                       subagents={"worker": SubagentRole(policy="frozen")})
    agents = AgentEngine(main, tok, cfg, frozen={"worker": frozen})
    (orch,) = agents.generate([scripted(turn)], SamplingConfig(n=1, max_tokens=8, seed=2))
    assert [len(p) for p, _ in frozen.calls] == [2, 1, 1]  # waves: {a, b}, {c}, {d}
    assert all(s.n == 3 for _, s in frozen.calls)  # three votes per sub-agent
    assert len(main.calls) == 1  # only the orchestrator's own turn used the trained engine
    subs = {t.meta["agents"]["name"]: t for t in agents.last_subagents}
    tree = {name: [t for t in agents.last_subagents if t.meta["agents"]["name"] == name] for name in subs}
    answers = {n: extract_answer_majority(ts) for n, ts in tree.items()}
    assert frozen.calls[1][0][0].prompt_text == f"Q: {answers['a'] or '{a}'}-{answers['b'] or '{b}'}\n"
    assert f"[c = {answers['c'] or '?'}]" in orch.response_text
    info = orch.meta["agents"]
    assert info["critical_steps"] == 2 + 3  # two orchestrator turns + three waves
    longest = [max(len(t.response_ids) for t in tree[n]) for n in ("a", "b", "c", "d")]
    assert info["critical_path_tokens"] == sum(orch.loss_mask) + max(longest[:2]) + longest[2] + longest[3]

    def refuse(*args, **kwargs):
        raise AssertionError("frozen sub-agents must never receive the trainer's weights")

    frozen.sync_weights = refuse
    agents.sync_weights(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters(), 1)
    assert vllm_engine.version == 1


def extract_answer_majority(trajs):
    from longcot.agents.protocol import majority

    return majority([extract_answer(t.response_text) for t in trajs])


def test_a_step_without_engine_logprobs_gives_records_without_them(vllm_engine, tok, scripted):
    agents = AgentEngine(vllm_engine, tok, AgentsConfig(enabled=True, max_rounds=1, subagent_max_tokens=4))
    for wanted in (False, True):  # rollout.logprobs_every: most steps do not ask the engine for log-probs
        (orch,) = agents.generate([scripted("[a: 1+2]\n[wait]")],
                                  SamplingConfig(n=1, max_tokens=6, seed=0, logprobs=wanted))
        assert len(orch.rollout_logprobs) == (len(orch.response_ids) if wanted else 0)
        assert all(len(t.rollout_logprobs) == (len(t.response_ids) if wanted else 0) for t in agents.last_subagents)


def test_state_dict_keeps_naming_eval_traces_where_a_resumed_run_stopped(vllm_engine, tok, scripted, tmp_path):
    cfg = AgentsConfig(enabled=True, max_rounds=1, subagent_max_tokens=4)
    first = AgentEngine(vllm_engine, tok, cfg, trace_dir=tmp_path)
    first.generate([scripted("[a: 1+2]\n[wait]")], SamplingConfig(n=1, max_tokens=4, seed=0))
    resumed = AgentEngine(vllm_engine, tok, cfg, trace_dir=tmp_path)
    resumed.load_state_dict(first.state_dict())
    resumed.generate([scripted("[a: 1+2]\n[wait]")], SamplingConfig(n=1, max_tokens=4, seed=0))
    assert resumed.state_dict() == {"calls": 2}
    assert sorted(p.name for p in tmp_path.glob("eval-*.jsonl")) == ["eval-000.jsonl", "eval-001.jsonl"]


def test_the_sft_observation_is_the_one_the_driver_shows(vllm_engine, tok, scripted):
    """The compound task's SFT teaches the final turn on an observation: it must be the driver's, round-cap notice
    included (without it every PARL run of the wide task started from a final turn trained on another context:
    held-out accuracy 0 after SFT)."""
    import random
    import re

    from longcot.data.compound import CompoundSpec, decomposed_turns, make_compound

    row = make_compound(random.Random(0), CompoundSpec(ops="+-", dep_prob=0.0, min_parts=3, max_parts=3))
    first, sft_obs, _ = decomposed_turns(row, max_rounds=1)
    agents = AgentEngine(vllm_engine, tok, AgentsConfig(enabled=True, max_rounds=1, subagent_max_tokens=8))
    (orch,) = agents.generate([scripted(first)], SamplingConfig(n=1, max_tokens=8, seed=1))
    shown = orch.response_text[len(first):]
    shown = shown[: shown.index("give the final answer]\n") + len("give the final answer]\n")]
    def anonymous(text: str) -> str:  # the sub-agents' answers differ from the SFT's part values
        return re.sub(r"\[(\w+) = [^\]]*\]", r"[\1 = ?]", text)

    assert anonymous(shown) == anonymous(sft_obs) and "round limit reached (1)" in sft_obs
    assert "round limit" not in decomposed_turns(row, max_rounds=2)[1]  # a second round is still allowed
