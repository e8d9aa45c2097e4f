"""A few-step ``longcot train`` run, end to end: build -> SFT -> vLLM rollouts -> GRPO -> eval -> report."""

import json
from pathlib import Path

import pytest

from longcot.cli import main as cli_main
from longcot.policies.load import load_policy

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"reward_mean", "accuracy", "response_len_mean", "response_len_max", "clip_frac", "entropy",
               "grad_norm", "step_seconds", "tokens_per_s", "time/generate", "time/reward",
               "time/forward_backward", "time/optimizer", "time/weight_sync"}


@pytest.mark.slow
def test_few_step_training_run_writes_everything(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    rc = cli_main(["train", str(ROOT / "recipes/tiny/arith-moe.yaml"), f"out_dir={tmp_path}", "name=e2e",
                   "sft.num_examples=256", "rl.steps=3", "rl.prompts_per_step=4", "rollout.n=4",
                   "eval.num_problems=16", "data.num_train=400", "data.num_heldout=32", "rl.kl_coef=0.01",
                   "rollout.logprobs_every=2"])
    assert rc == 0
    run = tmp_path / "e2e"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert METRIC_KEYS <= set(r), METRIC_KEYS - set(r)
        assert "kl" in r and r["response_tokens"] > 0
        parts = sum(v for k, v in r.items() if k.startswith("time/"))
        assert abs(parts - r["step_seconds"]) <= 0.05 * r["step_seconds"]
    # engine log-probs on steps 0 and 2 only (logprobs_every=2); on-policy, vLLM and the trainer agree on them
    assert [("logprob_gap" in r) for r in rows] == [True, False, True]
    assert rows[0]["logprob_gap"] < 1e-3 and rows[2]["logprob_gap"] < 1e-3
    summary = json.loads((run / "summary.json").read_text())
    for stage in ("after_sft", "after_rl"):
        assert summary["eval"][stage]["n"] == 16 and 0.0 <= summary["eval"][stage]["accuracy"] <= 1.0
    assert (run / "config.yaml").is_file() and (run / "curves.png").stat().st_size > 1000
    assert load_policy(run / "checkpoints" / "final").config.num_experts == 8
    assert (run / "eval" / "after_rl" / "samples.jsonl").is_file()
    capsys.readouterr()
    assert cli_main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "generate" in out and "after_rl" in out


@pytest.mark.slow
def test_few_step_parl_run_writes_agent_trees_and_curves(tmp_path, monkeypatch):
    """The PARL recipe end to end at toy size: orchestrator rollouts with sub-agents, the PARL reward terms
    logged per step, agent trees on disk and the agent curves written at the end."""
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    rc = cli_main(["train", str(ROOT / "recipes/tiny/parl-arith.yaml"), f"out_dir={tmp_path}", "name=parl",
                   "sft.num_examples=48", "rl.steps=2", "rl.prompts_per_step=2", "rollout.n=2",
                   "eval.num_problems=4", "data.num_train=64", "data.num_heldout=4", "rollout.max_tokens=96",
                   "eval.max_tokens=96", "agents.subagent_max_tokens=48", "rl.checkpoint_every=0"])
    assert rc == 0
    run = tmp_path / "parl"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        assert {"rewards/parl/outcome", "rewards/parl/parallel", "rewards/parl/l1", "agents/multi_agent_frac",
                "agents/critical_path_tokens_mean"} <= set(r)
    summary = json.loads((run / "summary.json").read_text())
    assert "agents/critical_path_tokens_mean" in summary["eval"]["after_rl"]
    assert list((run / "agents").glob("step*.jsonl"))
    assert (run / "agents" / "curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_fsdp_ranks_beside_the_vllm_engine(tmp_path, monkeypatch, caplog):
    """`longcot train` with two FSDP ranks: vLLM keeps torch.distributed's default group in the driver, the ranks
    are processes of their own; every step's weight sync reaches the engine exactly (canary each step), the
    checkpoints are whole HF models, and no rank outlives the run."""
    import logging
    import re

    caplog.set_level(logging.INFO, logger="longcot.rl.remote")
    monkeypatch.setenv("LONGCOT_NO_PROGRESS", "1")
    rc = cli_main(["train", str(ROOT / "recipes/tiny/arith-moe.yaml"), f"out_dir={tmp_path}", "name=fsdp",
                   "trainer.strategy=fsdp", "trainer.ranks=2", "threads=1", "sft.num_examples=64", "rl.steps=2",
                   "rl.prompts_per_step=4", "rollout.n=4", "eval.num_problems=8", "data.num_train=200",
                   "data.num_heldout=16", "rollout.sync_check_every=1", "rl.checkpoint_every=1"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all(r["sync_check/gap_mean"] < 1e-5 for r in rows)
    assert all(r["time/forward_backward"] > 0 for r in rows)
    for ckpt in ("states/step-00000001/policy", "checkpoints/final"):
        assert load_policy(tmp_path / "fsdp" / ckpt).config.num_experts == 8
    up = next(r.getMessage() for r in caplog.records if "trainer ranks up" in r.getMessage())
    pids = [int(p) for p in re.findall(r"\d+", up.split("processes:")[1])]
    assert len(pids) == 2 and not any(Path(f"/proc/{p}").exists() for p in pids)
    # resume one more step: the state's weights and full optimizer state go back into the shards, and the
    # engine gets them exactly (the canary of the resumed step compares its forward pass with the ranks')
    rc = cli_main(["train", str(ROOT / "recipes/tiny/arith-moe.yaml"), f"out_dir={tmp_path}", "name=fsdp",
                   "trainer.strategy=fsdp", "trainer.ranks=2", "threads=1", "sft.num_examples=64", "rl.steps=3",
                   "rl.prompts_per_step=4", "rollout.n=4", "eval.num_problems=8", "data.num_train=200",
                   "data.num_heldout=16", "rollout.sync_check_every=1", "rl.checkpoint_every=1", "--resume"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[2]["sync_check/gap_mean"] < 1e-5
