"""R3 end to end on the real in-process vLLM CPU engine in bf16 against the fp32 trainer: the engine's expert ids
per token and layer, the trainer replaying exactly them, partial rollouts, and the errors that keep a missing
capture from passing as a replay."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from longcot.policies.build import build_tiny_moe
from longcot.policies.load import load_policy, load_tokenizer
from longcot.policies.moe import MoERouting
from longcot.record import Trajectory
from longcot.rl.batch import collate, response_logprobs
from longcot.rl.rollout_correction import mismatch_metrics
from longcot.rollout.base import Prompt, SamplingConfig
from longcot.rollout.partial import _append_routing

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
LAYERS, K = 4, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from longcot.rollout.vllm import VLLMEngine

    path = build_tiny_moe(tmp_path_factory.mktemp("moe"), seed=0)
    tok = load_tokenizer(path)
    engine = VLLMEngine(path, tok, max_model_len=256, dtype="bfloat16", routing_capture=True)
    prompts = [Prompt(f"p{i}", tok(f"Q: {i}+{2 * i + 1}-{i % 3}=\n").input_ids) for i in range(8)]
    trajs = engine.generate(prompts, SamplingConfig(n=8, temperature=1.0, max_tokens=40, seed=3, routed_experts=True))
    yield path, tok, engine, prompts, trajs
    engine.shutdown()


def test_engine_returns_the_experts_of_every_fed_token(setup):
    *_, trajs = setup
    for t in trajs:
        rows = t.routed_experts
        assert rows.dtype == np.uint8 and rows.shape == (len(t.prompt_ids) + len(t.response_ids) - 1, LAYERS, K)
        assert (rows < 8).all() and (rows[..., 0] != rows[..., 1]).all()  # k distinct experts per token and layer


@pytest.mark.parametrize("pack", [True, False])
def test_r3_trainer_dispatches_to_exactly_the_engines_experts(setup, pack):
    path, tok, *_, trajs = setup
    model = load_policy(path, "float32")
    moe = MoERouting(model)
    results = {}
    for mode in ("none", "r3"):
        moe.mode = mode
        b = collate(trajs, tok.pad_token_id, pack=pack, routing=True)
        with torch.no_grad(), moe.forward(moe.replay_ids(b.routing, first=True), record=True) as p:
            lp = response_logprobs(model, b, temperature=1.0)[0]
        moe.observe(p, b.routing)
        if mode == "r3":
            rep = b.routing.replay
            for layer in range(LAYERS):  # every token the engine fed, every layer
                have = (rep[:, layer] >= 0).all(-1)
                assert int(have.sum()) >= sum(len(t.routed_experts) for t in trajs) - (
                    0 if not pack else sum(len(t.prompt_ids) for t in trajs))
                assert torch.equal(p.used[layer][have], rep[have, layer])
        live = b.mask > 0
        results[mode] = {**mismatch_metrics(lp[live], b.rollout_logprobs[live]), **moe.step_metrics()}
    assert results["none"]["routing/agreement"] < 1.0  # bf16 rollouts route some tokens differently
    assert results["r3"]["mismatch/gap_max"] < results["none"]["mismatch/gap_max"]


def test_partial_rollouts_keep_routing_per_segment(setup):
    from longcot.config.schema import PartialConfig
    from longcot.rollout.partial import PartialRollouts

    path, tok, engine, prompts, _ = setup
    partial = PartialRollouts(engine, PartialConfig(enabled=True, token_budget=6))
    sampling = SamplingConfig(n=2, temperature=1.0, max_tokens=20, seed=5, routed_experts=True)
    out = partial.generate(prompts[:3], sampling, group_tag="@0")
    first = {(s.traj.group_id, s.index): s.traj.routed_experts.copy() for g in partial.buffer.values() for s in g}
    weights = load_policy(path, "float32")
    for step in range(1, 6):
        partial.sync_weights(weights.named_parameters(), step)  # a new policy version: a new segment
        out += partial.generate([], sampling, group_tag=f"@{step}")
    assert out and any(len(t.segments) > 1 for t in out)
    continued = 0
    for i, t in enumerate(out):
        assert t.routed_experts.shape == (len(t.prompt_ids) + len(t.response_ids) - 1, LAYERS, K)
        rows = first.get((t.group_id, i % 2))
        if rows is not None and len(t.segments) > 1:  # the first segment's rows survive the continuation
            np.testing.assert_array_equal(t.routed_experts[: len(rows)], rows)
            continued += 1
    assert continued
    b = collate(out, tok.pad_token_id, pack=True, routing=True)
    assert int((b.routing.replay[:, 0, 0] >= 0).sum()) > 0


def test_append_routing_keeps_the_rows_of_the_first_segment():
    t = Trajectory("p", "g", [1, 2], [3, 4], [])
    first = np.zeros((3, LAYERS, K), np.uint8)  # positions 0..2 (prompt 2 + 2 responses - 1)
    _append_routing(t, first)
    later = np.ones((5, LAYERS, K), np.uint8)  # the continuation recomputed positions 0..4 with new weights
    _append_routing(t, later)
    assert t.routed_experts.shape == (5, LAYERS, K)
    assert (t.routed_experts[:3] == 0).all() and (t.routed_experts[3:] == 1).all()


def test_a_layer_without_capture_is_an_error_not_a_silent_replay(setup):
    _, _, engine, prompts, _ = setup

    def unbind(worker, layer=2):
        from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

        for m in worker.model_runner.model.modules():
            if isinstance(m, MoERunner) and m.layer_id == layer:
                saved = m.router.capture_fn
                m.router.set_capture_fn(None)
                return saved
        raise AssertionError("no MoE layer 2")

    (saved,) = engine.llm.collective_rpc(unbind)
    try:
        with pytest.raises(RuntimeError, match=r"came back empty for MoE layers \[2\]"):
            engine.generate(prompts[:1], SamplingConfig(n=1, max_tokens=4, seed=0, routed_experts=True))
    finally:
        def rebind(worker):
            from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

            for m in worker.model_runner.model.modules():
                if isinstance(m, MoERunner) and m.layer_id == 2:
                    m.router.set_capture_fn(saved)
        engine.llm.collective_rpc(rebind)
    assert engine.generate(prompts[:1], SamplingConfig(n=1, max_tokens=4, seed=0, routed_experts=True))


def test_prefix_caching_and_engines_without_capture_are_refused(setup):
    from longcot.rollout.hf import HFEngine
    from longcot.rollout.vllm import VLLMEngine

    path, tok, *_ = setup
    with pytest.raises(ValueError, match="enable_prefix_caching=False"):
        VLLMEngine(path, tok, routing_capture=True, enable_prefix_caching=True)
    hf = HFEngine(path, tok)
    with pytest.raises(ValueError, match="use the vllm engine"):
        hf.generate([Prompt("a", [5, 6])], SamplingConfig(n=1, max_tokens=2, routed_experts=True))


def test_r3_run_logs_mismatch_routing_and_load_metrics(tmp_path, capsys, monkeypatch, setup):
    """A two-step bf16 run with R3 and masked IS: the metrics land in metrics.jsonl and in `longcot report`."""
    from longcot.cli import main as cli_main

    path, *_ = setup
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    rc = cli_main(["train", str(ROOT / "recipes/tiny/arith-moe.yaml"), f"out_dir={tmp_path}", "name=r3",
                   f"model.path={path}", "sft.enabled=false", "rl.steps=2", "rl.prompts_per_step=4", "rollout.n=4",
                   "rollout.max_tokens=24", "eval.num_problems=4", "eval.max_tokens=24", "data.num_train=64",
                   "data.num_heldout=8", "rollout.logprobs_every=1", "rollout.engine_options.dtype=bfloat16",
                   "rl.routing_replay=r3", "rl.rollout_correction.rollout_rs=token",
                   "rl.rollout_correction.rollout_rs_threshold=2", "rollout.sync_check_max_gap=1.0"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "r3" / "metrics.jsonl").read_text().splitlines()]
    keys = {"logprob_gap", "mismatch/gap_max", "mismatch/kl_k3", "mismatch/frac_gap_gt_0.1",
            "rollout_rs/masked_frac", "routing/agreement", "moe/load_max_over_mean", "moe/load_entropy",
            "moe/dead_experts"} | {f"routing/agreement/l{i}" for i in range(LAYERS)} | {
            f"moe/load_entropy/l{i}" for i in range(LAYERS)}
    for r in rows:
        assert keys <= set(r), keys - set(r)
        assert 0.9 < r["routing/agreement"] <= 1.0 and 0 < r["moe/load_entropy"] <= 1.0
    capsys.readouterr()
    assert cli_main(["report", str(tmp_path / "r3")]) == 0
    out = capsys.readouterr().out
    assert "routing/agreement" in out and "mismatch/gap_max" in out and "layer 3: agreement" in out
